// Helpers of the /ui page that know nothing of rumor: values read from JSON
// that a peer wrote (never trusted to have the expected type), table cells and
// keyed rows built with the DOM API (text only, never markup), and number
// formats.

export const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
export const obj = (v) => (isObj(v) ? v : {});
export const str = (v) =>
  v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
export const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

// -- cells and rows -------------------------------------------------------------

export function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

// A cell is a string, or {text, cls, title, bar (0..1), chips: [{text, cls, title}]}.
// It is rebuilt only when its content changed, so a poll that changes nothing
// touches no DOM node.
export function fillCell(td, spec) {
  const sig = typeof spec === "string" ? spec : JSON.stringify(spec);
  if (td._sig === sig) return;
  td._sig = sig;
  td.replaceChildren();
  td.className = "";
  td.removeAttribute("title");
  if (typeof spec === "string") {
    td.textContent = spec;
    if (spec.length > 32) td.title = spec; // the cell may cut it short (style.css)
    return;
  }
  if (spec.cls) td.className = spec.cls;
  if (spec.title) td.title = spec.title;
  if (spec.bar !== undefined) {
    const bar = el("span", "bar");
    const fill = el("span", "fill");
    // CSSOM, not a style attribute: allowed by the CSP.
    fill.style.width = `${Math.round(100 * Math.min(1, Math.max(0, spec.bar)))}%`;
    bar.append(fill);
    td.append(bar);
  }
  if (spec.text !== undefined) td.append(document.createTextNode(spec.text));
  for (const c of spec.chips || []) {
    const chip = el("span", `chip ${c.cls || ""}`, c.text);
    if (c.title) chip.title = c.title;
    td.append(chip, " "); // the space: copied text and screen readers keep chips apart
  }
}

// Keyed rows: a row is reused for the same key, updated cell by cell, moved
// only when the order changed, and removed when its key is gone.
export function syncRows(tbody, items, key, cells, rowClass) {
  const rows = tbody._rows || (tbody._rows = new Map());
  const seen = new Set();
  let prev = null;
  for (const item of items) {
    const k = key(item);
    if (seen.has(k)) continue; // a duplicate name from a confused peer: show it once
    seen.add(k);
    const specs = cells(item);
    let tr = rows.get(k);
    if (!tr || tr.cells.length !== specs.length) {
      const fresh = el("tr");
      fresh.dataset.key = k;
      for (let i = 0; i < specs.length; i++) fresh.append(el("td"));
      if (tr) tr.remove();
      tr = fresh;
      rows.set(k, tr);
    }
    specs.forEach((s, i) => fillCell(tr.cells[i], s));
    const rc = rowClass(item);
    if (tr.className !== rc) tr.className = rc;
    const want = prev ? prev.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    prev = tr;
  }
  for (const [k, tr] of rows) {
    if (!seen.has(k)) {
      tr.remove();
      rows.delete(k);
    }
  }
}

// -- formatting -----------------------------------------------------------------

export function fmtBytes(n) {
  if (n === 0) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${n.toFixed(n >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtNumber(v) {
  if (Number.isInteger(v)) return String(v);
  return String(Number(v.toFixed(Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 1 ? 1 : 3)));
}

// By the field's name: seconds as ms, memory as bytes, anything else as is.
export function fmtField(key, v) {
  if (typeof v !== "number") return str(v);
  if (/latency|_s$|seconds/.test(key)) return `${fmtNumber(v * 1000)} ms`;
  if (/memory|bytes/.test(key)) return fmtBytes(v);
  return fmtNumber(v);
}

export function fmtAge(s) {
  const v = num(s);
  if (v === null) return "-";
  return v < 60 ? `${v.toFixed(1)} s` : `${Math.floor(v / 60)} min ${Math.round(v % 60)} s`;
}

export function fmtClock(unixS) {
  const d = new Date(unixS * 1000);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  return `${hms}.${pad(d.getMilliseconds(), 3)}`;
}

// {a: 1, memory: {used: 2}} -> {a: 1, "memory.used": 2}
export function flatten(value, prefix = "", out = {}) {
  for (const [k, v] of Object.entries(obj(value))) {
    const key = prefix + k;
    if (isObj(v) && prefix === "") flatten(v, `${key}.`, out);
    else out[key] = v;
  }
  return out;
}
