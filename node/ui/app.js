// The live cluster page. It only reads: GET /v1/cluster every POLL_MS (and at
// once after a membership or model event), and the GET /v1/events stream.
//
// Everything a peer wrote (member names, tags, model names, states, load keys)
// is data: it reaches the page through textContent, title, dataset and
// <option> text, never through innerHTML or markup, and the CSP sent with the
// page allows no inline script either way (node/api/ui.py).

import { colorFor, drawLines } from "./chart.js";
import {
  el, flatten, fmtAge, fmtBytes, fmtClock, fmtField, fmtNumber, isObj, num, obj, str, syncRows,
} from "./dom.js";

const POLL_MS = 1000; // the periodic /v1/cluster read
const FETCH_TIMEOUT_MS = 5000;
const HISTORY_S = 300; // the chart's window, kept in the page
const RATE_WINDOW_S = 5; // requests/s from a counter: over this many seconds
const MAX_EVENTS = 500;
// Record updates come from every member every few hundred ms under load: they
// get at most this many entries, so that a member-dead is not pushed out of
// the log by them within seconds. They are also hidden by default (index.html).
const MAX_UPDATES = 100;
const LEGEND_MAX = 10; // at most this many coloured lines; the rest are grey
const REPLICA_CHIPS_MAX = 12; // per model, trouble first; then "+ N more"
const RECONNECT_MIN_MS = 250;
const RECONNECT_MAX_MS = 5000;
const STATUSES = ["alive", "suspect", "dead", "left"];
const SEVERITY = { dead: 0, suspect: 1, unknown: 2, left: 3, alive: 4 };
const MODEL_STATES = ["ready", "loading", "unloading", "failed", "assigned"];
const EVENT_TYPES = [
  "member-join", "member-update", "member-suspect", "member-dead", "member-leave",
  "model-state", "catalog-update", "events-lost", "stream-dropped",
];
// Events after which the view is read at once rather than at the next poll.
const RESYNC_ON = new Set([
  "member-join", "member-suspect", "member-dead", "member-leave", "model-state", "catalog-update",
]);
// Load fields shown first, in this order; any other field follows, sorted, so
// a field a newer node adds (kv_used, ...) appears without a change here.
const LOAD_FIRST = ["queue", "in_flight", "ewma_latency", "throughput"];
const RATE = "req/s";
const IN_SYSTEM = "queue + in_flight";

const $ = (id) => document.getElementById(id);
const statusOf = (m) => (STATUSES.includes(m.status) ? m.status : "unknown");

const page = {
  renders: 0,
  history: new Map(), // node -> [[t, {field: number}], ...], oldest first
  loadKeys: "",
  chartKeys: "",
  eventTypes: new Set(),
  pending: [],
  flushTimer: null,
  source: null,
  reconnects: 0,
  backoff: RECONNECT_MIN_MS,
};

// -- the members, models and load tables -----------------------------------------

function memberCells(m, self) {
  const status = statusOf(m);
  const ev = obj(m.evidence);
  const device = obj(m.device);
  const memTotal = num(device.memory_total);
  return [
    { text: str(m.name), chips: m.name === self ? [{ text: "this page", cls: "self" }] : [] },
    {
      chips: [{ text: str(m.status), cls: `status ${status}` }],
      title: `last heard ${fmtAge(ev.last_heard_s)} ago; `
        + `${str(m.status)} for ${fmtAge(ev.status_since_s)}`,
    },
    str(m.generation),
    str(m.incarnation),
    fmtAge(m.age_s),
    str(m.http),
    str(m.gossip),
    str(device.name) + (memTotal ? ` (${fmtBytes(memTotal)})` : ""),
    {
      cls: "chips",
      chips: Object.entries(obj(m.models)).map(([name, info]) => ({
        text: name,
        cls: `state-${MODEL_STATES.includes(obj(info).state) ? obj(info).state : "other"}`,
        title: str(obj(info).state),
      })),
    },
    {
      cls: "chips",
      chips: Object.entries(obj(m.tags)).map(([k, v]) => ({ text: `${k}=${str(v)}`, cls: "tag" })),
    },
  ];
}

// Every model in the placement (target against actual) or in a member's
// record (loaded by flag: no target), with each replica's state.
function modelRows(view, members) {
  const byName = new Map(members.map((m) => [str(m.name), m]));
  const models = new Map();
  const entry = (name) => {
    if (!models.has(name)) models.set(name, { name, target: null, replicas: new Map() });
    return models.get(name);
  };
  for (const [name, p] of Object.entries(obj(view.placement))) {
    const e = entry(name);
    e.target = num(obj(p).target);
    for (const node of Array.isArray(obj(p).assigned) ? p.assigned : []) {
      e.replicas.set(str(node), "assigned");
    }
  }
  for (const m of members) {
    for (const [name, info] of Object.entries(obj(m.models))) {
      entry(name).replicas.set(str(m.name), str(obj(info).state) || "unknown");
    }
  }
  const rows = [...models.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
  for (const r of rows) {
    const replicas = [...r.replicas].sort().map(([node, state]) => {
      const status = byName.has(node) ? statusOf(byName.get(node)) : "unknown";
      return { node, state, status, serving: state === "ready" && status === "alive" };
    });
    r.ready = replicas.filter((x) => x.serving).length;
    // Trouble first; past REPLICA_CHIPS_MAX only a count of the serving rest.
    replicas.sort((a, b) => Number(a.serving) - Number(b.serving));
    r.chips = replicas.slice(0, REPLICA_CHIPS_MAX).map((x) => ({
      text: `${x.node}: ${x.state}${x.status === "alive" ? "" : ` (${x.status})`}`,
      cls: `state-${MODEL_STATES.includes(x.state) ? x.state : "other"} on-${x.status}`,
    }));
    const more = replicas.length - REPLICA_CHIPS_MAX;
    if (more > 0) r.chips.push({ text: `+ ${more} more`, cls: "more" });
  }
  return rows;
}

function modelCells(r) {
  const under = r.target !== null && r.ready < r.target;
  return [
    r.name,
    r.target === null ? { text: "-", title: "loaded by flag, not placed" } : String(r.target),
    {
      text: r.target === null ? String(r.ready) : `${r.ready} / ${r.target}`,
      cls: under ? "under" : "ok",
    },
    { cls: "chips", chips: r.chips },
  ];
}

// Columns: node, requests/s, then every load field (LOAD_FIRST, then the rest
// sorted), with a "use" bar before any X_used that has an X_total.
function loadColumns(loads) {
  const keys = new Set();
  for (const flat of loads.values()) for (const k of Object.keys(flat)) keys.add(k);
  const rest = [...keys].filter((k) => !LOAD_FIRST.includes(k)).sort();
  const cols = [];
  const uses = new Set();
  for (const k of [...LOAD_FIRST.filter((k) => keys.has(k)), ...rest]) {
    const m = /^(.*)(used|total)$/.exec(k);
    if (m && keys.has(`${m[1]}used`) && keys.has(`${m[1]}total`) && !uses.has(m[1])) {
      uses.add(m[1]);
      cols.push({ use: m[1], title: `${m[1].replace(/[_.]$/, "")} use` });
    }
    cols.push({ key: k, title: k });
  }
  return cols;
}

function loadCells(m, flat, rate, cols) {
  const cells = [str(m.name), rate === null ? "-" : fmtNumber(rate)];
  for (const c of cols) {
    if (c.use !== undefined) {
      const used = num(flat[`${c.use}used`]);
      const total = num(flat[`${c.use}total`]);
      const share = used !== null && total ? used / total : null;
      cells.push(share === null ? "-" : { bar: share, text: ` ${Math.round(100 * share)}%` });
    } else {
      cells.push(c.key in flat ? fmtField(c.key, flat[c.key]) : "-");
    }
  }
  return cells;
}

// Requests/s: from a `completed` counter over RATE_WINDOW_S when the node
// reports one (exact), else the node's own `throughput` (rows/s, an EWMA).
function requestRate(samples, flat, now) {
  const completed = num(flat.completed);
  if (completed !== null && samples) {
    const then = samples.find(([t, f]) => now - t <= RATE_WINDOW_S && num(f.completed) !== null);
    if (then && now - then[0] > 0.2 && completed >= then[1].completed) {
      return (completed - then[1].completed) / (now - then[0]);
    }
  }
  return num(flat.throughput);
}

// -- one render of a /v1/cluster read ---------------------------------------------

function render(view) {
  performance.mark("rumor-render-start");
  const now = Date.now() / 1000;
  const self = str(view.self);
  // Trouble first (dead, suspect, left), then by name: a dead member among 100
  // is at the top of its table, not below the fold.
  const members = (Array.isArray(view.members) ? view.members.filter(isObj) : []).sort(
    (a, b) => SEVERITY[statusOf(a)] - SEVERITY[statusOf(b)] || (str(a.name) < str(b.name) ? -1 : 1),
  );

  $("self-name").textContent = self;
  $("self-addr").textContent = `${location.host} · generation ${str(view.generation)}`;
  document.title = `rumor · ${self}`;
  renderSummary(members);
  syncRows($("members").tBodies[0], members, (m) => str(m.name), (m) => memberCells(m, self),
    (m) => `row-${statusOf(m)}`);
  syncRows($("models").tBodies[0], modelRows(view, members), (r) => r.name, modelCells,
    (r) => (r.target !== null && r.ready < r.target ? "row-under" : ""));

  // Load: a sample per member that is not dead or gone (their last load is stale).
  const loads = new Map();
  const rates = new Map();
  for (const m of members) {
    const name = str(m.name);
    const flat = flatten(m.load);
    loads.set(name, flat);
    const samples = page.history.get(name);
    rates.set(name, requestRate(samples, flat, now));
    if (statusOf(m) !== "alive" && statusOf(m) !== "suspect") continue;
    const sample = {};
    for (const [k, v] of Object.entries(flat)) if (num(v) !== null) sample[k] = v;
    sample[RATE] = rates.get(name) ?? 0;
    sample[IN_SYSTEM] = (num(flat.queue) ?? 0) + (num(flat.in_flight) ?? 0);
    if (!samples) page.history.set(name, [[now, sample]]);
    else samples.push([now, sample]);
  }
  for (const [name, samples] of page.history) {
    while (samples.length && now - samples[0][0] > HISTORY_S) samples.shift();
    if (!samples.length) page.history.delete(name);
  }
  const cols = loadColumns(loads);
  const colSig = JSON.stringify(cols);
  if (colSig !== page.loadKeys) {
    page.loadKeys = colSig;
    const head = $("load").tHead.rows[0];
    head.replaceChildren(el("th", "", "node"), el("th", "", RATE));
    head.cells[1].title =
      "from the `completed` counter over 5 s when reported, else `throughput` (rows/s)";
    for (const c of cols) head.append(el("th", c.use !== undefined ? "use" : "", c.title));
  }
  syncRows($("load").tBodies[0], members, (m) => str(m.name),
    (m) => loadCells(m, loads.get(str(m.name)), rates.get(str(m.name)), cols),
    (m) => `row-${statusOf(m)}`);

  renderChart(now);
  $("updated").textContent = `view read ${fmtClock(now)}`;
  performance.measure("rumor-render", "rumor-render-start");
  performance.clearMarks("rumor-render-start"); // else one entry per read, for as long as open
  if (++page.renders === 1) performance.mark("rumor-first-render");
  if (page.renders % 100 === 0) performance.clearMeasures("rumor-render");
}

function renderSummary(members) {
  const counts = Object.fromEntries(STATUSES.map((s) => [s, 0]));
  for (const m of members) counts[statusOf(m)] = (counts[statusOf(m)] || 0) + 1;
  const summary = $("summary");
  summary.replaceChildren(el("span", "", `${members.length} members: `));
  for (const s of STATUSES) {
    if (s === "left" && !counts.left) continue;
    summary.append(el("span", `chip status ${counts[s] ? s : "zero"}`, `${counts[s]} ${s}`), " ");
  }
}

function renderChart(now) {
  const select = $("chart-metric");
  const keys = new Set([RATE, IN_SYSTEM]);
  for (const samples of page.history.values()) {
    for (const k of Object.keys(samples.at(-1)[1])) keys.add(k);
  }
  const sig = [...keys].join("\n");
  if (sig !== page.chartKeys) {
    page.chartKeys = sig;
    const chosen = select.value || RATE;
    select.replaceChildren(...[...keys].map((k) => {
      const o = el("option", "", k);
      o.value = k;
      return o;
    }));
    select.value = keys.has(chosen) ? chosen : RATE;
  }
  const metric = select.value;
  const series = [...page.history].map(([name, samples]) => ({
    name,
    points: samples.filter(([, s]) => metric in s).map(([t, s]) => [t, s[metric]]),
  }));
  const latest = (s) => (s.points.length ? s.points.at(-1)[1] : -1);
  const top = [...series]
    .sort((a, b) => latest(b) - latest(a) || (a.name < b.name ? -1 : 1))
    .slice(0, LEGEND_MAX);
  const shown = new Set(top.map((s) => s.name));
  for (const s of series) s.highlight = shown.has(s.name);
  // The window grows with the history kept, a minute at a time, up to HISTORY_S.
  let oldest = now;
  for (const samples of page.history.values()) oldest = Math.min(oldest, samples[0][0]);
  const windowS = Math.min(HISTORY_S, 60 * Math.max(1, Math.ceil((now - oldest) / 60)));
  drawLines($("chart"), series, {
    now, windowS, gapS: (3 * POLL_MS) / 1000, format: (v) => fmtField(metric, v),
  });
  const legend = $("legend");
  legend.replaceChildren(...top.sort((a, b) => (a.name < b.name ? -1 : 1)).map((s) => {
    const li = el("li", "", s.name);
    const swatch = el("span", "swatch");
    swatch.style.background = colorFor(s.name); // CSSOM: allowed by the CSP
    li.prepend(swatch);
    return li;
  }));
  if (series.length > LEGEND_MAX) {
    legend.append(el("li", "dim", `+ ${series.length - LEGEND_MAX} more (grey)`));
  }
}

// -- reading the view ------------------------------------------------------------

let reading = false;
let readAgain = false;
let soonTimer = null;

async function refresh() {
  if (reading) {
    readAgain = true;
    return;
  }
  reading = true;
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), FETCH_TIMEOUT_MS);
  let view = null;
  try {
    const r = await fetch("/v1/cluster", { signal: abort.signal, cache: "no-store" });
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    view = await r.json();
  } catch (e) {
    setBanner(`cannot read /v1/cluster from ${location.host} (${e.message}); `
      + "showing the last view read");
  }
  try {
    if (isObj(view)) {
      render(view);
      setBanner("");
    }
  } catch (e) {
    console.error(e); // a bug of ours, or a view we did not expect: say so, keep polling
    setBanner(`could not draw the view (${e.message})`);
  } finally {
    clearTimeout(timer);
    reading = false;
    if (readAgain) {
      readAgain = false;
      refresh();
    }
  }
}

function refreshSoon() {
  if (soonTimer === null) {
    soonTimer = setTimeout(() => {
      soonTimer = null;
      refresh();
    }, 50);
  }
}

function setBanner(text) {
  const b = $("banner");
  b.textContent = text;
  b.hidden = !text;
}

// -- the event stream ------------------------------------------------------------

function setConn(state, text) {
  const c = $("conn");
  c.dataset.state = state;
  c.textContent = text;
}

function connect() {
  const es = new EventSource("/v1/events");
  page.source = es;
  es.onopen = () => {
    page.backoff = RECONNECT_MIN_MS;
    const again = page.reconnects ? ` (reconnected ${page.reconnects}×)` : "";
    setConn("live", `events live${again}`);
    // Whatever happened while we were not listening is in the view (the first
    // open needs no read: the page reads the view as it starts).
    if (page.reconnects) refresh();
  };
  es.onmessage = (e) => {
    let item;
    try {
      item = JSON.parse(e.data);
    } catch {
      return; // not ours to judge: skip a line we cannot read
    }
    if (!isObj(item)) return;
    if (item.type === "events-lost") lost(item);
    else onEvent(item);
  };
  es.addEventListener("events-lost", (e) => lost({ type: "events-lost", detail: e.data }));
  es.onerror = () => {
    if (page.source !== es) return; // an old stream, already replaced
    onEvent({ type: "stream-dropped", time: Date.now() / 1000, local: true });
    reconnect();
  };
}

// Close the stream (no automatic retry: ours re-reads the view on open) and
// open a new one after a backoff.
function reconnect() {
  if (page.source) page.source.close();
  page.source = null;
  page.reconnects++;
  setConn("reconnecting", `events: reconnecting in ${(page.backoff / 1000).toFixed(1)} s`);
  setTimeout(connect, page.backoff);
  page.backoff = Math.min(RECONNECT_MAX_MS, page.backoff * 2);
}

// The node dropped events for this page (its queue overflowed): the log has a
// hole, so re-read the view and start a fresh stream.
function lost(item) {
  onEvent({ ...item, type: "events-lost", time: num(item.time) ?? Date.now() / 1000 });
  refresh();
  reconnect();
}

function onEvent(item) {
  page.pending.push(item);
  if (RESYNC_ON.has(item.type)) refreshSoon();
  // Batched: a burst of events (100 members updating) costs one DOM insert.
  if (page.flushTimer === null) page.flushTimer = setTimeout(flushEvents, 100);
}

function flushEvents() {
  page.flushTimer = null;
  const list = $("events");
  const filter = $("event-filter").value;
  const fragment = document.createDocumentFragment();
  for (const item of page.pending.splice(0).reverse()) {
    const type = str(item.type) || "unknown";
    const li = el("li", item.local ? "local" : "");
    li.dataset.type = type;
    li.append(
      el("time", "", num(item.time) !== null ? fmtClock(item.time) : ""),
      el("span", `chip event ${EVENT_TYPES.includes(type) ? type : "other"}`, type),
      el("span", "member", str(item.member)),
    );
    if (Array.isArray(item.keys) && item.keys.length) {
      li.append(el("span", "dim", item.keys.map(str).join(", ")));
    }
    li.hidden = !shown(filter, type);
    fragment.append(li);
    if (!page.eventTypes.has(type)) {
      page.eventTypes.add(type);
      const o = el("option", "", type);
      o.value = type;
      $("event-filter").append(o);
    }
  }
  list.prepend(fragment);
  const updates = list.querySelectorAll('li[data-type="member-update"]');
  for (let i = MAX_UPDATES; i < updates.length; i++) updates[i].remove();
  while (list.children.length > MAX_EVENTS) list.lastElementChild.remove();
}

// The filter is "" (all), a type (only it), or "-type" (all but it).
function shown(filter, type) {
  if (!filter) return true;
  return filter.startsWith("-") ? type !== filter.slice(1) : type === filter;
}

$("event-filter").addEventListener("change", () => {
  const filter = $("event-filter").value;
  for (const li of $("events").children) li.hidden = !shown(filter, li.dataset.type);
});
$("chart-metric").addEventListener("change", () => renderChart(Date.now() / 1000));

setConn("connecting", "events: connecting");
refresh();
connect();
setInterval(refresh, POLL_MS);
