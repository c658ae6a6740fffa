"""Is the committed bundle built from the sources in this checkout?

`web/scripts/source-hash.mjs` fingerprints the bundle's sources at build time
and `npm run build` stores the result in `static/bundle.json`. This module
computes the same fingerprint in Python, so a test (or CI) can catch a bundle
that is older than its sources without installing npm:

    python -m analyses.render.bundle_hash          # exit 1 if stale

The fingerprint: for each source file in sorted path order (paths relative
to `web/`), `"<path>\\0<sha256 of the file, CRLF read as LF>\\n"`, all hashed
with sha256. Source files are `src/**`, `scripts/*.mjs`, `package.json`,
`package-lock.json` and `vite.config.js`. Keep in step with source-hash.mjs.
"""

import hashlib
import json
import sys
from pathlib import Path

from .html import BUNDLE_PATH, MANIFEST_PATH

#: `web/` in a source checkout (absent from an installed package).
WEB_DIR = Path(__file__).resolve().parents[2] / "web"

TOP_LEVEL_FILES = ("package.json", "package-lock.json", "vite.config.js")


def source_files(web_dir: Path = WEB_DIR) -> list[str]:
    """Paths (relative to `web_dir`, with /) of the files the bundle is built from, sorted."""
    files = [p for p in (web_dir / "src").rglob("*") if p.is_file()]
    files += [p for p in (web_dir / "scripts").glob("*.mjs") if p.is_file()]
    files += [web_dir / name for name in TOP_LEVEL_FILES]
    return sorted(p.relative_to(web_dir).as_posix() for p in files)


def source_hash(web_dir: Path = WEB_DIR) -> str:
    """sha256 hex fingerprint of the bundle's sources (the algorithm above)."""
    digest = hashlib.sha256()
    for rel in source_files(web_dir):
        data = (web_dir / rel).read_bytes().replace(b"\r\n", b"\n")
        digest.update(f"{rel}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return digest.hexdigest()


def problems(web_dir: Path = WEB_DIR) -> list[str]:
    """What is out of date between sources, manifest and bundle; empty when all agree."""
    manifest = json.loads(MANIFEST_PATH.read_text(encoding="utf-8"))
    found = []
    actual = source_hash(web_dir)
    if manifest["sources_sha256"] != actual:
        found.append(
            f"the bundle was built from other sources (bundle.json says {manifest['sources_sha256'][:12]}, "
            f"web/ hashes to {actual[:12]}): run `npm ci && npm run build` in web/ and commit analyses/render/static/"
        )
    if manifest["sources"] != source_files(web_dir):
        found.append("the list of source files differs from bundle.json's (a file was added or removed)")
    bundle = BUNDLE_PATH.read_bytes()
    if hashlib.sha256(bundle).hexdigest() != manifest["bundle_sha256"]:
        found.append(f"{BUNDLE_PATH.name} does not match bundle.json's bundle_sha256 (edited by hand?)")
    return found


def main() -> int:
    if not WEB_DIR.is_dir():
        print(f"no web/ sources next to this package ({WEB_DIR}); nothing to check", file=sys.stderr)
        return 0
    found = problems()
    for problem in found:
        print(f"stale bundle: {problem}", file=sys.stderr)
    if not found:
        print(f"bundle up to date (sources {source_hash()[:12]})")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
