// segflow preview page: POST a candidate segments YAML to /preview and show sizes and flows.
// #preview-result[data-status] is idle | running | ok | invalid | error, and each
// segmentation's table carries [data-moved] and [data-held] (tests read them).
// ?run=1 previews the loaded config at once (the browser test uses it).
"use strict";

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c == null ? "" : String(c)));
  return node;
}

const num = (n) => Number(n).toLocaleString("en");
const signed = (n) => (n > 0 ? "+" : "") + num(n);

function render(view) {
  const out = [el("p", {}, `${num(view.customers)} customers as of ${view.as_of} (clock: ${view.clock}); models: ${view.model}; ${view.seconds} s`)];
  for (const [name, s] of Object.entries(view.segmentations)) {
    const sizes = el("table", { class: "preview", "data-segmentation": name, "data-moved": s.moved, "data-held": s.held },
      el("caption", {}, `${name}: ${num(s.moved)} would move now, ${num(s.held)} held by hysteresis`),
      el("tr", {}, el("th", {}, "segment"), el("th", { class: "num" }, "now"), el("th", { class: "num" }, "candidate"), el("th", { class: "num" }, "change")));
    for (const [seg, n] of Object.entries(s.sizes)) {
      sizes.append(el("tr", {}, el("td", { class: "segment" }, seg), el("td", { class: "num" }, num(n.now)),
        el("td", { class: "num" }, num(n.candidate)), el("td", { class: "num" }, signed(n.candidate - n.now))));
    }
    const flows = el("table", { class: "flow" }, el("caption", {}, "flows (now → candidate)"),
      el("tr", {}, el("th", {}, "from"), el("th", {}, "to"), el("th", { class: "num" }, "customers"), el("th", {}, "for example")));
    for (const f of s.flows) {
      flows.append(el("tr", {}, el("td", {}, f.from), el("td", {}, f.to), el("td", { class: "num" }, num(f.customers)),
        el("td", {}, ...f.examples.flatMap((id, i) => [i ? ", " : "", el("a", { href: `../dashboard?customer=${encodeURIComponent(id)}` }, id)]))));
    }
    if (!s.flows.length) flows.append(el("tr", {}, el("td", { colspan: 4, class: "muted" }, "nobody moves")));
    out.push(el("div", {}, sizes, flows));
  }
  return out;
}

async function runPreview() {
  const box = document.getElementById("preview-result");
  const status = document.getElementById("preview-status");
  box.dataset.status = "running";
  status.textContent = "reading every customer…";
  let res, body;
  try {
    res = await fetch("../preview", { method: "POST", headers: { "Content-Type": "text/yaml", Accept: "application/json" }, body: document.getElementById("candidate").value });
    body = await res.json();
  } catch (e) {
    box.dataset.status = "error";
    box.replaceChildren(el("p", { class: "error" }, `preview failed: ${e}`));
    status.textContent = "";
    return;
  }
  status.textContent = "";
  if (!res.ok) {
    box.dataset.status = res.status === 400 ? "invalid" : "error";
    box.replaceChildren(el("p", { class: "error" }, body.error || `HTTP ${res.status}`));
    return;
  }
  box.replaceChildren(...render(body));
  box.dataset.status = "ok";
}

async function start() {
  const res = await fetch("../preview/config", { headers: { Accept: "application/json" } });
  const body = await res.json();
  document.getElementById("candidate").value = body.yaml;
  document.getElementById("source").textContent = `(from ${body.source})`;
  document.getElementById("candidate-form").addEventListener("submit", (e) => { e.preventDefault(); runPreview(); });
  if (new URLSearchParams(location.search).get("run") === "1") await runPreview();
}

start();
