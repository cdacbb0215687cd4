/**
 * The kit at its edges, against a real PostgreSQL and real HTTP: a handler
 * that outlives its idempotency lock, a request target Node accepts but URL
 * does not, and the purge of many expired keys.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import type pg from 'pg';
import { startCluster, type TestCluster } from '../helpers/pg.ts';
import type { Kit, KitRequest } from '../../src/app/kit.ts';
import { setFence } from '../../src/app/fence.ts';
import { kitOnCluster, request, sfKey } from './helpers.ts';

let cluster: TestCluster;
let pool: pg.Pool;
let kit: Kit;
let server: http.Server;
let base: string;

before(async () => {
  cluster = await startCluster(1);
  ({ kit, pool } = await kitOnCluster(cluster, {
    // A long fence cache: the fence must hold through the request's transaction, not through the cache.
    app: { idempotencyLockSec: 1, fenceCacheMs: 10_000 },
    routes: [
      {
        method: 'POST',
        path: '/v1/effects',
        idempotent: true,
        // Writes its effect, then takes `sleepMs` (longer than the 1 s idempotency lock when asked to).
        handler: async (req: KitRequest) => {
          const b = req.body as { label: string; sleepMs?: number };
          await req.db.query('INSERT INTO effects (label) VALUES ($1)', [b.label]);
          await new Promise((r) => setTimeout(r, b.sleepMs ?? 0));
          return { status: 201, body: { label: b.label } };
        },
      },
    ],
  }));
  await pool.query('CREATE TABLE effects (id serial PRIMARY KEY, label text)');
  server = http.createServer(kit.handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

after(async () => {
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
  await pool?.end();
  await cluster?.stop();
});

test('a handler that outlives its idempotency lock is rolled back (409) when a retry took the key over: one effect', async () => {
  const key = sfKey(randomUUID());
  const body = { label: 'slow', sleepMs: 2_500 };
  const slow = request(base, 'POST', '/v1/effects', { body, headers: { 'idempotency-key': key } });
  await new Promise((r) => setTimeout(r, 1_400)); // the lock (1 s) has run out
  const retry = await request(base, 'POST', '/v1/effects', { body, headers: { 'idempotency-key': key } });
  assert.equal(retry.status, 201, retry.text);
  const first = await slow;
  assert.equal(first.status, 409, first.text);
  assert.equal(first.json.type, 'urn:tandem:problem:idempotency-key-in-use');
  const { rows } = await pool.query(`SELECT count(*)::int AS n FROM effects WHERE label = 'slow'`);
  assert.equal(rows[0].n, 1, 'the operation took effect once');
  const replay = await request(base, 'POST', '/v1/effects', { body, headers: { 'idempotency-key': key } });
  assert.equal(replay.status, 201, 'a later retry gets the stored outcome');
});

test('a request target that Node accepts and URL does not is answered 400, and the server keeps serving', async () => {
  const { port } = server.address() as AddressInfo;
  const raw = await new Promise<string>((resolve, reject) => {
    const s = net.connect(port, '127.0.0.1', () => s.write('GET http://[::1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
    let got = '';
    s.on('data', (d: Buffer) => (got += d.toString()));
    s.on('end', () => resolve(got));
    s.on('error', reject);
  });
  assert.match(raw, /^HTTP\/1\.1 400 /);
  assert.match(raw, /not a valid URL/);
  const ok = await request(base, 'POST', '/v1/effects', { body: { label: 'after' }, headers: { 'idempotency-key': sfKey(randomUUID()) } });
  assert.equal(ok.status, 201);
});

test('the purge removes every expired key, not one batch per run', async () => {
  await pool.query(
    `INSERT INTO tandem_app.idempotency_keys (scope, key, fingerprint, state, claim_id, method, path, region, correlation_id, locked_until, expires_at)
     SELECT 'bulk', 'k' || g, 'f', 'completed', gen_random_uuid(), 'POST', '/v1/effects', 'r1', 'c', now(), now() - interval '1 minute' FROM generate_series(1, 2500) g`,
  );
  const n = await kit.purgeOnce();
  assert.ok(n.keys >= 2500, `purged ${n.keys}`);
  const { rows } = await pool.query(`SELECT count(*)::int AS n FROM tandem_app.idempotency_keys WHERE scope = 'bulk'`);
  assert.equal(rows[0].n, 0);
});

test('the fence holds: setFence waits for a write in flight, and no write commits after it returns, whatever the cache says', async () => {
  assert.equal((await request(base, 'POST', '/v1/effects', { body: { label: 'warm' }, headers: { 'idempotency-key': sfKey(randomUUID()) } })).status, 201);
  const slow = request(base, 'POST', '/v1/effects', { body: { label: 'before-fence', sleepMs: 800 }, headers: { 'idempotency-key': sfKey(randomUUID()) } });
  await new Promise((r) => setTimeout(r, 200));
  try {
    const t0 = performance.now();
    await setFence(pool, 'r1', true, 'fence test');
    const waited = performance.now() - t0;
    assert.equal((await slow).status, 201, 'the write in flight committed');
    assert.ok(waited >= 300, `setFence waited for it (${waited.toFixed(0)} ms)`);
    const after = await request(base, 'POST', '/v1/effects', { body: { label: 'after-fence' }, headers: { 'idempotency-key': sfKey(randomUUID()) } });
    assert.equal(after.status, 503, after.text);
    assert.equal(after.json.type, 'urn:tandem:problem:region-read-only');
    const { rows } = await pool.query(`SELECT count(*)::int AS n FROM effects WHERE label = 'after-fence'`);
    assert.equal(rows[0].n, 0);
  } finally {
    await setFence(pool, 'r1', false);
  }
});

test('drain: a client that hangs up does not end its request early, and a response in flight at the drain closes its connection', async () => {
  // A client that hangs up after 200 ms: its handler (1 s) is still in flight until it settles.
  const aborted = new AbortController();
  const hangUp = fetch(`${base}/v1/effects`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': sfKey(randomUUID()) },
    body: JSON.stringify({ label: 'hang-up', sleepMs: 1_000 }),
    signal: aborted.signal,
  }).catch(() => undefined);
  await new Promise((r) => setTimeout(r, 200));
  aborted.abort();
  await hangUp;
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(kit.inFlight, 1, 'the handler is still running');
  assert.equal(await kit.waitIdle(5_000), true);

  // A keep-alive request in flight when the drain starts is answered with Connection: close.
  const agent = new http.Agent({ keepAlive: true });
  const answer = new Promise<http.IncomingMessage>((resolve, reject) => {
    const req = http.request(`${base}/v1/effects`, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'idempotency-key': sfKey(randomUUID()) } }, resolve);
    req.on('error', reject);
    req.end(JSON.stringify({ label: 'in-flight', sleepMs: 500 }));
  });
  await new Promise((r) => setTimeout(r, 150));
  kit.startDrain();
  const res = await answer;
  res.resume();
  agent.destroy();
  assert.equal(res.statusCode, 201);
  assert.equal(res.headers.connection, 'close');
});
