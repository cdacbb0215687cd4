/**
 * The controller with real parts: two PostgreSQL servers holding tandem's
 * status table, two DNS daemons probing two HTTP health targets, two
 * controllers, and a webhook receiver. Lag is set through the status table,
 * which is the interface the replication agents write.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { startCluster, client, TEST_PG_PASSWORD, type TestCluster } from '../../test/helpers/pg.ts';
import { freePort } from '../../test/helpers/ports.ts';
import { tandem } from '../../test/helpers/lab.ts';
import { parseConfig, type Config } from '../core/config/index.ts';
import { silentLogger } from '../core/log.ts';
import { createRegistry } from '../core/metrics.ts';
import { callApi } from '../core/http.ts';
import { isTandemError } from '../core/errors.ts';
import { SCHEMA_DDL } from '../replication/schema.ts';
import { DnsDaemon } from '../dns/daemon.ts';
import { queryA } from '../dns/client.ts';
import { Controller } from './controller.ts';
import { databaseLagReader } from './daemon.ts';
import { WanProxy, WanState } from '../lab/wan.ts';

const TOKEN = 'controller-test-token';
const INTERVAL = 200;
const THRESHOLD = 3;
const WAIT_SEC = 3;

/** An HTTP health target whose answer the test switches. */
async function healthTarget(host: string) {
  let mode: 'ok' | 'fail' | 'hang' = 'ok';
  const srv = http.createServer((req, res) => {
    if (mode === 'hang') return; // never answers: the probe times out
    res.writeHead(mode === 'ok' ? 200 : 503, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ status: mode === 'ok' ? 'ok' : 'fail' }));
  });
  const port = await freePort(host);
  await new Promise<void>((r) => srv.listen(port, host, r));
  return {
    url: `http://${host}:${port}/healthz`,
    set: (m: typeof mode) => (mode = m),
    close: () => new Promise<void>((r) => { srv.closeAllConnections(); srv.close(() => r()); }),
  };
}

/** A webhook receiver that keeps every notification. */
async function webhookReceiver() {
  const got: { text: string; tandem: { key: string; severity: string; title: string } }[] = [];
  const srv = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d: Buffer) => (body += d.toString()));
    req.on('end', () => {
      got.push(JSON.parse(body));
      res.end('ok');
    });
  });
  const port = await freePort();
  await new Promise<void>((r) => srv.listen(port, '127.0.0.1', r));
  return { url: `http://127.0.0.1:${port}/hook`, got, close: () => new Promise<void>((r) => srv.close(() => r())) };
}

async function until(what: string, fn: () => boolean | Promise<boolean>, timeoutMs = 15_000): Promise<number> {
  const t0 = Date.now();
  while (!(await fn())) {
    if (Date.now() - t0 > timeoutMs) throw new Error(`timed out waiting for: ${what}; leader's view: ${JSON.stringify(controllers[0]?.status().regions)}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  return Date.now() - t0;
}

let cluster: TestCluster;
let dir: string;
let configFile: string;
let config: Config;
const targets: Awaited<ReturnType<typeof healthTarget>>[] = [];
let hook: Awaited<ReturnType<typeof webhookReceiver>>;
const dns: DnsDaemon[] = [];
const controllers: Controller[] = [];
const readers: ReturnType<typeof databaseLagReader>[] = [];
/** Lag (seconds) each region's status table reports from its peer; a loop keeps the rows fresh. */
const lag: Record<string, number> = { south: 0.2, west: 0.2 };
let heartbeat: NodeJS.Timeout;
let endWriters: () => Promise<void> = async () => {};

before(async () => {
  cluster = await startCluster(2);
  dir = mkdtempSync(path.join(tmpdir(), 'tandem-control-'));
  hook = await webhookReceiver();
  targets.push(await healthTarget('127.0.1.1'), await healthTarget('127.0.2.1'));
  process.env.TANDEM_TEST_PG_PASSWORD = TEST_PG_PASSWORD;
  const regions = await Promise.all(
    ['south', 'west'].map(async (name, i) => {
      const host = `127.0.${i + 1}.1`;
      return {
        name,
        addresses: [host],
        healthUrl: targets[i]!.url,
        database: { host, port: cluster.servers[i]!.options.port, user: 'postgres', password: { env: 'TANDEM_TEST_PG_PASSWORD' } },
        dns: { listen: [`${host}:${await freePort(host)}`], admin: `${host}:${await freePort(host)}` },
        control: { listen: `${host}:${await freePort(host)}` },
      };
    }),
  );
  const input = {
    dataDir: dir,
    regions,
    health: { intervalMs: INTERVAL, timeoutMs: 150, failThreshold: THRESHOLD, recoverThreshold: 2 },
    dns: { zone: 'tandem.test.', ttlSec: 5, services: [{ name: 'app' }] },
    control: { rpoSec: 5, readinessLagSec: 2, waitPeriodSec: WAIT_SEC, webhooks: [{ url: hook.url }] },
  };
  config = parseConfig(input);
  configFile = path.join(dir, 'tandem.yaml');
  writeFileSync(configFile, JSON.stringify(input));
  for (const s of cluster.servers) {
    const c = await client(s);
    for (const ddl of SCHEMA_DDL) await c.query(ddl);
    await c.end();
  }
  const writers = await Promise.all(cluster.servers.map((s) => client(s)));
  const beat = async () => {
    for (const [i, region] of ['south', 'west'].entries()) {
      const peer = region === 'south' ? 'west' : 'south';
      await writers[i]!.query(
        `INSERT INTO tandem.replication_status (peer, source_commit_ts, applied_at) VALUES ($1, now() - make_interval(secs => $2), now())
         ON CONFLICT (peer) DO UPDATE SET source_commit_ts = EXCLUDED.source_commit_ts, applied_at = now()`,
        [peer, lag[region]],
      ).catch(() => {});
    }
  };
  await beat();
  heartbeat = setInterval(() => void beat(), 100);
  endWriters = () => Promise.all(writers.map((w) => w.end())).then(() => {});
  for (const r of config.regions) {
    const d = new DnsDaemon({ region: r.name, config, token: TOKEN, logger: silentLogger() });
    await d.start();
    dns.push(d);
  }
  for (const r of config.regions) {
    const reader = databaseLagReader(config, r);
    readers.push(reader);
    const c = new Controller({ config, region: r.name, token: TOKEN, logger: silentLogger(), lag: reader, tickMs: 100 });
    await c.start();
    controllers.push(c);
  }
});

after(async () => {
  clearInterval(heartbeat);
  await endWriters();
  await Promise.all(controllers.map((c) => c.stop()));
  await Promise.all(readers.map((r) => r.close()));
  await Promise.all(dns.map((d) => d.stop()));
  await Promise.all(targets.map((t) => t.close()));
  await hook.close();
  await cluster.stop();
  rmSync(dir, { recursive: true, force: true });
});

const drainedEverywhere = (region: string) => dns.every((d) => d.stateView().regions.find((r) => r.name === region)?.drained === true);
const undrainedEverywhere = (region: string) => dns.every((d) => d.stateView().regions.find((r) => r.name === region)?.drained === false);

test('the first region leads; a failed region is drained within interval × threshold + the wait period, once, and notified', async () => {
  await until('a leader is elected', () => controllers.every((c) => c.status().leader === 'south'));
  assert.equal(controllers[0]!.status().isLeader, true);
  assert.equal(controllers[1]!.status().isLeader, false);

  targets[1]!.set('hang');
  const elapsed = await until('west drained in every DNS server', () => drainedEverywhere('west'));
  const bound = INTERVAL * THRESHOLD + WAIT_SEC * 1000 + INTERVAL;
  assert.ok(elapsed <= bound, `drained after ${elapsed} ms; bound ${bound} ms`);
  // DNS answers a client of any geography with a's address now.
  const answer = await queryA(dns[0]!.listeners[0]!, 'app.tandem.test', { timeoutMs: 1000 });
  assert.deepEqual(answer.addresses, ['127.0.1.1']);
  await until('notification', () => hook.got.some((n) => n.tandem.key.startsWith('west:drained')));
  await new Promise((r) => setTimeout(r, 500));
  assert.equal(hook.got.filter((n) => n.tandem.key.startsWith('west:drained')).length, 1, 'one notification per event');
  const audit = controllers[0]!.auditLog.read();
  const drained = audit.find((e) => e.action === 'drained' && e.region === 'west');
  assert.ok(drained, 'the drain is audited');
  assert.equal(drained.actor, 'controller:south');
  assert.match(drained.reason, /west drained from DNS/);
  assert.ok(!Number.isNaN(Date.parse(drained.at)));
});

test('the last serving region cannot be drained, through the API and the CLI', async () => {
  await assert.rejects(
    // Asking the follower: it forwards to the leader, which refuses.
    callApi(`http://${config.regions[1]!.control!.listen.host}:${config.regions[1]!.control!.listen.port}/v1/failover`, {
      method: 'POST',
      token: TOKEN,
      body: { region: 'south' },
    }),
    (err: unknown) => isTandemError(err, 'TANDEM_ERR_SAFETY'),
  );
  const cli = await tandem(['failover', '--drain', 'south', '-c', configFile], { env: { TANDEM_ADMIN_TOKEN: TOKEN, TANDEM_TEST_PG_PASSWORD: TEST_PG_PASSWORD } });
  assert.equal(cli.code, 1, cli.stderr);
  assert.match(cli.stderr, /refusing to drain south: it is the last serving region \[TANDEM_ERR_SAFETY\]/);
  assert.ok(undrainedEverywhere('south'));
  assert.ok(controllers[0]!.auditLog.read().some((e) => e.action === 'failover-refused' && e.region === 'south' && e.actor.startsWith('operator:')));
});

test('a recovered region stays out of DNS until its lag is below the readiness bound, then returns with a resolved message', async () => {
  lag.west = 30;
  targets[1]!.set('ok');
  await until('west recovering', () => controllers[0]!.status().regions.find((r) => r.name === 'west')?.phase === 'recovering');
  await new Promise((r) => setTimeout(r, 1_000));
  assert.ok(drainedEverywhere('west'), 'still drained while 30 s behind');
  lag.west = 0.3;
  await until('west back in every DNS server', () => undrainedEverywhere('west'));
  const ecsAnswer = await queryA(dns[0]!.listeners[0]!, 'app.tandem.test', { timeoutMs: 1000 });
  assert.ok(ecsAnswer.addresses.length > 0);
  await until('resolved notification', () => hook.got.some((n) => n.tandem.severity === 'resolved' && /west is serving again/.test(n.tandem.title)));
  const audit = controllers[0]!.auditLog.read().map((e) => `${e.region}:${e.action}`);
  assert.ok(audit.includes('west:ready') && audit.includes('west:failed-back'), audit.join(' '));
});

test('a manual failover toward a lagging region is refused without --force; with it, it is audited with who and why', async () => {
  lag.south = 30; // south is 30 s behind west: draining west would send west's users to a stale region
  await until('lag seen', () => (controllers[0]!.status().regions.find((r) => r.name === 'south')?.lagFrom?.west ?? 0) > 20);
  const env = { TANDEM_ADMIN_TOKEN: TOKEN, TANDEM_TEST_PG_PASSWORD: TEST_PG_PASSWORD, TANDEM_ACTOR: 'alice' };
  const refused = await tandem(['failover', '--drain', 'west', '-c', configFile], { env });
  assert.equal(refused.code, 1, refused.stderr);
  assert.match(refused.stderr, /south is 3\d\.\d s behind it.*\[TANDEM_ERR_RPO\]/);
  assert.ok(undrainedEverywhere('west'));
  const forced = await tandem(['failover', '--drain', 'west', '--force', '--reason', 'maintenance window', '-c', configFile], { env });
  assert.equal(forced.code, 0, forced.stderr);
  await until('west drained by the operator', () => drainedEverywhere('west'));
  const entry = controllers[0]!.auditLog.read().find((e) => e.action === 'drained' && e.actor === 'operator:alice');
  assert.ok(entry, 'audited with the operator');
  assert.match(entry.reason, /maintenance window/);
  // An operator's drain is not undone automatically, even healthy and caught up.
  lag.south = 0.2;
  await new Promise((r) => setTimeout(r, 1_500));
  assert.ok(drainedEverywhere('west'));
  const back = await tandem(['failback', 'west', '-c', configFile], { env });
  assert.equal(back.code, 0, back.stderr);
  await until('west back', () => undrainedEverywhere('west'));
});

test('a flapping region is not drained twice within the wait period', async () => {
  await until('every region serving', () => controllers[0]!.status().regions.every((r) => r.phase === 'serving'));
  const drainsBefore = controllers[0]!.auditLog.read(1000).filter((e) => e.action === 'drained' && e.region === 'west').length;
  // Down long enough to be confirmed, up long enough to recover, over and over, inside one wait period.
  const t0 = Date.now();
  let down = true;
  while (Date.now() - t0 < WAIT_SEC * 1000 * 0.9) {
    targets[1]!.set(down ? 'fail' : 'ok');
    await new Promise((r) => setTimeout(r, down ? INTERVAL * (THRESHOLD + 1) : INTERVAL * 3));
    down = !down;
  }
  targets[1]!.set('ok');
  const drains = controllers[0]!.auditLog.read(1000).filter((e) => e.action === 'drained' && e.region === 'west').length - drainsBefore;
  assert.ok(drains <= 1, `drained ${drains} times while flapping`);
  await until('west serving again', () => controllers[0]!.status().regions.find((r) => r.name === 'west')?.phase === 'serving' && undrainedEverywhere('west'), 20_000);
});

test('a drain and a failback in quick succession leave the region in DNS answers', async () => {
  await until('every region serving', () => controllers[0]!.status().regions.every((r) => r.phase === 'serving') && undrainedEverywhere('west'), 20_000);
  const leader = `http://${config.regions[0]!.control!.listen.host}:${config.regions[0]!.control!.listen.port}`;
  await callApi(`${leader}/v1/failover`, { method: 'POST', token: TOKEN, body: { region: 'west', force: true, reason: 'quick' }, actor: 'bob' });
  await callApi(`${leader}/v1/failback`, { method: 'POST', token: TOKEN, body: { region: 'west', force: true }, actor: 'bob' });
  await until('west undrained everywhere', () => undrainedEverywhere('west'));
  await new Promise((r) => setTimeout(r, 1_000));
  assert.ok(undrainedEverywhere('west'), 'still in answers a second later');
  assert.equal(controllers[0]!.status().regions.find((r) => r.name === 'west')?.phase, 'serving');
});

test('a lag read over a path that went silent gives up within its deadline instead of holding the tick', async () => {
  // West's database behind a WAN proxy; the partition holds every byte, as a black-holed cloud path does.
  const state = new WanState();
  const host = '127.0.2.1';
  const port = await freePort(host);
  const proxy = new WanProxy({ region: 'west', listen: { host, port }, upstream: { host, port: cluster.servers[1]!.options.port }, state, regionOf: () => 'south' });
  await proxy.start();
  const south = config.regions[0]!;
  const west = { ...config.regions[1]!, database: { ...config.regions[1]!.database, port } };
  const reader = databaseLagReader(config, south);
  try {
    const before = await reader(west);
    assert.ok(before && 'south' in before, `read through the proxy: ${JSON.stringify(before)}`);
    state.partition('south', 'west');
    const t0 = performance.now();
    const timedOut = Symbol('still waiting');
    const during = await Promise.race([reader(west), new Promise((r) => setTimeout(() => r(timedOut), 10_000))]);
    const ms = performance.now() - t0;
    assert.notEqual(during, timedOut, 'the read is still waiting after 10 s');
    assert.equal(during, undefined, 'no lag while the path is silent');
    assert.ok(ms < 5_000, `gave up after ${ms.toFixed(0)} ms`);
  } finally {
    state.heal();
    await reader.close();
    await proxy.stop();
  }
});

test('an audit log that cannot be written (disk full) is logged and counted; the command still gets its own answer', async () => {
  const full = { ...config, control: { ...config.control, auditLog: '/dev/full' } };
  const registry = createRegistry('control', 'south', false);
  const c = new Controller({ config: full, region: 'south', token: TOKEN, logger: silentLogger(), registry, lag: async () => undefined });
  // Not started: no leader and no observation yet, so draining is refused by the safety rule, and that refusal is audited.
  await assert.rejects(c.failover({ region: 'west' }, 'alice'), (err: unknown) => isTandemError(err, 'TANDEM_ERR_SAFETY'));
  const metric = await registry.getSingleMetric('tandem_control_audit_write_errors_total')!.get();
  assert.equal(metric.values[0]?.value, 1);
});

test("a controller whose runbook differs (it led while cut off) defers to the earlier leader, whose DNS servers drop the other's automatic drain", async () => {
  await until('every region serving', () => controllers.every((c) => c.status().regions.every((r) => r.phase === 'serving')) && undrainedEverywhere('south'), 20_000);
  // What west's controller would have done while cut off from south: an automatic drain of south on west's DNS server.
  const west = config.regions[1]!.dns!.admin;
  await callApi(`http://${west.host}:${west.port}/v1/regions/south/drain`, { method: 'POST', token: TOKEN, body: { reason: 'tandem-controller (west): auto: south failed' }, actor: 'controller:west' });
  const leaders = new Set<string | undefined>();
  const watch = setInterval(() => {
    for (const c of controllers) if (c.status().isLeader) leaders.add(c.status().region);
  }, 20);
  try {
    await until('south back in every DNS server', () => undrainedEverywhere('south'), 10_000);
    await until('west follows again', () => controllers[1]!.status().regions.find((r) => r.name === 'south')?.phase === 'serving');
    await new Promise((r) => setTimeout(r, 500));
  } finally {
    clearInterval(watch);
  }
  assert.deepEqual([...leaders], ['south'], 'west never led');
  assert.equal(controllers[1]!.status().leader, 'south');
});

test('a command forwarded once is handled where it lands, not forwarded again (no ping-pong between controllers)', async () => {
  await until('south leads', () => controllers.every((c) => c.status().leader === 'south'));
  const follower = config.regions[1]!.control!.listen;
  const reason = `hop-test-${Date.now()}`;
  // Something refused, so that nothing changes: failing back a region that is not drained.
  await assert.rejects(
    callApi(`http://${follower.host}:${follower.port}/v1/failback`, { method: 'POST', token: TOKEN, body: { region: 'south', reason }, actor: 'hopper', headers: { 'x-tandem-forwarded-by': 'south' } }),
    (err: unknown) => isTandemError(err, 'TANDEM_ERR_STATE') || /not drained/.test((err as Error).message),
  );
  assert.ok(controllers[1]!.auditLog.read(50).some((e) => e.action === 'failback-refused' && e.actor === 'hopper'), 'refused and audited by the follower itself');
  assert.ok(!controllers[0]!.auditLog.read(50).some((e) => e.action === 'failback-refused' && e.actor === 'hopper'), 'not passed on to the leader');
});
