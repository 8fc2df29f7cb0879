// segflow dashboard: plain JS over the worker's JSON views, charts by uPlot (vendored).
// After each refresh the page sets data attributes tests can read:
//   body[data-ready]   number of completed refreshes
//   body[data-charts]  uPlot charts drawn
//   .chart[data-series][data-points]   lines and points in each chart
//   #customer-result[data-status]      idle | loading | ok | not-found | error
//   #worker-status[data-verdict]       starting | keeping-up | behind (from /status), [data-lag] [data-backlog]
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const REFRESH_MS = 5000;
const charts = {}; // key -> {plot, labels}
const STATUS_POINTS = 720; // lag/backlog samples kept in the page (an hour at 5 s)
const statusHistory = { t: [], lag: [], backlog: [], outbox: [] };
let refreshes = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

async function getJSON(path) {
  const res = await fetch(path, { headers: { Accept: "application/json" } });
  let body = null;
  try { body = await res.json(); } catch (e) { body = { error: `HTTP ${res.status}` }; }
  return { ok: res.ok, status: res.status, body };
}

function since() { return document.getElementById("since").value; }

// The chart's own box (laid out by CSS flex) sets the width.
function chartWidth(box) {
  return Math.max(300, Math.floor(box.clientWidth || document.body.clientWidth - 48) - 4);
}

// "2026-01-21T03:50:35.329000+00:00" -> "2026-01-21 03:50:35Z"
function fmtTime(iso) {
  return iso == null ? null : String(iso).replace("T", " ").replace(/\.\d+/, "").replace(/(\+00:00|Z)$/, "Z");
}

// One uPlot line chart per key; recreated when its series change, else setData.
function drawChart(container, key, title, labels, xs, ys, height) {
  let box = container.querySelector(`.chart[data-key="${key}"]`);
  if (!box) {
    box = el("div", { class: "chart", "data-key": key });
    container.append(box);
  }
  const data = [xs, ...ys];
  const existing = charts[key];
  const same = existing && existing.labels.join("|") === labels.join("|");
  if (same) {
    existing.plot.setData(data);
  } else {
    if (existing) existing.plot.destroy();
    box.textContent = "";
    const opts = {
      title,
      width: chartWidth(box),
      height: height || 220,
      scales: { x: { time: true } },
      series: [{}, ...labels.map((label, i) => ({ label, stroke: PALETTE[i % PALETTE.length], width: 2, spanGaps: true }))],
      axes: [{}, { size: 60 }],
    };
    charts[key] = { plot: new uPlot(opts, data, box), labels };
  }
  box.dataset.series = String(labels.length);
  box.dataset.points = String(xs.length);
}

function renderSizes(view) {
  const container = document.getElementById("sizes");
  const xs = view.t.map((ms) => ms / 1000);
  for (const [segmentation, segs] of Object.entries(view.segmentations)) {
    const labels = Object.keys(segs);
    drawChart(container, `sizes-${segmentation}`, segmentation, labels, xs, labels.map((s) => segs[s]));
  }
  const rate = document.getElementById("rate");
  drawChart(rate, "change-rate", "changes / s", ["changes per second"], xs, [view.change_rate], 180);
  const last = view.changes.length ? view.changes[view.changes.length - 1] : null;
  document.getElementById("changes-total").textContent =
    last == null ? "no sizes recorded yet in this window (the worker records them every few seconds)" : `${last} segment changes in total; ${xs.length} samples in this window`;
}

function renderCurrent(sizes) {
  const box = document.getElementById("current");
  box.textContent = "";
  for (const [segmentation, segs] of Object.entries(sizes)) {
    const total = Object.values(segs).reduce((a, b) => a + b, 0) || 1;
    const table = el("table", { class: "current", "data-segmentation": segmentation }, el("caption", {}, segmentation));
    Object.entries(segs).forEach(([seg, n], i) => {
      const bar = el("span", { class: "bar", style: `width:${(100 * n) / total}%;background:${PALETTE[i % PALETTE.length]}` });
      table.append(el("tr", {}, el("td", {}, seg), el("td", { class: "num" }, n), el("td", { class: "barcell" }, bar)));
    });
    box.append(table);
  }
}

function renderFlows(view) {
  const box = document.getElementById("flows");
  box.textContent = "";
  document.getElementById("flows-window").textContent = `(${view.total} changes, ${view.hours} hourly buckets since ${fmtTime(view.since)})`;
  const entries = Object.entries(view.segmentations);
  if (!entries.length) {
    box.append(el("p", { class: "muted" }, "no segment changes in this window"));
    return;
  }
  for (const [segmentation, cells] of entries) {
    const max = Math.max(...cells.map((c) => c.count), 1);
    const table = el("table", { class: "flow", "data-segmentation": segmentation, "data-rows": String(cells.length) }, el("caption", {}, segmentation));
    table.append(el("tr", {}, el("th", {}, "from"), el("th", {}, ""), el("th", {}, "to"), el("th", { class: "num" }, "changes"), el("th", {}, "")));
    for (const c of cells.slice(0, 25)) {
      const bar = el("span", { class: "bar", style: `width:${(100 * c.count) / max}%` });
      table.append(el("tr", {}, el("td", {}, c.from == null ? "(entered)" : c.from), el("td", {}, "→"), el("td", {}, c.to), el("td", { class: "num" }, c.count), el("td", { class: "barcell" }, bar)));
    }
    if (cells.length > 25) table.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, `… ${cells.length - 25} smaller flows`)));
    box.append(table);
  }
}

function secs(x) { return x == null ? "-" : `${x.toFixed(1)} s`; }

// /status is this worker's view (its partitions); `segflow status` sums the deployment.
function renderStatus(res) {
  const box = document.getElementById("worker-status");
  const badge = document.getElementById("worker-verdict");
  box.textContent = "";
  if (!res.ok) {
    box.dataset.verdict = "starting";
    badge.textContent = "starting";
    badge.className = "verdict";
    box.append(el("p", { class: "muted" }, res.body.error || `HTTP ${res.status}`));
    return;
  }
  const s = res.body;
  box.dataset.verdict = s.keeping_up ? "keeping-up" : "behind";
  box.dataset.lag = String(s.total_lag);
  box.dataset.backlog = String(s.deadline_backlog);
  badge.textContent = s.keeping_up ? "keeping up" : "BEHIND";
  badge.className = `verdict ${s.keeping_up ? "ok" : "behind"}`;
  const facts = el("table", { class: "facts" },
    row("consumer lag", `${s.total_lag} messages`),
    row("applied", s.applied_per_s == null ? null : `${Math.round(s.applied_per_s)} events/s`),
    row("deadline backlog", `${s.deadline_backlog} due, oldest ${secs(s.oldest_due_s)}`),
    row("outbox", `${s.outbox} changes, oldest ${secs(s.outbox_oldest_s)}`));
  const parts = el("table", { class: "lag" }, el("tr", {}, el("th", {}, "partition"), el("th", { class: "num" }, "lag")));
  for (const [name, n] of Object.entries(s.lag)) parts.append(el("tr", {}, el("td", {}, name), el("td", { class: "num" }, n)));
  box.append(facts, parts);
  for (const reason of s.reasons) box.append(el("p", { class: "error" }, reason));
  const h = statusHistory;
  h.t.push(Date.now() / 1000); h.lag.push(s.total_lag); h.backlog.push(s.deadline_backlog); h.outbox.push(s.outbox);
  if (h.t.length > STATUS_POINTS) for (const k of Object.keys(h)) h[k].shift();
  drawChart(document.getElementById("lag"), "lag", "lag, backlog, outbox", ["consumer lag", "deadlines due", "outbox"], h.t, [h.lag, h.backlog, h.outbox], 180);
}

async function refresh() {
  const status = document.getElementById("status");
  const s = encodeURIComponent(since());
  try {
    const [sizes, current, flows, workerStatus] = await Promise.all([
      getJSON(`sizes?since=${s}`), getJSON("segments"), getJSON(`flows?since=${s}`), getJSON("status"),
    ]);
    const failed = [sizes, current, flows].find((r) => !r.ok);
    if (failed) throw new Error(failed.body && failed.body.error ? failed.body.error : `HTTP ${failed.status}`);
    renderSizes(sizes.body);
    renderCurrent(current.body);
    renderFlows(flows.body);
    renderStatus(workerStatus);
    refreshes += 1;
    document.body.dataset.ready = String(refreshes);
    document.body.dataset.charts = String(Object.keys(charts).length);
    status.textContent = `updated ${new Date().toLocaleTimeString()}`;
    status.className = "muted";
  } catch (e) {
    status.textContent = `refresh failed: ${e.message}`;
    status.className = "error";
  }
}

function row(label, value) {
  return el("tr", {}, el("th", {}, label), el("td", {}, value == null ? "-" : value));
}

async function lookup(customerId) {
  const section = document.getElementById("customer");
  const out = document.getElementById("customer-result");
  section.hidden = false;
  document.getElementById("customer-title").textContent = customerId;
  out.dataset.status = "loading";
  out.textContent = "loading…";
  const res = await getJSON(`customers/${encodeURIComponent(customerId)}?history=10`);
  out.textContent = "";
  out.dataset.customer = customerId;
  if (!res.ok) {
    out.dataset.status = res.status === 404 ? "not-found" : "error";
    out.append(el("p", { class: "error" }, res.body.error || `HTTP ${res.status}`));
    return;
  }
  const v = res.body;
  const segs = el("table", { class: "segments" }, el("tr", {}, el("th", {}, "segmentation"), el("th", {}, "segment"), el("th", {}, "since"), el("th", {}, "why"), el("th", {}, "model")));
  for (const [name, a] of Object.entries(v.segments)) {
    segs.append(el("tr", { "data-segmentation": name }, el("td", {}, name), el("td", { class: "segment" }, a.segment), el("td", {}, fmtTime(a.since)), el("td", {}, a.reason), el("td", {}, a.model_version == null ? "-" : `v${a.model_version}`)));
  }
  const facts = el("table", { class: "facts" },
    row("churn propensity", v.churn_propensity == null ? null : v.churn_propensity.toFixed(2)),
    row("as of", fmtTime(v.as_of)), row("first seen", fmtTime(v.first_seen)), row("last seen", fmtTime(v.last_seen)),
    row("events applied", v.events_applied), row("next re-evaluation", fmtTime(v.next_reevaluation)),
    row("top categories", (v.top_categories || []).map((c) => `${c.category} ${Math.round(c.share * 100)}%`).join(", ") || null));
  const feats = el("table", { class: "features" });
  for (const [name, value] of Object.entries(v.features)) {
    feats.append(row(name, value == null ? null : typeof value === "number" && !Number.isInteger(value) ? value.toFixed(2) : value));
  }
  const hist = el("table", { class: "history" }, el("tr", {}, el("th", {}, "when (event time)"), el("th", {}, "segmentation"), el("th", {}, "from"), el("th", {}, ""), el("th", {}, "to"), el("th", {}, "why")));
  for (const c of v.history) {
    hist.append(el("tr", {}, el("td", {}, fmtTime(c.occurred_at)), el("td", {}, c.segmentation), el("td", {}, c.from || "(entered)"), el("td", {}, "→"), el("td", {}, c.to), el("td", {}, c.reason)));
  }
  out.append(
    el("div", { class: "row" }, el("div", { class: "col" }, segs, facts), el("div", { class: "col" }, el("h3", {}, "latest segment changes"), hist)),
    el("details", {}, el("summary", {}, `features (${Object.keys(v.features).length})`), feats),
  );
  out.dataset.status = "ok";
}

function start() {
  const params = new URLSearchParams(window.location.search);
  const select = document.getElementById("since");
  if (params.get("since")) {
    const wanted = params.get("since");
    if (![...select.options].some((o) => o.value === wanted)) select.append(el("option", { value: wanted }, wanted));
    select.value = wanted;
  }
  select.addEventListener("change", refresh);
  document.getElementById("lookup").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const id = document.getElementById("customer-id").value.trim();
    if (id) {
      const url = new URL(window.location.href);
      url.searchParams.set("customer", id);
      window.history.replaceState(null, "", url);
      lookup(id);
    }
  });
  const customer = params.get("customer");
  if (customer) {
    document.getElementById("customer-id").value = customer;
    lookup(customer);
  }
  window.addEventListener("resize", () => {
    for (const { plot } of Object.values(charts)) plot.setSize({ width: chartWidth(plot.root.parentNode), height: plot.height });
  });
  refresh();
  setInterval(refresh, REFRESH_MS);
}

start();
