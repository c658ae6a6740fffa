// Colour scales shared by the views, written out so the bundle needs no d3.
//
// A scale maps a number to an [r, g, b] triple by linear interpolation
// between a few colour stops. `lookupTable` precomputes 256 entries so the
// canvas heatmaps can colour 65k cells without calling the scale each time.

/** Interpolate linearly between evenly spaced colour stops; t is clamped to [0, 1]. */
function interpolate(stops, t) {
  const x = Math.min(1, Math.max(0, Number.isFinite(t) ? t : 0)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const [a, b] = [stops[i], stops[i + 1]];
  return [0, 1, 2].map((c) => Math.round(a[c] + (b[c] - a[c]) * f));
}

// ColorBrewer "Blues": white for 0, dark blue for the maximum.
const BLUES = [
  [255, 255, 255],
  [198, 219, 239],
  [107, 174, 214],
  [33, 113, 181],
  [8, 48, 107],
];

// ColorBrewer "RdBu" reversed: blue for negative, near-white for 0, red for positive.
const BLUE_WHITE_RED = [
  [33, 102, 172],
  [146, 197, 222],
  [247, 247, 247],
  [244, 165, 130],
  [178, 24, 43],
];

/** Sequential scale for non-negative values (attention, probabilities): 0 → white, max → dark blue. */
export function sequential(value, max = 1) {
  return interpolate(BLUES, max > 0 ? value / max : 0);
}

/** Diverging scale: min → blue, 0 → white, max → red. The two halves are scaled separately. */
export function diverging(value, min, max) {
  if (value >= 0) return interpolate(BLUE_WHITE_RED, 0.5 + (max > 0 ? 0.5 * (value / max) : 0));
  return interpolate(BLUE_WHITE_RED, 0.5 - (min < 0 ? 0.5 * (value / min) : 0));
}

/** 256 × RGBA bytes of the sequential scale, for ImageData. */
export const SEQUENTIAL_LUT = (() => {
  const table = new Uint8ClampedArray(256 * 4);
  for (let i = 0; i < 256; i++) {
    table.set([...interpolate(BLUES, i / 255), 255], i * 4);
  }
  return table;
})();

/** CSS colour string for an [r, g, b] triple. */
export function css([r, g, b]) {
  return `rgb(${r}, ${g}, ${b})`;
}

/** Black or white, whichever reads better on the given background. */
export function textColorOn([r, g, b]) {
  const luminance = (0.299 * r + 0.587 * g + 0.114 * b) / 255;
  return luminance > 0.55 ? '#1a1a1a' : '#ffffff';
}
