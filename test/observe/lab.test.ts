/**
 * The dashboard against the whole lab, in real headless Chromium: `tandem lab
 * up --detach` in a fresh folder; the page the lab serves on its API port
 * (127.0.0.1:7070), and `tandem dashboard` run on the lab's config beside it;
 * then:
 *   - both regions healthy and the lag charts moving (figures from the agents);
 *   - the Drain button drains a region (DNS answers move) and Undrain returns it;
 *   - after `tandem lab fail aws-south` the region turns unhealthy and the
 *     failover appears on the timeline; a screenshot is taken; Recover brings it back.
 * Everything is stopped in `after` (`tandem lab down`, the dashboard by PID).
 * TANDEM_SAVE_SCREENSHOT=1 copies the screenshot to docs/dashboard.png.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { copyFileSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { queryA } from '../../src/dns/client.ts';
import { LAB_PORTS, LAB_REGIONS } from '../../src/lab/topology.ts';
import { startLab, TANDEM, type TestLab } from '../helpers/lab.ts';
import { freePort } from '../helpers/ports.ts';
import { waitFor } from './helpers.ts';
import { launchBrowser, type BrowserHandle } from './browser.ts';

let lab: TestLab | undefined;
let dashboard: ChildProcess | undefined;
let dashboardLog = '';
let b: BrowserHandle | undefined;
/** The lab's own dashboard (its API port). */
let base = '';
/** `tandem dashboard` on the lab's config. */
let standalone = '';
const shots = mkdtempSync(path.join(tmpdir(), 'tandem-dashboard-shot-'));

const SOUTH = LAB_REGIONS[0].name;
const WEST = LAB_REGIONS[1].name;
const WEST_CLIENT = LAB_REGIONS[1].clientSubnets[0];

before(async () => {
  lab = await startLab({ regions: 2 });
  const port = await freePort('127.0.0.1');
  dashboard = spawn(process.execPath, [TANDEM, 'dashboard', '-c', lab.config, '--listen', `127.0.0.1:${port}`, '--lab-api', lab.status.api], {
    env: { ...process.env, TANDEM_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  dashboard.stdout!.on('data', (d: Buffer) => (dashboardLog += d.toString()));
  dashboard.stderr!.on('data', (d: Buffer) => (dashboardLog += d.toString()));
  standalone = `http://127.0.0.1:${port}`;
  base = lab.status.api;
  await waitFor('tandem dashboard answers', async () => (await fetch(`${standalone}/`)).ok, 30_000, 200).catch((err: Error) => {
    throw new Error(`${err.message}\n${dashboardLog}`);
  });
  b = await launchBrowser();
});

after(async () => {
  await b?.close();
  if (dashboard?.pid && dashboard.exitCode === null) {
    const exited = new Promise((r) => dashboard!.once('exit', r));
    dashboard.kill('SIGTERM');
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5_000))]);
    if (dashboard.exitCode === null) dashboard.kill('SIGKILL');
  }
  await lab?.down();
  rmSync(shots, { recursive: true, force: true });
});

/** Run one step; on failure say which, with what the dashboard saw and its log. */
async function step<T>(name: string, fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    let seen = '';
    try {
      const s = ((await (await fetch(`${base}/v1/dashboard/snapshot`)).json()) as { snapshot: { regions: unknown[]; timeline: unknown[]; sources: { id: string; up?: boolean; error?: string }[] } }).snapshot;
      seen = JSON.stringify({ regions: s.regions, timeline: s.timeline.slice(0, 8), down: s.sources.filter((x) => !x.up) }, null, 1).slice(0, 6000);
    } catch (e) {
      seen = `(no snapshot: ${(e as Error).message})`;
    }
    throw new Error(`step "${name}" failed: ${(err as Error).message}\ndashboard saw: ${seen}\ndashboard log: ${dashboardLog.slice(-2000)}`, { cause: err });
  }
}

/** Page errors, less Chromium's log line for a 409 answer: the RPO gate refusing an action, which the page handles. */
const unexpectedErrors = () => b!.errors.filter((e) => !/Failed to load resource: the server responded with a status of 409/.test(e));

const card = (region: string) => `#regions .region[data-region="${region}"]`;
/** What a western client is answered, asked of the DNS server at `server`. */
const westAnswer = async (server = '127.0.1.1') => (await queryA({ host: server, port: LAB_PORTS.dns }, 'app.tandem.test', { ecs: WEST_CLIENT, timeoutMs: 1_000 })).addresses;
const southAnswer = async (server: string) => (await queryA({ host: server, port: LAB_PORTS.dns }, 'app.tandem.test', { ecs: LAB_REGIONS[0].clientSubnets[0], timeoutMs: 1_000 })).addresses;
const addressOf = (region: string) => lab!.status.regions.find((r) => r.name === region)!.address;

/** Click an action button twice (it asks for confirmation); give the token if the page asks. */
async function action(selector: string): Promise<void> {
  const page = b!.page;
  // Clear the last action's message so only this action's outcome counts.
  await page.evaluate(() => {
    const m = document.getElementById('message')!;
    m.hidden = true;
    m.removeAttribute('data-state');
  });
  await page.locator(selector).click();
  await page.locator(selector).click();
  const asked = await page.waitForSelector('#token-form:not([hidden])', { timeout: 1_500 }).catch(() => null);
  if (asked) {
    await page.fill('#token-input', lab!.token);
    await page.click('#token-form button[type="submit"]');
  }
  // Done, or refused by the RPO gate (the lab's RPO is 1 s; lag hovers near it): then accept the loss.
  await page.waitForSelector('#message[data-state="done"], #message button[data-action^="force:"]', { timeout: 30_000 });
  const force = page.locator('#message button[data-action^="force:"]');
  if (await force.isVisible()) {
    await force.click();
    await page.waitForSelector('#message[data-state="done"]', { timeout: 30_000 });
  }
}

test('the lab: both regions healthy from both vantage points, lag charts moving with the agents’ figures', async () => {
  const page = b!.page;
  await page.goto(`${base}/`);
  for (const r of [SOUTH, WEST]) await page.waitForSelector(`${card(r)}[data-health="healthy"][data-drained="false"][data-lab="up"]`, { timeout: 30_000 });
  await page.waitForSelector('#chart-lag canvas');
  const attr = (name: string) => page.locator('#chart-lag').getAttribute(name);
  const p0 = Number(await attr('data-points'));
  const t0 = Number(await attr('data-last'));
  await waitFor('lag chart advances', async () => Number(await attr('data-points')) >= p0 + 3 && Number(await attr('data-last')) > t0, 15_000);
  const latest = JSON.parse((await attr('data-latest'))!) as Record<string, number | null>;
  for (const key of [`lag:${SOUTH}>${WEST}`, `lag:${WEST}>${SOUTH}`]) {
    assert.equal(typeof latest[key], 'number', `${key} in ${JSON.stringify(latest)}`);
    assert.ok(latest[key]! < 60, `${key} = ${latest[key]} s`);
  }
  // The lag figures come from the replication agents, and every source answers: in the lab's dashboard and in `tandem dashboard`.
  for (const url of [base, standalone]) {
    type Snap = { snapshot: { mode: string; regions: { health: string }[]; directions: { from?: string }[]; sources: { id: string; up?: boolean; error?: string }[] } };
    const snap = await waitFor(`every source up (${url})`, async () => {
      const s = (await (await fetch(`${url}/v1/dashboard/snapshot`)).json()) as Snap;
      return s.snapshot.sources.every((x) => x.up) ? s : undefined;
    }, 15_000);
    assert.equal(snap.snapshot.mode, 'lab', url);
    assert.deepEqual(snap.snapshot.regions.map((r) => r.health), ['healthy', 'healthy'], url);
    assert.deepEqual(snap.snapshot.directions.map((d) => d.from), ['agent', 'agent'], url);
  }
  // Traffic from the lab's synthetic clients shows per region.
  await waitFor('requests/s on the HTTP chart', async () => {
    const l = JSON.parse((await page.locator('#chart-http').getAttribute('data-latest')) ?? '{}') as Record<string, number | null>;
    return (l[`http:${SOUTH}`] ?? 0) > 0 && (l[`http:${WEST}`] ?? 0) > 0;
  }, 20_000);
  assert.deepEqual(unexpectedErrors(), []);
});

test('the Drain button drains a region (DNS answers move to the other region) and Undrain returns it', async () => {
  const page = b!.page;
  assert.deepEqual(await westAnswer(), [addressOf(WEST)], 'a western client is answered by the western region first');
  await step('drain from the page', () => action(`${card(WEST)} button[data-action="drain:${WEST}"]`));
  await step('western clients sent to the southern region', () => waitFor('DNS answer', async () => (await westAnswer())[0] === addressOf(SOUTH), 15_000));
  await step('the page shows the drain', async () => {
    await page.waitForSelector(`${card(WEST)}[data-drained="true"]`, { timeout: 15_000 });
    await page.waitForSelector(`#geo li[data-geography="${WEST}"][data-serving="${SOUTH}"]`, { timeout: 10_000 });
    await page.waitForSelector(`#timeline li[data-kind="drained"][data-region="${WEST}"]`, { timeout: 10_000 });
    await page.waitForSelector(`${card(WEST)} button[data-action="undrain:${WEST}"]`);
  });
  // The leading controller must have seen the drain on every DNS server before it can undo it.
  await step('the controller saw the drain', () =>
    waitFor('controller view', async () => {
      const s = (await (await fetch(`http://${addressOf(SOUTH)}:${LAB_PORTS.control}/v1/status`)).json()) as { regions: { name: string; dnsDrained: Record<string, boolean> }[] };
      const d = s.regions.find((r) => r.name === WEST)?.dnsDrained ?? {};
      return Object.keys(d).length === 2 && Object.values(d).every(Boolean);
    }, 10_000),
  );
  await step('undrain from the page', () => action(`${card(WEST)} button[data-action="undrain:${WEST}"]`));
  await step('western clients back on the western region', () => waitFor('DNS answer', async () => (await westAnswer())[0] === addressOf(WEST), 20_000));
  await step('the page shows the undrain', () => page.waitForSelector(`${card(WEST)}[data-drained="false"]`, { timeout: 15_000 }));
  // Partition and heal from the lab panel (the two selects default to the first two regions).
  await step('partition from the page', () => action('#lab button[data-action="partition"]'));
  await step('the partition shows', async () => {
    await page.waitForSelector('#lab .pill.critical', { timeout: 10_000 });
    await page.waitForSelector('#timeline li[data-source="lab"][data-kind="partition"]', { timeout: 10_000 });
  });
  await page.locator('#lab button[data-action="heal"]').click();
  await step('healed', () => page.waitForSelector('#timeline li[data-source="lab"][data-kind="healed"]', { timeout: 10_000 }));
  const status = (await (await fetch(`${base}/v1/lab/status`)).json()) as { wan: { partitions: unknown[] } };
  assert.deepEqual(status.wan.partitions, []);
});

test('after `tandem lab fail aws-south` the region turns unhealthy and the failover is on the timeline; Recover brings it back', async () => {
  const page = b!.page;
  // Let the previous test's failback settle (the controller waits before acting on a region again).
  await step('both serving', () => page.waitForSelector(`${card(SOUTH)}[data-phase="serving"]`, { timeout: 15_000 }));
  const failed = await lab!.cli(['lab', 'fail', SOUTH, '--dir', lab!.dir], 60_000);
  assert.equal(failed.code, 0, failed.stderr);
  await step('the lab reports it failed', () => page.waitForSelector(`${card(SOUTH)}[data-lab="failed"]`, { timeout: 15_000 }));
  await step('unhealthy', () => page.waitForSelector(`${card(SOUTH)}[data-health="unhealthy"]`, { timeout: 30_000 }));
  await step('the failover on the timeline', async () => {
    await page.waitForSelector(`#timeline li[data-source="controller"][data-kind="drained"][data-region="${SOUTH}"]`, { timeout: 45_000 });
    await page.waitForSelector(`#timeline li[data-source="lab"][data-kind="region-failed"][data-region="${SOUTH}"]`);
  });
  await step('alerted, and the map recoloured', async () => {
    await page.waitForSelector(`#alerts [data-alert="probe-failure/${SOUTH}"][data-severity="critical"]`, { timeout: 15_000 });
    await page.waitForSelector(`#geo g[data-state="TN"][data-region="${WEST}"]`, { timeout: 10_000 });
  });
  // The surviving DNS server sends southern clients to the western region.
  assert.deepEqual(await southAnswer(addressOf(WEST)), [addressOf(WEST)]);
  const save = process.env.TANDEM_SAVE_SCREENSHOT === '1';
  // For the picture in the docs: a few seconds of lag growing from the failed region.
  if (save) await new Promise((r) => setTimeout(r, 6_000));
  const shot = path.join(shots, 'dashboard.png');
  await page.screenshot({ path: shot });
  if (save) copyFileSync(shot, fileURLToPath(new URL('../../docs/dashboard.png', import.meta.url)));
  await step('recover from the page', () => action(`${card(SOUTH)} button[data-action="recover:${SOUTH}"]`));
  await step('back up and healthy', async () => {
    await page.waitForSelector(`${card(SOUTH)}[data-lab="up"]`, { timeout: 60_000 });
    await page.waitForSelector(`${card(SOUTH)}[data-health="healthy"]`, { timeout: 30_000 });
  });
  assert.deepEqual(unexpectedErrors(), []);
});
