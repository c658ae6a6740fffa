// How tokens and numbers are written on screen.

/**
 * Make a token's invisible characters visible: newlines become ↵, tabs ⇥,
 * and the empty string ∅. Spaces stay spaces; the views use
 * `white-space: pre` so a leading space (" cat") still shows as a gap.
 */
export function displayToken(token) {
  if (token === '') return '∅';
  return String(token).replaceAll('\n', '↵').replaceAll('\t', '⇥');
}

/** A token in quotes, for info lines: 'cat' or ' cat'. */
export function quoteToken(token) {
  return `'${displayToken(token)}'`;
}

/** Three decimals, or scientific notation for tiny non-zero values. */
export function formatValue(value) {
  if (!Number.isFinite(value)) return String(value);
  if (value !== 0 && Math.abs(value) < 1e-3) return value.toExponential(2);
  return value.toFixed(3);
}

/** A probability as a percentage with one decimal: 0.4123 → "41.2%". */
export function formatPercent(p) {
  return `${(100 * p).toFixed(1)}%`;
}

/** Indices of the k largest entries of `values`, largest first. */
export function topIndices(values, k) {
  return values
    .map((value, index) => [value, index])
    .sort((a, b) => b[0] - a[0] || a[1] - b[1])
    .slice(0, k)
    .map(([, index]) => index);
}

/** Four significant digits, for scores of any scale: 0.01234, -3.142, 0.0002, 1.235e-5. */
export function formatScore(value) {
  if (!Number.isFinite(value)) return String(value);
  if (value === 0) return '0';
  const magnitude = Math.abs(value);
  if (magnitude < 1e-4 || magnitude >= 1e5) return value.toExponential(3);
  return String(Number(value.toPrecision(4)));
}
