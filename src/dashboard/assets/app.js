// jobq dashboard: live figures over Server-Sent Events (read with fetch, so
// the admin token travels as a bearer header, never in a URL), the recent
// jobs table, a job's detail, cancel and clear. No build step, no CDN.
'use strict';

const TOKEN_KEY = 'jobq.adminToken';
const SLOTS = 900; // 15 minutes of one-second slots, as the server keeps
const $ = (id) => document.getElementById(id);

// ---- admin calls ---------------------------------------------------------

let tokenPrompt = null; // a pending prompt, shared by every call that got 401

function authHeaders() {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { Authorization: 'Bearer ' + t } : {};
}

/** Asks for the admin token once; resolves when the user gave one. */
function askToken(message) {
  if (tokenPrompt) return tokenPrompt;
  const dlg = $('token');
  $('token-error').hidden = !message;
  $('token-error').textContent = message || '';
  $('token-input').value = '';
  tokenPrompt = new Promise((resolve) => {
    $('token-form').onsubmit = (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, $('token-input').value.trim());
      dlg.close();
      tokenPrompt = null;
      resolve();
    };
  });
  if (!dlg.open) dlg.showModal();
  return tokenPrompt;
}

/** fetch() with the admin token; on 401 asks for it and tries again. */
async function api(path, opts = {}) {
  for (let tries = 0; tries < 5; tries++) {
    const resp = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), ...authHeaders() } });
    if (resp.status !== 401) return resp;
    const had = !!sessionStorage.getItem(TOKEN_KEY);
    await askToken(had ? 'That token was refused; enter the admin token.' : '');
  }
  throw new Error('admin token refused');
}

async function errorText(resp) {
  try { return (await resp.json()).error || resp.statusText; } catch { return resp.statusText; }
}

// ---- charts --------------------------------------------------------------

const series = { t: [], completed: [], failed: [], pending: [], running: [],
  qw50: [], qw95: [], qw99: [], rt50: [], rt95: [], rt99: [], rescued: [] };
const charts = {};

function makeChart(el, lines, yLabel) {
  const opts = {
    width: el.clientWidth || 600, height: 200,
    legend: { live: false },
    scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] } },
    axes: [{}, { label: yLabel, size: 55 }],
    series: [{}, ...lines.map(([label, stroke]) => ({ label, stroke, width: 1.5, spanGaps: false, points: { show: false } }))],
  };
  return new uPlot(opts, [[], ...lines.map(() => [])], el);
}

function initCharts() {
  charts.throughput = makeChart($('ch-throughput'), [['completed/s', '#15803d'], ['failed/s', '#c2410c']], 'jobs/s');
  charts.depth = makeChart($('ch-depth'), [['pending', '#a16207'], ['running', '#2563eb']], 'jobs');
  charts.qwait = makeChart($('ch-qwait'), [['p50', '#2563eb'], ['p95', '#a16207'], ['p99', '#c2410c']], 'ms');
  charts.rtime = makeChart($('ch-rtime'), [['p50', '#2563eb'], ['p95', '#a16207'], ['p99', '#c2410c']], 'ms');
  const ro = new ResizeObserver(() => {
    for (const [name, c] of Object.entries(charts)) {
      const w = $('ch-' + name).clientWidth;
      if (w && w !== c.width) c.setSize({ width: w, height: 200 });
    }
  });
  for (const name of Object.keys(charts)) ro.observe($('ch-' + name));
}

function pushSlot(s) {
  const p = (a, i) => (a ? a[i] : null);
  const cols = { t: s.t, completed: s.completed, failed: s.failed, pending: s.pending, running: s.running,
    qw50: p(s.queue_wait_ms, 0), qw95: p(s.queue_wait_ms, 1), qw99: p(s.queue_wait_ms, 2),
    rt50: p(s.run_time_ms, 0), rt95: p(s.run_time_ms, 1), rt99: p(s.run_time_ms, 2), rescued: s.rescued };
  for (const [k, v] of Object.entries(cols)) {
    series[k].push(v);
    if (series[k].length > SLOTS) series[k].shift();
  }
}

function redraw() {
  const x = series.t;
  charts.throughput.setData([x, series.completed, series.failed]);
  charts.depth.setData([x, series.pending, series.running]);
  charts.qwait.setData([x, series.qw50, series.qw95, series.qw99]);
  charts.rtime.setData([x, series.rt50, series.rt95, series.rt99]);
}

// ---- figures -------------------------------------------------------------

const fmtMs = (v) => (v == null ? '–' : v < 10 ? v.toFixed(2) : v < 1000 ? v.toFixed(0) : (v / 1000).toFixed(1) + 's');
const fmtPct = (p) => (p.p50 == null ? '–' : `${fmtMs(p.p50)} / ${fmtMs(p.p95)} / ${fmtMs(p.p99)} ms`);

function fmtAge(s) {
  if (s == null) return '–';
  if (s < 60) return s.toFixed(1) + ' s';
  if (s < 3600) return (s / 60).toFixed(1) + ' min';
  return (s / 3600).toFixed(1) + ' h';
}

function fmtUptime(s) {
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
  return `up ${h ? h + 'h ' : ''}${m}m ${s % 60}s`;
}

let lastTotals = null;

/** Per-second average of the last 10 slots (one second alone is noisy). */
function rate(values) {
  const last = values.slice(-10);
  if (!last.length) return '–';
  const avg = last.reduce((a, b) => a + (b || 0), 0) / last.length;
  return avg < 10 ? avg.toFixed(1) : avg.toFixed(0);
}

function showSnapshot(snap) {
  const s = snap.slot;
  $('c-completed').textContent = rate(series.completed);
  $('c-failed').textContent = rate(series.failed);
  $('c-pending').textContent = s.pending;
  $('c-running').textContent = s.running;
  $('c-waiting').textContent = snap.waiting_clients;
  $('c-polling').textContent = snap.polling_workers;
  $('c-rescued').textContent = series.rescued.reduce((a, b) => a + (b || 0), 0);
  $('c-qwait').textContent = fmtPct(snap.queue_wait_minute);
  $('c-rtime').textContent = fmtPct(snap.run_time_minute);
  $('uptime').textContent = fmtUptime(snap.uptime_s);
  $('metrics-off').hidden = snap.metrics_enabled;
  showQueues(snap.queues);
  // The jobs table follows activity, not a timer: no listing while idle.
  const totals = JSON.stringify(snap.totals);
  if (totals !== lastTotals) {
    lastTotals = totals;
    refreshJobs();
  }
}

function showQueues(queues) {
  const body = $('queues').tBodies[0];
  const names = Object.keys(queues);
  body.replaceChildren();
  if (!names.length) {
    const tr = body.insertRow();
    const td = tr.insertCell();
    td.colSpan = 5; td.className = 'muted'; td.textContent = 'No pending or running jobs.';
    return;
  }
  for (const name of names) {
    const q = queues[name];
    const tr = body.insertRow();
    tr.dataset.queue = name;
    tr.insertCell().textContent = name;
    for (const v of [q.pending, q.running]) {
      const td = tr.insertCell(); td.className = 'num'; td.textContent = v;
    }
    const age = tr.insertCell(); age.className = 'num'; age.textContent = fmtAge(q.oldest_pending_s);
    const act = tr.insertCell();
    const b = document.createElement('button');
    b.type = 'button'; b.className = 'danger'; b.textContent = 'Clear…';
    b.dataset.clear = name;
    b.onclick = () => confirmClear(name, q.pending + q.running);
    act.appendChild(b);
  }
}

// ---- the live stream -----------------------------------------------------

let streamAbort = null;

function setConn(state, text) {
  const el = $('conn');
  el.dataset.state = state;
  el.textContent = text || state;
}

function handleEvent(name, data) {
  if (name === 'history') {
    for (const k of Object.keys(series)) series[k] = [];
    for (const slot of JSON.parse(data)) pushSlot(slot);
    redraw();
  } else if (name === 'snapshot') {
    const snap = JSON.parse(data);
    if (series.t[series.t.length - 1] !== snap.slot.t) pushSlot(snap.slot);
    redraw();
    showSnapshot(snap);
  }
}

async function stream() {
  if (streamAbort) return;
  const ctrl = new AbortController();
  streamAbort = ctrl;
  setConn('connecting');
  try {
    const resp = await api('/api/admin/events', { signal: ctrl.signal, headers: { Accept: 'text/event-stream' } });
    if (!resp.ok) throw new Error(await errorText(resp));
    setConn('live');
    await readEvents(resp, handleEvent);
    throw new Error('stream ended');
  } catch (e) {
    if (ctrl.signal.aborted) return;
    setConn('error', 'reconnecting');
    streamAbort = null;
    setTimeout(() => { if (!$('pause').checked) stream(); }, 2000);
    return;
  }
}

function stop() {
  if (streamAbort) { streamAbort.abort(); streamAbort = null; }
}

$('pause').addEventListener('change', (ev) => {
  if (ev.target.checked) { stop(); setConn('paused'); } else { stream(); }
});

// ---- jobs table ----------------------------------------------------------

let jobsBusy = false;

async function refreshJobs() {
  if (jobsBusy) return;
  jobsBusy = true;
  try {
    const q = new URLSearchParams({ limit: '50' });
    if ($('f-status').value) q.set('status', $('f-status').value);
    if ($('f-queue').value.trim()) q.set('queue', $('f-queue').value.trim());
    const resp = await api('/api/admin/jobs?' + q);
    if (!resp.ok) throw new Error(await errorText(resp));
    const { jobs } = await resp.json();
    $('jobs-error').hidden = true;
    const body = $('jobs').tBodies[0];
    body.replaceChildren();
    for (const j of jobs) {
      const tr = body.insertRow();
      tr.dataset.id = j.job_id;
      tr.dataset.status = j.status;
      const id = tr.insertCell(); id.className = 'id'; id.textContent = j.job_id.slice(0, 8); id.title = j.job_id;
      tr.insertCell().textContent = j.queue;
      const st = document.createElement('span'); st.className = 'status ' + j.status; st.textContent = j.status;
      tr.insertCell().appendChild(st);
      const at = tr.insertCell(); at.className = 'num'; at.textContent = j.attempts;
      tr.insertCell().textContent = new Date(j.created_at).toLocaleTimeString();
      const took = tr.insertCell(); took.className = 'num';
      took.textContent = j.completed_at ? fmtMs(Date.parse(j.completed_at) - Date.parse(j.created_at)) + ' ms' : '';
      tr.onclick = () => openJob(j.job_id);
    }
  } catch (e) {
    $('jobs-error').hidden = false;
    $('jobs-error').textContent = 'Could not list jobs: ' + e.message;
  } finally {
    jobsBusy = false;
  }
}

$('filters').addEventListener('submit', (ev) => { ev.preventDefault(); refreshJobs(); });
$('f-status').addEventListener('change', refreshJobs);
$('f-find').addEventListener('click', () => openJob($('f-id').value.trim()));
$('f-id').addEventListener('keydown', (ev) => { if (ev.key === 'Enter') { ev.preventDefault(); openJob($('f-id').value.trim()); } });

// ---- job detail ----------------------------------------------------------

function preview(v, max = 4000) {
  if (v === undefined) return '';
  const s = typeof v === 'string' ? v : JSON.stringify(v, null, 2);
  return s.length > max ? s.slice(0, max) + `\n… (${s.length - max} more characters)` : s;
}

/** Reads Server-Sent Events from a fetch response, calling onEvent(name, data, id). */
async function readEvents(resp, onEvent) {
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n/g, '\n');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let name = 'message', data = null, id = null;
      for (const line of block.split('\n')) {
        if (line.startsWith('event:')) name = line.slice(6).trim();
        else if (line.startsWith('id:')) id = line.slice(3).trim();
        else if (line.startsWith('data:')) data = (data === null ? '' : data + '\n') + line.slice(5).replace(/^ /, '');
      }
      if (data !== null) onEvent(name, data, id);
    }
  }
}

// The open job's progress events: live while it runs, replayed once it ended.
let eventsAbort = null;
const EVENTS_SHOWN = 200_000; // characters kept in the box

async function followEvents(id) {
  if (eventsAbort) eventsAbort.abort();
  const ctrl = new AbortController();
  eventsAbort = ctrl;
  const out = $('d-events');
  const state = $('d-events-state');
  out.textContent = '';
  state.textContent = 'connecting';
  let count = 0;
  const append = (text) => {
    out.textContent = (out.textContent + text).slice(-EVENTS_SHOWN);
    out.scrollTop = out.scrollHeight;
  };
  try {
    const resp = await api('/api/jobs/' + encodeURIComponent(id) + '/events',
      { signal: ctrl.signal, headers: { Accept: 'text/event-stream' } });
    if (!resp.ok) { state.textContent = await errorText(resp); return; }
    state.textContent = 'live';
    await readEvents(resp, (name, data) => {
      if (name === 'progress') {
        const v = JSON.parse(data);
        append(typeof v === 'string' ? v : JSON.stringify(v) + '\n');
        state.textContent = `live, ${++count} event(s)`;
      } else if (name === 'gap') {
        append(`[… ${JSON.parse(data).dropped} event(s) dropped]\n`);
      } else {
        state.textContent = `${count} event(s), then ${name}`;
        if (!count) out.textContent = '(none)';
        // The job ended while shown: show how it stands now.
        if (!ctrl.signal.aborted) showJob(id);
      }
    });
  } catch (e) {
    if (!ctrl.signal.aborted) state.textContent = 'stream broke off';
  }
}

$('detail').addEventListener('close', () => { if (eventsAbort) { eventsAbort.abort(); eventsAbort = null; } });

async function openJob(id) {
  if (!id) return;
  if (await showJob(id)) {
    followEvents(id);
    const dlg = $('detail');
    if (!dlg.open) dlg.showModal();
  }
}

/** Fills the detail dialog with job `id`; false when there is no such job. */
async function showJob(id) {
  $('d-msg').textContent = '';
  // The public view first: it answers 400/404 for a bad id, as the API does.
  const pub = await api('/api/jobs/' + encodeURIComponent(id));
  if (!pub.ok) {
    $('jobs-error').hidden = false;
    $('jobs-error').textContent = `Job ${id}: ${await errorText(pub)}`;
    return false;
  }
  const resp = await api('/api/admin/jobs/' + encodeURIComponent(id));
  const j = resp.ok ? await resp.json() : await pub.json();
  $('d-id').textContent = j.job_id;
  const fields = [
    ['Status', j.status], ['Queue', j.queue], ['Priority', j.priority], ['Attempts', j.attempts],
    ['Created', j.created_at], ['Started', j.started_at || '–'], ['Ended', j.completed_at || '–'],
    ['Lease expires', j.lease_expires_at || '–'],
  ];
  if (j.position != null) fields.push(['Position', j.position]);
  const dl = $('d-fields');
  dl.replaceChildren();
  for (const [k, v] of fields) {
    const dt = document.createElement('dt'); dt.textContent = k;
    const dd = document.createElement('dd'); dd.textContent = v;
    if (k === 'Status') dd.dataset.field = 'status';
    dl.append(dt, dd);
  }
  $('d-error').hidden = !j.error;
  $('d-error').textContent = j.error ? 'Error: ' + j.error : '';
  if (j.input_kept === false) {
    $('d-input').textContent = '(not kept once the job ended)';
    $('d-input-fmt').textContent = '';
  } else {
    $('d-input').textContent = preview(j.input);
    $('d-input-fmt').textContent = j.input_format ? `${j.input_format}, ${j.input_bytes} bytes` : '';
  }
  $('d-result').textContent = j.status === 'completed' ? preview(j.payload) : '(none)';
  $('d-result-fmt').textContent = j.result_format || '';
  $('d-headers').textContent = j.headers ? preview(j.headers) : '(none)';
  const cancel = $('d-cancel');
  cancel.disabled = j.status !== 'pending' && j.status !== 'running';
  cancel.onclick = () => cancelJob(j.job_id);
  return true;
}

async function cancelJob(id) {
  const resp = await api('/api/jobs/' + encodeURIComponent(id), { method: 'DELETE' });
  if (resp.ok) {
    await showJob(id);
    $('d-msg').textContent = 'Cancelled.';
    refreshJobs();
  } else {
    $('d-msg').textContent = 'Could not cancel: ' + (await errorText(resp));
  }
}

// ---- clear a queue -------------------------------------------------------

function confirmClear(queue, active) {
  const dlg = $('confirm');
  $('cf-title').textContent = `Clear queue “${queue}”?`;
  $('cf-text').textContent = `This cancels its ${active} pending and running job(s); their waiting clients get 410, ` +
    'and the ended jobs of this queue are forgotten. It cannot be undone.';
  $('cf-no').onclick = () => dlg.close();
  $('cf-yes').onclick = async () => {
    const resp = await api('/api/admin/clear?queue=' + encodeURIComponent(queue), { method: 'DELETE' });
    dlg.close();
    if (!resp.ok) {
      $('jobs-error').hidden = false;
      $('jobs-error').textContent = 'Could not clear: ' + (await errorText(resp));
    }
    refreshJobs();
  };
  dlg.showModal();
}

// ---- start ---------------------------------------------------------------

$('token-btn').addEventListener('click', () => askToken('').then(() => { stop(); stream(); refreshJobs(); }));
$('token-forget').addEventListener('click', () => { sessionStorage.removeItem(TOKEN_KEY); $('token-input').value = ''; });

initCharts();
stream();
refreshJobs();
