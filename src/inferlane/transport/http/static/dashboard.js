// inferlane dashboard: polls /dashboard/data every second and draws tables and two line charts on
// <canvas>. No framework, no build step, nothing fetched from anywhere but this server.
"use strict";

const POLL_MS = 1000;
const KEEP = 120; // points per chart line: two minutes at one poll a second
const COLORS = ["#4a6fd1", "#d1664a", "#2a7d46", "#9b4ad1", "#c9a227", "#1f9bb3", "#b3261e", "#555"];
const history = new Map(); // "model/version/lane" -> {rps: [], p99: []}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function num(v, digits) {
  if (v === null || v === undefined) return "-";
  return Number(v).toFixed(digits === undefined ? 1 : digits);
}

function fill(tableId, rows, emptyText) {
  const body = document.querySelector("#" + tableId + " tbody");
  const cols = document.querySelectorAll("#" + tableId + " thead th").length;
  body.replaceChildren();
  if (rows.length === 0) {
    const tr = el("tr");
    const td = el("td", emptyText, "none");
    td.colSpan = cols;
    tr.append(td);
    body.append(tr);
    return;
  }
  for (const cells of rows) {
    const tr = el("tr");
    for (const c of cells) tr.append(c instanceof Node ? c : el("td", c));
    body.append(tr);
  }
}

function cell(text, field, cls) {
  const td = el("td", text, cls);
  if (field) td.dataset.field = field;
  return td;
}

function batchBars(buckets) {
  const td = el("td");
  const box = el("span", null, "bars");
  const most = Math.max(1, ...buckets.map((b) => b.count));
  for (const b of buckets) {
    const bar = el("i");
    bar.style.height = Math.max(2, Math.round((100 * b.count) / most)) + "%";
    bar.title = "<= " + (b.le === null ? "inf" : b.le) + " rows: " + b.count + " batches";
    box.append(bar);
  }
  td.append(box);
  return td;
}

function errorsText(errors) {
  const parts = Object.entries(errors).map(([status, rate]) => status + ": " + num(rate, 2) + "/s");
  return parts.length ? parts.join(", ") : "-";
}

function versionRows(versions) {
  return versions.map((v) => {
    const total = Object.values(v.requests).reduce((a, b) => a + b, 0);
    const tr = [
      cell(v.model, "model", "text"), cell(v.version, "version", "text"), cell(v.lane, "lane", "text"),
      cell(num(v.rps), "rps"), cell(num(v.latency_ms.p50, 2), "p50"), cell(num(v.latency_ms.p95, 2), "p95"),
      cell(num(v.latency_ms.p99, 2), "p99"), cell(errorsText(v.errors_per_s), "errors"),
      cell(v.error_rate === null ? "-" : (100 * v.error_rate).toFixed(2) + "%", "error_rate"),
      cell(v.queue_depth, "queue_depth"), cell(v.inflight_batches, "inflight"),
      cell(num(v.forward_ms.mean, 2) + " / " + num(v.forward_ms.p99, 2), "forward"),
      cell(num(v.batch_size.mean, 1), "batch_mean"), batchBars(v.batch_size.buckets),
      cell(v.traffic_weight === null ? "-" : num(v.traffic_weight, 2), "weight"), cell(total, "requests"),
    ];
    return tr;
  });
}

function ago(ts, now) {
  return ts ? Math.max(0, now - ts).toFixed(0) + " s ago" : "-";
}

function progressCell(fraction) {
  const td = el("td");
  const bar = el("span", null, "progress");
  const inner = el("i");
  inner.style.width = Math.round(100 * Math.min(1, Math.max(0, fraction || 0))) + "%";
  bar.append(inner);
  td.append(bar, " " + (100 * (fraction || 0)).toFixed(1) + "%");
  return td;
}

function record(versions) {
  const seen = new Set();
  for (const v of versions) {
    const key = v.model + "/" + v.version + "/" + v.lane;
    seen.add(key);
    if (!history.has(key)) history.set(key, { rps: [], p99: [] });
    const h = history.get(key);
    h.rps.push(v.rps);
    h.p99.push(v.latency_ms.p99);
    if (h.rps.length > KEEP) { h.rps.shift(); h.p99.shift(); }
  }
  for (const key of [...history.keys()]) if (!seen.has(key)) history.delete(key);
}

function draw(canvasId, field) {
  const canvas = document.getElementById(canvasId);
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 36;
  ctx.clearRect(0, 0, w, h);
  let top = 0;
  for (const s of history.values()) for (const y of s[field]) if (y !== null && y > top) top = y;
  top = top > 0 ? top * 1.1 : 1;
  ctx.strokeStyle = "#ccc";
  ctx.fillStyle = "#666";
  ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = h - pad / 2 - ((h - pad) * i) / 4;
    ctx.beginPath(); ctx.moveTo(pad, y); ctx.lineTo(w, y); ctx.stroke();
    ctx.fillText(((top * i) / 4).toPrecision(3), 2, y + 4);
  }
  let c = 0;
  for (const s of history.values()) {
    ctx.strokeStyle = COLORS[c++ % COLORS.length];
    ctx.lineWidth = 2;
    ctx.beginPath();
    let started = false;
    s[field].forEach((y, i) => {
      if (y === null) { started = false; return; }
      const x = pad + ((w - pad) * i) / (KEEP - 1);
      const py = h - pad / 2 - ((h - pad) * y) / top;
      if (started) ctx.lineTo(x, py); else ctx.moveTo(x, py);
      started = true;
    });
    ctx.stroke();
  }
}

function legend() {
  const box = document.getElementById("legend");
  box.replaceChildren();
  let c = 0;
  for (const key of history.keys()) {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = COLORS[c++ % COLORS.length];
    item.append(swatch, key);
    box.append(item);
  }
}

function render(d) {
  const ready = document.getElementById("ready");
  ready.textContent = d.ready ? "ready" : "not ready";
  ready.className = "badge " + (d.ready ? "ready" : "not-ready");
  let total = 0, rps = 0;
  for (const v of d.versions) {
    total += Object.values(v.requests).reduce((a, b) => a + b, 0);
    rps += v.rps || 0;
  }
  document.getElementById("total-requests").textContent = String(total);
  document.getElementById("total-rps").textContent = d.window_s === null ? "-" : rps.toFixed(1);
  document.getElementById("window").textContent = d.window_s === null ? "-" : d.window_s.toFixed(1) + " s";
  document.getElementById("updated").textContent = new Date(d.time * 1000).toLocaleTimeString();
  fill("versions", versionRows(d.versions), "no model version loaded yet");
  models(d.versions);
  fill("rollouts", d.rollouts.map((r) => [
    cell(r.model, "model", "text"), cell(r.state, "state", "text"), cell(r.stable, "stable"),
    cell(r.canary === null ? "-" : r.canary, "canary"), cell(r.step + " / " + r.steps, "step"),
    cell(num(r.weight, 2), "weight"), cell(ago(r.updated_at, d.time), "updated"),
  ]), "no rollout");
  fill("jobs", d.jobs.map((j) => [
    cell(j.model, "model", "text"), cell(j.backlog, "backlog"), cell(j.running, "running"),
    cell(num(j.oldest_age_s, 1), "oldest_age"),
  ]), "no jobs reported");
  fill("streams", d.streams.map((s) => [
    cell(s.name, "name", "text"), cell(s.model, "model", "text"), cell(s.version, "version"),
    cell(s["in"], "events_in"),
    cell(Object.entries(s.lag).map(([p, n]) => p + ": " + n).join(", ") || "-", "lag", "text"),
    cell(Object.values(s.lag).reduce((a, b) => a + b, 0), "total_lag"), cell(ago(s.updated_at, d.time), "updated"),
  ]), "no stream lane reporting");
  fill("batches", d.batches.map((b) => [
    cell(b.name, "name", "text"), cell(b.model, "model", "text"), cell(b.version, "version"),
    cell(b.state, "state", "text"), progressCell(b.rows_planned ? b.rows_done / b.rows_planned : 0),
    cell(b.rows_done + " / " + b.rows_planned, "rows"), cell(ago(b.updated_at, d.time), "updated"),
  ]), "no batch job reporting");
  record(d.versions);
  draw("chart-rps", "rps");
  draw("chart-p99", "p99");
  legend();
}

async function poll() {
  const error = document.getElementById("error");
  try {
    const r = await fetch("/dashboard/data", { cache: "no-store" });
    if (!r.ok) throw new Error("/dashboard/data answered " + r.status);
    render(await r.json());
    error.hidden = true;
  } catch (e) {
    error.textContent = "cannot reach the server: " + e.message;
    error.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

poll();

// -- the advisor: GET /dashboard/advise with the form's fields ------------------------------------

function models(versions) {
  const select = document.getElementById("advisor-model");
  const names = [...new Set(versions.map((v) => v.model))].sort();
  const have = [...select.options].map((o) => o.value);
  if (names.join("\n") === have.join("\n")) return;
  const chosen = select.value;
  select.replaceChildren(...names.map((n) => el("option", n)));
  if (names.includes(chosen)) select.value = chosen;
}

function list(id, items, tag) {
  document.getElementById(id).replaceChildren(...items.map((t) => el(tag || "li", t)));
}

async function advise(event) {
  event.preventDefault();
  const query = new URLSearchParams();
  for (const [k, v] of new FormData(event.target)) if (String(v).trim() !== "") query.set(k, String(v).trim());
  const box = document.getElementById("advice");
  const problem = document.getElementById("advice-error");
  try {
    const r = await fetch("/dashboard/advise?" + query.toString(), { cache: "no-store" });
    const doc = await r.json();
    if (!r.ok) throw new Error(doc.error || "HTTP " + r.status);
    document.getElementById("advice-pattern").textContent = doc.pattern;
    list("advice-reasons", doc.reasons);
    fill("advice-costs", doc.costs.map((c) => [
      cell(c.pattern, "pattern", c.pattern === doc.pattern ? "chosen" : ""), cell(c.replicas),
      cell(num(c.machine_hours_per_day, 1)), cell(num(c.cost_per_day, 2)), cell(num(c.cost_per_million, 4)),
      cell(c.meets_needs ? "yes" : "no: " + c.why_not),
    ]), "no pattern");
    list("advice-change", doc.what_would_change);
    list("advice-migration", doc.migration);
    problem.hidden = true;
    box.hidden = false;
  } catch (e) {
    problem.textContent = "advisor: " + e.message;
    problem.hidden = false;
    box.hidden = true;
  }
}

document.getElementById("advisor").addEventListener("submit", advise); // a deferred script: the page is parsed

