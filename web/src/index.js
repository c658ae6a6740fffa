// Entry point of the bundle: every view, and one way to put a view on a page.
//
//   hookgptViews.mount("AttentionHeads", element, { tokens, attention })
//
// The Python side (analyses/render) writes exactly that call into the HTML it
// produces, with the props as JSON. `version` is the fingerprint of the
// sources this bundle was built from; Python uses it to load the bundle only
// once per notebook page.
import { mount as mountComponent, unmount } from 'svelte';
import AttentionHeads from './AttentionHeads/AttentionHeads.svelte';
import AttentionPattern from './AttentionPattern/AttentionPattern.svelte';
import CircuitGraph from './CircuitGraph/CircuitGraph.svelte';
import ColoredTokens from './ColoredTokens/ColoredTokens.svelte';
import FeatureBrowser from './FeatureBrowser/FeatureBrowser.svelte';
import FeatureDashboard from './FeatureDashboard/FeatureDashboard.svelte';
import LogitLensGrid from './LogitLensGrid/LogitLensGrid.svelte';
import TopKTokens from './TopKTokens/TopKTokens.svelte';

export const components = { AttentionHeads, AttentionPattern, CircuitGraph, ColoredTokens, FeatureBrowser, FeatureDashboard, LogitLensGrid, TopKTokens };

// eslint-disable-next-line no-undef
export const version = __HOOKGPT_VIEWS_VERSION__;

/** Show an error inside the element, so a failed view is visible in a notebook, not only in the console. */
function showError(element, message) {
  const box = document.createElement('pre');
  box.textContent = `hookgpt view error: ${message}`;
  box.style.cssText = 'color:#b42318;background:#fef3f2;padding:8px;border-radius:4px;white-space:pre-wrap';
  element.replaceChildren(box);
}

/**
 * Mount the component called `name` into `element` with `props`.
 * Returns a handle for `unmount`; an unknown name or a failing component is
 * reported inside the element and rethrown.
 */
export function mount(name, element, props = {}) {
  const component = components[name];
  if (!component) {
    const message = `unknown component "${name}"; known: ${Object.keys(components).join(', ')}`;
    showError(element, message);
    throw new Error(message);
  }
  try {
    element.replaceChildren();
    const instance = mountComponent(component, { target: element, props });
    element.dataset.mounted = name;
    return instance;
  } catch (error) {
    showError(element, `${name}: ${error && error.message ? error.message : error}`);
    throw error;
  }
}

export { unmount };
