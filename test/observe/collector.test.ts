/**
 * The collector and the dashboard routes against real daemons: two DNS
 * servers (src/dns) probing two stand-in apps, two controllers (src/control)
 * running the runbook on what those DNS servers see, a real PostgreSQL with
 * tandem's conflicts table, and a webhook receiver. A region fails (its app
 * answers 503), the controller drains it, the collector sees it, alerts fire
 * to the webhook and resolve when the region comes back.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { ApiServer, callApi } from '../../src/core/http.ts';
import { silentLogger } from '../../src/core/log.ts';
import { isTandemError } from '../../src/core/errors.ts';
import type { DnsDaemon } from '../../src/dns/daemon.ts';
import { queryA } from '../../src/dns/client.ts';
import type { Controller } from '../../src/control/controller.ts';
import { fetchAlerts, nextUpdates, type Collector, type DashboardSnapshot } from '../../src/observe/collector.ts';
import { waitFor, type StandInApp, type WebhookReceiver } from './helpers.ts';
import { startFixture, TOKEN, type Fixture } from './fixture.ts';

let f: Fixture;
let collector: Collector;
let base: string;
let hook: WebhookReceiver;
let apps: StandInApp[];
let dns: DnsDaemon[];
let controllers: Controller[];
let lag: Fixture['lag'];

before(async () => {
  f = await startFixture();
  ({ collector, base, hook, apps, dns, controllers, lag } = f);
});

after(async () => {
  await f?.stop();
});

const snap = () => collector.snapshot();
const region = (s: DashboardSnapshot, name: string) => s.regions.find((r) => r.name === name)!;
const dnsFor = (i: number) => ({ host: dns[i]!.listeners[0]!.host, port: dns[i]!.listeners[0]!.port });
/** What a client in the `127.0.8.0/24` override (azure-west first) gets from aws-south's DNS server. */
const westClientAnswer = async () => (await queryA(dnsFor(0), 'app.tandem.test', { ecs: '127.0.8.0/24', timeoutMs: 1_000 })).addresses;

test('sees both regions healthy from both vantage points, the leader, lag per direction and the geography', async () => {
  const s = await waitFor('both regions healthy', () => {
    const x = snap();
    return x.regions.every((r) => r.health === 'healthy' && r.drained === false && r.phase === 'serving') && x.leader ? x : undefined;
  });
  assert.equal(s.leader, 'aws-south');
  assert.deepEqual(
    region(s, 'aws-south').vantages.map((v) => [v.vantage, v.state]),
    [
      ['aws-south', 'healthy'],
      ['azure-west', 'healthy'],
    ],
  );
  const d = s.directions.find((x) => x.source === 'aws-south' && x.target === 'azure-west');
  assert.equal(d?.lagSec, 0.4);
  assert.equal(d?.from, 'controller');
  assert.deepEqual(
    s.geographies.map((g) => [g.name, g.serving]),
    [
      ['south', ['aws-south']],
      ['west', ['azure-west']],
      ['elsewhere', ['aws-south']],
    ],
  );
  assert.equal(s.tiles.find((t) => t.code === 'TN')?.region, 'aws-south');
  assert.equal(s.tiles.find((t) => t.code === 'GJ')?.region, 'azure-west');
  assert.equal(s.tiles.find((t) => t.code === 'GA')?.region, 'azure-west', 'an ISO-code rule (IN-GA) maps too');
  assert.deepEqual(s.alerts, []);
  // Every configured source is polled; none of the agents exist in this config.
  assert.ok(s.sources.some((x) => x.id === 'dns:azure-west' && x.up === true));
  assert.ok(!s.sources.some((x) => x.kind === 'agent'));
});

test('charts: history grows every poll with one lag series per direction', async () => {
  const before = collector.history().t.length;
  await nextUpdates(collector, 3);
  const h = collector.history();
  assert.ok(h.t.length >= before + 3, `${h.t.length} points after ${before}`);
  assert.ok(h.t.every((t, i) => i === 0 || t > h.t[i - 1]!), 'time axis increases');
  const lagKeys = h.series.filter((x) => x.group === 'lag').map((x) => x.key).sort();
  assert.deepEqual(lagKeys, ['lag:aws-south>azure-west', 'lag:azure-west>aws-south']);
  assert.equal(h.series.find((x) => x.key === 'lag:azure-west>aws-south')?.values.at(-1), 0.3);
});

test('HTTP rates and the 5xx share come from the app metrics; a spike fires and resolves', async () => {
  const app = apps[1]!;
  await nextUpdates(collector, 1);
  app.serve(200, 50);
  const s1 = await waitFor('request rate', () => {
    const r = region(snap(), 'azure-west');
    return (r.http?.windowRequests ?? 0) >= 50 ? r : undefined;
  });
  assert.equal(s1.http?.errorShare, 0);
  app.serve(503, 10);
  app.serve(200, 10);
  const alert = await waitFor('error-rate alert', () => collector.alerts().find((a) => a.key === 'error-rate/azure-west'));
  assert.equal(alert.severity, 'critical');
  const firing = await waitFor('error-rate webhook', () => hook.bodies.find((b) => (b.tandem as { key?: string } | undefined)?.key?.startsWith('error-rate/azure-west@')));
  assert.match(String(firing.text), /^\[CRITICAL\] azure-west: 14\.3 % of requests fail with 5xx/);
  assert.ok(Array.isArray(firing.attachments), 'Slack-compatible payload');
  // Series: requests/s and 5xx/s per region.
  const h = collector.history();
  assert.ok(h.series.find((x) => x.key === 'http5xx:azure-west')?.values.some((v) => (v ?? 0) > 0));
});

test('a region that fails is seen unhealthy, drained by the controller, on the timeline, alerted, and resolved when it returns', async () => {
  const sent = hook.bodies.length;
  apps[0]!.mode = 'fail';
  const s = await waitFor('aws-south unhealthy and drained', () => {
    const x = snap();
    const r = region(x, 'aws-south');
    return r.health === 'unhealthy' && r.drained === true && r.phase === 'drained' ? x : undefined;
  });
  // /healthz is polled every few seconds only (it writes to the region's database).
  await waitFor('app health seen failing', () => region(snap(), 'aws-south').app?.status === 'fail');
  assert.ok(s.timeline.some((e) => e.source === 'controller' && e.region === 'aws-south' && e.kind === 'drained'), JSON.stringify(s.timeline.slice(0, 5)));
  assert.ok(s.timeline.some((e) => e.kind === 'confirmed' && e.region === 'aws-south'));
  const keys = collector.alerts().map((a) => [a.key, a.severity]);
  assert.deepEqual(keys.filter(([k]) => String(k).includes('aws-south')).sort(), [
    ['probe-failure/aws-south', 'critical'],
    ['region-drained/aws-south', 'warning'],
  ]);
  // The geography that prefers aws-south is answered by azure-west now, and DNS agrees.
  assert.deepEqual(s.geographies.find((g) => g.name === 'south')?.serving, ['azure-west']);
  assert.deepEqual(await queryA(dnsFor(1), 'app.tandem.test', { ecs: '127.0.7.0/24', timeoutMs: 1_000 }).then((a) => a.addresses), ['127.0.2.1']);
  // The audit log (polled every few seconds) has the drain.
  await waitFor('audit entry', () => snap().audit.find((a) => a.action === 'drained' && a.region === 'aws-south'));
  // /v1/alerts for `tandem status`.
  const listed = await fetchAlerts(base);
  assert.ok(listed.some((a) => a.key === 'probe-failure/aws-south'));
  // Back: healthy, ready (lag small), failed back; the alerts resolve with one message each.
  apps[0]!.mode = 'ok';
  await waitFor('aws-south serving again', () => {
    const r = region(snap(), 'aws-south');
    return r.health === 'healthy' && r.drained === false && r.phase === 'serving';
  }, 20_000);
  await waitFor('alerts resolved', () => !collector.alerts().some((a) => a.key.endsWith('/aws-south')));
  const resolvedSent = () => hook.bodies.slice(sent).filter((b) => (b.tandem as { severity: string }).severity === 'resolved' && /aws-south@/.test((b.tandem as { key: string }).key)).length;
  await waitFor('resolved webhooks', () => resolvedSent() >= 2);
  const mine = hook.bodies.slice(sent).map((b) => b.tandem as { key: string; severity: string });
  const count = (prefix: string, severity: string) => mine.filter((m) => m.key.startsWith(prefix) && m.severity === severity).length;
  assert.equal(count('probe-failure/aws-south@', 'critical'), 1, JSON.stringify(mine));
  assert.equal(count('probe-failure/aws-south@', 'resolved'), 1);
  assert.equal(count('region-drained/aws-south@', 'warning'), 1);
  assert.equal(count('region-drained/aws-south@', 'resolved'), 1);
  // The webhook URL's secret path is never in a payload.
  assert.ok(!JSON.stringify(hook.bodies).includes('secret-path'));
});

test('replication lag per direction: warning above 60 s, critical above 300 s, resolved below', async () => {
  const sent = hook.bodies.length;
  lag['azure-west']!['aws-south'] = 75;
  const warn = await waitFor('lag warning', () => collector.alerts().find((a) => a.key === 'replication-lag/aws-south/azure-west'));
  assert.equal(warn.severity, 'warning');
  assert.ok(!collector.alerts().some((a) => a.key === 'replication-lag/azure-west/aws-south'), 'the other direction is fine');
  lag['azure-west']!['aws-south'] = 400;
  await waitFor('lag critical', () => collector.alerts().find((a) => a.key === 'replication-lag/aws-south/azure-west' && a.severity === 'critical'));
  lag['azure-west']!['aws-south'] = 0.4;
  await waitFor('lag resolved', () => !collector.alerts().some((a) => a.key.startsWith('replication-lag/')));
  const mine = await waitFor('three lag notifications', () => {
    const m = hook.bodies.slice(sent).map((b) => b.tandem as { key: string; severity: string; title: string }).filter((b) => b.key.startsWith('replication-lag/'));
    return m.length >= 3 ? m : undefined;
  });
  assert.deepEqual(
    mine.map((m) => m.severity),
    ['warning', 'critical', 'resolved'],
  );
  assert.match(mine[1]!.title, /^now critical: replication aws-south → azure-west lags 6\.7 min/);
  assert.equal(new Set(mine.map((m) => m.key)).size, 1, 'one episode, one key');
});

test('conflicts are read from the regions’ databases (read-only); an unreachable database is reported, not fatal', async () => {
  const s = await waitFor('conflicts', () => (snap().conflicts.length ? snap() : undefined));
  const c = s.conflicts[0]!;
  assert.equal(c.region, 'aws-south');
  assert.equal(c.table, 'public.orders');
  assert.equal(c.key, '42');
  assert.equal(c.kind, 'update_update');
  assert.equal(c.decision, 'apply_remote');
  assert.equal(c.remoteRegion, 'azure-west');
  const dead = await waitFor('dead database reported', () => snap().sources.find((x) => x.id === 'database:azure-west' && x.up === false));
  assert.ok(dead.error);
});

test('the page, its bundled assets and the routes', async () => {
  const page = await fetch(`${base}/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-security-policy') ?? '', /script-src 'self'/);
  const html = await page.text();
  assert.match(html, /\/assets\/uPlot\.iife\.min\.js/);
  assert.doesNotMatch(html, /https?:\/\//, 'no CDN or any other origin');
  for (const a of ['uPlot.iife.min.js', 'uPlot.min.css', 'dashboard.js', 'dashboard.css']) {
    const r = await fetch(`${base}/assets/${a}`);
    assert.equal(r.status, 200, a);
    assert.ok((await r.text()).length > 500, a);
  }
  assert.equal((await fetch(`${base}/assets/..%2Fdashboard.ts`)).status, 404);
  assert.equal((await fetch(`${base}/assets/package.json`)).status, 404);
  const snapBody = await callApi<{ snapshot: DashboardSnapshot; history: { t: number[] } }>(`${base}/v1/dashboard/snapshot?history=1`);
  assert.equal(snapBody.snapshot.regions.length, 2);
  assert.ok(snapBody.history.t.length > 3);
  const metrics = await (await fetch(`${base}/metrics`)).text();
  assert.match(metrics, /tandem_observe_source_up\{source="dns",target="aws-south"[^}]*\} 1/);
  assert.match(metrics, /tandem_observe_notifications_total\{severity="resolved"[^}]*\} [1-9]/);
});

test('server-sent events: hello with history, then an update every poll', async () => {
  const ac = new AbortController();
  const res = await fetch(`${base}/v1/dashboard/stream`, { signal: ac.signal });
  assert.equal(res.headers.get('content-type'), 'text/event-stream; charset=utf-8');
  const reader = res.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  const events: { event: string; data: Record<string, unknown> }[] = [];
  const deadline = Date.now() + 5_000;
  while (events.filter((e) => e.event === 'update').length < 2 && Date.now() < deadline) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value;
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev = /^event: (.+)$/m.exec(block)?.[1];
      const data = /^data: (.+)$/m.exec(block)?.[1];
      if (ev && data) events.push({ event: ev, data: JSON.parse(data) as Record<string, unknown> });
    }
  }
  ac.abort();
  await reader.cancel().catch(() => {});
  assert.equal(events[0]?.event, 'hello');
  assert.ok((events[0]!.data.history as { t: number[] }).t.length > 0);
  assert.ok(Number(events[0]!.data.capacity) >= 900);
  const updates = events.filter((e) => e.event === 'update');
  assert.equal(updates.length, 2);
  const p1 = updates[0]!.data.point as { t: number; values: Record<string, number | null> };
  const p2 = updates[1]!.data.point as { t: number };
  assert.ok(p2.t > p1.t);
  assert.ok('lag:aws-south>azure-west' in p1.values);
});

test('drain and undrain from the dashboard go through the controller and show in DNS answers', async () => {
  assert.deepEqual(await westClientAnswer(), ['127.0.2.1']);
  await assert.rejects(
    callApi(`${base}/v1/dashboard/drain`, { body: { region: 'azure-west' } }),
    (err: unknown) => isTandemError(err, 'TANDEM_ERR_AUTH'),
  );
  await assert.rejects(
    callApi(`${base}/v1/dashboard/drain`, { body: { region: 'mars-1' }, token: TOKEN }),
    (err: unknown) => isTandemError(err, 'TANDEM_ERR_NOT_FOUND'),
  );
  const ev = await callApi<{ kind: string; region: string; actor: string }>(`${base}/v1/dashboard/drain`, { body: { region: 'azure-west', reason: 'test drain' }, token: TOKEN, actor: 'alice' });
  assert.equal(ev.kind, 'drained');
  assert.equal(ev.actor, 'dashboard:alice');
  await waitFor('west clients sent to aws-south', async () => (await westClientAnswer())[0] === '127.0.1.1');
  await waitFor('drained in the snapshot', () => region(snap(), 'azure-west').drained === true);
  // The safety rule: the last serving region cannot be drained; the controller's refusal is passed on.
  await assert.rejects(
    callApi(`${base}/v1/dashboard/drain`, { body: { region: 'aws-south' }, token: TOKEN }),
    (err: unknown) => isTandemError(err, 'TANDEM_ERR_SAFETY'),
  );
  // The controller decides failback on the DNS state it last observed: give it one tick to see the drain
  // (undraining within the same tick is a race in the controller, reported to its owner).
  await waitFor('controller saw the drain', () => Object.values(controllers[0]!.status().regions.find((r) => r.name === 'azure-west')!.dnsDrained).every(Boolean));
  await callApi(`${base}/v1/dashboard/undrain`, { body: { region: 'azure-west' }, token: TOKEN });
  await waitFor('west clients back on azure-west', async () => (await westClientAnswer())[0] === '127.0.2.1');
  assert.ok(snap().timeline.some((e) => e.source === 'dashboard' && e.kind === 'drain-requested' && e.region === 'azure-west'));
});

test('lab actions need a lab; reports are listed and served inside their folder only', async () => {
  await assert.rejects(
    callApi(`${base}/v1/dashboard/lab/fail`, { body: { region: 'aws-south' }, token: TOKEN }),
    (err: unknown) => isTandemError(err, 'TANDEM_ERR_LAB'),
  );
  const r = await waitFor('report listed', () => snap().reports.find((x) => x.id === 'drill-1'));
  assert.equal(r.title, 'failover (aws-south)');
  assert.equal(r.outcome, 'pass');
  assert.deepEqual(r.figures, { RTO: '12.3 s', RPO: '0 s', 'lost writes': '0' });
  assert.equal(r.links.html, '/reports/drill-1/report.html');
  const html = await fetch(`${base}${r.links.html}`);
  assert.equal(html.status, 200);
  assert.equal(html.headers.get('content-security-policy'), 'sandbox allow-scripts');
  assert.match(await html.text(), /drill report/);
  assert.equal((await fetch(`${base}/reports/drill-1/leak.txt`)).status, 404, 'a symlink out of the folder is not served');
  assert.equal((await fetch(`${base}/reports/drill-1/..%2F..%2Fsecret.txt`)).status, 404);
  assert.equal((await fetch(`${base}/reports/drill-1/report.exe`)).status, 404);
});

test('viewerAuth "token": the page is public, the data needs the token', async () => {
  const { dashboardRoutes } = await import('../../src/observe/dashboard.ts');
  const guarded = new ApiServer({ name: 'guarded', listen: { host: '127.0.0.1', port: 0 }, token: TOKEN, routes: dashboardRoutes(collector, { token: TOKEN, viewerAuth: 'token' }), logger: silentLogger() });
  await guarded.start();
  try {
    assert.equal((await fetch(`${guarded.url}/`)).status, 200);
    assert.equal((await fetch(`${guarded.url}/v1/dashboard/snapshot`)).status, 401);
    assert.equal((await fetch(`${guarded.url}/v1/dashboard/stream`)).status, 401);
    assert.equal((await fetch(`${guarded.url}/v1/alerts`)).status, 401);
    assert.ok(Array.isArray(await fetchAlerts(guarded.url, { token: TOKEN })));
  } finally {
    await guarded.stop();
  }
});
