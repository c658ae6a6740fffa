// Runs after `vite build`: records what the committed bundle was built from.
//
// analyses/render/static/bundle.json holds the source fingerprint (see
// source-hash.mjs), the bundle's own sha256 and size, and the tool versions.
// tests/test_render.py recomputes the fingerprint and fails when the bundle
// is stale. `node scripts/write-manifest.mjs --check` only compares.
import { createHash } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { WEB_DIR, sourceFiles, sourceHash } from './source-hash.mjs';

const STATIC_DIR = join(WEB_DIR, '..', 'analyses', 'render', 'static');
const BUNDLE_NAME = 'hookgpt-views.js';
const MANIFEST = join(STATIC_DIR, 'bundle.json');

const bundle = readFileSync(join(STATIC_DIR, BUNDLE_NAME));
const version = (pkg) => JSON.parse(readFileSync(join(WEB_DIR, 'node_modules', pkg, 'package.json'))).version;

const manifest = {
  bundle: BUNDLE_NAME,
  bundle_bytes: bundle.length,
  bundle_sha256: createHash('sha256').update(bundle).digest('hex'),
  sources_sha256: sourceHash(),
  sources: sourceFiles(),
  built_with: { svelte: version('svelte'), vite: version('vite') },
};

if (process.argv.includes('--check')) {
  const committed = JSON.parse(readFileSync(MANIFEST, 'utf8'));
  const stale = ['bundle_sha256', 'sources_sha256'].filter((key) => committed[key] !== manifest[key]);
  if (stale.length) {
    console.error(`bundle.json is out of date (${stale.join(', ')} differ): run \`npm run build\` in web/`);
    process.exit(1);
  }
  console.log('bundle.json matches the sources and the bundle');
} else {
  const tmp = `${MANIFEST}.tmp`;
  writeFileSync(tmp, JSON.stringify(manifest, null, 2) + '\n');
  renameSync(tmp, MANIFEST);
  console.log(`wrote ${MANIFEST}: ${manifest.bundle_bytes} bytes, sources ${manifest.sources_sha256.slice(0, 12)}`);
}
