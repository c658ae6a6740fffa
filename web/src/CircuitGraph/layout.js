// Where each node of a circuit goes, and the curve of each edge.
//
// Rows are layers: the embeddings (layer -1) at the bottom, the logits (layer
// n_layers) at the top. In a layer row the heads sit side by side, head h in
// column h of every row, so a head lines up with the same head above and
// below; the MLP sits to the right of the heads, raised half a row, because
// it reads the layer's attention output: an edge head -> MLP of the same layer
// then still runs upwards. Edges leave a node at its top and enter at its
// bottom, into the q, k or v port of a head when the edge names a receiver.

export const NODE_H = 30;
const GAP = 8; // between heads in a row (more when there are few)
const MLP_GAP = 20; // between the last head and the MLP
const LABEL_W = 58; // row labels on the left
const PAD = 14;
const CHAR_W = 6.7; // 11px monospace
const PORT_FRACTION = { q: 0.22, k: 0.5, v: 0.78 };

const clamp = (x, lo, hi) => Math.min(hi, Math.max(lo, x));

/**
 * Text that fits in `width` px of 11px monospace. A long label loses its middle
 * ("blocks.3.attn.head7" -> "bloc…n.head7"): labels of one row tend to share a
 * prefix and differ at the end. The whole label shows on hover.
 */
export function fitLabel(label, width) {
  const chars = Math.max(3, Math.floor((width - 8) / CHAR_W));
  if (label.length <= chars) return label;
  const start = Math.floor((chars - 1) / 3);
  return `${label.slice(0, start)}…${label.slice(label.length - (chars - 1 - start))}`;
}

function rowName(layer, minLayer, maxLayer, hasLogits, hasEmbed) {
  if (layer === maxLayer && hasLogits) return 'logits';
  if (layer === minLayer && hasEmbed) return 'embed';
  return `L${layer}`;
}

/**
 * Positions of every node: `{ byId: Map(id -> {x, y, w, h, node}), rows, width, height }`.
 * x, y are the node's centre. Throws on a node without a numeric layer.
 */
export function layoutGraph(nodes) {
  if (!nodes.length) throw new Error('nodes is empty: a circuit needs at least one node');
  for (const node of nodes) {
    if (!Number.isInteger(node.layer)) throw new Error(`node ${JSON.stringify(node.id)} has no integer layer`);
  }
  const layers = nodes.map((node) => node.layer);
  const minLayer = Math.min(...layers);
  const maxLayer = Math.max(...layers);
  const rowCount = maxLayer - minLayer + 1;
  const rowH = rowCount > 8 ? 84 : 96;
  const hasLogits = nodes.some((node) => node.kind === 'logits');
  const hasEmbed = nodes.some((node) => node.kind === 'embed');

  // Columns: a head's own index where given, then the rest in order of appearance.
  const heads = nodes.filter((node) => node.kind === 'head');
  const indexed = heads.filter((node) => Number.isInteger(node.head));
  const firstFree = indexed.length ? Math.max(...indexed.map((node) => node.head)) + 1 : 0;
  const column = new Map();
  const extraPerLayer = new Map();
  for (const node of heads) {
    if (Number.isInteger(node.head)) column.set(node.id, node.head);
    else {
      const extra = extraPerLayer.get(node.layer) ?? 0;
      column.set(node.id, firstFree + extra);
      extraPerLayer.set(node.layer, extra + 1);
    }
  }
  const columns = heads.length ? Math.max(...column.values()) + 1 : 0;
  const gap = columns <= 6 ? 2 * GAP : GAP;
  const longest = (list) => Math.max(0, ...list.map((node) => String(node.label ?? node.id).length));
  const headW = clamp(longest(heads) * CHAR_W + 12, columns <= 6 ? 56 : 44, 96);
  const mlps = nodes.filter((node) => node.kind === 'mlp');
  const mlpW = clamp(longest(mlps) * CHAR_W + 14, 48, 110);
  const endW = (list) => clamp(longest(list) * CHAR_W + 20, 80, 160);

  const headsLeft = LABEL_W + PAD;
  const headsRight = headsLeft + columns * (headW + gap) - (columns ? gap : 0);
  const mlpLeft = columns ? headsRight + MLP_GAP : headsLeft;
  const mlpCount = Math.max(0, ...[...groupBy(mlps, (node) => node.layer).values()].map((list) => list.length));
  const mlpRight = mlpLeft + mlpCount * (mlpW + GAP) - (mlpCount ? GAP : 0);
  const bodyRight = Math.max(headsRight, mlpRight, headsLeft + 80);
  const centre = columns ? (headsLeft + headsRight) / 2 : (headsLeft + bodyRight) / 2;

  const mlpOnTop = nodes.some((node) => node.kind === 'mlp' && node.layer === maxLayer);
  const top = PAD + NODE_H / 2 + 4 + (mlpOnTop ? rowH / 2 : 0);
  const rowY = (layer) => top + (maxLayer - layer) * rowH;
  const byId = new Map();
  let right = bodyRight;

  for (const [layer, list] of groupBy(nodes, (node) => node.layer)) {
    const y = rowY(layer);
    const others = list.filter((node) => node.kind === 'embed' || node.kind === 'logits');
    for (const node of list.filter((n) => n.kind === 'head')) {
      const x = headsLeft + column.get(node.id) * (headW + gap) + headW / 2;
      byId.set(node.id, { x, y, w: headW, h: NODE_H, node });
    }
    list
      .filter((node) => node.kind === 'mlp')
      .forEach((node, i) => {
        byId.set(node.id, { x: mlpLeft + i * (mlpW + GAP) + mlpW / 2, y: y - rowH / 2, w: mlpW, h: NODE_H, node });
      });
    // Embeddings and logits: centred under / over the heads.
    const w = endW(others);
    const span = others.length * (w + 2 * GAP) - 2 * GAP;
    others.forEach((node, i) => {
      const x = centre - span / 2 + i * (w + 2 * GAP) + w / 2;
      byId.set(node.id, { x, y, w, h: NODE_H, node });
      right = Math.max(right, x + w / 2);
    });
  }
  const rows = [];
  for (let layer = minLayer; layer <= maxLayer; layer++) {
    rows.push({ layer, y: rowY(layer), name: rowName(layer, minLayer, maxLayer, hasLogits, hasEmbed) });
  }
  return { byId, rows, rowH, width: right + PAD, height: rowY(minLayer) + NODE_H / 2 + PAD + 4 };
}

function groupBy(list, key) {
  const groups = new Map();
  for (const item of list) {
    const k = key(item);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(item);
  }
  return groups;
}

/** Where an edge enters its target: a head's q/k/v port, or the middle of the bottom side. */
export function inputPoint(box, receiver) {
  const fraction = receiver ? PORT_FRACTION[receiver] : 0.5;
  return { x: box.x - box.w / 2 + fraction * box.w, y: box.y + box.h / 2 };
}

/** Where an edge leaves its source: the middle of the top side. */
export function outputPoint(box) {
  return { x: box.x, y: box.y - box.h / 2 };
}

/** A cubic curve from `from` (below) up to `to`, vertical at both ends. */
export function edgePath(from, to) {
  const bend = Math.max(22, (from.y - to.y) / 2);
  const r = (v) => Math.round(v * 10) / 10;
  return `M${r(from.x)},${r(from.y)} C${r(from.x)},${r(from.y - bend)} ${r(to.x)},${r(to.y + bend)} ${r(to.x)},${r(to.y)}`;
}

export const PORTS = Object.keys(PORT_FRACTION);
export { PORT_FRACTION };
