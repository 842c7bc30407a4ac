// hifidata dashboard: draws a campaign's overview JSON and polls it for changes.
// Every string from the store goes in through textContent (never innerHTML), and into plotly
// escaped, because plotly reads a few HTML tags in its text.
"use strict";

const body = document.body;
const refreshMs = Number(body.dataset.refreshMs || 2000);
let etag = null;
let renders = 0;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const esc = (text) => String(text ?? "").replace(/&/g, "&amp;").replace(/</g, "&lt;")
  .replace(/>/g, "&gt;");
const fmt = (x, digits = 3) => (x === null || x === undefined || Number.isNaN(x)) ? "–"
  : (Number.isInteger(x) ? x.toLocaleString("en") : Number(x).toPrecision(digits));
const byId = (id) => document.getElementById(id);

function fillBody(table, rows) {
  const tbody = byId(table).tBodies[0];
  tbody.replaceChildren(...rows);
}

function live(text, ok) {
  const status = byId("live-status");
  if (!status) return;
  status.textContent = text;
  status.className = ok ? "muted" : "warn";
}

// -- plots -----------------------------------------------------------------------------------
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"];
const LAYOUT = {
  margin: { l: 56, r: 12, t: 36, b: 44 }, height: 320, font: { size: 11 },
  paper_bgcolor: "rgba(0,0,0,0)", plot_bgcolor: "#fafafa",
  legend: { orientation: "h", y: -0.22, yanchor: "top" },
};

function plot(id, traces, layout) {
  const node = byId(id);
  if (!node || typeof Plotly === "undefined") return;
  if (!traces.length) {
    Plotly.purge(node);
    node.replaceChildren(el("p", { class: "muted empty", text: "nothing yet" }));
    return;
  }
  if (node.querySelector(".empty")) node.replaceChildren();
  const title = layout.title ? { ...layout.title, x: 0.01, xanchor: "left", font: { size: 13 } } : undefined;
  // no mode bar (it covers the titles): drag zooms, a double click resets
  Plotly.react(node, traces, { ...LAYOUT, ...layout, title }, { displayModeBar: false, responsive: true });
}

// -- panels ----------------------------------------------------------------------------------
function renderCampaign(data) {
  const c = data.campaign;
  byId("campaign-name").textContent = c.name;
  document.title = `hifidata: ${c.name}`;
  const state = byId("campaign-state");
  state.textContent = c.stage ? `${c.state}: ${c.stage}` : c.state;
  state.className = `state state-${c.state}`;
  byId("campaign-description").textContent = c.description;
  const writer = c.writer ? ` · writer pid ${c.writer.pid} on ${c.writer.host}` +
    (c.writer.alive === false ? " (not running)" : "") : "";
  byId("campaign-facts").textContent = `store ${c.store} (${fmt(c.bytes / 1e6)} MB) · ` +
    `created ${c.created ?? "?"} · last write ${c.updated}${writer}`;
}

function renderStages(data) {
  const links = data.prefect ? data.prefect.stages : {};
  const items = data.stages.map((s) => {
    const detail = s.detail ? [s.detail] : [];
    if (s.fraction !== undefined && s.fraction !== null) detail.push(`${(100 * s.fraction).toFixed(0)} %`);
    if (s.seconds !== null && s.seconds !== undefined) detail.push(`${fmt(s.seconds)} s`);
    if (s.error) detail.push(s.error);
    const name = links[s.name] ? el("a", { href: links[s.name], target: "_blank", rel: "noopener" }, s.name)
      : el("span", {}, s.name);
    const bar = el("span", { class: "bar" });
    if (s.fraction !== undefined && s.fraction !== null) bar.style.width = `${Math.min(100, 100 * s.fraction)}%`;
    return el("li", { class: `stage state-${s.state}`, "data-stage": s.name, title: s.started ? `started ${s.started}` : null },
      name, el("span", { class: "stage-state", "data-key": `stage.${s.name}`, text: s.state }),
      el("span", { class: "muted small", text: detail.join(" · ") }), bar);
  });
  byId("stages").replaceChildren(...items);
  const link = byId("prefect-link");
  if (data.prefect && data.prefect.campaign) {
    link.href = data.prefect.campaign;
    link.hidden = false;
  } else {
    link.hidden = true;
  }
}

function classes(counts) {
  const entries = Object.entries(counts || {});
  return entries.length ? entries.map(([k, v]) => `${k} ${v}`).join(", ") : "–";
}

function renderRungs(data) {
  const rows = data.rungs.map((r) => {
    const key = (field) => `rung.${r.name}.${field}`;
    const settings = Object.values(r.settings || {}).join(" / ");
    return el("tr", { "data-rung": r.name },
      el("td", { class: "strong", text: r.name }),
      el("td", { text: `${r.engine ?? "–"}${settings ? ": " + settings : ""}` }),
      el("td", { class: "num", "data-key": key("selected"), text: r.selected }),
      el("td", { class: "num", "data-key": key("ok"), text: r.ok }),
      el("td", { class: "num", "data-key": key("rescued"), text: r.rescued }),
      el("td", { class: "num", "data-key": key("quarantined"), text: r.quarantined }),
      el("td", { "data-key": key("failed_attempts"), text: classes(r.failed_attempts_by_class) }),
      el("td", { class: "num", "data-key": key("pending"), text: r.pending }),
      el("td", { class: "num", "data-key": key("cpu_hours"), text: fmt(r.cpu_hours) }),
      el("td", { class: "num", text: fmt(r.mean_core_seconds) }));
  });
  fillBody("rungs", rows);

  const names = data.rungs.map((r) => esc(r.name));
  const bars = [["ok", "ok", "#2ca02c"], ["quarantined", "quarantined", "#d62728"],
    ["pending", "pending", "#bbbbbb"]].map(([field, label, color]) => ({
    type: "bar", name: label, x: names, y: data.rungs.map((r) => r[field]), marker: { color },
  }));
  plot("plot-labels", data.rungs.length ? bars : [],
    { barmode: "stack", title: { text: "labels per rung" }, yaxis: { title: { text: "labels" } } });

  const curves = [];
  Object.entries(data.throughput).forEach(([rung, t], i) => {
    if (!t.time.length) return;
    curves.push({ type: "scatter", mode: "lines", name: `${esc(rung)} (all)`, x: t.time, y: t.labels,
      line: { color: PALETTE[i % PALETTE.length], shape: "hv" } });
    curves.push({ type: "scatter", mode: "lines", name: `${esc(rung)} ok`, x: t.time, y: t.ok,
      line: { color: PALETTE[i % PALETTE.length], dash: "dot", shape: "hv" } });
  });
  plot("plot-throughput", curves, { title: { text: "labels finished over time" },
    yaxis: { title: { text: "labels" } } });

  plot("plot-cost", data.rungs.length ? [
    { type: "bar", name: "ok labels", x: names, y: data.rungs.map((r) => r.cpu_hours - r.cpu_hours_failed), marker: { color: "#1f77b4" } },
    { type: "bar", name: "quarantined", x: names, y: data.rungs.map((r) => r.cpu_hours_failed), marker: { color: "#d62728" } },
  ] : [], { barmode: "stack", title: { text: "CPU-hours per rung" }, yaxis: { title: { text: "core-hours" } } });
}

function renderFailures(data) {
  const f = data.failures;
  byId("failure-count").textContent = f.total > f.rows.length ? `(${f.total}, first ${f.rows.length} shown)` : `(${f.total})`;
  byId("failure-count").dataset.key = "failures.total";
  byId("failure-count").dataset.value = f.total;
  const rows = f.rows.map((row) => el("tr", { "data-structure": row.structure_id },
    el("td", { text: row.rung }),
    el("td", { class: "mono", title: row.structure_id, text: row.structure_id.slice(0, 12) }),
    el("td", {}, el("span", { class: "tag", text: row.class })),
    el("td", { class: "message", text: row.message }),
    el("td", { text: row.rescues.length ? row.rescues.join(" → ") : (row.attempts.length ? "retried as is" : "none (not transient)") }),
    el("td", { text: row.started ?? "–" })));
  fillBody("failures", rows.length ? rows : [el("tr", {}, el("td", { colspan: 6, class: "muted", text: "none" }))]);
}

function renderCoverage(data) {
  const holder = byId("coverage-plots");
  const wanted = data.coverage.map((c, i) => `plot-coverage-${i}`);
  if (holder.children.length !== wanted.length) {
    holder.replaceChildren(...wanted.map((id) => el("div", { class: "plot", id })));
  }
  const styles = {
    pool: { color: "#c8c8c8", size: 4 }, selected: { color: "#1f77b4", size: 6 },
    "labeled ok": { color: "#2ca02c", size: 4 }, quarantined: { color: "#d62728", size: 7, symbol: "x" },
  };
  data.coverage.forEach((c, i) => {
    const traces = Object.entries(c.layers).filter(([, layer]) => layer.count > 0).map(([name, layer]) => ({
      type: "scatter", mode: "markers", x: layer.x, y: layer.y, hoverinfo: "skip",
      name: `${esc(name === "pool" ? c.pool : name)} (${layer.count.toLocaleString("en")}` +
        (layer.x.length < layer.count ? `, ${layer.x.length} shown)` : ")"),
      marker: styles[name] || {},
    }));
    const axis = (k) => c.explained_variance_ratio.length > k
      ? `PC${k + 1} (${(100 * c.explained_variance_ratio[k]).toFixed(0)} %)` : `PC${k + 1}`;
    const score = c.coverage === null || c.coverage === undefined ? "" : ` · coverage ${fmt(c.coverage)}`;
    plot(wanted[i], traces, { title: { text: `${esc(c.rung)}: pool ${esc(c.pool)}${score}` }, height: 360,
      xaxis: { title: { text: axis(0) } }, yaxis: { title: { text: axis(1) } } });
  });
}

function renderElements(data) {
  const which = document.querySelector("input[name=element-set]:checked")?.value || "labeled";
  const counts = data.elements.table.map((e) => e[which]);
  const top = Math.max(1, ...counts);
  const cells = data.elements.table.map((e) => {
    const n = e[which];
    const cell = el("div", { class: n ? "el on" : "el", "data-symbol": e.symbol, "data-count": n,
      title: `${e.symbol}: ${e.labeled} labeled, ${e.candidates} candidate structures` },
      el("b", { text: e.symbol }), el("small", { text: n ? n.toLocaleString("en") : "" }));
    cell.style.gridRow = e.row;
    cell.style.gridColumn = e.column;
    if (n) cell.style.setProperty("--heat", (Math.log(n + 1) / Math.log(top + 1)).toFixed(3));
    return cell;
  });
  byId("ptable").replaceChildren(...cells);
}

function renderModels(data) {
  const m = data.models;
  fillBody("models", m.trained.map((t) => el("tr", {},
    el("td", { class: t.name === m.final ? "strong" : "", text: t.name + (t.name === m.final ? " (final)" : "") }),
    el("td", { text: t.recipe }), el("td", { text: (t.rungs || [t.rung]).join(", ") }),
    el("td", { class: "num", text: t.n_train ?? "–" }), el("td", { class: "num", text: t.n_validation ?? "–" }))));

  const evaluations = m.evaluations;
  const last = evaluations.length ? evaluations[evaluations.length - 1] : null;
  byId("evaluation-when").textContent = last ? `(evaluation ${evaluations.length}, ${last.created})` : "(none yet)";
  fillBody("metrics", (last ? last.metrics : []).map((r) => el("tr", { "data-model": r.model, "data-rung": r.rung },
    el("td", { text: r.model }), el("td", { text: r.rung }), el("td", { class: "num", text: r.n_structures }),
    el("td", { class: "num", "data-key": `mae.${r.model}.${r.rung}.energy`, text: fmt(r.energy_mae_meV_per_atom) }),
    el("td", { class: "num", "data-key": `mae.${r.model}.${r.rung}.force`, text: fmt(r.force_mae_meV_per_A) }))));

  // MAE per rung across evaluations (one per campaign run that changed the models)
  const series = {};
  evaluations.forEach((ev, k) => ev.metrics.forEach((r) => {
    const key = `${r.model} on ${r.rung}`;
    (series[key] ||= { x: [], y: [] });
    series[key].x.push(k + 1);
    series[key].y.push(r.force_mae_meV_per_A);
  }));
  plot("plot-mae", Object.entries(series).map(([name, s]) => ({
    type: "scatter", mode: "lines+markers", name: esc(name), x: s.x, y: s.y })),
  { title: { text: "force MAE per evaluation (test split)" }, xaxis: { title: { text: "evaluation" }, dtick: 1 },
    yaxis: { title: { text: "meV/Å" }, type: "log", dtick: 1 }, height: 380 });

  const parity = m.parity ? m.parity.parities.filter((p) => p.energy_true.length) : [];
  const traces = parity.map((p, i) => ({
    type: "scatter", mode: "markers", name: `${esc(p.model)} on ${esc(p.rung)}`,
    x: p.force_true, y: p.force_pred, marker: { size: 4, color: PALETTE[i % PALETTE.length], opacity: 0.6 },
  }));
  const all = parity.flatMap((p) => p.force_true);
  if (all.length) {
    const lo = Math.min(...all), hi = Math.max(...all);
    traces.push({ type: "scatter", mode: "lines", x: [lo, hi], y: [lo, hi], name: "y = x",
      line: { color: "#888", width: 1 }, hoverinfo: "skip" });
  }
  plot("plot-parity", traces, { title: { text: "force parity (test split)" }, height: 380,
    xaxis: { title: { text: "label eV/Å" } }, yaxis: { title: { text: "model eV/Å" } } });

  const rows = [];
  for (const [temperature, s] of Object.entries(m.stability || {})) {
    rows.push(el("tr", {}, el("td", { text: `evaluate: ${m.final}` }), el("td", { class: "num", text: temperature }),
      el("td", { class: "num", text: `${s.stable}/${s.runs}` }), el("td", { class: "num", text: fmt(s.simulated_ps) }),
      el("td", { text: s.min_time_to_failure_ps ? `first failure at ${fmt(s.min_time_to_failure_ps)} ps` : "" })));
  }
  const d = m.deploy;
  if (d && d.model) {
    rows.push(el("tr", {}, el("td", { text: `deploy: ${d.model} (${d.ensemble ?? "md"})` }),
      el("td", { class: "num", text: d.temperature_K }), el("td", { class: "num", text: `${d.stable_replicas}/${d.replicas}` }),
      el("td", { class: "num", text: fmt(d.time_ps) }),
      el("td", { text: (d.stopped ? `stopped: ${d.stopped} · ` : "") + `${fmt(d.ns_per_day)} ns/day` })));
  }
  fillBody("stability", rows.length ? rows : [el("tr", {}, el("td", { colspan: 5, class: "muted", text: "none yet" }))]);
}

function renderReleases(data) {
  const releases = data.releases;
  fillBody("releases", releases.length ? releases.slice().reverse().map((r) => el("tr", {},
    el("td", { class: "strong", "data-key": "release.version", text: r.version ?? "–" }),
    el("td", { text: r.created }), el("td", { class: "mono", text: r.path }),
    el("td", { text: classes(r.labels) }), el("td", { text: r.license ?? "–" })))
    : [el("tr", {}, el("td", { colspan: 5, class: "muted", text: "none yet" }))]);
  const newest = releases.length ? releases[releases.length - 1] : { files: [] };
  fillBody("release-files", newest.files.map((f) => el("tr", {},
    el("td", { class: "mono", text: f.name }), el("td", { class: "num", text: fmt(f.bytes) }),
    el("td", { class: "mono hash", title: f.sha256, text: f.sha256 }))));
}

function render(data) {
  renderCampaign(data);
  renderStages(data);
  renderRungs(data);
  renderFailures(data);
  renderCoverage(data);
  renderElements(data);
  renderModels(data);
  renderReleases(data);
  renders += 1;
  body.dataset.renders = String(renders);
  if (renders === 1) window.hifidataFirstRenderMs = performance.now();
}

// -- polling ---------------------------------------------------------------------------------
let latest = null;

// this script comes before plotly.js, so the first request runs while plotly.js loads;
// drawing waits for the document (and with it every deferred script) to be ready
const documentReady = new Promise((resolve) => {
  if (typeof Plotly !== "undefined") resolve();
  else document.addEventListener("DOMContentLoaded", resolve);  // fires after deferred scripts
});

async function poll() {
  try {
    const response = await fetch(body.dataset.api, { headers: etag ? { "If-None-Match": etag } : {} });
    await documentReady;
    if (response.status === 200) {
      const data = await response.json();
      if (data.error) {
        live(data.error, false);
      } else {
        latest = data;
        etag = response.headers.get("ETag");
        render(data);
        body.dataset.etag = etag;
      }
    } else if (response.status !== 304) {
      live(`server answered ${response.status}`, false);
      return;
    }
    live(`live · checked ${new Date().toLocaleTimeString()}`, true);
  } catch (error) {
    live(`dashboard server not reachable (${error.message}); retrying`, false);
  } finally {
    setTimeout(poll, refreshMs);
  }
}

async function pollIndex() {
  try {
    const response = await fetch("/api/campaigns");
    if (response.ok) {
      const rows = await response.json();
      const shown = [...document.querySelectorAll("tr[data-campaign]")].map((tr) => tr.dataset.campaign);
      if (rows.map((row) => row.id).sort().join("\n") !== shown.sort().join("\n")) {
        location.reload();  // a campaign appeared or went: the server renders the new table
        return;
      }
      for (const row of rows) {
        const tr = document.querySelector(`tr[data-campaign="${CSS.escape(row.id)}"]`);
        if (!tr) continue;
        for (const cell of tr.querySelectorAll("[data-key]")) cell.textContent = row[cell.dataset.key];
      }
    }
  } finally {
    setTimeout(pollIndex, refreshMs);
  }
}

if (body.dataset.page === "campaign") {
  document.querySelectorAll("input[name=element-set]").forEach((input) =>
    input.addEventListener("change", () => latest && renderElements(latest)));
  poll();
} else if (body.dataset.page === "index") {
  setTimeout(pollIndex, refreshMs);
}
