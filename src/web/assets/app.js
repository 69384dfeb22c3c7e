// The iota page: plain DOM and canvas, no dependencies. Every piece of data comes from the
// server's JSON endpoints and is put on the page as text, never as markup.
"use strict";

const TOKEN_KEY = "iota.readToken";
const POLL_MS = 2000;

// ---- helpers -------------------------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function fmtNs(ns) {
  ns = Number(ns);
  if (ns < 1e3) return ns + " ns";
  if (ns < 1e6) return (ns / 1e3).toFixed(1) + " µs";
  if (ns < 1e9) return (ns / 1e6).toFixed(2) + " ms";
  return (ns / 1e9).toFixed(2) + " s";
}

function fmtBytes(n) {
  if (n < 1024) return n + " B";
  if (n < 1024 * 1024) return (n / 1024).toFixed(1) + " KiB";
  return (n / 1024 / 1024).toFixed(1) + " MiB";
}

function fmtTime(unixNanos) {
  const d = new Date(Number(unixNanos) / 1e6);
  return d.toLocaleString(undefined, { hour12: false });
}

function fmtCount(n) {
  return Number(n).toLocaleString("en-US");
}

function pct(part, whole) {
  return whole > 0 ? ((100 * part) / whole).toFixed(1) + " %" : "";
}

// ---- the server ----------------------------------------------------------------------------

class Unauthorized extends Error {}

function authHeaders() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  return token ? { Authorization: "Bearer " + token } : {};
}

async function request(path) {
  const response = await fetch(path, { headers: authHeaders(), cache: "no-store" });
  if (response.status === 401) throw new Unauthorized("this server needs its read token");
  if (!response.ok) {
    let message = response.status + " " + response.statusText;
    try {
      message = (await response.json()).error || message;
    } catch (_) {
      // not JSON
    }
    throw new Error(message);
  }
  return response;
}

async function getJson(path) {
  return (await request(path)).json();
}

async function download(path, filename) {
  const blob = await (await request(path)).blob();
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

function showError(err) {
  const box = document.getElementById("error");
  if (!err) {
    box.hidden = true;
    return;
  }
  if (err instanceof Unauthorized) {
    document.getElementById("token-form").hidden = false;
  }
  box.textContent = err.message;
  box.hidden = false;
}

// ---- routing -------------------------------------------------------------------------------

let pollTimer = null;
let viewSerial = 0;

function route() {
  clearTimeout(pollTimer);
  showError(null);
  const serial = ++viewSerial;
  const hash = decodeURIComponent(location.hash.replace(/^#/, "")) || "/";
  const main = document.getElementById("main");
  const parts = hash.split("/").filter(Boolean);
  let view;
  if (parts[0] === "run" && parts[1]) view = runView(parts[1], serial);
  else if (parts[0] === "module" && parts[1]) view = moduleView(parts[1], serial);
  else view = homeView(serial);
  main.replaceChildren(view.node);
  view.load().catch(showError);
}

function current(serial) {
  return serial === viewSerial;
}

// ---- home: modules and recent runs ---------------------------------------------------------

function table(columns, rows, attrs) {
  const head = el("tr", {}, ...columns.map((c) => el("th", { class: c.num ? "num" : "" }, c.title)));
  return el("table", attrs || {}, el("thead", {}, head), el("tbody", {}, ...rows));
}

function homeView(serial) {
  const modulesBox = el("section", { id: "modules" }, el("h2", { text: "Modules" }));
  const moduleFilter = el("select", { id: "filter-module" }, el("option", { value: "", text: "all modules" }));
  const outcomeFilter = el(
    "select",
    { id: "filter-outcome" },
    ...["", "ok", "error", "exit", "trap", "timeout", "cancelled", "host_error"].map((o) =>
      el("option", { value: o, text: o === "" ? "all outcomes" : o }),
    ),
  );
  const runsBody = el("div");
  const runsBox = el(
    "section",
    { id: "runs" },
    el("h2", { text: "Recent runs" }),
    el("div", { class: "filters" }, moduleFilter, " ", outcomeFilter),
    runsBody,
  );
  let traces = [];
  const drawRuns = () => {
    const module = moduleFilter.value;
    const outcome = outcomeFilter.value;
    const shown = traces.filter(
      (t) =>
        (!module || t.module === module) &&
        (!outcome || t.outcome === outcome || (outcome === "error" && t.outcome !== "ok")),
    );
    runsBody.replaceChildren(runsTable(shown));
  };
  moduleFilter.addEventListener("change", drawRuns);
  outcomeFilter.addEventListener("change", drawRuns);

  const load = async () => {
    const [modules, stats, recent] = await Promise.all([
      getJson("/modules"),
      getJson("/stats"),
      getJson("/traces"),
    ]);
    if (!current(serial)) return;
    document.getElementById("token-form").hidden = true;
    showError(null);
    const byName = new Map(stats.modules.map((s) => [s.name, s]));
    const rows = modules.modules
      .slice()
      .sort((a, b) => a.name.localeCompare(b.name))
      .map((m) => {
        const s = byName.get(m.name) || { runs: 0, error_rate: 0, window: 0 };
        return el(
          "tr",
          { dataset: { module: m.name } },
          el("td", {}, el("a", { href: "#/module/" + encodeURIComponent(m.name), text: m.name })),
          el("td", { class: "num", text: fmtBytes(m.original_size) }),
          el("td", { class: "num", text: fmtCount(m.functions) }),
          el("td", { text: fmtTime(m.uploaded_at * 1e9) }),
          el("td", { class: "num", text: fmtCount(s.runs) }),
          el("td", { class: "num", text: s.runs ? (100 * s.error_rate).toFixed(1) + " %" : "" }),
          el("td", { class: "num", text: s.window ? fmtNs(s.p50_ns) : "" }),
          el("td", { class: "num", text: s.window ? fmtNs(s.p99_ns) : "" }),
        );
      });
    modulesBox.replaceChildren(
      el("h2", { text: "Modules" }),
      rows.length
        ? table(
            [
              { title: "name" },
              { title: "size", num: true },
              { title: "functions", num: true },
              { title: "uploaded" },
              { title: "runs", num: true },
              { title: "errors", num: true },
              { title: "p50", num: true },
              { title: "p99", num: true },
            ],
            rows,
            { id: "modules-table" },
          )
        : el("p", { class: "muted", text: "No modules yet: POST /upload or `iota upload FILE --name N`." }),
    );
    const chosen = moduleFilter.value;
    moduleFilter.replaceChildren(
      el("option", { value: "", text: "all modules" }),
      ...[...new Set(recent.traces.map((t) => t.module))].sort().map((m) => el("option", { value: m, text: m })),
    );
    moduleFilter.value = chosen;
    traces = recent.traces;
    drawRuns();
    document.getElementById("live").textContent = "live · " + new Date().toLocaleTimeString(undefined, { hour12: false });
  };
  const poll = async () => {
    try {
      await load();
    } catch (err) {
      if (current(serial)) showError(err);
    }
    if (current(serial)) pollTimer = setTimeout(poll, POLL_MS);
  };
  return { node: el("div", { dataset: { view: "home" } }, modulesBox, runsBox), load: poll };
}

function runsTable(traces) {
  if (!traces.length) return el("p", { class: "muted", text: "No runs to show." });
  const rows = traces.map((t) =>
    el(
      "tr",
      { class: t.outcome === "ok" ? "" : "failed", dataset: { trace: t.trace_id } },
      el("td", { text: fmtTime(t.start_unix_nanos) }),
      el("td", {}, el("a", { href: "#/module/" + encodeURIComponent(t.module), text: t.module })),
      el("td", {}, el("a", { href: "#/run/" + t.trace_id, class: "mono", text: t.trace_id })),
      el("td", { class: "num", text: fmtNs(t.duration_ns) }),
      el("td", { class: "num", text: fmtCount(t.spans) }),
      el("td", { class: "outcome", text: t.error || t.outcome }),
    ),
  );
  return table(
    [
      { title: "started" },
      { title: "module" },
      { title: "trace" },
      { title: "duration", num: true },
      { title: "spans", num: true },
      { title: "outcome" },
    ],
    rows,
    { id: "runs-table" },
  );
}

// ---- one run -------------------------------------------------------------------------------

function runView(id, serial) {
  const started = performance.now();
  const node = el("div", { dataset: { view: "run" } }, el("p", { class: "muted", text: "loading run " + id + "…" }));
  const load = async () => {
    const [trace, profile] = await Promise.all([
      getJson("/traces/" + encodeURIComponent(id)),
      getJson("/traces/" + encodeURIComponent(id) + "?format=stacks"),
    ]);
    if (!current(serial)) return;
    const spans = trace.spans;
    const run = spans[1] || spans[0];
    const details = el("aside", { id: "details", class: "details" }, el("p", { class: "muted", text: "Click a frame or a span to see its attributes." }));
    const show = (title, pairs) => {
      details.replaceChildren(el("h3", { text: title }), attributeList(pairs));
    };
    const failed = spans[0] && spans[0].error;
    const downloads = el(
      "div",
      { class: "downloads" },
      "profile: ",
      ...[
        ["folded", "folded.txt"],
        ["speedscope", "speedscope.json"],
        ["pprof", "pb.gz"],
        ["svg", "svg"],
      ].map(([format, ext]) =>
        el("button", {
          type: "button",
          text: format,
          onclick: () =>
            download("/traces/" + id + "?format=" + format, trace.module + "-" + id + "." + ext).catch(showError),
        }),
      ),
    );
    node.replaceChildren(
      el(
        "div",
        { class: "run-head" },
        el("h2", {}, "run of ", el("a", { href: "#/module/" + encodeURIComponent(trace.module), text: trace.module })),
        el("p", { class: "mono", text: id }),
        el(
          "p",
          {},
          el("span", { class: failed ? "badge failed" : "badge ok", text: failed || "ok" }),
          " " + fmtNs(run.duration_ns) + " · " + fmtCount(spans.length) + " spans · " + fmtCount(sumCalls(trace.functions)) + " calls",
        ),
        downloads,
      ),
      el("div", { class: "run-body" },
        el(
          "div",
          { class: "run-main" },
          el("h3", { text: "Timeline" }),
          timeline(spans, show),
          el("h3", { text: "Flame graph" }),
          profileNote(profile),
          flameGraph(profile, show),
          el("h3", { text: "Functions" }),
          functionTable(trace.functions, run.duration_ns),
          outputs(run),
        ),
        details,
      ),
    );
    const ms = Math.round(performance.now() - started);
    node.dataset.renderMs = String(ms);
    node.dataset.ready = id;
  };
  return { node, load };
}

function sumCalls(functions) {
  return functions.reduce((n, f) => n + f.calls, 0);
}

function profileNote(profile) {
  const notes = [];
  if (!profile.stacks) notes.push("No calls were recorded for this run: one flat frame per function with its exact self time.");
  if (profile.calls_outside_stacks > 0)
    notes.push(
      fmtCount(profile.calls_outside_stacks) +
        " calls are not on a frame (shorter than the minimum span, or beyond the log): their time is in their callers' self time. The function table counts every call.",
    );
  if (profile.calls_counted > 0)
    notes.push(
      fmtCount(profile.calls_counted) +
        " calls of short functions were counted, not timed: they are on no frame and their time is in their callers' self time.",
    );
  return notes.length ? el("p", { class: "muted note", text: notes.join(" ") }) : null;
}

function attributeList(pairs) {
  return el(
    "dl",
    {},
    ...pairs.flatMap(([key, value]) => [
      el("dt", { text: key }),
      el("dd", { class: typeof value === "string" && value.includes("\n") ? "pre" : "", text: String(value) }),
    ]),
  );
}

function outputs(run) {
  const parts = [];
  for (const event of run.events || []) {
    if (event.name === "exception") {
      parts.push(el("h3", { text: "Trap" }), el("pre", { id: "trap", class: "error-box", text: (event.attributes["exception.message"] || "") + "\n\n" + (event.attributes["exception.stacktrace"] || "") }));
    }
    if (event.name === "stderr") {
      parts.push(el("h3", { text: "stderr" }), el("pre", { id: "stderr", text: event.attributes["log.record.original"] || "" }));
    }
  }
  return el("div", {}, ...parts);
}

// ---- timeline: one row per depth, drawn on a canvas ----------------------------------------

const ROW = 16;

function timeline(spans, show) {
  const wrap = el("div", { class: "timeline" });
  const canvas = el("canvas", { id: "timeline" });
  wrap.append(canvas);
  if (!spans.length) return wrap;
  const index = new Map();
  const rows = [];
  let t0 = Infinity;
  let t1 = 0;
  for (const span of spans) {
    const parent = span.parent_span_id ? index.get(span.parent_span_id) : undefined;
    const depth = parent ? parent.depth + 1 : 0;
    const start = Number(span.start_unix_nanos);
    const item = { span, depth, start, end: start + Number(span.duration_ns) };
    index.set(span.span_id, item);
    (rows[depth] = rows[depth] || []).push(item);
    t0 = Math.min(t0, item.start);
    t1 = Math.max(t1, item.end);
  }
  for (const row of rows) row.sort((a, b) => a.start - b.start);
  const span = Math.max(1, t1 - t0);
  const draw = () => {
    const width = Math.max(300, wrap.clientWidth);
    const ratio = window.devicePixelRatio || 1;
    canvas.width = width * ratio;
    canvas.height = rows.length * ROW * ratio;
    canvas.style.width = width + "px";
    canvas.style.height = rows.length * ROW + "px";
    const g = canvas.getContext("2d");
    g.scale(ratio, ratio);
    g.font = "11px sans-serif";
    g.textBaseline = "middle";
    rows.forEach((row, depth) => {
      let lastPixel = -1;
      for (const item of row) {
        const x = ((item.start - t0) / span) * width;
        const w = Math.max(1, ((item.end - item.start) / span) * width);
        // Many spans in one pixel: draw the pixel once.
        if (w < 2 && Math.floor(x) === lastPixel) continue;
        lastPixel = Math.floor(x);
        g.fillStyle = item.span.error ? "#d9534f" : colour(item.span.name, depth);
        g.fillRect(x, depth * ROW, w - (w > 3 ? 1 : 0), ROW - 1);
        if (w > 40) {
          g.fillStyle = "#111";
          g.save();
          g.beginPath();
          g.rect(x, depth * ROW, w - 2, ROW);
          g.clip();
          g.fillText(item.span.name, x + 3, depth * ROW + ROW / 2);
          g.restore();
        }
      }
    });
  };
  canvas.addEventListener("click", (event) => {
    const rect = canvas.getBoundingClientRect();
    const depth = Math.floor((event.clientY - rect.top) / ROW);
    const at = t0 + ((event.clientX - rect.left) / rect.width) * span;
    const tolerance = (2 / rect.width) * span;
    const row = rows[depth] || [];
    let hit = null;
    for (const item of row) {
      if (item.start - tolerance <= at && at <= item.end + tolerance) hit = item;
      if (item.start > at + tolerance) break;
    }
    if (!hit) return;
    const s = hit.span;
    const pairs = [
      ["duration", fmtNs(s.duration_ns)],
      ["start", "+" + fmtNs(hit.start - t0)],
      ["span id", s.span_id],
    ];
    if (s.error) pairs.push(["error", s.error]);
    for (const [k, v] of Object.entries(s.attributes || {})) pairs.push([k, v]);
    for (const e of s.events || []) pairs.push(["event " + e.name, JSON.stringify(e.attributes)]);
    show(s.name, pairs);
  });
  requestAnimationFrame(draw);
  new ResizeObserver(() => draw()).observe(wrap);
  return wrap;
}

function colour(name, depth) {
  if (name.startsWith("wasi:")) return "hsl(205, 70%, 70%)";
  if (name === "POST /run" || name.startsWith("run ")) return "hsl(0, 0%, 80%)";
  let h = 0;
  for (let i = 0; i < name.length; i++) h = (h * 31 + name.charCodeAt(i)) >>> 0;
  return "hsl(" + (10 + (h % 45)) + ", " + (70 + (depth % 3) * 8) + "%, " + (58 + (h % 13)) + "%)";
}

// ---- flame graph: an icicle of the merged stacks, in DOM -----------------------------------

// Frames narrower than this share of the root are not drawn (their time is in their parent).
const MIN_SHARE = 0.0005;

function flameGraph(profile, show) {
  const frames = profile.frames;
  const root = frames[0];
  const children = frames.map(() => []);
  frames.forEach((f, i) => {
    if (f.parent !== undefined) children[f.parent].push(i);
  });
  for (const list of children) list.sort((a, b) => frames[b].total_ns - frames[a].total_ns || frames[a].name.localeCompare(frames[b].name));
  const graph = el("div", { class: "flame", id: "flame" });
  let zoom = 0;
  const draw = () => {
    const base = frames[zoom];
    const whole = Math.max(1, base.total_ns);
    const nodes = [];
    let depthMax = 0;
    let hidden = 0;
    const place = (i, left, depth) => {
      const f = frames[i];
      const share = f.total_ns / whole;
      if (share < MIN_SHARE && i !== zoom) {
        hidden++;
        return;
      }
      depthMax = Math.max(depthMax, depth);
      const div = el("div", {
        class: "frame" + (f.name.startsWith("wasi:") ? " host" : ""),
        title: f.name + "\n" + fmtCount(f.calls) + " calls · total " + fmtNs(f.total_ns) + " · self " + fmtNs(f.self_ns),
        dataset: { index: i, name: f.name, calls: f.calls, total: f.total_ns, self: f.self_ns, depth },
      });
      div.style.left = (left * 100).toFixed(6) + "%";
      div.style.width = (share * 100).toFixed(6) + "%";
      div.style.top = depth * 18 + "px";
      div.style.background = colour(f.name, depth);
      div.append(el("span", { text: f.name }));
      nodes.push(div);
      let x = left;
      for (const c of children[i]) {
        place(c, x, depth + 1);
        x += frames[c].total_ns / whole;
      }
    };
    // Ancestors of the zoomed frame, full width, above it.
    const ancestors = [];
    for (let a = frames[zoom].parent; a !== undefined; a = frames[a].parent) ancestors.unshift(a);
    ancestors.forEach((a, depth) => {
      const f = frames[a];
      const div = el("div", { class: "frame ancestor", title: f.name, dataset: { index: a, name: f.name, depth } });
      div.style.left = "0%";
      div.style.width = "100%";
      div.style.top = depth * 18 + "px";
      div.append(el("span", { text: f.name }));
      nodes.push(div);
    });
    place(zoom, 0, ancestors.length);
    graph.replaceChildren(...nodes);
    graph.style.height = (depthMax + 1) * 18 + "px";
    graph.dataset.hidden = hidden;
  };
  graph.addEventListener("click", (event) => {
    const target = event.target.closest(".frame");
    if (!target) return;
    const i = Number(target.dataset.index);
    const f = frames[i];
    const path = [];
    for (let a = i; a !== undefined; a = frames[a].parent) path.unshift(frames[a].name);
    const zoomButton = el("button", {
      type: "button",
      text: i === zoom ? "reset zoom" : "zoom to this frame",
      onclick: () => {
        zoom = i === zoom ? 0 : i;
        draw();
      },
    });
    show(f.name, [
      ["calls", fmtCount(f.calls)],
      ["total", fmtNs(f.total_ns) + " (" + pct(f.total_ns, root.total_ns) + " of " + (i === 0 ? "it" : root.name) + ")"],
      ["self", fmtNs(f.self_ns) + " (" + pct(f.self_ns, root.total_ns) + ")"],
      ["stack", path.join("\n")],
    ]);
    document.getElementById("details").append(zoomButton);
  });
  draw();
  return graph;
}

// ---- per-function table, sortable ----------------------------------------------------------

function functionTable(functions, runNs) {
  const columns = [
    { key: "name", title: "function" },
    { key: "calls", title: "calls", num: true },
    { key: "total_ns", title: "total", num: true, ns: true },
    { key: "self_ns", title: "self", num: true, ns: true },
    { key: "max_ns", title: "max", num: true, ns: true },
    { key: "self_share", title: "self %", num: true },
  ];
  const rows = functions.map((f) => ({ ...f, self_share: runNs ? f.self_ns / runNs : 0 }));
  let sortKey = "total_ns";
  let descending = true;
  const body = el("tbody");
  const head = el("tr");
  const tableNode = el("table", { id: "functions", class: "functions" }, el("thead", {}, head), body);
  const draw = () => {
    rows.sort((a, b) => {
      const x = a[sortKey];
      const y = b[sortKey];
      const order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return descending ? -order : order;
    });
    head.replaceChildren(
      ...columns.map((c) =>
        el(
          "th",
          {
            class: (c.num ? "num " : "") + "sortable" + (c.key === sortKey ? (descending ? " desc" : " asc") : ""),
            dataset: { key: c.key },
            onclick: () => {
              descending = c.key === sortKey ? !descending : c.key !== "name";
              sortKey = c.key;
              draw();
            },
          },
          c.title,
        ),
      ),
    );
    body.replaceChildren(
      ...rows.map((f) =>
        el(
          "tr",
          { dataset: { name: f.name } },
          el("td", { class: "mono", text: f.name }),
          el("td", { class: "num calls", text: fmtCount(f.calls) }),
          el("td", { class: "num", text: fmtNs(f.total_ns) }),
          el("td", { class: "num", text: fmtNs(f.self_ns) }),
          el("td", { class: "num", text: fmtNs(f.max_ns) }),
          el("td", { class: "num", text: (100 * f.self_share).toFixed(1) + " %" }),
        ),
      ),
    );
  };
  draw();
  return tableNode;
}

// ---- one module: its recent runs merged ----------------------------------------------------

function moduleView(name, serial) {
  const node = el("div", { dataset: { view: "module" } }, el("p", { class: "muted", text: "loading " + name + "…" }));
  const load = async () => {
    const [recent, profile] = await Promise.all([
      getJson("/traces"),
      getJson("/modules/" + encodeURIComponent(name) + "/profile?format=stacks").catch((err) => {
        if (err instanceof Unauthorized) throw err;
        return null;
      }),
    ]);
    if (!current(serial)) return;
    const details = el("aside", { id: "details", class: "details" }, el("p", { class: "muted", text: "Click a frame to see its figures." }));
    const show = (title, pairs) => details.replaceChildren(el("h3", { text: title }), attributeList(pairs));
    const runs = recent.traces.filter((t) => t.module === name);
    node.replaceChildren(
      el("h2", { text: "module " + name }),
      el(
        "div",
        { class: "run-body" },
        el(
          "div",
          { class: "run-main" },
          el("h3", { text: profile ? "Flame graph of " + profile.title : "Flame graph" }),
          profile ? profileNote(profile) : null,
          profile ? flameGraph(profile, show) : el("p", { class: "muted", text: "No recent runs of this module." }),
          el(
            "div",
            { class: "downloads" },
            "merged profile: ",
            ...["folded", "speedscope", "pprof", "svg"].map((format) =>
              el("button", {
                type: "button",
                text: format,
                onclick: () => download("/modules/" + encodeURIComponent(name) + "/profile?format=" + format, name + "-recent." + format).catch(showError),
              }),
            ),
          ),
          el("h3", { text: "Recent runs" }),
          runsTable(runs),
        ),
        details,
      ),
    );
    node.dataset.ready = name;
  };
  return { node, load };
}

// ---- start ---------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("token-form");
  const input = document.getElementById("token-input");
  document.getElementById("token-button").addEventListener("click", () => {
    form.hidden = !form.hidden;
    if (!form.hidden) input.focus();
  });
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (input.value) sessionStorage.setItem(TOKEN_KEY, input.value);
    else sessionStorage.removeItem(TOKEN_KEY);
    input.value = "";
    form.hidden = true;
    route();
  });
  window.addEventListener("hashchange", route);
  route();
});
