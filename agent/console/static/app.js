// edge-agent console: polls /api/state and draws four views (overview, devices, one device,
// events). No framework, no build step, nothing fetched from elsewhere. Every value from the
// agent (device names come from MQTT topics) is put in the page as text, never as markup.
"use strict";

const ROWS = 200; // table rows drawn at once; filter or sort to see others
const NEAR = 0.8; // score / threshold from which a device counts as near its threshold
const ui = { sort: "state", asc: true, filter: "", show: "all" };
let tick = 2000;
let timer = null;
let busy = false;
let again = false;

// -- helpers ---------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v);
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}
const num = (x, d = 2) => (x === null || x === undefined || Number.isNaN(x) ? "–" : Number(x).toFixed(d));
const int = (x) => (x === null || x === undefined ? "–" : Number(x).toLocaleString("en-US"));
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString([], { hour12: false }) : "–");
function ago(s) {
  if (s === null || s === undefined) return "–";
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}
function duration(s) {
  if (s === null || s === undefined) return "–";
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}
function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1 << 20) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / (1 << 20)).toFixed(1)} MiB`;
}
const channel = (c) => (typeof c === "number" ? `ch ${c}` : c);
const cause = (c) => (Array.isArray(c) ? c.map((x) => `${channel(x.channel)} ${Math.round(x.share * 100)}%`).join(", ") : "");
function detail(e) {
  if (e.event === "flood") return `${e.opened} openings in ${e.period} s (limit ${e.limit}): more suppressed`;
  return cause(e.cause) || (e.reason ? `reason: ${e.reason}` : "");
}
const deviceHref = (p, d) => `#/device/${encodeURIComponent(p)}/${encodeURIComponent(d)}`;

function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "devices") return { view: "devices", pipeline: parts[1] || null };
  if (parts[0] === "device") return { view: "device", pipeline: parts[1], device: parts.slice(2).join("/") };
  if (parts[0] === "events") return { view: "events" };
  return { view: "overview" };
}

function query(r) {
  if (r.view === "devices") return "events=0";
  if (r.view === "device") {
    const q = new URLSearchParams({ devices: "0", events: "0", pipeline: r.pipeline, device: r.device });
    return q.toString();
  }
  if (r.view === "events") return "devices=0&events=500";
  return "devices=0&events=8";
}

// -- polling ---------------------------------------------------------------------------
async function refresh() {
  if (busy) {
    again = true; // the view changed while a request was out: ask again once it is back
    return;
  }
  busy = true;
  const hash = location.hash;
  const r = route();
  const link = document.getElementById("link");
  try {
    const res = await fetch(`/api/state?${query(r)}`, { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const state = await res.json();
    if (location.hash !== hash) {
      again = true; // this answer is for the view the user just left
      return;
    }
    tick = (state.tick || 2) * 1000;
    document.getElementById("tick").textContent = state.tick || 2;
    document.getElementById("agent-id").textContent = `edge-agent · ${state.agent.id}`;
    link.textContent = `live · ${clock(state.time)}`;
    link.className = "link up";
    render(r, state);
  } catch (e) {
    link.textContent = `agent unreachable (${e.message})`;
    link.className = "link down";
  } finally {
    busy = false;
    if (again) {
      again = false;
      refresh();
    }
  }
}

function schedule() {
  clearTimeout(timer);
  refresh().finally(() => {
    timer = setTimeout(schedule, tick);
  });
}

function render(r, state) {
  for (const a of document.querySelectorAll("nav a")) {
    a.classList.toggle("active", a.dataset.view === (r.view === "device" ? "devices" : r.view));
  }
  const view = document.getElementById("view");
  const keep = document.activeElement && document.activeElement.id;
  const selection = keep === "filter" ? document.activeElement.selectionStart : null;
  const body =
    r.view === "devices" ? devicesView(r, state)
    : r.view === "device" ? deviceView(r, state)
    : r.view === "events" ? eventsView(state)
    : overviewView(state);
  view.replaceChildren(body);
  view.dataset.view = r.view;
  if (keep === "filter") {
    const f = document.getElementById("filter");
    f.focus();
    if (selection !== null) f.setSelectionRange(selection, selection);
  }
  if (r.view === "device") drawChart(state.device);
}

// -- overview --------------------------------------------------------------------------
function kv(pairs) {
  return h("dl", { class: "kv" }, pairs.map(([k, v]) => [h("dt", null, k), h("dd", null, v)]));
}

function overviewView(state) {
  const cards = [];
  const brokers = state.brokers.map((b) =>
    h("div", null, h("span", { class: `pill ${b.connected ? "ok" : "bad"}` }, b.connected ? "up" : "down"), ` ${b.broker} `, h("span", { class: "count" }, b.role)),
  );
  cards.push(h("section", { class: "card", id: "brokers" }, h("h3", null, "Brokers"), brokers.length ? brokers : h("div", { class: "empty" }, "none")));
  const sp = state.spool;
  if (sp) {
    const growing = sp.depth > 0 && sp.oldest_age > 10;
    cards.push(
      h("section", { class: "card", id: "spool" },
        h("h3", null, "Spool ", growing ? h("span", { class: "pill warn" }, "backlog") : h("span", { class: "pill ok" }, "drained")),
        kv([
          ["waiting", int(sp.depth)],
          ["oldest", sp.oldest_age === null ? "–" : duration(sp.oldest_age)],
          ["size", bytes(sp.bytes)],
          ["dropped (cap / TTL)", `${int(sp.dropped)} / ${int(sp.expired)}`],
          ...state.sinks.map((s) => [`delivered by ${s.name}`, int(s.delivered)]),
        ]),
      ),
    );
  }
  for (const p of state.pipelines) {
    cards.push(
      h("section", { class: "card pipeline", "data-pipeline": p.name },
        h("h3", null, h("a", { href: `#/devices/${encodeURIComponent(p.name)}` }, `Pipeline ${p.name}`), " ",
          p.failed ? h("span", { class: "pill bad" }, "failed") : null,
          p.episodes_open ? h("span", { class: "pill bad" }, `${p.episodes_open} open`) : null),
        h("div", { class: "big" }, `${int(p.devices)} devices`),
        kv([
          ["in", `${num(p.rate_in, 0)} msg/s`],
          ["out", `${num(p.rate_out, 1)} records/s`],
          ["messages per record out", p.reduction === null ? "–" : `${num(p.reduction, 1)}`],
          ["received / dropped", `${int(p.received)} / ${int(p.dropped)}`],
          ["queued", int(p.queued)],
          ["windows scored", int(p.windows)],
          ["anomalous windows", int(p.anomalies)],
          ["open episodes", p.episodes_open === null ? "–" : int(p.episodes_open)],
          ["rejected", int(Object.values(p.errors).reduce((a, b) => a + b, 0))],
        ]),
      ),
    );
  }
  return h("div", null,
    h("h2", null, "Overview"), h("div", { class: "cards" }, cards),
    h("h2", null, "Latest events"), eventsTable(state.events, "recent-events"));
}

// -- devices ---------------------------------------------------------------------------
function rowsOf(p) {
  const t = p.table || { device: [] };
  const rows = [];
  for (let i = 0; i < t.device.length; i++) {
    const score = t.score[i], thr = t.threshold[i];
    const warm = t.warmup ? t.warmup[i] : 1;
    const open = t.severity ? t.severity[i] !== null : false;
    const ratio = score !== null && thr ? score / thr : null;
    const state = open ? "open" : warm < 1 ? "warming" : score === null ? "waiting" : ratio !== null && ratio >= NEAR ? "near" : "normal";
    rows.push({
      device: t.device[i], seen: t.seen[i], warmup: warm, score, threshold: thr, ratio, state, open,
      episode: t.episode ? t.episode[i] : null, severity: t.severity ? t.severity[i] : null, since: t.since ? t.since[i] : null,
    });
  }
  return rows;
}

const STATE_RANK = { open: 0, near: 1, normal: 2, warming: 3, waiting: 4 };
const COLUMNS = [
  ["device", "device"], ["state", "state"], ["seen", "last seen"], ["warmup", "warm-up"],
  ["score", "score"], ["threshold", "threshold"], ["ratio", "score / threshold"], ["since", "episode since"],
];

function compareBy(k, asc, a, b) {
  let x = k === "state" ? STATE_RANK[a.state] : a[k];
  let y = k === "state" ? STATE_RANK[b.state] : b[k];
  if (x === null || x === undefined) x = asc ? Infinity : -Infinity;
  if (y === null || y === undefined) y = asc ? Infinity : -Infinity;
  const c = typeof x === "string" ? x.localeCompare(y) : x - y;
  return asc ? c : -c;
}
// The chosen column, then the closest to its threshold first, then by name.
const compare = (a, b) =>
  compareBy(ui.sort, ui.asc, a, b) || compareBy("ratio", false, a, b) || a.device.localeCompare(b.device);

function pill(row) {
  if (row.open) return h("span", { class: `pill ${row.severity === "critical" ? "bad" : "warn"}` }, `open · ${row.severity}`);
  if (row.state === "warming") return h("span", { class: "pill blue" }, `warming ${Math.round(row.warmup * 100)}%`);
  if (row.state === "near") return h("span", { class: "pill warn" }, "near");
  if (row.state === "waiting") return h("span", { class: "pill" }, "no score yet");
  return h("span", { class: "pill ok" }, "normal");
}

function bar(ratio) {
  const b = h("span", { class: "bar", title: ratio === null ? "" : `${Math.round(ratio * 100)}% of threshold` });
  if (ratio !== null) {
    const fill = h("i", { class: ratio > 1 ? "over" : ratio >= NEAR ? "near" : "" });
    fill.style.width = `${Math.min(ratio / 1.25, 1) * 100}%`; // the threshold sits at 80 %
    b.append(fill);
  }
  b.append(h("b"));
  return b;
}

function devicesView(r, state) {
  const names = state.pipelines.map((p) => p.name);
  const name = r.pipeline && names.includes(r.pipeline) ? r.pipeline : names[0];
  const p = state.pipelines.find((x) => x.name === name);
  if (!p) return h("div", { class: "empty" }, "no pipelines");
  const all = rowsOf(p);
  const f = ui.filter.toLowerCase();
  const shown = all
    .filter((x) => (!f || x.device.toLowerCase().includes(f)) && (ui.show === "all" || x.state === ui.show || (ui.show === "stale" && x.seen > 30)))
    .sort(compare);
  const toolbar = h("div", { class: "toolbar" },
    names.length > 1
      ? h("select", { id: "pipeline", onchange: (e) => { location.hash = `#/devices/${encodeURIComponent(e.target.value)}`; } },
          names.map((n) => h("option", { value: n, selected: n === name }, n)))
      : null,
    h("input", { id: "filter", type: "search", placeholder: "filter devices", value: ui.filter, "aria-label": "filter devices",
      oninput: (e) => { ui.filter = e.target.value; render(route(), state); } }),
    h("select", { id: "show", "aria-label": "show", onchange: (e) => { ui.show = e.target.value; render(route(), state); } },
      [["all", "all devices"], ["open", "open episodes"], ["near", "near threshold"], ["warming", "warming up"], ["stale", "silent > 30 s"]].map(
        ([v, t]) => h("option", { value: v, selected: ui.show === v }, t))),
    h("span", { class: "count", id: "device-count" }, `${Math.min(shown.length, ROWS)} of ${shown.length} shown · ${all.length} devices`),
  );
  const head = h("tr", null, COLUMNS.map(([k, label]) =>
    h("th", { class: `sortable ${ui.sort === k ? "sorted" : ""} ${ui.sort === k && ui.asc ? "asc" : ""} ${k === "since" || k === "threshold" ? "hide-narrow" : ""}`, "data-sort": k,
      onclick: () => { ui.asc = ui.sort === k ? !ui.asc : k === "device" || k === "state"; ui.sort = k; render(route(), state); } }, label)));
  const body = shown.slice(0, ROWS).map((x) =>
    h("tr", { class: x.open ? "open" : "", "data-device": x.device, onclick: () => { location.hash = deviceHref(name, x.device); } },
      h("td", null, h("a", { href: deviceHref(name, x.device) }, x.device)),
      h("td", null, pill(x)),
      h("td", null, ago(x.seen)),
      h("td", { class: "num" }, p.warmup ? `${Math.round(x.warmup * 100)}%` : "–"),
      h("td", { class: "num" }, num(x.score, 3)),
      h("td", { class: "num hide-narrow" }, num(x.threshold, 3)),
      h("td", null, bar(x.ratio)),
      h("td", { class: "hide-narrow" }, x.since ? clock(x.since) : "")));
  return h("div", null, h("h2", null, `Devices · ${name}`), toolbar,
    h("div", { class: "scroll" }, h("table", { id: "devices" }, h("thead", null, head), h("tbody", null, body))),
    shown.length ? null : h("div", { class: "empty" }, all.length ? "no device matches" : "no device has sent data yet"));
}

// -- one device --------------------------------------------------------------------------
function deviceView(r, state) {
  const d = state.device;
  const back = h("a", { class: "back", href: `#/devices/${encodeURIComponent(r.pipeline)}` }, "‹ all devices");
  if (!d) return h("div", null, back, h("div", { class: "empty" }, `device ${r.device} is not tracked by pipeline ${r.pipeline}`));
  const table = {};
  for (const k of ["device", "seen", "score", "threshold", "warmup", "episode", "severity", "since"]) {
    if (k in d) table[k] = [d[k]];
  }
  const row = rowsOf({ table })[0];
  const info = kv([
    ["state", pill(row)],
    ["last seen", ago(d.seen)],
    ["last score", num(d.score, 3)],
    ["threshold", num(d.threshold, 3)],
    ...(d.severity ? [["episode", d.episode || "(suppressed by the flood guard)"], ["open since", clock(d.since)], ["peak", num(d.peak, 3)]] : []),
  ]);
  const chart = h("section", { class: "card" },
    h("h3", null, "Score and threshold"),
    h("div", { class: "legend" }, h("span", null, "score (highest per 2 s)"), h("span", { class: "thr" }, "threshold"), h("span", { class: "over" }, "over threshold")),
    d.history === null
      ? h("div", { class: "empty" }, "no history for this device: beyond metrics.history_mb")
      : h("canvas", { class: "chart", id: "chart", "data-points": d.history.t.length }));
  return h("div", null, back,
    h("h2", { id: "device-name" }, `${d.device} `, h("span", { class: "count" }, `pipeline ${d.pipeline}`)),
    h("div", { class: "device-grid" }, h("section", { class: "card" }, info), chart),
    h("h2", null, "Recent events"), eventsTable(d.events, "device-events"));
}

function drawChart(d) {
  const canvas = document.getElementById("chart");
  if (!canvas || !d || !d.history) return;
  const { t, score, threshold } = d.history;
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  canvas.width = w * dpr;
  canvas.height = hgt * dpr;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.font = "12px system-ui, sans-serif";
  g.fillStyle = "#636c76";
  if (!t.length) {
    g.fillText("no scored window yet", 12, 24);
    return;
  }
  const pad = { l: 48, r: 10, t: 10, b: 22 };
  const t1 = Math.max(...t), t0 = Math.min(t1 - 20, Math.min(...t)); // at least 20 s wide
  const top = Math.max(...score, ...threshold.filter((x) => x !== null)) * 1.1 || 1;
  const x = (v) => pad.l + ((v - t0) / Math.max(t1 - t0, 1)) * (w - pad.l - pad.r);
  const y = (v) => hgt - pad.b - (v / top) * (hgt - pad.t - pad.b);
  g.strokeStyle = "#d8dee4";
  g.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = (top * k) / 4;
    g.beginPath(); g.moveTo(pad.l, y(v)); g.lineTo(w - pad.r, y(v)); g.stroke();
    g.fillText(v.toPrecision(3), 4, y(v) + 4);
  }
  g.fillText(clock(t0), pad.l, hgt - 6);
  g.fillText(clock(t1), w - pad.r - 60, hgt - 6);
  const line = (vals, color, dash) => {
    g.strokeStyle = color; g.lineWidth = 2; g.setLineDash(dash); g.beginPath();
    let started = false;
    vals.forEach((v, i) => {
      if (v === null) { started = false; return; }
      if (started) g.lineTo(x(t[i]), y(v)); else g.moveTo(x(t[i]), y(v));
      started = true;
    });
    g.stroke(); g.setLineDash([]);
  };
  line(threshold, "#bf8700", [6, 4]);
  line(score, "#1f6feb", []);
  g.fillStyle = "#cf222e";
  score.forEach((v, i) => {
    if (threshold[i] !== null && v > threshold[i]) { g.beginPath(); g.arc(x(t[i]), y(v), 3, 0, 7); g.fill(); }
  });
}

// -- events ------------------------------------------------------------------------------
function eventsTable(events, id) {
  if (!events || !events.length) return h("div", { class: "empty", id }, "no events yet");
  const head = h("tr", null, ["time", "pipeline", "device", "event", "severity", "score", "threshold", "cause"].map((c) => h("th", null, c)));
  const rows = events.map((e) =>
    h("tr", { "data-event": e.event || "window", onclick: () => { if (e.device) location.hash = deviceHref(e.pipeline, e.device); } },
      h("td", null, clock(e.ts)),
      h("td", null, e.pipeline),
      h("td", null, e.device ? h("a", { href: deviceHref(e.pipeline, e.device) }, e.device) : "–"),
      h("td", null, h("span", { class: `pill ${e.event === "closed" ? "ok" : e.event === "flood" ? "warn" : "bad"}` }, e.event || e.state || "anomaly")),
      h("td", null, e.severity || ""),
      h("td", { class: "num" }, num(e.score ?? e.peak, 3)),
      h("td", { class: "num" }, num(e.threshold, 3)),
      h("td", null, detail(e))));
  return h("div", { class: "scroll" }, h("table", { id }, h("thead", null, head), h("tbody", null, rows)));
}

function eventsView(state) {
  return h("div", null, h("h2", null, `Events · last ${state.events.length}`), eventsTable(state.events, "events"));
}

window.addEventListener("hashchange", schedule);
window.addEventListener("resize", () => { if (route().view === "device") refresh(); });
schedule();
