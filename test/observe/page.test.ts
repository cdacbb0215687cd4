/**
 * The dashboard page in real headless Chromium against real DNS servers and
 * controllers (the fixture; the full lab has its own test in lab.test.ts):
 * both regions healthy, the lag chart moving, a failing region turning
 * unhealthy and its drain appearing on the timeline, and the drain button
 * (asking for the admin token once) draining a region as DNS answers show.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { queryA } from '../../src/dns/client.ts';
import { waitFor } from './helpers.ts';
import { startFixture, TOKEN, type Fixture } from './fixture.ts';
import { launchBrowser, type BrowserHandle } from './browser.ts';

let f: Fixture;
let b: BrowserHandle;

before(async () => {
  f = await startFixture({ pollIntervalMs: 500 });
  b = await launchBrowser();
});

after(async () => {
  await b?.close();
  await f?.stop();
});

const card = (region: string) => `#regions .region[data-region="${region}"]`;
const westClient = async () => (await queryA({ host: f.dns[0]!.listeners[0]!.host, port: f.dns[0]!.listeners[0]!.port }, 'app.tandem.test', { ecs: '127.0.8.0/24', timeoutMs: 1_000 })).addresses;

test('the page shows both regions healthy and the lag chart moving', async () => {
  const { page } = b;
  await page.goto(`${f.base}/`);
  await page.waitForSelector(`${card('aws-south')}[data-health="healthy"]`, { timeout: 15_000 });
  await page.waitForSelector(`${card('azure-west')}[data-health="healthy"]`, { timeout: 15_000 });
  assert.equal(await page.locator(`${card('aws-south')} .pill[data-field="health"]`).textContent(), 'healthy');
  // uPlot drew the lag chart, with one series per direction, and it advances.
  await page.waitForSelector('#chart-lag canvas');
  const points = () => page.locator('#chart-lag').getAttribute('data-points').then(Number);
  const last = () => page.locator('#chart-lag').getAttribute('data-last').then(Number);
  const p0 = await points();
  const t0 = await last();
  await waitFor('lag chart advances', async () => (await points()) >= p0 + 3 && (await last()) > t0, 10_000);
  const latest = JSON.parse((await page.locator('#chart-lag').getAttribute('data-latest'))!) as Record<string, number | null>;
  assert.equal(latest['lag:aws-south>azure-west'], 0.4);
  assert.equal(latest['lag:azure-west>aws-south'], 0.3);
  const legend = await page.locator('#chart-lag .u-legend .u-series').allTextContents();
  assert.deepEqual(legend.map((x) => x.trim()).sort(), ['aws-south → azure-west', 'azure-west → aws-south']);
  // The map colours Tamil Nadu with aws-south and Gujarat with azure-west.
  assert.equal(await page.locator('#geo g[data-state="TN"]').getAttribute('data-region'), 'aws-south');
  assert.equal(await page.locator('#geo g[data-state="GJ"]').getAttribute('data-region'), 'azure-west');
  // A drill report is listed with a link.
  assert.equal(await page.locator('#reports tr[data-report="drill-1"] a').first().textContent(), 'html');
  assert.deepEqual(b.errors, []);
});

test('a failing region turns unhealthy, the drain shows on the timeline, alerts list it; it comes back', async () => {
  const { page } = b;
  f.apps[0]!.mode = 'fail';
  await page.waitForSelector(`${card('aws-south')}[data-health="unhealthy"]`, { timeout: 15_000 });
  await page.waitForSelector('#timeline li[data-kind="drained"][data-region="aws-south"]', { timeout: 15_000 });
  await page.waitForSelector('#alerts [data-alert="probe-failure/aws-south"][data-severity="critical"]', { timeout: 10_000 });
  await page.waitForSelector(`${card('aws-south')}[data-drained="true"]`);
  assert.match((await page.locator('#alert-summary').textContent()) ?? '', /critical/);
  f.apps[0]!.mode = 'ok';
  await page.waitForSelector(`${card('aws-south')}[data-health="healthy"][data-drained="false"][data-phase="serving"]`, { timeout: 20_000 });
  await page.waitForSelector('#timeline li[data-kind="failed-back"][data-region="aws-south"]', { timeout: 10_000 });
});

test('the drain button asks for the token once, drains the region (DNS answers move) and undrains it', async () => {
  const { page } = b;
  assert.deepEqual(await westClient(), ['127.0.2.1']);
  // The controller must have settled from the previous test before an operator action.
  await waitFor('controllers settled', () => f.controllers.every((c) => c.status().regions.every((r) => r.phase === 'serving' && Object.values(r.dnsDrained).every((d) => !d))));
  const drain = page.locator(`${card('azure-west')} button[data-action="drain:azure-west"]`);
  await drain.click();
  assert.match((await drain.textContent()) ?? '', /Confirm drain/);
  await drain.click();
  await page.waitForSelector('#token-form:not([hidden])');
  await page.fill('#token-input', TOKEN);
  await page.click('#token-form button[type="submit"]');
  await waitFor('west clients sent to aws-south', async () => (await westClient())[0] === '127.0.1.1', 10_000);
  await page.waitForSelector(`${card('azure-west')}[data-drained="true"]`, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => sessionStorage.getItem('tandem.adminToken')), TOKEN);
  await waitFor('controller saw the drain', () => Object.values(f.controllers[0]!.status().regions.find((r) => r.name === 'azure-west')!.dnsDrained).every(Boolean));
  // Undrain: the token is remembered for this tab, no second prompt.
  const undrain = page.locator(`${card('azure-west')} button[data-action="undrain:azure-west"]`);
  await undrain.click();
  await undrain.click();
  await waitFor('west clients back on azure-west', async () => (await westClient())[0] === '127.0.2.1', 10_000);
  await page.waitForSelector(`${card('azure-west')}[data-drained="false"]`, { timeout: 10_000 });
  assert.equal(await page.locator('#token-form').isHidden(), true);
  assert.deepEqual(b.errors, []);
});
