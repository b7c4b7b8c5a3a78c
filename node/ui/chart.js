// A small line chart on a <canvas>: one line per node over a sliding time
// window. Hand-written so the page needs no library and nothing from a CDN.
// Canvas rather than SVG: 100 nodes x 300 samples redraws in a few ms and adds
// no DOM nodes. Names reach the canvas only through fillText (never markup).

// Tableau 10: distinguishable, and readable on white.
const PALETTE = [
  "#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
  "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac",
];
const BACKGROUND_LINE = "rgba(120, 120, 120, 0.25)";

/** A stable colour for a node name (FNV-1a hash into the palette). */
export function colorFor(name) {
  let h = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) {
    h ^= name.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return PALETTE[h % PALETTE.length];
}

/** A readable grid step: the smallest of 1, 2, 2.5, 5 x 10^k at or above `v`. */
function niceStep(v) {
  if (!(v > 0)) return 0.25;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

/**
 * Draw `series` ([{name, points: [[t, v], ...], highlight}]) on `canvas`:
 * x is the last `windowS` seconds up to `now` (seconds), y is 0..max.
 * Series with `highlight` false are drawn thin and grey, behind the rest.
 * Samples further apart than `gapS` are not joined (the page could not read).
 */
export function drawLines(canvas, series, { now, windowS, gapS, format }) {
  const dpr = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
    canvas.width = Math.round(width * dpr);
    canvas.height = Math.round(height * dpr);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const left = 56, right = 8, top = 8, bottom = 22;
  const w = width - left - right, h = height - top - bottom;
  if (w <= 0 || h <= 0) return;

  let max = 0;
  for (const s of series) for (const [t, v] of s.points) if (now - t <= windowS && v > max) max = v;
  const yStep = niceStep(max / 4);
  const yTop = 4 * yStep;
  const x = (t) => left + w * (1 - (now - t) / windowS);
  const y = (v) => top + h * (1 - v / yTop);

  // Grid and axes.
  ctx.font = "11px system-ui, sans-serif";
  ctx.fillStyle = "#666";
  ctx.strokeStyle = "#e3e3e3";
  ctx.lineWidth = 1;
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = yStep * i;
    ctx.beginPath();
    ctx.moveTo(left, Math.round(y(v)) + 0.5);
    ctx.lineTo(left + w, Math.round(y(v)) + 0.5);
    ctx.stroke();
    ctx.fillText(format(v), left - 6, y(v));
  }
  ctx.textBaseline = "top";
  const step = windowS > 120 ? 60 : windowS > 30 ? 15 : 5;
  for (let ago = 0; ago <= windowS; ago += step) {
    ctx.textAlign = ago === 0 ? "right" : "center";
    ctx.fillText(ago === 0 ? "now" : `-${ago >= 60 ? ago / 60 + " min" : ago + " s"}`,
      x(now - ago), top + h + 6);
  }

  // Background lines first, then the highlighted ones on top.
  const ordered = [...series].sort((a, b) => Number(a.highlight) - Number(b.highlight));
  for (const s of ordered) {
    ctx.strokeStyle = s.highlight ? colorFor(s.name) : BACKGROUND_LINE;
    ctx.lineWidth = s.highlight ? 2 : 1;
    ctx.beginPath();
    let last = -Infinity;
    for (const [t, v] of s.points) {
      if (now - t > windowS) continue;
      if (t - last <= gapS) ctx.lineTo(x(t), y(v));
      else ctx.moveTo(x(t), y(v));
      last = t;
    }
    ctx.stroke();
  }
}
