// The dashboard's pages, kept live: the server renders each page with its data as JSON
// (#initial), this script draws it, then redraws on every server-sent event. Every value goes
// into the page as text, never as markup.
"use strict";

const $ = (id) => document.getElementById(id);

function el(tag, text, attrs = {}) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, value);
  return node;
}

const fixed = (digits) => (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
const pct = (v) => (v === null || v === undefined ? "–" : (100 * v).toFixed(1) + " %");
const clock = (t) => (t ? new Date(t * 1000).toLocaleTimeString() : "–");

function ago(t, now) {
  if (!t) return "";
  const s = Math.max(0, Math.round(now - t));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

function gain(row) {
  return row.miou === null || row.miou_pretrained === null ? null : row.miou - row.miou_pretrained;
}

function signedPoints(v) {
  if (v === null) return "–";
  const points = (100 * v).toFixed(1);
  return (points.startsWith("-") ? points : "+" + points).replace(/^-0\.0$/, "+0.0");
}

function live(url, draw) {
  const badge = $("live");
  const source = new EventSource(url);
  source.onopen = () => { badge.textContent = "live"; badge.className = "live on"; };
  source.onerror = () => { badge.textContent = "reconnecting…"; badge.className = "live off"; };
  source.onmessage = (event) => draw(JSON.parse(event.data));
}

// -- the fleet page ------------------------------------------------------------------------

// key, heading, cell text, class; rows sort by key (gain: computed)
const FLEET_COLUMNS = [
  ["device_id", "device"],
  ["online", "status"],
  ["version", "model"],
  ["fps", "fps", fixed(1)],
  ["sampling_fps", "sampling (fps)", fixed(2)],
  ["up_kbps", "up (Kbps)", fixed(0)],
  ["down_kbps", "down (Kbps)", fixed(1)],
  ["miou", "mIoU", pct],
  ["miou_pretrained", "pretrained", pct],
  ["gain", "gain", signedPoints],
  ["updates_sent", "sent"],
  ["updates_acked", "acked"],
  ["updates_refused", "refused"],
  ["rollbacks", "rollbacks"],
  ["paused", "learning"],
];

const fleetSort = { key: "device_id", down: false };

function sortValue(row, key) {
  return key === "gain" ? gain(row) : row[key];
}

function compareRows(a, b) {
  const x = sortValue(a, fleetSort.key), y = sortValue(b, fleetSort.key);
  if (x === y) return a.device_id < b.device_id ? -1 : 1;
  if (x === null || x === undefined) return 1; // unknown last, either way
  if (y === null || y === undefined) return -1;
  const order = x < y ? -1 : 1;
  return fleetSort.down ? -order : order;
}

function fleetCell(row, column, now) {
  const [key, , format] = column;
  const td = el("td");
  if (key === "device_id") {
    td.append(el("a", row.device_id, { href: `/devices/${encodeURIComponent(row.device_id)}` }));
  } else if (key === "online") {
    const state = row.online === null ? "unknown" : row.online ? "online" : "offline";
    td.append(el("span", state, { class: `status ${state}` }));
  } else if (key === "version") {
    td.append(el("span", row.version === null ? "–" : `v${row.version}`));
    td.append(el("small", " " + ago(row.version_since, now)));
  } else if (key === "paused") {
    td.textContent = row.paused ? "paused" : "on";
    if (row.paused) td.className = "paused";
  } else {
    const value = sortValue(row, key);
    td.textContent = format ? format(value) : value ?? "–";
  }
  return td;
}

function drawFleet(fleet) {
  const head = $("fleet-head");
  if (!head.children.length) {
    for (const column of FLEET_COLUMNS) {
      const th = el("th", column[1], { "data-key": column[0], tabindex: "0" });
      th.addEventListener("click", () => {
        fleetSort.down = fleetSort.key === column[0] ? !fleetSort.down : false;
        fleetSort.key = column[0];
        drawFleet(window.lastFleet);
      });
      head.append(th);
    }
  }
  for (const th of head.children) {
    th.className = th.dataset.key === fleetSort.key ? (fleetSort.down ? "sorted down" : "sorted up") : "";
  }
  window.lastFleet = fleet;
  const rows = document.createDocumentFragment();
  for (const row of [...fleet.rows].sort(compareRows)) {
    const tr = el("tr", null, { "data-device": row.device_id });
    for (const column of FLEET_COLUMNS) tr.append(fleetCell(row, column, fleet.now));
    rows.append(tr);
  }
  $("fleet-rows").replaceChildren(rows);
  const online = fleet.rows.filter((r) => r.online).length;
  $("count").textContent = `${fleet.rows.length} (${online} online)`;
  drawActions($("actions"), fleet.actions, true);
  window.firstDrawnAt ??= performance.now(); // ms since navigation (bench-dashboard reads it)
  document.body.dataset.drawn = String(Number(document.body.dataset.drawn || 0) + 1);
}

function drawActions(tbody, actions, withDevice) {
  const rows = document.createDocumentFragment();
  for (const a of actions) {
    const tr = el("tr", null, { class: `action ${a.state}` });
    const what = Object.entries(a.action).map(([k, v]) => (k === "kind" ? v : `${k} ${v}`)).join(" ");
    const cells = [a.id, clock(a.at), ...(withDevice ? [a.device_id] : []), what, a.remote, a.state, a.detail];
    for (const cell of cells) tr.append(el("td", cell));
    rows.append(tr);
  }
  tbody.replaceChildren(rows);
}

// -- the device page ------------------------------------------------------------------------

const PLOT = { width: 820, height: 260, left: 44, right: 12, top: 10, bottom: 46 };
const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function drawPlot(device) {
  const plot = $("plot");
  const { width, height, left, right, top, bottom } = PLOT;
  const probes = device.probes;
  const marks = device.updates.filter((u) => u.version !== null);
  const times = [...probes.map((p) => p[0]), ...marks.map((u) => u.at)];
  const t0 = times.length ? Math.min(...times) : device.now;
  const t1 = Math.max(device.now, t0 + 10);
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v) * (height - top - bottom);
  const parts = [];
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), class: "grid" }));
    parts.push(svg("text", { x: left - 6, y: y(v) + 4, class: "axis", "text-anchor": "end" }, `${100 * v}`));
  }
  parts.push(svg("text", { x: left, y: height - 4, class: "axis" }, clock(t0)));
  parts.push(svg("text", { x: width - right, y: height - 4, class: "axis", "text-anchor": "end" }, clock(t1)));
  for (const [index, name] of [[1, "device"], [2, "pretrained"]]) {
    const points = probes.map((p) => `${x(p[0]).toFixed(1)},${y(p[index]).toFixed(1)}`).join(" ");
    if (probes.length) parts.push(svg("polyline", { points, class: `line ${name}` }));
  }
  for (const u of marks) {
    const kind = u.cause.startsWith("rollback") ? "rollback" : u.outcome.startsWith("refused") ? "refused" : u.outcome;
    const at = x(u.at);
    parts.push(svg("line", { x1: at, x2: at, y1: height - bottom + 4, y2: height - bottom + 16, class: `tick ${kind}` }));
  }
  plot.replaceChildren(...parts);
  plot.dataset.points = String(probes.length);
}

function drawSummary(dl, pairs) {
  const items = document.createDocumentFragment();
  for (const [term, value] of pairs) {
    items.append(el("dt", term), el("dd", value));
  }
  dl.replaceChildren(items);
}

let shownFrame = null;

function drawFrame(device) {
  const frame = device.frame;
  if (!frame || frame.seq === shownFrame) return;
  shownFrame = frame.seq;
  const img = $("overlay");
  img.src = `/devices/${encodeURIComponent(device.row.device_id)}/frame.jpg?seq=${frame.seq}`;
  img.hidden = false;
  $("frame-caption").textContent =
    `left: the device's model (v${frame.version}); right: the teacher; probed ${clock(frame.at)}`;
  const legend = document.createDocumentFragment();
  for (const [c, r, g, b, name] of device.classes) {
    if (c === 0) continue; // background: left clear
    const swatch = el("span", name, { class: "swatch" });
    swatch.style.setProperty("--c", `rgb(${r},${g},${b})`);
    legend.append(swatch);
  }
  $("legend").replaceChildren(legend);
}

function drawDevice(device) {
  const row = device.row;
  const state = row.online === null ? "unknown" : row.online ? "online" : "offline";
  const newest = device.updates.filter((u) => u.version !== null).at(-1);
  drawSummary($("summary"), [
    ["status", state],
    ["model", row.version === null ? "–" : `v${row.version}, ${ago(row.version_since, device.now)}`],
    ["fps", fixed(1)(row.fps)],
    ["sampling", `${fixed(2)(row.sampling_fps)} fps` + (device.sampling_bounds ? ` (bounds ${device.sampling_bounds.join("-")})` : "")],
    ["up / down", `${fixed(0)(row.up_kbps)} / ${fixed(1)(row.down_kbps)} Kbps`],
    ["mIoU, latest frames", `${pct(row.miou)} (pretrained ${pct(row.miou_pretrained)})`],
    ["updates", `${row.updates_sent ?? "–"} sent, ${row.updates_acked ?? "–"} acked, ${row.updates_refused ?? "–"} refused, ${row.rollbacks ?? "–"} rollbacks`],
    ["learning", row.paused ? "paused" : "on"],
    ["newest model from", newest ? newest.cause : "–"],
  ]);
  drawPlot(device);
  drawFrame(device);
  const up = device.uplink;
  drawSummary($("uplink"), up ? [
    ["picture", `${up.width}×${up.height}`], ["bitrate", `${fixed(0)(up.bitrate_kbps)} Kbps`],
    ["frames in the last segment", up.frames], ["at", clock(up.at)],
  ] : [["segments", "none yet"]]);
  const opa = device.opa;
  drawSummary($("opa"), opa ? [
    ["budget", `${fixed(1)(opa.budget_ms)} ms`], ["selector", opa.selector],
    ["frames over budget", `${opa.over_budget} of ${opa.frames}`],
    ...Object.entries(opa.subnets).map(([name, n]) => [name, `${n} frames`]),
  ] : [["OPA", "not on this device"]]);
  const rows = document.createDocumentFragment();
  for (const u of [...device.updates].reverse()) {
    const loss = u.loss ? `${u.loss[0].toFixed(3)} → ${u.loss[1].toFixed(3)}` : "–";
    const tr = el("tr", null, { class: `update ${u.outcome.split(":")[0]}` });
    for (const cell of [clock(u.at), u.version === null ? "–" : `v${u.version}`, u.cause, u.format, u.bytes, loss, u.outcome]) {
      tr.append(el("td", cell));
    }
    rows.append(tr);
  }
  $("updates").replaceChildren(rows);
  drawActions($("device-actions"), device.actions, false);
  document.body.dataset.drawn = String(Number(document.body.dataset.drawn || 0) + 1);
}

async function act(deviceId, action) {
  const result = $("act-result");
  result.textContent = "sending…";
  const response = await fetch(`/api/devices/${encodeURIComponent(deviceId)}/actions`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    credentials: "same-origin",
    body: JSON.stringify(action),
  });
  const answer = await response.json();
  result.className = response.ok ? "result ok" : "result refused";
  result.textContent = response.ok
    ? `action #${answer.id} queued: the log below shows when it is done`
    : `refused (${response.status}): ${answer.error}`;
}

function wireActions(deviceId) {
  for (const button of document.querySelectorAll("#act button[data-action]")) {
    button.addEventListener("click", () => act(deviceId, { kind: button.dataset.action }));
  }
  $("rollback-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act(deviceId, { kind: "rollback", version: Number($("rollback-version").value) });
  });
  $("sampling-form").addEventListener("submit", (event) => {
    event.preventDefault();
    act(deviceId, { kind: "sampling", min_fps: Number($("min-fps").value), max_fps: Number($("max-fps").value) });
  });
}

document.addEventListener("DOMContentLoaded", () => {
  const initial = $("initial");
  const page = document.body.dataset.page;
  if (page === "fleet") {
    drawFleet(JSON.parse(initial.textContent));
    live("/api/events", drawFleet);
  } else if (page === "device") {
    const deviceId = $("device-id").dataset.device;
    drawDevice(JSON.parse(initial.textContent));
    wireActions(deviceId);
    live(`/api/devices/${encodeURIComponent(deviceId)}/events`, drawDevice);
  }
});
