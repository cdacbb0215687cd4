/**
 * `tandem app migrate | serve | fence | unfence` as the lab runs them: a child
 * process with two cluster workers sharing the region address, cluster-wide
 * metrics, the fence through the CLI, and SIGTERM draining an in-flight
 * request before exiting 0.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { randomUUID } from 'node:crypto';
import net from 'node:net';
import { stringify } from 'yaml';
import type pg from 'pg';
import { startCluster, client, TEST_PG_PASSWORD, type TestCluster } from '../helpers/pg.ts';
import { freePort } from '../helpers/ports.ts';
import { metricValue, parseMetrics, request, sfKey, SESSION_KEY_A } from './helpers.ts';

const ROOT = path.resolve(import.meta.dirname, '../..');
const BIN = path.join(ROOT, 'bin/tandem.js');
let cluster: TestCluster;
let dir: string;
let configFile: string;
let base: string;
let child: ChildProcess | undefined;
let db: pg.Client;
const env = { ...process.env, TANDEM_TEST_PG_PASSWORD: TEST_PG_PASSWORD, TANDEM_LOG_LEVEL: 'warn' };

before(async () => {
  cluster = await startCluster(1);
  dir = mkdtempSync(path.join(tmpdir(), 'tandem-app-serve-'));
  const keyFile = path.join(dir, 'session.key');
  writeFileSync(keyFile, `${SESSION_KEY_A}\n`, { mode: 0o600 });
  const s = cluster.servers[0]!;
  const host = s.options.host;
  const port = await freePort(host);
  base = `http://${host}:${port}`;
  configFile = path.join(dir, 'tandem.yaml');
  writeFileSync(
    configFile,
    stringify({
      regions: [
        {
          name: 'r1',
          addresses: [host],
          healthUrl: `${base}/healthz`,
          database: { host, port: s.options.port, user: 'postgres', password: { env: 'TANDEM_TEST_PG_PASSWORD' } },
          app: { listen: `${host}:${port}`, workers: 2 },
        },
      ],
      app: { sessionKeys: [{ file: keyFile }], shutdownGraceMs: 8_000, fenceCacheMs: 200 },
    }),
  );
  db = await client(s);
});

after(async () => {
  if (child && child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  await db?.end().catch(() => {});
  await cluster?.stop();
  rmSync(dir, { recursive: true, force: true });
});

function cli(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, ...args], { cwd: ROOT, env, encoding: 'utf8', timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

test('migrate creates the schema and is idempotent', () => {
  const first = cli('app', 'migrate', '-c', configFile, '--region', 'r1', '--json');
  assert.equal(first.status, 0, first.stderr);
  const out = JSON.parse(first.stdout) as Record<string, Array<{ component: string; applied: number[] }>>;
  assert.deepEqual(out.r1!.map((m) => [m.component, m.applied]), [['kit', [1]], ['shop', [1]]]);
  const second = cli('app', 'migrate', '-c', configFile, '--region', 'r1', '--json');
  assert.equal(second.status, 0, second.stderr);
  assert.deepEqual((JSON.parse(second.stdout) as typeof out).r1!.map((m) => m.applied), [[], []]);
  const unknown = cli('app', 'migrate', '-c', configFile, '--region', 'mars');
  assert.equal(unknown.status, 1);
  assert.match(unknown.stderr, /unknown region "mars" \(known: r1\)/);
});

test('serve: two workers behind the region address, cluster-wide metrics, fence via the CLI, SIGTERM drains an in-flight request', async () => {
  child = spawn(process.execPath, [BIN, 'app', 'serve', '-c', configFile, '--region', 'r1'], { cwd: ROOT, env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));
  child.stdout!.resume();
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) => child!.once('exit', (code, signal) => resolve({ code, signal })));

  // Ready when /readyz answers (the workers load the TypeScript first).
  const deadline = Date.now() + 60_000;
  for (;;) {
    const ready = await request(base, 'GET', '/readyz').catch(() => undefined);
    if (ready?.status === 200) break;
    assert.ok(Date.now() < deadline, `service did not become ready; stderr:\n${stderr}`);
    assert.equal(child.exitCode, null, `serve exited early; stderr:\n${stderr}`);
    await new Promise((r) => setTimeout(r, 200));
  }

  // Every response carries the region; /metrics adds up the requests of both workers.
  const customer = `cli-${randomUUID()}`;
  for (let i = 0; i < 12; i++) {
    const res = await request(base, 'GET', `/v1/orders?customer=${customer}`);
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-tandem-region'], 'r1');
  }
  const scrape = await request(base, 'GET', '/metrics');
  assert.equal(scrape.status, 200, scrape.text.slice(0, 500));
  const metrics = parseMetrics(scrape.text);
  assert.equal(metricValue(metrics, 'tandem_http_requests_total', { route: '/v1/orders', method: 'GET', status: '200' }), 12, scrape.text.slice(0, 2000));

  // A session issued by one worker is honoured by the other (same keyring, same table).
  const login = await request(base, 'POST', '/v1/login', { body: { user: 'lab' } });
  assert.equal(login.status, 201, login.text);
  for (let i = 0; i < 4; i++) {
    assert.equal((await request(base, 'GET', '/v1/me', { headers: { authorization: `Bearer ${login.json.token}` } })).status, 200);
  }

  // Fence and unfence through the CLI; every worker sees it within app.fenceCacheMs.
  const fence = cli('app', 'fence', '-c', configFile, '--region', 'r1', '--reason', 'drill');
  assert.equal(fence.status, 0, fence.stderr);
  await new Promise((r) => setTimeout(r, 300));
  for (let i = 0; i < 4; i++) {
    const w = await request(base, 'POST', '/v1/orders', { body: { customer, amountCents: 1, currency: 'INR' }, headers: { 'idempotency-key': sfKey(randomUUID()) } });
    assert.equal(w.status, 503);
    assert.ok(w.headers['retry-after']);
  }
  assert.equal(cli('app', 'unfence', '-c', configFile, '--region', 'r1').status, 0);
  await new Promise((r) => setTimeout(r, 300));

  // SIGTERM with a request in flight: it finishes, new connections are refused, the process exits 0.
  const blocker = await client(cluster.servers[0]!);
  const key = randomUUID();
  let inFlight: Promise<{ status: number }>;
  try {
    await blocker.query('BEGIN');
    await blocker.query('LOCK TABLE shop.orders IN SHARE MODE');
    inFlight = request(base, 'POST', '/v1/orders', { body: { customer, amountCents: 99, currency: 'INR' }, headers: { 'idempotency-key': sfKey(key) } });
    for (let i = 0; i < 200; i++) {
      const { rows } = await db.query('SELECT state FROM tandem_app.idempotency_keys WHERE key = $1', [key]);
      if (rows[0]?.state === 'processing') break;
      await new Promise((r) => setTimeout(r, 25));
    }
    child.kill('SIGTERM');
    await new Promise((r) => setTimeout(r, 700));
    const refused = await new Promise<boolean>((resolve) => {
      const sock = net.connect({ host: new URL(base).hostname, port: Number(new URL(base).port) });
      sock.once('connect', () => {
        sock.destroy();
        resolve(false);
      });
      sock.once('error', () => resolve(true));
    });
    assert.ok(refused, 'no new connections after SIGTERM');
    assert.equal(child.exitCode, null, 'still draining while the request is in flight');
  } finally {
    await blocker.query('COMMIT').catch(() => {});
    await blocker.end();
  }
  const done = await inFlight!;
  assert.equal(done.status, 201, 'the in-flight request completed');
  const { code, signal } = await exited;
  assert.equal(signal, null, stderr);
  assert.equal(code, 0, stderr);
  const { rows } = await db.query('SELECT count(*)::int AS n FROM shop.orders WHERE idempotency_key = $1', [key]);
  assert.equal(rows[0].n, 1);
});
