// End-to-end test of the dashboard in real headless Chromium. Started by
// scripts/test-browser.sh, which runs `jobq serve` and sets:
//   JOBQ_URL          the server's base URL
//   JOBQ_ADMIN_TOKEN  the admin token the server requires ('' for none)
//   SCREENSHOT_DIR    where dashboard-desktop.png and dashboard-phone.png go
import { test, after, before } from 'node:test';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const BASE = process.env.JOBQ_URL;
const TOKEN = process.env.JOBQ_ADMIN_TOKEN || '';
const SHOTS = process.env.SCREENSHOT_DIR || '.';
const AUTH = TOKEN ? { Authorization: `Bearer ${TOKEN}` } : {};
const STEP = 15_000; // the longest any one expectation may take

let browser, page;
const pageErrors = [];
const requested = [];

async function call(path, opts = {}) {
  return fetch(BASE + path, { ...opts, headers: { ...AUTH, ...(opts.headers || {}) } });
}

async function enqueue(queue, body) {
  const r = await call(`/api/jobs?queue=${queue}`, { method: 'POST', body });
  assert.equal(r.status, 202);
  return (await r.json()).job_id;
}

/** Polls `queue` once and completes (or fails) what it got. */
async function work(queue, { fail = false } = {}) {
  const r = await call(`/api/worker/poll?queue=${queue}`);
  if (r.status === 204) return null;
  assert.equal(r.status, 200);
  const job = await r.json();
  const path = fail ? `/api/worker/fail/${job.job_id}?lease=${job.lease_id}` : `/api/worker/complete/${job.job_id}?lease=${job.lease_id}`;
  const body = fail ? JSON.stringify({ error: 'simulated failure', retry: false }) : JSON.stringify({ ok: true, echo: job.payload });
  const done = await call(path, { method: 'POST', body });
  assert.equal(done.status, 200);
  return job.job_id;
}

/** Some traffic, so the charts have something to draw. */
async function traffic(seconds) {
  const end = Date.now() + seconds * 1000;
  let n = 0;
  while (Date.now() < end && n < 5000) {
    await Promise.all([0, 1, 2, 3].map((i) => enqueue('demo', JSON.stringify({ n: n + i }))));
    for (let i = 0; i < 4; i++) await work('demo', { fail: (n + i) % 17 === 0 });
    n += 4;
    await new Promise((r) => setTimeout(r, 40));
  }
}

before(async () => {
  assert.ok(BASE, 'JOBQ_URL must be set');
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
  page = await browser.newPage({ viewport: { width: 1280, height: 800 } });
  page.setDefaultTimeout(STEP);
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('request', (r) => requested.push(r.url()));
});

after(async () => {
  await browser?.close();
});



test('the page loads and goes live (asking for the admin token when one is set)', async () => {
  const resp = await page.goto(BASE + '/');
  assert.equal(resp.status(), 200);
  if (TOKEN) {
    await page.locator('#token').waitFor({ state: 'visible' });
    // A wrong token is refused and asked for again.
    await page.fill('#token-input', 'wrong-' + TOKEN);
    await page.click('#token-form button[type=submit]');
    await page.locator('#token-error').waitFor({ state: 'visible' });
    await page.fill('#token-input', TOKEN);
    await page.click('#token-form button[type=submit]');
    await page.locator('#token').waitFor({ state: 'hidden' });
    const kept = await page.evaluate(() => sessionStorage.getItem('jobq.adminToken'));
    assert.equal(kept, TOKEN);
  }
  await page.locator('#conn[data-state=live]').waitFor();
  // Nothing was fetched from anywhere but the server itself.
  const origins = await page.evaluate(() => performance.getEntriesByType('resource').map((e) => new URL(e.name).origin));
  for (const o of origins) assert.equal(o, new URL(BASE).origin);
});

test('a job submitted through the API appears and completes', async () => {
  const id = await enqueue('e2e', JSON.stringify({ hello: 'browser' }));
  const row = page.locator(`#jobs tr[data-id="${id}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute('data-status'), 'pending');
  assert.equal(await work('e2e'), id);
  await page.locator(`#jobs tr[data-id="${id}"][data-status=completed]`).waitFor();
  // Its detail shows the input, the result and their formats.
  await row.click();
  await page.locator('#detail').waitFor({ state: 'visible' });
  assert.equal(await page.textContent('#d-id'), id);
  assert.equal(await page.textContent('#d-fields [data-field=status]'), 'completed');
  assert.match(await page.textContent('#d-result'), /"ok": true/);
  assert.match(await page.textContent('#d-result-fmt'), /json/);
  await page.click('#detail button[value=close]');
  await page.locator('#detail').waitFor({ state: 'hidden' });
  // Search by id opens the same job.
  await page.fill('#f-id', id);
  await page.click('#f-find');
  await page.locator('#detail').waitFor({ state: 'visible' });
  assert.equal(await page.textContent('#d-id'), id);
  await page.click('#detail button[value=close]');
});

test("a running job's progress shows live in its detail", async () => {
  const id = await enqueue('e2e-progress', 'stream me');
  const r = await call('/api/worker/poll?queue=e2e-progress');
  assert.equal(r.status, 200);
  const job = await r.json();
  assert.equal(job.job_id, id);
  const progress = async (body) => {
    const p = await call(`/api/worker/progress/${id}?lease=${job.lease_id}`, { method: 'POST', body });
    assert.equal(p.status, 200);
  };
  await progress('first words, ');
  const row = page.locator(`#jobs tr[data-id="${id}"][data-status=running]`);
  await row.waitFor();
  await row.click();
  await page.locator('#detail').waitFor({ state: 'visible' });
  // Replayed at once, then live as the worker sends more.
  await page.locator('#d-events', { hasText: 'first words, ' }).waitFor();
  await progress('then more');
  await page.locator('#d-events', { hasText: 'first words, then more' }).waitFor();
  await page.locator('#d-events-state', { hasText: 'live, 2 event(s)' }).waitFor();
  const done = await call(`/api/worker/complete/${id}?lease=${job.lease_id}`, { method: 'POST', body: 'all of it' });
  assert.equal(done.status, 200);
  await page.locator('#d-events-state', { hasText: 'then result' }).waitFor();
  await page.locator('#d-fields [data-field=status]', { hasText: 'completed' }).waitFor();
  assert.equal(await page.textContent('#d-result'), 'all of it');
  await page.click('#detail button[value=close]');
  await page.locator('#detail').waitFor({ state: 'hidden' });
});

test('cancelling a pending job from the page answers its waiting client 410', async () => {
  const waiting = call('/api/submit?queue=e2e-cancel&timeout=60', {
    method: 'POST', body: 'cancel me', headers: { 'Content-Type': 'text/plain', 'X-Trace': 'e2e' },
  });
  const row = page.locator('#jobs tr[data-status=pending]', { hasText: 'e2e-cancel' });
  await row.waitFor();
  const id = await row.getAttribute('data-id');
  await row.click();
  await page.locator('#detail').waitFor({ state: 'visible' });
  assert.equal(await page.textContent('#d-input'), 'cancel me');
  assert.match(await page.textContent('#d-input-fmt'), /text, 9 bytes/);
  assert.match(await page.textContent('#d-headers'), /"x-trace": "e2e"/);
  assert.doesNotMatch(await page.textContent('#d-headers'), /authorization/i);
  await page.click('#d-cancel');
  const resp = await waiting;
  assert.equal(resp.status, 410);
  assert.equal((await resp.json()).job_id, id);
  await page.locator('#d-fields [data-field=status]', { hasText: 'cancelled' }).waitFor();
  await page.click('#detail button[value=close]');
});

test('clearing a queue goes through a confirmation', async () => {
  const ids = [];
  for (let i = 0; i < 3; i++) ids.push(await enqueue('e2e-clear', `job ${i}`));
  const clear = page.locator('button[data-clear="e2e-clear"]');
  await clear.waitFor();
  await clear.click();
  await page.locator('#confirm').waitFor({ state: 'visible' });
  assert.match(await page.textContent('#cf-text'), /3 pending and running/);
  // "Keep" changes nothing.
  await page.click('#cf-no');
  await page.locator('#confirm').waitFor({ state: 'hidden' });
  assert.equal((await (await call(`/api/jobs/${ids[0]}`)).json()).status, 'pending');
  await clear.click();
  await page.click('#cf-yes');
  await page.locator('#confirm').waitFor({ state: 'hidden' });
  for (const id of ids) {
    const r = await call(`/api/jobs/${id}`);
    assert.equal(r.status, 200);
    assert.equal((await r.json()).status, 'cancelled');
  }
  await page.locator('#queues tr[data-queue="e2e-clear"]').waitFor({ state: 'detached' });
});

test('screenshots at laptop and phone widths', async () => {
  // A backlog, so the depth chart and the queue table have something, and
  // traffic still flowing while the pictures are taken.
  for (let i = 0; i < 12; i++) await enqueue('backlog', JSON.stringify({ i }));
  const flowing = traffic(9);
  await page.locator('#queues tr[data-queue="backlog"]').waitFor();
  await page.waitForTimeout(6000); // let the charts fill (a picture, not a synchronisation)
  const c = await page.textContent('#c-pending');
  assert.ok(Number(c) >= 12, `pending card shows ${c}`);
  await page.evaluate(() => { document.activeElement?.blur(); window.scrollTo(0, 0); });
  await page.screenshot({ path: `${SHOTS}/dashboard-desktop.png` });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  await page.evaluate(() => window.scrollTo(0, 0));
  // Nothing wider than the phone's screen but the scrollable tables.
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(overflow <= 390, `page is ${overflow}px wide at 390px`);
  await page.screenshot({ path: `${SHOTS}/dashboard-phone.png` });
  await flowing;
});

test('the pause switch stops the live stream', async () => {
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.check('#pause');
  await page.locator('#conn[data-state=paused]').waitFor();
  const before = await page.textContent('#uptime');
  await page.waitForTimeout(2200);
  assert.equal(await page.textContent('#uptime'), before);
  await page.uncheck('#pause');
  await page.locator('#conn[data-state=live]').waitFor();
  assert.deepEqual(pageErrors, []);
});

test('the admin token never appears in a URL', () => {
  assert.ok(requested.length > 10);
  if (TOKEN) for (const u of requested) assert.ok(!u.includes(TOKEN), u);
});
