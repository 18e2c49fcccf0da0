// minique dashboard: a small single-page app over the JSON API (no framework, no CDN).
// Every page polls its API while shown; the DOM is only rebuilt when the answer changed.
// All text goes through textContent (never innerHTML), so task data cannot inject markup.
"use strict";

const S = { csrf: null, refresh: 1500, timer: null, page: null, last: null, seq: 0, skew: 0 };
const STATES = ["RECEIVED", "STARTED", "SUCCESS", "FAILURE", "RETRY", "REVOKED", "REJECTED", "PENDING"];
const COLORS = ["#3355cc", "#1f8a4c", "#c0392b", "#b7791f", "#8e44ad", "#16a085", "#d35400", "#2c3e50"];

// --- helpers ---------------------------------------------------------------------------------------
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "style") Object.assign(el.style, v); // CSSOM, which the CSP allows (style attributes it does not)
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat(Infinity)) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}

function svg(tag, attrs, ...kids) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  for (const kid of kids.flat(Infinity)) if (kid) el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  return el;
}

async function api(path, opts = {}) {
  const init = { credentials: "same-origin", headers: { "Accept": "application/json" } };
  if (opts.method === "POST") {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.headers["X-CSRF-Token"] = S.csrf || "";
    init.body = JSON.stringify(opts.body || {});
  }
  const resp = await fetch(path, init);
  let data = null;
  try { data = await resp.json(); } catch (e) { data = null; }
  if (!resp.ok) throw new Error((data && data.error) || `${resp.status} ${resp.statusText}`);
  return data;
}

function fmtTime(ts) {
  if (!ts) return "";
  const d = new Date(ts * 1000);
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour12: false });
  return today ? t : `${d.toLocaleDateString()} ${t}`;
}
function fmtAgo(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return "just now";
  if (seconds < 90) return `${Math.round(seconds)} s ago`;
  if (seconds < 5400) return `${Math.round(seconds / 60)} min ago`;
  return `${Math.round(seconds / 3600)} h ago`;
}
function fmtDur(s) {
  if (s === null || s === undefined || isNaN(s)) return "";
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${(s * 1000).toFixed(1)} ms`;
  if (s < 120) return `${s.toFixed(2)} s`;
  return `${(s / 60).toFixed(1)} min`;
}
const badge = (state) => h("span", { class: `badge ${state || ""}`, "data-state": state || "" }, state || "?");
// Ids are shown whole (shortened by the style sheet only, so selecting or copying gives the full id).
const taskLink = (id, text) => h("a", { href: `#/task/${encodeURIComponent(id)}`, class: text ? "mono" : "mono id-short", title: id }, text || id);
const empty = (text) => h("div", { class: "empty" }, text);
const serverNow = () => Date.now() / 1000 + S.skew;

async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch (e) { // (no clipboard API outside a secure context: copy a selection instead)
    const area = h("textarea", { class: "offscreen", readonly: true });
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  toast(`Copied ${text}`);
}
const copyIcon = () => svg("svg", { viewBox: "0 0 16 16", width: "12", height: "12", "aria-hidden": "true" },
  svg("rect", { x: "5", y: "5", width: "9", height: "9", rx: "1.5" }), svg("path", { d: "M3 11V3a1 1 0 0 1 1-1h7" }));
const copyButton = (text) => h("button", { class: "copy", type: "button", title: `Copy ${text}`, "aria-label": `Copy ${text}`, "data-copy": text, onclick: (ev) => { ev.preventDefault(); copyText(text); } }, copyIcon());
const idCell = (id) => h("span", { class: "tid" }, taskLink(id), copyButton(id));

// Live times: elements with data-since (elapsed) or data-until (a countdown) tick every second.
const fmtSecs = (s) => (s < 120 ? `${Math.floor(s)} s` : fmtDur(s));
const sinceText = (since) => fmtSecs(Math.max(0, serverNow() - since));
const untilText = (until) => (until > serverNow() ? `in ${fmtSecs(until - serverNow() + 0.999)}` : "due");
function tick() {
  for (const el of document.querySelectorAll("[data-since]")) el.textContent = sinceText(Number(el.dataset.since));
  for (const el of document.querySelectorAll("[data-until]")) el.textContent = untilText(Number(el.dataset.until));
}
const elapsed = (since) => h("span", { class: "elapsed", "data-since": since }, sinceText(since));
const countdown = (until) => h("span", { class: "countdown", "data-until": until }, untilText(until));
// A task's time column: its runtime when it ended, the time it has been running (live), or when its retry runs.
function timeOf(t) {
  if (t.state === "RETRY" && t.next_run) return h("span", { class: "next-run", title: `next run ${fmtTime(t.next_run)}` }, `retry ${fmtTime(t.next_run)} `, countdown(t.next_run));
  if ((t.state === "STARTED" || t.state === "RECEIVED") && (t.started || t.received)) return elapsed(t.started || t.received);
  return fmtDur(t.runtime);
}

function toast(content, isError) {
  const el = document.getElementById("toast");
  el.replaceChildren(content instanceof Node ? content : document.createTextNode(String(content)));
  el.className = isError ? "toast err" : "toast";
  el.hidden = false;
  el.onclick = () => { el.hidden = true; };
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.hidden = true; }, 6000);
}

function setLive(ok, text) {
  const el = document.getElementById("live");
  el.className = ok ? "live ok" : "live err";
  document.getElementById("live-text").textContent = text;
}

function table(headers, rows, attrs) {
  return h("table", attrs || {},
    h("thead", {}, h("tr", {}, headers.map((t) => h("th", { class: t.endsWith("#") ? "num" : "" }, t.replace(/#$/, ""))))),
    h("tbody", {}, rows));
}

function hashQuery() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

// --- actions -----------------------------------------------------------------------------------------
// What a re-send sends, as the server decoded it from the very bytes it sends.
const sentText = (m) => (m ? `${m.name || "?"} ${m.args ?? "(arguments not shown)"} ${m.kwargs && m.kwargs !== "{}" ? m.kwargs : ""} to ${m.queue}` : "");

async function retryTask(id) {
  try {
    const r = await api(`/api/tasks/${encodeURIComponent(id)}/retry`, { method: "POST" });
    toast(h("span", {}, "Re-sent ", taskLink(r.id, r.id), `: ${sentText(r.sent)}`));
    refreshNow();
  } catch (e) { toast(`Retry failed: ${e.message}`, true); }
}
async function revokeTask(id, terminate) {
  try {
    await api(`/api/tasks/${encodeURIComponent(id)}/revoke`, { method: "POST", body: { terminate } });
    toast(terminate ? "Terminate sent" : "Revoked");
    refreshNow();
  } catch (e) { toast(`Revoke failed: ${e.message}`, true); }
}
async function workerAction(host, action, n) {
  if (action === "shutdown" && !window.confirm(`Shut down ${host}? (a warm shutdown: running tasks finish)`)) return;
  try {
    const r = await api(`/api/workers/${encodeURIComponent(host)}/${action}`, { method: "POST", body: action === "shutdown" ? {} : { n } });
    const said = r.answer && typeof r.answer === "object" ? (r.answer.ok ?? JSON.stringify(r.answer)) : r.answer;
    toast(`${host}: ${said}`);
    refreshNow();
  } catch (e) { toast(`${action} failed: ${e.message}`, true); }
}
async function setRateLimit(form) {
  const task = form.querySelector("[name=task]").value.trim(), rate = form.querySelector("[name=rate]").value.trim();
  if (!task || !rate) return;
  try {
    const r = await api("/api/rate_limit", { method: "POST", body: { task, rate_limit: rate } });
    toast(`${task}: ${rate === "0" ? "no rate limit" : rate} on ${Object.keys(r.answers).length} worker(s)`);
  } catch (e) { toast(`Rate limit failed: ${e.message}`, true); }
}
async function replayDead(entry) {
  try {
    const r = await api(`/api/dlq/${encodeURIComponent(entry)}/replay`, { method: "POST" });
    toast(`Dead letter ${entry} sent back: ${sentText(r.sent)}`);
    refreshNow();
  } catch (e) { toast(`Replay failed: ${e.message}`, true); }
}

// --- pages -------------------------------------------------------------------------------------------
const pages = {};

function throughputChart(tp) {
  const W = 900, H = 200, L = 44, R = 10, T = 10, B = 26;
  const series = [["succeeded", "#1f8a4c"], ["failed", "#c0392b"], ["retried", "#b7791f"]];
  const n = tp.succeeded.length;
  const t0 = tp.start, t1 = tp.start + (n - 1) * tp.bucket;
  const max = Math.max(0.1, ...series.flatMap(([k]) => tp[k]));
  const x = (i) => L + (i / Math.max(1, n - 1)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = (max * i) / 4;
    parts.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }), svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v >= 10 ? Math.round(v) : v.toFixed(1)));
  }
  parts.push(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  parts.push(svg("text", { x: L, y: H - 6 }, fmtTime(t0)), svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, fmtTime(t1)));
  for (const [k, color] of series) {
    const pts = tp[k].map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    parts.push(svg("polyline", { points: pts, stroke: color, "data-series": k }));
  }
  return h("div", { class: "panel", id: "throughput" },
    svg("svg", { class: "chart small", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", id: "throughput-chart" }, parts),
    h("div", { class: "legend" }, series.map(([k, color]) => h("span", { "data-total": k },
      h("i", { style: { background: color } }), `${k}: `, h("b", { id: `tp-${k}` }, String(tp[`${k}_total`])), " in the last hour")),
      h("span", { class: "muted" }, `tasks per second, per ${tp.bucket} s`)));
}

pages.workers = {
  title: "Workers",
  async load() {
    const [workers, tp] = await Promise.all([api("/api/workers"), api("/api/throughput")]);
    delete tp.now;
    return { workers: workers.workers, throughput: tp };
  },
  render(data) {
    const out = [h("h2", {}, "Throughput"), throughputChart(data.throughput), h("h2", {}, "Workers")];
    if (!data.workers.length) return [...out, empty("No worker has sent a heartbeat yet.")];
    const now = serverNow();
    out.push(table(["Worker", "Status", "Pool", "Active / size", "Processed#", "Load average", "Last heartbeat", "Queues", "Up for", ""],
      data.workers.map((w) => {
        const size = w.concurrency || 0, places = w.places || size, active = w.active || 0, online = w.status === "online";
        return h("tr", { "data-worker": w.hostname, "data-status": w.status },
          h("td", { class: "mono" }, h("a", { href: `#/tasks?worker=${encodeURIComponent(w.hostname)}` }, w.hostname)),
          h("td", {}, badge(w.status)),
          h("td", {}, `${w.pool || "?"} × ${size}` + (places > size ? ` (${places / size} tasks each)` : "")),
          h("td", {}, h("span", { class: "bar" }, h("i", { style: { width: `${places ? Math.min(100, 100 * active / places) : 0}%` } })), `${active} / ${places}`),
          h("td", { class: "num processed" }, w.processed ?? ""),
          h("td", {}, w.loadavg ? w.loadavg.map((x) => x.toFixed(2)).join(" ") : ""),
          h("td", { title: fmtTime(w.last_heartbeat) }, fmtAgo(w.heartbeat_age)),
          h("td", {}, (w.queues || []).join(", ")),
          h("td", {}, w.started && online ? fmtDur(now - w.started) : ""),
          h("td", { class: "row-actions" }, online ? [
            h("button", { class: "secondary grow", title: "Add a pool process", onclick: () => workerAction(w.hostname, "pool_grow", 1) }, "+1"),
            h("button", { class: "secondary shrink", title: "Stop a pool process (after its task)", disabled: size <= 1, onclick: () => workerAction(w.hostname, "pool_shrink", 1) }, "−1"),
            h("button", { class: "danger shutdown", title: "Warm shutdown: running tasks finish", onclick: () => workerAction(w.hostname, "shutdown") }, "Shut down"),
          ] : null));
      }), { id: "workers-table" }));
    out.push(h("h2", {}, "Rate limit"), h("form", { id: "rate-limit", onsubmit: (ev) => { ev.preventDefault(); setRateLimit(ev.target); } },
      h("input", { name: "task", placeholder: "task name", "aria-label": "task name" }), " ",
      h("input", { name: "rate", placeholder: "10/s, 100/m, 0 for none", "aria-label": "rate limit", size: 18 }), " ",
      h("button", { type: "submit", class: "secondary" }, "Set on every worker")));
    return out;
  },
};

pages.tasks = {
  title: "Tasks",
  filters: ["state", "name", "worker", "window", "search"],
  url() {
    const q = hashQuery(), p = new URLSearchParams();
    for (const k of ["state", "name", "worker", "search"]) if (q.get(k)) p.set(k, q.get(k));
    if (q.get("window")) p.set("since", String(Date.now() / 1000 - Number(q.get("window"))));
    p.set("limit", "200");
    return `/api/tasks?${p}`;
  },
  mount(main) {
    const q = hashQuery();
    const onChange = () => {
      const p = new URLSearchParams();
      for (const el of main.querySelectorAll("[data-filter]")) if (el.value) p.set(el.dataset.filter, el.value);
      history.replaceState(null, "", `#/tasks${p.toString() ? "?" + p : ""}`);
      refreshNow();
    };
    const sel = (name, options, label) => h("label", {}, label,
      h("select", { "data-filter": name, id: `filter-${name}`, onchange: onChange },
        options.map(([v, t]) => h("option", { value: v, selected: q.get(name) === v }, t))));
    const filters = h("div", { class: "filters" },
      sel("state", [["", "any state"], ...STATES.map((s) => [s, s])], "State"),
      sel("name", [["", "any task"], ...(q.get("name") ? [[q.get("name"), q.get("name")]] : [])], "Task"),
      sel("worker", [["", "any worker"], ...(q.get("worker") ? [[q.get("worker"), q.get("worker")]] : [])], "Worker"),
      sel("window", [["", "any time"], ["300", "last 5 minutes"], ["3600", "last hour"], ["86400", "last 24 hours"]], "Received"),
      h("label", {}, "Search id / args", h("input", { type: "search", "data-filter": "search", id: "filter-search", value: q.get("search") || "", placeholder: "id or argument", onchange: onChange })));
    main.append(filters);
  },
  syncOptions(main, data) {
    for (const [name, values, anyText] of [["name", data.names, "any task"], ["worker", data.workers, "any worker"]]) {
      const el = main.querySelector(`#filter-${name}`);
      if (!el) continue;
      const have = new Set([...el.options].map((o) => o.value));
      for (const v of values) if (!have.has(v)) el.append(h("option", { value: v }, v));
      if (!have.has("")) el.prepend(h("option", { value: "" }, anyText));
    }
  },
  render(data, main) {
    this.syncOptions(main, data);
    const counts = h("div", { class: "counts", id: "task-counts" },
      h("span", {}, `${data.total} matching · ${data.indexed} indexed`),
      Object.entries(data.counts).sort().map(([s, n]) => h("span", {}, badge(s), ` ${n}`)));
    if (!data.tasks.length) return [counts, empty("No task matches (yet): tasks appear here as workers report them.")];
    return [counts, table(["Task id", "Name", "State", "Args", "Worker", "Received", "Runtime / next run#", "Retries#"],
      data.tasks.map((t) => h("tr", { "data-task-id": t.id, "data-state": t.state },
        h("td", {}, idCell(t.id)),
        h("td", {}, t.name || ""),
        h("td", {}, badge(t.state)),
        h("td", { class: "args mono", title: `${t.args || ""} ${t.kwargs || ""}` }, [t.args, t.kwargs && t.kwargs !== "{}" ? t.kwargs : ""].filter(Boolean).join(" ")),
        h("td", { class: "mono" }, t.worker || ""),
        h("td", {}, fmtTime(t.received || t.started || t.updated)),
        h("td", { class: "num time" }, timeOf(t)),
        h("td", { class: "num" }, t.retries || 0))), { id: "tasks-table" })];
  },
};

pages.task = {
  title: "Task",
  url: (arg) => `/api/tasks/${encodeURIComponent(arg)}`,
  render(t) {
    const ready = ["SUCCESS", "FAILURE", "REVOKED", "REJECTED"].includes(t.state);
    const actions = h("div", { class: "actions" },
      t.state === "FAILURE" ? h("button", { id: "retry-button", disabled: !t.retryable, title: t.retryable ? `Send its message again: ${sentText(t.resend)}` : "its message was not captured", onclick: () => retryTask(t.id) }, "Retry") : null,
      !ready ? h("button", { class: "secondary", id: "revoke-button", onclick: () => revokeTask(t.id, false) }, "Revoke") : null,
      t.state === "STARTED" ? h("button", { class: "danger", id: "terminate-button", onclick: () => revokeTask(t.id, true) }, "Terminate") : null);
    const link = (x) => (x ? h("span", {}, taskLink(x.id, x.id), x.name ? ` ${x.name} ` : " ", x.state ? badge(x.state) : null) : "");
    const kv = (pairs) => h("dl", { class: "kv" }, pairs.filter(([, v]) => v !== "" && v !== null && v !== undefined).map(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
    const ended = t.succeeded || t.failed || t.revoked || t.rejected || t.retried;
    const out = [
      h("h1", {}, h("span", { class: "mono" }, t.name || "(unknown task)"), badge(t.state), actions),
      h("div", { class: "grid2" },
        h("div", { class: "panel" }, kv([
          ["Id", h("span", {}, h("span", { class: "mono", id: "task-id" }, t.id), " ", copyButton(t.id))], ["Worker", t.worker], ["Queue", t.queue],
          ["Priority", t.priority], ["Retries", t.retries], ["Root", t.root ? link(t.root) : ""],
          ["Parent", t.parent ? link(t.parent) : ""], ["Group", t.group_id ? h("span", { class: "mono" }, t.group_id) : ""],
          ["Re-sent", t.resent_at ? `${fmtTime(t.resent_at)} (from the dashboard${t.resent > 1 ? `, ${t.resent} times` : ""})` : ""],
          ["Result store", t.result_state]])),
        h("div", { class: "panel" }, kv([
          ["Sent", fmtTime(t.sent_at)], ["ETA", fmtTime(t.eta)], ["Expires", fmtTime(t.expires)],
          ["Received", fmtTime(t.received)], ["Started", fmtTime(t.started)], ["Ended", fmtTime(ended)],
          ["Running for", (t.state === "STARTED" || t.state === "RECEIVED") && (t.started || t.received) ? h("span", { id: "task-elapsed" }, elapsed(t.started || t.received)) : ""],
          ["Next run", t.state === "RETRY" && t.next_run ? h("span", { id: "task-next-run" }, `${fmtTime(t.next_run)} `, countdown(t.next_run)) : ""],
          ["Queue wait", fmtDur(t.queue_wait)], ["Runtime", fmtDur(t.runtime)], ["Done (result store)", fmtTime(t.date_done)]]))),
      h("h2", {}, "Arguments"),
      h("div", { class: "panel" }, kv([["args", h("code", {}, t.args ?? "")], ["kwargs", h("code", {}, t.kwargs ?? "")]])),
    ];
    if (t.resend && t.state === "FAILURE") {
      // decoded from the message Retry sends (not from the event's fields): this is what would run
      const m = t.resend;
      out.push(h("h2", {}, "Retry sends"), h("div", { class: "panel", id: "task-resend" }, kv([
        ["task", h("span", { class: "mono" }, m.name || "")], ["queue", m.queue], ["priority", m.priority],
        ["args", h("code", {}, m.args ?? "")], ["kwargs", h("code", {}, m.kwargs ?? "")],
        ["signature", m.verified === null ? "no security_key" : (m.verified ? "verified" : "does not verify: Retry refuses it")],
        ["note", m.problem || ""]])));
    }
    if (t.meta !== undefined) out.push(h("h2", {}, `State meta (${t.result_state})`), h("pre", { id: "task-meta" }, JSON.stringify(t.meta, null, 2)));
    if (t.state === "SUCCESS" || t.result !== null) out.push(h("h2", {}, "Result"), h("pre", { id: "task-result" }, JSON.stringify(t.result, null, 2)));
    if (t.error || t.exception) out.push(h("h2", {}, "Error"), h("pre", { class: "error-box" }, t.error || t.exception));
    if (t.traceback) out.push(h("h2", {}, "Traceback"), h("pre", { id: "task-traceback" }, t.traceback));
    if (t.children && t.children.length) {
      out.push(h("h2", {}, "Children"), table(["Task id", "Name", "State"],
        t.children.map((c) => h("tr", {}, h("td", {}, taskLink(c.id, c.id)), h("td", {}, c.name || ""), h("td", {}, badge(c.state))))));
    }
    if (t.history && t.history.length) {
      out.push(h("h2", {}, "Events"), table(["Time", "Event", "Worker", "Retries#"],
        t.history.map((e) => h("tr", {}, h("td", {}, fmtTime(e.ts)), h("td", {}, e.type), h("td", { class: "mono" }, e.hostname || ""), h("td", { class: "num" }, e.retries ?? "")))));
    }
    return out;
  },
};

function chart(history) {
  const W = 900, H = 240, L = 44, R = 10, T = 10, B = 26;
  if (history.length < 2) return empty("Collecting samples for the chart…");
  const queues = [...new Set(history.flatMap((s) => Object.keys(s.waiting)))].sort();
  const t0 = history[0].t, t1 = history[history.length - 1].t;
  const max = Math.max(1, ...history.flatMap((s) => Object.values(s.waiting)));
  const x = (t) => L + ((t - t0) / Math.max(1e-9, t1 - t0)) * (W - L - R);
  const y = (v) => T + (1 - v / max) * (H - T - B);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = Math.round((max * i) / 4);
    parts.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }), svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, v));
  }
  parts.push(svg("line", { class: "axis", x1: L, x2: W - R, y1: H - B, y2: H - B }));
  parts.push(svg("text", { x: L, y: H - 6 }, fmtTime(t0)), svg("text", { x: W - R, y: H - 6, "text-anchor": "end" }, fmtTime(t1)));
  queues.forEach((q, i) => {
    const pts = history.map((s) => `${x(s.t).toFixed(1)},${y(s.waiting[q] || 0).toFixed(1)}`).join(" ");
    parts.push(svg("polyline", { points: pts, stroke: COLORS[i % COLORS.length], "data-queue": q }));
  });
  return h("div", { class: "panel" },
    svg("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", id: "queue-chart" }, parts),
    h("div", { class: "legend" }, queues.map((q, i) => h("span", {}, h("i", { style: { background: COLORS[i % COLORS.length] } }), q))));
}

pages.queues = {
  title: "Queues",
  url: () => "/api/queues",
  render(data) {
    const qs = Object.entries(data.now.queues).sort();
    const rows = qs.map(([q, info]) => h("tr", { "data-queue": q },
      h("td", { class: "mono" }, q),
      h("td", { class: "num", "data-waiting": info.waiting }, info.waiting),
      h("td", {}, Object.entries(info.priorities).filter(([, n]) => n).map(([p, n]) => `p${p}: ${n}`).join(", ") || "—"),
      h("td", { class: "num" }, info.delayed),
      h("td", { class: "num" }, info.unacked)));
    return [
      h("h2", {}, "Now"),
      table(["Queue", "Waiting#", "By priority", "Delayed (ETA)#", "Delivered, unacked#"], rows, { id: "queues-table" }),
      h("p", { class: "muted" }, "Dead letters: ", h("a", { href: "#/dlq", id: "dlq-count" }, String(data.now.dead_letters))),
      h("h2", {}, `Waiting messages over time (a sample every ${data.interval} s)`),
      chart(data.history),
    ];
  },
};

pages.failed = {
  title: "Failed tasks",
  url: () => "/api/failed",
  render(data) {
    if (!data.tasks.length) return empty("No failed task in the index.");
    return table(["Task id", "Name", "Exception", "Worker", "Failed", "Retries#", ""],
      data.tasks.map((t) => h("tr", { "data-task-id": t.id },
        h("td", {}, idCell(t.id)),
        h("td", {}, t.name || ""),
        h("td", { class: "args mono", title: t.exception || "" }, t.exception || ""),
        h("td", { class: "mono" }, t.worker || ""),
        h("td", {}, fmtTime(t.failed)),
        h("td", { class: "num" }, t.retries || 0),
        h("td", {}, h("button", { class: "retry", disabled: !t.retryable, title: t.retryable ? "Send its message again (the task page shows what it sends)" : "its message was not captured", onclick: () => retryTask(t.id) }, "Retry")))),
      { id: "failed-table" });
  },
};

pages.dlq = {
  title: "Dead letters",
  url: () => "/api/dlq?count=200",
  render(data) {
    if (!data.dead_letters.length) return empty("The dead-letter stream is empty.");
    return [h("div", { class: "counts" }, h("span", {}, `${data.total} dead letter(s)`)),
      table(["Entry", "Time", "Task", "Queue", "Reason", "Worker", "Args", ""],
        data.dead_letters.map((d) => h("tr", { "data-entry": d.entry },
          h("td", { class: "mono" }, d.entry),
          h("td", {}, fmtTime(d.time)),
          h("td", {}, d.name || h("span", { class: "muted" }, "undecodable"), " ", d.task_id ? idCell(d.task_id) : ""),
          h("td", { class: "mono" }, d.queue || ""),
          h("td", {}, d.reason || ""),
          h("td", { class: "mono" }, d.worker || ""),
          h("td", { class: "args mono", title: d.problem || "" }, d.args ?? h("span", { class: "muted" }, d.problem ? "not shown" : "")),
          h("td", {}, h("button", { class: "replay", onclick: () => replayDead(d.entry) }, "Replay")))),
        { id: "dlq-table" })];
  },
};

// --- router and polling ------------------------------------------------------------------------------
function route() {
  const [path] = location.hash.replace(/^#\/?/, "").split("?");
  const [name, ...rest] = path.split("/");
  return { name: pages[name] ? name : "workers", arg: decodeURIComponent(rest.join("/")) };
}

function refreshNow() {
  clearTimeout(S.timer);
  update();
}

async function update() {
  const { name, arg } = S.page;
  const page = pages[name];
  const seq = ++S.seq;
  const main = document.getElementById("main");
  try {
    const [data, overview] = await Promise.all([page.load ? page.load(arg) : api(page.url(arg)), api("/api/overview")]);
    if (seq !== S.seq) return; // a newer update (or page) took over
    if (overview.time) S.skew = overview.time - Date.now() / 1000;
    if (data && typeof data.now === "number") delete data.now; // (a clock reading: not a reason to redraw)
    const text = JSON.stringify(data);
    if (text !== S.last) {
      S.last = text;
      const body = main.querySelector("#page-body");
      body.replaceChildren(...[page.render(data, main)].flat());
    }
    renderSummary(overview);
    setLive(true, "live");
  } catch (e) {
    if (seq !== S.seq) return;
    setLive(false, e.message);
    if (name === "task") main.querySelector("#page-body").replaceChildren(empty(e.message));
  }
  S.timer = setTimeout(update, S.refresh);
}

function renderSummary(o) {
  const failed = (o.tasks.counts && o.tasks.counts.FAILURE) || 0;
  document.getElementById("summary").replaceChildren(
    h("span", {}, "workers ", h("b", { id: "sum-workers" }, `${o.workers.online}/${o.workers.total}`)),
    h("span", {}, "waiting ", h("b", {}, o.waiting)),
    h("span", {}, "failed ", h("b", {}, failed)),
    h("span", {}, "dead letters ", h("b", {}, o.dead_letters)));
}

function show() {
  clearTimeout(S.timer);
  S.seq++;
  S.page = route();
  S.last = null;
  const page = pages[S.page.name];
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.route === S.page.name || (S.page.name === "task" && a.dataset.route === "tasks"));
  document.title = `${page.title} · minique`;
  const main = document.getElementById("main");
  main.replaceChildren();
  if (S.page.name !== "task") main.append(h("h1", {}, page.title));
  if (page.mount) page.mount(main, S.page.arg);
  main.append(h("div", { id: "page-body" }));
  update();
}

async function boot() {
  try {
    const session = await api("/api/session");
    S.csrf = session.csrf;
    S.refresh = Math.max(250, session.refresh * 1000);
    document.getElementById("live").title = `live updates from ${session.broker}`; // (its password masked)
  } catch (e) {
    setLive(false, e.message);
  }
  window.addEventListener("hashchange", show);
  setInterval(tick, 1000);
  show();
}

document.addEventListener("DOMContentLoaded", boot);
