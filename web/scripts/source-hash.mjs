// Fingerprint of everything that goes into the bundle.
//
// The same algorithm lives in analyses/render/bundle_hash.py, so that a Python
// test can tell, without npm, whether the committed bundle was built from the
// sources in this checkout. Keep the two in step.
//
//   files  = web/src/**, web/package.json, web/package-lock.json,
//            web/vite.config.js, web/scripts/*.mjs   (paths relative to web/)
//   digest = sha256 over, for each file in sorted path order:
//              "<path>\0<sha256 hex of the file with CRLF turned into LF>\n"
import { createHash } from 'node:crypto';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { dirname, join, relative, sep } from 'node:path';
import { fileURLToPath } from 'node:url';

export const WEB_DIR = dirname(dirname(fileURLToPath(import.meta.url)));

const TOP_LEVEL_FILES = ['package.json', 'package-lock.json', 'vite.config.js'];

function walk(dir) {
  const out = [];
  for (const name of readdirSync(dir)) {
    const path = join(dir, name);
    if (statSync(path).isDirectory()) out.push(...walk(path));
    else out.push(path);
  }
  return out;
}

/** Relative (posix) paths of the hashed source files, sorted. */
export function sourceFiles(webDir = WEB_DIR) {
  const files = [
    ...walk(join(webDir, 'src')),
    ...walk(join(webDir, 'scripts')).filter((p) => p.endsWith('.mjs')),
    ...TOP_LEVEL_FILES.map((name) => join(webDir, name)),
  ];
  const rel = files.map((p) => relative(webDir, p).split(sep).join('/'));
  // Sort by UTF-8 bytes, like Python's sorted() on ASCII paths.
  return rel.sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
}

/** sha256 hex digest of the bundle's sources (see the header comment). */
export function sourceHash(webDir = WEB_DIR) {
  const digest = createHash('sha256');
  for (const rel of sourceFiles(webDir)) {
    const text = readFileSync(join(webDir, rel)).toString('latin1').replaceAll('\r\n', '\n');
    const fileHash = createHash('sha256').update(Buffer.from(text, 'latin1')).digest('hex');
    digest.update(`${rel}\0${fileHash}\n`);
  }
  return digest.digest('hex');
}
