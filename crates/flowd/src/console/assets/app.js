// The flowd console: one page, drawn from /api/live (the host's overview,
// every second) and the log and dead-letter endpoints. No framework, no
// build step: this file is served as it is from inside the binary.
"use strict";

const state = { overview: null, previous: null, rates: {}, history: {}, flowRates: {}, logs: [], logName: "", letters: [], lettersName: "", lettersResult: "",
  tail: null, subscriptions: null };
// Rate samples kept per processor and step: one a second, five minutes.
const HISTORY = 300;
// Events a flow's tail keeps on the page.
const TAIL_KEPT = 100;
const CHANGE = { "x-flowd-console": "1", "content-type": "application/json" };

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c ?? "")));
  return e;
}

function svg(tag, attrs = {}, ...children) {
  const e = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function call(path, options = {}) {
  const response = await fetch(path, { credentials: "same-origin", ...options });
  const body = await response.json().catch(() => ({}));
  if (response.status === 401) { showLogin(); throw new Error(body.error || "log in first"); }
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function showLogin() {
  document.getElementById("login").hidden = false;
  document.getElementById("nav").hidden = true;
  document.getElementById("view").replaceChildren();
}

document.getElementById("login-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  const error = document.getElementById("login-error");
  error.textContent = "";
  try {
    await call("/login", {
      method: "POST", headers: CHANGE,
      body: JSON.stringify({ user: form.get("user"), password: form.get("password"), token: form.get("token") }),
    });
    start();
  } catch (e) { error.textContent = e.message; }
});

// Events per second of every processor and step, from two overviews.
function updateRates(now, before) {
  if (!before) return;
  const seconds = (now.now_ms - before.now_ms) / 1000;
  if (seconds <= 0) return;
  const counts = (o) => {
    const m = {};
    for (const p of o.processors) m[p.id] = p.status;
    for (const pl of o.pipelines) for (const s of pl.steps) m[s.processor] = s.status;
    return m;
  };
  const a = counts(now), b = counts(before);
  for (const [id, st] of Object.entries(a)) {
    const old = b[id];
    if (!st || !old || st.events_in === undefined || old.events_in === undefined) continue;
    const rin = Math.max(0, (st.events_in - old.events_in) / seconds);
    const rout = Math.max(0, (st.events_out - old.events_out) / seconds);
    // Smoothed, so that a rate shows between two status updates.
    const r = state.rates[id] || { in: 0, out: 0 };
    state.rates[id] = { in: r.in * 0.5 + rin * 0.5, out: r.out * 0.5 + rout * 0.5 };
    const h = state.history[id] || (state.history[id] = []);
    h.push(rout);
    if (h.length > HISTORY) h.splice(0, h.length - HISTORY);
  }
  // A flow's rate: events stored per second (its last sequence moving).
  const last = new Map(before.flows.map((f) => [f.name, f.last_sequence]));
  for (const f of now.flows) {
    if (!last.has(f.name)) continue;
    const r = Math.max(0, (f.last_sequence - last.get(f.name)) / seconds);
    state.flowRates[f.name] = (state.flowRates[f.name] || 0) * 0.5 + r * 0.5;
  }
}

function rateIn(id) {
  const r = state.rates[id];
  return r ? r.in.toFixed(1) : "0.0";
}

// The last five minutes of a processor's or step's output rate, as a line.
function sparkline(id) {
  const h = state.history[id] || [];
  const W = 150, H = 24;
  const top = Math.max(1, ...h);
  const points = h.map((v, i) => `${(W * (i + HISTORY - h.length)) / (HISTORY - 1)},${H - 1 - ((H - 2) * v) / top}`).join(" ");
  return svg("svg", { width: W, height: H, class: "spark", "data-testid": "history-" + id, "data-samples": h.length },
    svg("title", {}, `events out per second, last ${h.length} s (peak ${top.toFixed(1)})`),
    svg("polyline", { points }));
}

function rate(id) {
  const r = state.rates[id];
  return r ? r.out.toFixed(1) : "0.0";
}

function phaseCell(status, paused) {
  const phase = paused ? "paused" : (status.phase || "pending");
  return el("td", { class: "phase-" + phase, "data-testid": "phase" }, phase);
}

// A pipeline as a graph: flows and steps in columns by depth.
function pipelineGraph(p) {
  const nodes = new Map();
  const edges = [];
  const flowNode = (name) => {
    if (!nodes.has("f:" + name)) nodes.set("f:" + name, { kind: "flow", name, inputs: [] });
    return "f:" + name;
  };
  for (const s of p.steps) {
    const id = "s:" + s.name;
    nodes.set(id, { kind: "step", step: s, inputs: s.inputs.map(flowNode) });
    // An input edge carries what the step takes in and what waits for it
    // (a fused step's events wait in memory: no lag); an output edge what
    // it writes.
    const lag = s.fused ? "" : ` lag ${(s.status && s.status.lag) ?? "-"}`;
    for (const i of s.inputs) edges.push({ from: "f:" + i, to: id, memory: s.fused, label: `${rateIn(s.processor)}/s${lag}`, test: `edge-${i}-${s.name}` });
    for (const o of s.outputs) {
      const f = flowNode(o);
      nodes.get(f).inputs.push(id);
      edges.push({ from: id, to: f, memory: false, label: `${rate(s.processor)}/s`, test: `edge-${s.name}-${o}` });
    }
  }
  // Depth: the longest path from a source (bounded by the node count).
  const depth = new Map();
  const depthOf = (id, seen = 0) => {
    if (depth.has(id)) return depth.get(id);
    const n = nodes.get(id);
    const d = seen > nodes.size || n.inputs.length === 0 ? 0 : 1 + Math.max(...n.inputs.map((i) => depthOf(i, seen + 1)));
    depth.set(id, d);
    return d;
  };
  const columns = [];
  for (const id of nodes.keys()) {
    const d = depthOf(id);
    (columns[d] = columns[d] || []).push(id);
  }
  const W = 190, H = 58, GX = 100, GY = 22;
  const pos = new Map();
  columns.forEach((col, x) => col.forEach((id, y) => pos.set(id, { x: 10 + x * (W + GX), y: 10 + y * (H + GY) })));
  const width = 20 + columns.length * (W + GX);
  const height = 20 + Math.max(...columns.map((c) => c.length)) * (H + GY);
  const root = svg("svg", { width, height, "data-testid": "graph-" + p.name });
  for (const e of edges) {
    const a = pos.get(e.from), b = pos.get(e.to);
    if (!a || !b) continue;
    root.append(svg("line", { x1: a.x + W, y1: a.y + H / 2, x2: b.x, y2: b.y + H / 2, class: e.memory ? "memory" : "" }));
    root.append(svg("text", { x: a.x + W + 4, y: (a.y + b.y + H) / 2 - 4, class: "edge", "data-testid": e.test }, e.label));
  }
  for (const [id, n] of nodes) {
    const { x, y } = pos.get(id);
    if (n.kind === "flow") {
      const cut = (name) => (name.length > 30 ? name.slice(0, 29) + "…" : name);
      // A remote input: the local flow a subscription feeds, and the other
      // participant's flow it comes from (as the subscriptions say).
      const remote = (p.subscriptions || []).includes(n.name);
      const from = remote && state.subscriptions && !state.subscriptions.error
        ? (state.subscriptions.out.find((s) => s.local === n.name) || {}).remote : null;
      const g = svg("g", { class: "flow" + (remote ? " remote" : ""), transform: `translate(${x},${y})`, "data-testid": "flow-node-" + n.name },
        svg("rect", { width: W, height: H, rx: 12 }),
        svg("text", { x: 8, y: remote ? 16 : 22 }, cut(n.name)));
      const flow = (state.overview.flows || []).find((f) => f.name === n.name);
      g.append(svg("text", { x: 8, y: remote ? 32 : 42 }, flow ? `${flow.events} events ${(state.flowRates[n.name] || 0).toFixed(1)}/s` : "in memory"));
      if (remote) g.append(svg("text", { x: 8, y: 48, "data-testid": "remote-from" }, `from ${cut(from || "another participant")}`));
      root.append(g);
    } else {
      const s = n.step, st = s.status || {};
      const g = svg("g", { class: "step" + (s.fused ? " fused" : ""), transform: `translate(${x},${y})`, "data-testid": "node-" + s.name },
        svg("rect", { width: W, height: H, rx: 3 }),
        svg("text", { x: 8, y: 16 }, `${s.name} (${st.phase || "pending"})`),
        svg("text", { x: 8, y: 32, "data-testid": "counts-" + s.name }, `in ${st.events_in ?? 0} out ${st.events_out ?? 0} dead ${st.dead_lettered ?? 0}`),
        svg("text", { x: 8, y: 48, "data-testid": "rate-" + s.name }, `${rate(s.processor)}/s lag ${st.lag ?? "-"}`));
      root.append(g);
    }
  }
  return root;
}

// A keyed step's partitions by host: which it holds (as ranges) and what
// waits in them.
function partitionTable(s) {
  const parts = (s.status && s.status.partitions) || [];
  if (!parts.length) return [];
  const byHost = new Map();
  for (const q of parts) {
    const h = q.host || "-";
    if (!byHost.has(h)) byHost.set(h, []);
    byHost.get(h).push(q);
  }
  const ranges = (ns) => {
    const out = [];
    for (const n of ns) {
      const last = out[out.length - 1];
      if (last && last[1] + 1 === n) last[1] = n; else out.push([n, n]);
    }
    return out.map(([a, b]) => (a === b ? `${a}` : `${a}-${b}`)).join(",");
  };
  return [el("h3", {}, `Partitions of ${s.name}`),
    el("table", { "data-testid": "partitions-" + s.name },
      el("tr", {}, ...["host", "partitions", "held", "lag"].map((h) => el("th", {}, h))),
      ...[...byHost].map(([h, qs]) => el("tr", { "data-testid": "partitions-" + s.name + "-" + h },
        el("td", {}, h), el("td", {}, ranges(qs.map((q) => q.partition))), el("td", {}, qs.length),
        el("td", {}, qs.reduce((a, q) => a + q.lag, 0)))))];
}

const views = {
  pipelines() {
    const o = state.overview;
    if (!o.pipelines.length) return [el("p", {}, "No pipelines.")];
    return o.pipelines.flatMap((p) => [
      el("h2", {}, `Pipeline ${p.name}`),
      pipelineGraph(p),
      el("table", {}, el("tr", {}, ...["step", "processor", "runner", "phase", "in", "out", "errors", "dead", "lag", "rate/s", "last 5 min"].map((h) => el("th", {}, h))),
        ...p.steps.map((s) => el("tr", {}, el("td", {}, s.name), el("td", {}, s.processor), el("td", {}, s.runner),
          phaseCell(s.status, false), el("td", {}, s.status.events_in ?? 0), el("td", {}, s.status.events_out ?? 0),
          el("td", {}, s.status.errors ?? 0), el("td", {}, s.status.dead_lettered ?? 0), el("td", {}, s.status.lag ?? "-"),
          el("td", {}, rate(s.processor)), el("td", {}, sparkline(s.processor))))),
      ...p.steps.flatMap(partitionTable),
    ]);
  },
  processors() {
    const rows = state.overview.processors.map((p) => el("tr", { "data-testid": "processor-" + p.id },
      el("td", {}, p.id), el("td", {}, p.kind), phaseCell(p.status, p.paused), el("td", {}, p.status.generation ?? ""),
      el("td", {}, p.status.events_in ?? 0), el("td", {}, p.status.events_out ?? 0), el("td", {}, p.status.dead_lettered ?? 0),
      el("td", { "data-testid": "restarts" }, p.status.restarts ?? 0),
      el("td", {}, p.status.lag ?? "-"), el("td", {}, rate(p.id)), el("td", {}, sparkline(p.id)),
      el("td", { "data-testid": "placement" }, (p.placement || []).map((h, i) => `${i}: ${h ?? "-"}`).join(", ")),
      el("td", {}, p.status.last_error ?? ""),
      el("td", {}, el("button", { "data-testid": (p.paused ? "resume-" : "pause-") + p.id, onclick: () => pauseResume(p.id, !p.paused) }, p.paused ? "Resume" : "Pause"),
        " ", el("button", { onclick: () => { state.logName = p.id; location.hash = "logs"; } }, "Logs"),
        " ", el("button", { onclick: () => { state.lettersName = p.id; location.hash = "deadletters"; } }, "Dead letters"))));
    return [el("table", {}, el("tr", {}, ...["id", "kind", "phase", "generation", "in", "out", "dead", "restarts", "lag", "rate/s", "last 5 min", "instances on hosts", "last error", ""].map((h) => el("th", {}, h))), ...rows)];
  },
  flows() {
    // Subscribers are listed to those who may write to the flow.
    const subscribers = (name) => {
      const s = state.subscriptions;
      if (!s || s.error) return "-";
      const n = s.in.filter((x) => x.source === name).length;
      return n ? String(n) : "-";
    };
    const table = el("table", {}, el("tr", {}, ...["flow", "events", "bytes", "rate/s", "first", "last", "retention (s)", "public", "subscribers", ""].map((h) => el("th", {}, h))),
      ...state.overview.flows.map((f) => el("tr", { "data-testid": "flow-" + f.name }, el("td", {}, f.name), el("td", {}, f.events), el("td", {}, f.bytes),
        el("td", { "data-testid": "flow-rate" }, (state.flowRates[f.name] || 0).toFixed(1)),
        el("td", {}, f.first_sequence), el("td", {}, f.last_sequence), el("td", {}, f.max_age_secs || "forever"), el("td", {}, f.public ? "yes" : "no"),
        el("td", { "data-testid": "subscribers" }, subscribers(f.name)),
        el("td", {}, el("button", { "data-testid": "tail-" + f.name, onclick: () => openTail(f.name) }, "Tail")))));
    const t = state.tail;
    if (!t) return [table];
    const rows = t.events.slice().reverse().map((e) => el("tr", { "data-testid": "tail-event" },
      el("td", {}, e.sequence), el("td", {}, e.id ?? ""), el("td", {}, e.type ?? ""), el("td", {}, e.time ?? ""),
      el("td", { class: "data" }, e.error ? `not an event: ${e.error}` : e.data + (e.cut ? " …" : ""))));
    return [table,
      el("h2", {}, `Live tail of ${t.name}`),
      el("div", { class: "toolbar" }, el("span", { "data-testid": "tail-status" }, t.status),
        " ", el("button", { "data-testid": "tail-stop", onclick: () => closeTail() }, "Stop")),
      el("table", { "data-testid": "tail" }, el("tr", {}, ...["seq", "id", "type", "time", "data"].map((h) => el("th", {}, h))), ...rows)];
  },
  subscriptions() {
    const s = state.subscriptions;
    if (!s) return [el("p", {}, "Loading…")];
    if (s.error) return [el("p", { class: "error" }, s.error)];
    return [el("h2", {}, "Subscriptions of this account"),
      el("table", { "data-testid": "subscriptions-out" }, el("tr", {}, ...["local flow", "fed from", "remote host", "state", "since"].map((h) => el("th", {}, h))),
        ...s.out.map((x) => el("tr", { "data-testid": "subscription-" + x.local }, el("td", {}, x.local), el("td", {}, x.remote), el("td", {}, x.agent ?? "this host"),
          el("td", {}, x.revoked ? "revoked" : x.paused ? "paused" : x.failing ? `failing: ${x.failing}` : "running"), el("td", {}, x.created)))),
      el("h2", {}, "Subscribers of flows this account writes"),
      el("table", { "data-testid": "subscriptions-in" }, el("tr", {}, ...["flow", "copy", "subscriber", "since"].map((h) => el("th", {}, h))),
        ...s.in.map((x) => el("tr", { "data-testid": "subscriber-" + x.source }, el("td", {}, x.source), el("td", {}, x.copy), el("td", {}, x.user),
          el("td", {}, x.created))))];
  },
  logs() {
    const input = el("input", { id: "log-name", "data-testid": "log-name", value: state.logName, placeholder: "processor, step or pipeline" });
    const show = el("button", { "data-testid": "log-show", onclick: () => { state.logName = input.value; state.logs = []; refreshLogs(); } }, "Show");
    const rows = state.logs.slice(-500).reverse().map((r) => el("tr", { class: "log-" + r.level },
      el("td", {}, new Date(r.time_ms).toISOString()), el("td", {}, r.level), el("td", {}, r.kind), el("td", {}, r.processor),
      el("td", {}, r.event), el("td", { "data-testid": "log-message" }, r.message)));
    return [el("div", { class: "toolbar" }, input, show),
      el("table", { "data-testid": "logs" }, el("tr", {}, ...["time", "level", "kind", "processor", "event", "message"].map((h) => el("th", {}, h))), ...rows)];
  },
  deadletters() {
    const input = el("input", { "data-testid": "letters-name", value: state.lettersName, placeholder: "processor, step or pipeline" });
    const show = el("button", { "data-testid": "letters-show", onclick: () => { state.lettersName = input.value; state.lettersResult = ""; refreshLetters(); } }, "Show");
    const all = el("button", { "data-testid": "replay-all", onclick: () => letters("replay", [], true) }, "Replay all");
    const rows = state.letters.map((l) => el("tr", { "data-testid": "letter-" + l.event_id },
      el("td", {}, l.sequence), el("td", {}, l.event_id), el("td", {}, l.event_type), el("td", {}, l.step || l.processor),
      el("td", {}, l.input), el("td", {}, l.error),
      el("td", {}, el("button", { "data-testid": "replay-" + l.event_id, onclick: () => letters("replay", [l.sequence]) }, "Replay"),
        " ", el("button", { "data-testid": "discard-" + l.event_id, onclick: () => letters("discard", [l.sequence]) }, "Discard"))));
    // The last action's result is kept in the state: the view is redrawn
    // every second.
    return [el("div", { class: "toolbar" }, input, show, all, el("span", { id: "letters-result", "data-testid": "letters-result" }, state.lettersResult)),
      el("table", {}, el("tr", {}, ...["seq", "event", "type", "failed at", "from", "error", ""].map((h) => el("th", {}, h))), ...rows)];
  },
  components() {
    const users = (digest) => state.overview.processors.filter((p) => p.component === digest).map((p) => p.id);
    return [el("table", {}, el("tr", {}, ...["name", "version", "kind", "size", "digest", "used by"].map((h) => el("th", {}, h))),
      ...state.overview.components.map((c) => el("tr", { "data-testid": `component-${c.name}@${c.version}` }, el("td", {}, c.name), el("td", {}, c.version), el("td", {}, c.kind),
        el("td", {}, c.size), el("td", {}, c.digest), el("td", { "data-testid": "used-by" }, users(c.digest).join(", ") || "-"))))];
  },
  hosts() {
    const now = state.overview.now_ms;
    return [el("table", {}, el("tr", {}, ...["host", "fqdn", "FNAP", "API", "instances", "events in", "rate/s", "heartbeat"].map((h) => el("th", {}, h))),
      ...state.overview.hosts.map((h) => el("tr", {}, el("td", {}, h.id), el("td", {}, h.fqdn), el("td", {}, h.fnap ?? "-"),
        el("td", {}, h.api ?? "-"), el("td", {}, h.instances), el("td", {}, h.events_in), el("td", {}, h.rate.toFixed(1)),
        el("td", {}, `${Math.round((now - h.heartbeat_ms) / 1000)} s ago`))))];
  },
};

function render() {
  if (!state.overview) return;
  const name = (location.hash || "#pipelines").slice(1);
  const view = views[name] || views.pipelines;
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.getAttribute("href") === "#" + name);
  // Keep what is typed in a filter box across redraws.
  const focused = document.activeElement && document.activeElement.tagName === "INPUT" && document.getElementById("view").contains(document.activeElement);
  if (focused) return;
  document.getElementById("view").replaceChildren(...view());
}

async function pauseResume(id, pause) {
  try { await call(`/api/processors/${encodeURIComponent(id)}/${pause ? "pause" : "resume"}`, { method: "POST", headers: CHANGE }); }
  catch (e) { alert(e.message); }
}

async function refreshLogs() {
  if (!state.logName) return;
  const since = state.logs.length ? state.logs[state.logs.length - 1].time_ms : 0;
  try {
    const records = await call(`/api/logs?name=${encodeURIComponent(state.logName)}&since_ms=${since}`);
    const seen = new Set(state.logs.map((r) => r.sequence));
    for (const r of records) if (!seen.has(r.sequence)) state.logs.push(r);
    if ((location.hash || "").slice(1) === "logs") render();
  } catch (e) { state.logs = [{ time_ms: Date.now(), level: "error", kind: "console", processor: "", event: "", message: e.message, sequence: -1 }]; render(); }
}

async function refreshLetters() {
  if (!state.lettersName) return;
  try { state.letters = await call(`/api/deadletters?name=${encodeURIComponent(state.lettersName)}`); }
  catch (e) { state.letters = []; }
  if ((location.hash || "").slice(1) === "deadletters") render();
}

async function letters(action, sequences, all = false) {
  try {
    const done = await call(`/api/deadletters/${action}`, { method: "POST", headers: CHANGE,
      body: JSON.stringify({ name: state.lettersName, sequences, all }) });
    state.lettersResult = `${done.handled.length} ${action === "replay" ? "replayed" : "discarded"}`;
    await refreshLetters();
  } catch (e) { state.lettersResult = e.message; render(); }
}

// A flow's live tail: its newest events every second (/api/tail).
let tailSource = null;
function openTail(name) {
  closeTail();
  state.tail = { name, events: [], status: "connecting…" };
  tailSource = new EventSource(`/api/tail?name=${encodeURIComponent(name)}`);
  tailSource.addEventListener("events", (event) => {
    const t = state.tail;
    if (!t || t.name !== name) return;
    const batch = JSON.parse(event.data);
    t.events.push(...batch.events);
    if (t.events.length > TAIL_KEPT) t.events.splice(0, t.events.length - TAIL_KEPT);
    t.skipped = (t.skipped || 0) + batch.skipped;
    t.status = `up to sequence ${batch.last}` + (t.skipped ? `, ${t.skipped} skipped (more than ${20}/s)` : "");
    render();
  });
  tailSource.addEventListener("trouble", (event) => { if (state.tail) { state.tail.status = event.data; render(); } });
  tailSource.onerror = () => { if (state.tail) { state.tail.status = "disconnected"; closeTail(true); render(); } };
  render();
}
function closeTail(keep = false) {
  if (tailSource) tailSource.close();
  tailSource = null;
  if (!keep) state.tail = null;
  render();
}

async function refreshSubscriptions() {
  try { state.subscriptions = await call("/api/subscriptions"); }
  catch (e) { state.subscriptions = { error: e.message }; }
  if (["subscriptions", "flows", "pipelines", ""].includes((location.hash || "").slice(1))) render();
}

let live = null;
let ticking = null;
async function start() {
  let me;
  try { me = await call("/api/me"); } catch (e) { return; }
  document.getElementById("login").hidden = true;
  document.getElementById("nav").hidden = false;
  document.getElementById("who").textContent = me.user + (me.admin ? " (administrator)" : "");
  if (live) live.close();
  live = new EventSource("/api/live");
  live.addEventListener("overview", (event) => {
    const now = JSON.parse(event.data);
    updateRates(now, state.overview);
    state.overview = now;
    render();
  });
  live.onerror = () => { call("/api/me").catch(() => { live.close(); }); };
  refreshSubscriptions();
  // One timer, however often the page logs in again.
  if (ticking) clearInterval(ticking);
  ticking = setInterval(() => {
    const view = (location.hash || "").slice(1);
    if (view === "logs") refreshLogs();
    if (view === "deadletters") refreshLetters();
    if (["subscriptions", "flows", "pipelines", ""].includes(view)) refreshSubscriptions();
  }, 2000);
}

window.addEventListener("hashchange", () => {
  // A tail is for the flows page: leaving it closes the stream.
  if (location.hash !== "#flows" && tailSource) closeTail();
  render();
  if (location.hash === "#logs") refreshLogs();
  if (location.hash === "#deadletters") refreshLetters();
  if (["#subscriptions", "#flows", "#pipelines", ""].includes(location.hash)) refreshSubscriptions();
});
call("/api/me").then(start, () => showLogin());
