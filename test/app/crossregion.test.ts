/**
 * The application's promise across regions, with the real replication
 * engine: write through region A with key K, lose A before the change
 * replicated, retry through region B with K, heal — one order, not two, in
 * both regions; the session issued by A survives the failover, and a logout
 * in B is honoured in A once it replicated.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import type pg from 'pg';
import { startCluster, client, type TestCluster } from '../helpers/pg.ts';
import { ShopService } from '../../src/service/service.ts';
import { REPLICATED_TABLES, migrateDatabase } from '../../src/service/schema.ts';
import { entityId } from '../../src/app/idempotency.ts';
import { ReplicationAgent, setupReplication } from '../../src/replication/index.ts';
import { localDatabase, type Config } from '../../src/core/config/index.ts';
import { silentLogger } from '../../src/core/log.ts';
import { sleep } from '../../src/core/lifecycle.ts';
import { request, sfKey, testConfig } from './helpers.ts';

let cluster: TestCluster;
let config: Config;
const agents: Array<ReplicationAgent | undefined> = [undefined, undefined];
const services: Array<ShopService | undefined> = [undefined, undefined];
const dbs: pg.Client[] = [];

async function startAgent(i: number): Promise<void> {
  const a = new ReplicationAgent({
    config,
    region: config.regions[i]!.name,
    logger: silentLogger(),
    api: false,
    backoff: { minMs: 100, maxMs: 1_000 },
    recheckIntervalMs: 300,
    stream: { statusIntervalMs: 1_000, receiveTimeoutMs: 10_000 },
  });
  await a.start();
  agents[i] = a;
}

async function startService(i: number): Promise<ShopService> {
  const s = new ShopService({ config, region: config.regions[i]!.name, logger: silentLogger(), purgeIntervalMs: 0 });
  await s.start();
  services[i] = s;
  return s;
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false>, timeoutMs = 30_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`);
    await sleep(100);
  }
}

/** A table's rows matching `where` as one JSON text, for comparing regions. */
async function rowsOf(db: pg.Client, table: string, where: string, params: unknown[]): Promise<string> {
  const { rows } = await db.query(`SELECT coalesce(json_agg(t ORDER BY t::text)::text, '[]') AS j FROM ${table} t WHERE ${where}`, params);
  return rows[0].j as string;
}

before(async () => {
  cluster = await startCluster(2);
  config = testConfig(cluster, { fenceCacheMs: 100 }, { replication: { tables: [...REPLICATED_TABLES], heartbeatIntervalMs: 200 } });
  for (const r of config.regions) await migrateDatabase(localDatabase(r));
  await setupReplication(config);
  for (const [i, s] of cluster.servers.entries()) {
    const c = await client(s);
    c.on('error', () => {});
    dbs[i] = c;
    await startAgent(i);
    await startService(i);
  }
});

after(async () => {
  for (const s of services) await s?.stop().catch(() => {});
  for (const a of agents) await a?.stop().catch(() => {});
  for (const d of dbs) await d.end().catch(() => {});
  await cluster?.stop();
});

test('a write retried in the other region after its region failed converges to one order; the session survives; logout replicates', async () => {
  const [a, b] = [services[0]!, services[1]!];

  // A user logs in through region A; the session row reaches B.
  const login = await request(a.url, 'POST', '/v1/login', { body: { user: 'priya' } });
  assert.equal(login.status, 201, login.text);
  const auth = { authorization: `Bearer ${login.json.token}` };
  await waitFor('the session to replicate to B', async () => (await dbs[1]!.query('SELECT 1 FROM tandem_app.sessions WHERE id = $1', [login.json.sessionId])).rowCount === 1);

  // B stops applying A's changes; then A acknowledges an order that B has not seen.
  await agents[1]!.stop();
  agents[1] = undefined;
  const key = randomUUID();
  const body = { amountCents: 4_200, currency: 'INR' };
  const first = await request(a.url, 'POST', '/v1/orders', { body, headers: { ...auth, 'idempotency-key': sfKey(key) } });
  assert.equal(first.status, 201, first.text);
  const orderId = first.json.id as string;
  assert.equal(orderId, entityId('user:priya', key, 'order'));
  assert.equal(first.json.region, 'r1');

  // Region A fails (its PostgreSQL is killed) before the order replicated.
  await a.stop();
  services[0] = undefined;
  await dbs[0]!.end().catch(() => {});
  cluster.servers[0]!.kill();
  await cluster.servers[0]!.exited();
  assert.equal((await dbs[1]!.query('SELECT 1 FROM shop.orders WHERE id = $1', [orderId])).rowCount, 0, 'B has not seen the order');

  // The client retries with the same key through B: same id, not a second order. The session still works in B.
  const me = await request(b.url, 'GET', '/v1/me', { headers: auth });
  assert.equal(me.status, 200, me.text);
  assert.equal(me.json.user, 'priya');
  const retry = await request(b.url, 'POST', '/v1/orders', { body, headers: { ...auth, 'idempotency-key': sfKey(key) } });
  assert.equal(retry.status, 201, retry.text);
  assert.equal(retry.json.id, orderId);
  assert.equal(retry.json.region, 'r2');

  // Heal: A's database comes back with its unreplicated change; both agents run again.
  await agents[0]!.stop();
  agents[0] = undefined;
  await cluster.restart(0);
  dbs[0] = await client(cluster.servers[0]!);
  dbs[0].on('error', () => {});
  await startAgent(0);
  await startAgent(1);
  await startService(0);

  // One order in both regions, identical; the idempotency key too.
  const converged = await waitFor('the order and its key to converge', async () => {
    const [o1, o2] = await Promise.all(dbs.map((d) => rowsOf(d, 'shop.orders', 'id = $1', [orderId])));
    const [k1, k2] = await Promise.all(dbs.map((d) => rowsOf(d, 'tandem_app.idempotency_keys', 'key = $1', [key])));
    // Both regions must have seen both writes: A's row reached B and B's reached A, and they resolved alike.
    return o1 !== undefined && o1 === o2 && k1 === k2 && JSON.parse(o1).length === 1 ? { o1, k1 } : undefined;
  });
  const order = JSON.parse(converged.o1)[0] as { id: string; customer: string; amount_cents: number };
  assert.equal(order.id, orderId);
  assert.equal(order.customer, 'priya');
  for (const d of dbs) {
    const { rows } = await d.query(`SELECT count(*)::int AS n FROM shop.orders WHERE client_scope = 'user:priya'`);
    assert.equal(rows[0].n, 1, 'exactly one order for the user in each region');
  }

  // A retry through either region now replays the stored response.
  for (const s of [services[0]!, b]) {
    const again = await request(s.url, 'POST', '/v1/orders', { body, headers: { ...auth, 'idempotency-key': sfKey(key) } });
    assert.equal(again.status, 201);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.equal(again.json.id, orderId);
  }

  // The session survived the failover in both regions; a logout in B is honoured in A once replicated.
  assert.equal((await request(services[0]!.url, 'GET', '/v1/me', { headers: auth })).status, 200);
  const out = await request(b.url, 'POST', '/v1/logout', { headers: auth });
  assert.equal(out.status, 200, out.text);
  await waitFor('the logout to reach A', async () => (await request(services[0]!.url, 'GET', '/v1/me', { headers: auth })).status === 401);
  const [s1, s2] = await Promise.all(dbs.map((d) => rowsOf(d, 'tandem_app.sessions', 'id = $1', [login.json.sessionId])));
  assert.equal(s1, s2);
  assert.ok(JSON.parse(s1!)[0].revoked_at);

  // /healthz now reports the real replication lag of the peer.
  const health = await request(b.url, 'GET', '/healthz');
  assert.equal(health.status, 200);
  assert.deepEqual(health.json.checks.replication.peers.map((p: { peer: string }) => p.peer), ['r1']);
  assert.equal(typeof health.json.checks.replication.peers[0].lagSec, 'number');
});
