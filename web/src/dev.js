// Development gallery (`npm run dev`): mounts every component with its mock
// props, so a change can be seen without going through Python. Not part of
// the bundle.
import { mount } from './index.js';
import attentionHeads from './AttentionHeads/mock.json';
import attentionPattern from './AttentionPattern/mock.json';
import circuitGraph from './CircuitGraph/mock.json';
import coloredTokens from './ColoredTokens/mock.json';
import featureBrowser from './FeatureBrowser/mock.json';
import featureDashboard from './FeatureDashboard/mock.json';
import logitLensGrid from './LogitLensGrid/mock.json';
import topKTokens from './TopKTokens/mock.json';

const mocks = {
  AttentionHeads: attentionHeads,
  AttentionPattern: attentionPattern,
  CircuitGraph: circuitGraph,
  ColoredTokens: coloredTokens,
  FeatureBrowser: featureBrowser,
  FeatureDashboard: featureDashboard,
  LogitLensGrid: logitLensGrid,
  TopKTokens: topKTokens,
};

const gallery = document.getElementById('gallery');
for (const [name, props] of Object.entries(mocks)) {
  const element = document.createElement('div');
  gallery.append(element);
  mount(name, element, props);
}
