/**
 * The reference service on the kit, against a real PostgreSQL and real HTTP:
 * correlation, idempotency (replay, 409, 422, expiry, lock takeover), the
 * write fence, sessions, bad input, metrics and /healthz.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type pg from 'pg';
import { startCluster, client, type TestCluster } from '../helpers/pg.ts';
import { ShopService } from '../../src/service/service.ts';
import { setFence } from '../../src/app/fence.ts';
import { SessionKeyring, keyId } from '../../src/app/session.ts';
import { entityId } from '../../src/app/idempotency.ts';
import { REPLICATED_TABLES } from '../../src/service/schema.ts';
import { SCHEMA_DDL } from '../../src/replication/schema.ts';
import { captureLogger, metricValue, parseMetrics, request, sfKey, testConfig, SESSION_KEY_A, SESSION_KEY_B, type Res } from './helpers.ts';

let cluster: TestCluster;
let service: ShopService;
let base: string;
let db: pg.Client;
let logLines: Array<Record<string, unknown>>;

before(async () => {
  cluster = await startCluster(1);
  const config = testConfig(cluster, { maxBodyBytes: 64 * 1024 });
  const { logger, lines } = captureLogger();
  logLines = lines;
  service = new ShopService({ config, region: 'r1', logger, migrate: true, purgeIntervalMs: 0 });
  await service.start();
  base = service.url;
  db = await client(cluster.servers[0]!);
});

after(async () => {
  await db?.end().catch(() => {});
  await service?.stop();
  await cluster?.stop();
});

const order = (over: Record<string, unknown> = {}) => ({ customer: 'asha', amountCents: 1250, currency: 'INR', ...over });
const post = (path: string, body: unknown, key?: string, headers: Record<string, string> = {}): Promise<Res> =>
  request(base, 'POST', path, { body, headers: { ...(key === undefined ? {} : { 'idempotency-key': sfKey(key) }), ...headers } });

describe('correlation', () => {
  test('every response carries the region, a correlation id and a traceparent; a valid traceparent keeps its trace id', async () => {
    const trace = '4bf92f3577b34da6a3ce929d0e0e4736';
    const res = await request(base, 'GET', '/readyz', { headers: { traceparent: `00-${trace}-00f067aa0ba902b7-01` } });
    assert.equal(res.status, 200);
    assert.equal(res.headers['x-tandem-region'], 'r1');
    assert.match(String(res.headers.traceparent), new RegExp(`^00-${trace}-[0-9a-f]{16}-01$`));
    assert.notEqual(String(res.headers.traceparent).split('-')[2], '00f067aa0ba902b7', 'the server answers with its own span id');
    assert.equal(res.headers['x-correlation-id'], trace, 'without X-Correlation-ID the trace id is the correlation id');
  });

  test('an invalid traceparent or X-Correlation-ID is replaced, never echoed', async () => {
    const bad = '00-00000000000000000000000000000000-00f067aa0ba902b7-01';
    const res = await request(base, 'GET', '/readyz', { headers: { traceparent: bad, 'x-correlation-id': 'evil id "quoted"' } });
    assert.equal(res.status, 200);
    const tp = String(res.headers.traceparent);
    assert.match(tp, /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/);
    assert.notEqual(tp.split('-')[1], '00000000000000000000000000000000');
    assert.equal(res.headers['x-correlation-id'], tp.split('-')[1]);
  });

  test('X-Correlation-ID is honoured, logged on every line of the request and stored with the write', async () => {
    const cid = `test-${randomUUID()}`;
    const key = randomUUID();
    const res = await post('/v1/orders', order(), key, { 'x-correlation-id': cid });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.headers['x-correlation-id'], cid);
    assert.equal(res.json.correlationId, cid);
    const { rows } = await db.query('SELECT correlation_id, region FROM shop.orders WHERE id = $1', [res.json.id]);
    assert.deepEqual(rows[0], { correlation_id: cid, region: 'r1' });
    const { rows: keys } = await db.query('SELECT correlation_id FROM tandem_app.idempotency_keys WHERE key = $1', [key]);
    assert.equal(keys[0]?.correlation_id, cid);
    const mine = logLines.filter((l) => l.correlationId === cid);
    assert.ok(mine.some((l) => l.msg === 'order created'), 'the handler log line carries the id');
    assert.ok(mine.some((l) => l.msg === 'request'), 'the access log line carries the id');
  });
});

describe('idempotency', () => {
  test('a retry returns the stored status and body; the order id is UUIDv5 of scope and key', async () => {
    const key = randomUUID();
    const first = await post('/v1/orders', order(), key, { 'x-client-id': 'client-7' });
    assert.equal(first.status, 201);
    assert.equal(first.json.id, entityId('client:client-7', key, 'order'));
    assert.equal(first.headers['idempotency-policy'], 'ttl=86400, scope=client');
    assert.equal(first.headers['idempotent-replayed'], undefined);
    const again = await post('/v1/orders', order(), key, { 'x-client-id': 'client-7' });
    assert.equal(again.status, 201);
    assert.equal(again.headers['idempotent-replayed'], 'true');
    assert.equal(again.text, first.text, 'byte-identical body');
    assert.equal(again.headers.location, `/v1/orders/${first.json.id}`);
    const { rows } = await db.query('SELECT count(*)::int AS n FROM shop.orders WHERE id = $1', [first.json.id]);
    assert.equal(rows[0].n, 1);
  });

  test('keys are scoped per client: the same key from another client is another operation', async () => {
    const key = randomUUID();
    const a = await post('/v1/orders', order(), key, { 'x-client-id': 'client-a' });
    const b = await post('/v1/orders', order({ amountCents: 99 }), key, { 'x-client-id': 'client-b' });
    assert.equal(a.status, 201);
    assert.equal(b.status, 201, b.text);
    assert.notEqual(a.json.id, b.json.id);
  });

  test('key order and whitespace in the body do not change the fingerprint', async () => {
    const key = randomUUID();
    const first = await request(base, 'POST', '/v1/orders', { raw: '{"customer":"x","amountCents":5,"currency":"INR"}', headers: { 'content-type': 'application/json', 'idempotency-key': sfKey(key) } });
    const second = await request(base, 'POST', '/v1/orders', { raw: '{ "currency": "INR",\n "amountCents": 5, "customer": "x" }', headers: { 'content-type': 'application/json', 'idempotency-key': sfKey(key) } });
    assert.equal(first.status, 201);
    assert.equal(second.status, 201);
    assert.equal(second.headers['idempotent-replayed'], 'true');
  });

  test('the same key with a different payload gets 422', async () => {
    const key = randomUUID();
    assert.equal((await post('/v1/orders', order(), key)).status, 201);
    const res = await post('/v1/orders', order({ amountCents: 1 }), key);
    assert.equal(res.status, 422);
    assert.equal(res.headers['content-type'], 'application/problem+json');
    assert.equal(res.json.type, 'urn:tandem:problem:idempotency-key-reused');
  });

  test('a concurrent retry while the first is in flight gets 409; the first then completes', async () => {
    const key = randomUUID();
    const blocker = await client(cluster.servers[0]!);
    try {
      // Hold a lock that the order insert waits for, so the first request stays in flight.
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE shop.orders IN SHARE MODE');
      const first = post('/v1/orders', order(), key);
      // Wait until the first request has claimed the key.
      for (let i = 0; i < 100; i++) {
        const { rows } = await db.query(`SELECT state FROM tandem_app.idempotency_keys WHERE key = $1`, [key]);
        if (rows[0]?.state === 'processing') break;
        await new Promise((r) => setTimeout(r, 20));
      }
      const second = await post('/v1/orders', order(), key);
      assert.equal(second.status, 409, second.text);
      assert.equal(second.json.type, 'urn:tandem:problem:idempotency-key-in-use');
      assert.equal(second.headers['retry-after'], '1');
      await blocker.query('COMMIT');
      const done = await first;
      assert.equal(done.status, 201);
      const third = await post('/v1/orders', order(), key);
      assert.equal(third.status, 201);
      assert.equal(third.headers['idempotent-replayed'], 'true');
    } finally {
      await blocker.query('ROLLBACK').catch(() => {});
      await blocker.end();
    }
  });

  test('a claim left behind by a dead instance is taken over once its lock ran out', async () => {
    const key = randomUUID();
    await db.query(
      `INSERT INTO tandem_app.idempotency_keys (scope, key, fingerprint, state, claim_id, method, path, region, correlation_id, locked_until, expires_at)
       VALUES ('anonymous', $1, 'x', 'processing', $2, 'POST', '/v1/orders', 'r1', 'dead', now() + interval '1 hour', now() + interval '1 day')`,
      [key, randomUUID()],
    );
    // Same fingerprint needed for takeover: read the real one from a failed attempt first.
    const busy = await post('/v1/orders', order(), key);
    assert.equal(busy.status, 422, 'a different fingerprint is a reuse, not a retry');
    await db.query(`UPDATE tandem_app.idempotency_keys SET fingerprint = $2 WHERE key = $1`, [key, (await fingerprintOf(order()))]);
    const stillLocked = await post('/v1/orders', order(), key);
    assert.equal(stillLocked.status, 409);
    await db.query(`UPDATE tandem_app.idempotency_keys SET locked_until = now() - interval '1 second' WHERE key = $1`, [key]);
    const taken = await post('/v1/orders', order(), key);
    assert.equal(taken.status, 201, taken.text);
  });

  test('keys expire after app.idempotencyTtlSec (advertised), and the purge removes them', async () => {
    const key = randomUUID();
    const first = await post('/v1/orders', order(), key);
    assert.equal(first.status, 201);
    const { rows } = await db.query(`SELECT extract(epoch FROM expires_at - created_at)::int AS ttl FROM tandem_app.idempotency_keys WHERE key = $1`, [key]);
    assert.equal(rows[0].ttl, 86_400);
    await db.query(`UPDATE tandem_app.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1`, [key]);
    // Expired: not replayed. The id is still derived from the key, so the same order is found (200, not a second order).
    const again = await post('/v1/orders', order(), key);
    assert.equal(again.status, 200, again.text);
    assert.equal(again.headers['idempotent-replayed'], undefined);
    assert.equal(again.json.id, first.json.id);
    // Reused for a different order after expiry: the derived id collides, so it is refused rather than overwritten.
    await db.query(`UPDATE tandem_app.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1`, [key]);
    const reuse = await post('/v1/orders', order({ amountCents: 7 }), key);
    assert.equal(reuse.status, 409);
    // The purge deletes expired keys and keeps live ones.
    const [old, live] = [randomUUID(), randomUUID()];
    assert.equal((await post('/v1/orders', order(), old)).status, 201);
    assert.equal((await post('/v1/orders', order(), live)).status, 201);
    await db.query(`UPDATE tandem_app.idempotency_keys SET expires_at = now() - interval '1 second' WHERE key = $1`, [old]);
    const purged = await service.kit.purgeOnce();
    assert.ok(purged.keys >= 1);
    const { rows: left } = await db.query('SELECT key FROM tandem_app.idempotency_keys WHERE key = ANY($1)', [[old, live]]);
    assert.deepEqual(left.map((r) => r.key), [live]);
  });

  test('missing, malformed, non-string and over-long keys are 400 problem+json', async () => {
    const missing = await post('/v1/orders', order());
    assert.equal(missing.status, 400);
    assert.equal(missing.headers['content-type'], 'application/problem+json');
    assert.equal(missing.json.type, 'urn:tandem:problem:idempotency-key-missing');
    for (const bad of ['no-quotes', '"unterminated', '123', '""', `"${'k'.repeat(256)}"`, '"a", "b"', '"ok" junk']) {
      const res = await post('/v1/orders', order(), undefined, { 'idempotency-key': bad });
      assert.equal(res.status, 400, `key ${bad.slice(0, 20)} → ${res.status}`);
      assert.equal(res.json.type, 'urn:tandem:problem:idempotency-key-invalid');
    }
    const ok = await post('/v1/orders', order(), undefined, { 'idempotency-key': `"${'k'.repeat(255)}"` });
    assert.equal(ok.status, 201);
  });

  test('a failed request releases its key so that a retry runs again', async () => {
    const key = randomUUID();
    const missingOrder = randomUUID();
    const res = await post(`/v1/orders/${missingOrder}/pay`, undefined, key);
    assert.equal(res.status, 404);
    const { rows } = await db.query('SELECT 1 FROM tandem_app.idempotency_keys WHERE key = $1', [key]);
    assert.equal(rows.length, 0, 'non-2xx outcomes are not stored');
  });
});

describe('orders and payments', () => {
  test('create, pay (idempotent), get and list; payment ids converge per order', async () => {
    const customer = `c-${randomUUID()}`;
    const created = await post('/v1/orders', { customer, items: [{ sku: 'tea', qty: 2, priceCents: 150 }, { sku: 'cup', qty: 1, priceCents: 400 }], currency: 'INR' }, randomUUID());
    assert.equal(created.status, 201, created.text);
    assert.equal(created.json.amountCents, 700);
    assert.equal(created.json.status, 'pending');
    const id = created.json.id as string;
    const payKey = randomUUID();
    const paid = await post(`/v1/orders/${id}/pay`, undefined, payKey);
    assert.equal(paid.status, 200, paid.text);
    assert.equal(paid.json.status, 'paid');
    assert.equal(paid.json.payment.amountCents, 700);
    const replay = await post(`/v1/orders/${id}/pay`, undefined, payKey);
    assert.equal(replay.headers['idempotent-replayed'], 'true');
    const other = await post(`/v1/orders/${id}/pay`, undefined, randomUUID());
    assert.equal(other.status, 200, 'paying again with another key converges on the same payment');
    assert.equal(other.json.payment.id, paid.json.payment.id);
    const { rows } = await db.query('SELECT count(*)::int AS n FROM shop.payments WHERE order_id = $1', [id]);
    assert.equal(rows[0].n, 1);
    const got = await request(base, 'GET', `/v1/orders/${id}`);
    assert.equal(got.status, 200);
    assert.equal(got.json.payment.id, paid.json.payment.id);
    const list = await request(base, 'GET', `/v1/orders?customer=${encodeURIComponent(customer)}`);
    assert.equal(list.status, 200);
    assert.deepEqual(list.json.orders.map((o: { id: string }) => o.id), [id]);
    assert.equal((await request(base, 'GET', `/v1/orders/${randomUUID()}`)).status, 404);
    assert.equal((await request(base, 'GET', '/v1/orders/not-a-uuid')).status, 404);
    assert.equal((await request(base, 'GET', '/v1/orders')).status, 400);
  });

  test('SQL injection attempts in every field are stored as data', async () => {
    const evil = `x'); DROP TABLE shop.orders; --`;
    const res = await post('/v1/orders', { customer: evil, items: [{ sku: `' OR 1=1 --`, qty: 1, priceCents: 5 }], currency: 'INR' }, `'; DROP TABLE tandem_app.sessions; --`, {
      'x-client-id': 'robert:tables',
    });
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.customer, evil);
    const list = await request(base, 'GET', `/v1/orders?customer=${encodeURIComponent(evil)}`);
    assert.equal(list.json.orders[0].items[0].sku, `' OR 1=1 --`);
    const login = await post('/v1/login', { user: `admin'--` });
    assert.equal(login.status, 201);
    for (const t of REPLICATED_TABLES) {
      const { rows } = await db.query('SELECT to_regclass($1)::text AS t', [t]);
      assert.equal(rows[0].t, t, `${t} still exists`);
    }
  });
});

describe('bad input', () => {
  test('oversized bodies get 413 (declared or streamed)', async () => {
    const big = JSON.stringify({ customer: 'x'.repeat(70 * 1024), amountCents: 1, currency: 'INR' });
    const declared = await request(base, 'POST', '/v1/orders', { raw: big, headers: { 'content-type': 'application/json', 'idempotency-key': sfKey(randomUUID()) } });
    assert.equal(declared.status, 413);
    assert.equal(declared.json.type, 'urn:tandem:problem:payload-too-large');
    const streamed = await new Promise<number>((resolve, reject) => {
      const req = http.request(new URL('/v1/orders', base), {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'transfer-encoding': 'chunked', 'idempotency-key': sfKey(randomUUID()) },
        agent: false,
      });
      req.on('response', (res) => {
        res.resume();
        resolve(res.statusCode ?? 0);
      });
      req.on('error', reject);
      for (let i = 0; i < 80; i++) req.write('x'.repeat(1024));
      req.end();
    });
    assert.equal(streamed, 413);
  });

  test('invalid JSON is 400 with a message; wrong fields are 400 naming them; other media types 415', async () => {
    const bad = await request(base, 'POST', '/v1/orders', { raw: '{"customer": "x",', headers: { 'content-type': 'application/json', 'idempotency-key': sfKey(randomUUID()) } });
    assert.equal(bad.status, 400);
    assert.equal(bad.json.type, 'urn:tandem:problem:invalid-json');
    assert.match(bad.json.detail, /not valid JSON/);
    const invalid = await post('/v1/orders', { customer: 'x', amountCents: -5, currency: 'rupees', extra: 1 }, randomUUID());
    assert.equal(invalid.status, 400);
    const paths = invalid.json.errors.map((e: { path: string }) => e.path).sort();
    assert.deepEqual(paths, ['(body)', 'amountCents', 'currency']);
    const media = await request(base, 'POST', '/v1/orders', { raw: 'customer=x', headers: { 'content-type': 'application/x-www-form-urlencoded', 'idempotency-key': sfKey(randomUUID()) } });
    assert.equal(media.status, 415);
    assert.equal((await request(base, 'GET', '/nope')).status, 404);
    assert.equal((await request(base, 'DELETE', '/v1/orders')).status, 405);
  });
});

describe('sessions', () => {
  test('login, me, logout; a revoked token is refused', async () => {
    const login = await post('/v1/login', { user: 'meera' });
    assert.equal(login.status, 201, login.text);
    const auth = { authorization: `Bearer ${login.json.token}` };
    const me = await request(base, 'GET', '/v1/me', { headers: auth });
    assert.equal(me.status, 200);
    assert.equal(me.json.user, 'meera');
    assert.equal(me.json.source, 'table');
    const { rows } = await db.query('SELECT region, correlation_id FROM tandem_app.sessions WHERE id = $1', [login.json.sessionId]);
    assert.equal(rows[0].region, 'r1');
    assert.equal(rows[0].correlation_id, login.headers['x-correlation-id']);
    // An idempotency key of a logged-in user is scoped to the user.
    const key = randomUUID();
    const created = await post('/v1/orders', { amountCents: 10, currency: 'INR' }, key, auth);
    assert.equal(created.status, 201);
    assert.equal(created.json.customer, 'meera');
    assert.equal(created.json.id, entityId('user:meera', key, 'order'));
    const out = await request(base, 'POST', '/v1/logout', { headers: auth });
    assert.equal(out.status, 200);
    const after = await request(base, 'GET', '/v1/me', { headers: auth });
    assert.equal(after.status, 401);
    assert.match(after.json.detail, /revoked/);
  });

  test('forged, tampered, expired and missing tokens are 401', async () => {
    const login = await post('/v1/login', { user: 'ravi' });
    const token = login.json.token as string;
    const parts = token.split('.');
    const tampered = [...parts.slice(0, 2), Buffer.from('admin').toString('base64url'), ...parts.slice(3)].join('.');
    const forged = new SessionKeyring(['an-attacker-key-0123456789']).sign({ sessionId: randomUUID(), userId: 'ravi', expiresAt: new Date(Date.now() + 60_000) });
    const expired = new SessionKeyring([SESSION_KEY_A]).sign({ sessionId: randomUUID(), userId: 'ravi', expiresAt: new Date(Date.now() - 1_000) });
    for (const [name, t] of Object.entries({ tampered, forged, expired, garbage: 'not-a-token' })) {
      const res = await request(base, 'GET', '/v1/me', { headers: { authorization: `Bearer ${t}` } });
      assert.equal(res.status, 401, name);
      assert.equal(res.headers['content-type'], 'application/problem+json');
    }
    assert.equal((await request(base, 'GET', '/v1/me')).status, 401);
    // A forged token on an optional-session route is refused too, not ignored.
    assert.equal((await request(base, 'GET', '/v1/orders?customer=x', { headers: { authorization: `Bearer ${forged}` } })).status, 401);
  });

  test('a valid token whose row has not replicated here yet is accepted on its signature', async () => {
    const token = new SessionKeyring([SESSION_KEY_A]).sign({ sessionId: randomUUID(), userId: 'traveller', expiresAt: new Date(Date.now() + 60_000) });
    const me = await request(base, 'GET', '/v1/me', { headers: { authorization: `Bearer ${token}` } });
    assert.equal(me.status, 200);
    assert.equal(me.json.source, 'token');
  });
});

describe('session key rotation across instances', () => {
  test('an instance with [new, old] verifies old tokens and signs with the new key; dropping the old key logs its tokens out', async () => {
    const oldLogin = await post('/v1/login', { user: 'rotating' });
    assert.equal(oldLogin.status, 201);
    const rotated = new ShopService({
      config: testConfig(cluster, { sessionKeys: [{ env: 'TANDEM_TEST_SESSION_KEY_B' }, { env: 'TANDEM_TEST_SESSION_KEY_A' }] }),
      region: 'r1',
      logger: captureLogger().logger,
      purgeIntervalMs: 0,
    });
    const dropped = new ShopService({ config: testConfig(cluster, { sessionKeys: [{ env: 'TANDEM_TEST_SESSION_KEY_B' }] }), region: 'r1', logger: captureLogger().logger, purgeIntervalMs: 0 });
    await rotated.start();
    await dropped.start();
    try {
      const oldAuth = { authorization: `Bearer ${oldLogin.json.token}` };
      assert.equal((await request(rotated.url, 'GET', '/v1/me', { headers: oldAuth })).status, 200, 'old token still valid after rotation');
      const newLogin = await request(rotated.url, 'POST', '/v1/login', { body: { user: 'rotating' } });
      assert.equal(newLogin.status, 201);
      assert.equal(String(newLogin.json.token).split('.')[4], keyId(SESSION_KEY_B), 'signed with the first key');
      assert.equal((await request(dropped.url, 'GET', '/v1/me', { headers: { authorization: `Bearer ${newLogin.json.token}` } })).status, 200);
      const gone = await request(dropped.url, 'GET', '/v1/me', { headers: oldAuth });
      assert.equal(gone.status, 401);
      assert.match(gone.json.detail, /not signed by any current key/);
      // The instance still on the old keyring does not know the new key yet.
      assert.equal((await request(base, 'GET', '/v1/me', { headers: { authorization: `Bearer ${newLogin.json.token}` } })).status, 401);
    } finally {
      await rotated.stop();
      await dropped.stop();
    }
  });
});

describe('write fencing', () => {
  test('a read-only region answers writes 503 + Retry-After and keeps serving reads', async () => {
    const created = await post('/v1/orders', order(), randomUUID());
    assert.equal(created.status, 201);
    await setFence(db, 'r1', true, 'failover drill');
    try {
      await new Promise((r) => setTimeout(r, 150)); // fenceCacheMs is 100 in the test config
      const w = await post('/v1/orders', order(), randomUUID());
      assert.equal(w.status, 503);
      assert.equal(w.headers['retry-after'], '5');
      assert.equal(w.json.type, 'urn:tandem:problem:region-read-only');
      assert.match(w.json.detail, /failover drill/);
      assert.equal((await post('/v1/login', { user: 'x' })).status, 503);
      const r = await request(base, 'GET', `/v1/orders/${created.json.id}`);
      assert.equal(r.status, 200);
      const h = await request(base, 'GET', '/healthz');
      assert.equal(h.status, 200);
      assert.equal(h.json.status, 'degraded');
      assert.deepEqual(h.json.checks.fenced, { readOnly: true, reason: 'failover drill' });
    } finally {
      await setFence(db, 'r1', false);
    }
    await new Promise((r) => setTimeout(r, 150));
    assert.equal((await post('/v1/orders', order(), randomUUID())).status, 201);
  });
});

describe('health and metrics', () => {
  test('/healthz reports database, replication lag per peer (when the table exists), fence and draining', async () => {
    const h = await request(base, 'GET', '/healthz');
    assert.equal(h.status, 200);
    assert.equal(h.json.status, 'ok');
    assert.equal(h.json.region, 'r1');
    assert.match(h.json.version, /^\d+\.\d+\.\d+/);
    assert.equal(h.json.checks.database.ok, true);
    assert.equal(h.json.checks.database.writable, true);
    assert.equal(typeof h.json.checks.database.latencyMs, 'number');
    assert.deepEqual(h.json.checks.replication.peers, []);
    assert.equal(h.json.checks.draining, false);
    // The replication part's own bookkeeping tables, as its setup creates them (readLag reads them).
    for (const ddl of SCHEMA_DDL) await db.query(ddl);
    try {
      await db.query(`INSERT INTO tandem.node (region) VALUES ('r1')`);
      await db.query(`INSERT INTO tandem.replication_status (peer, source_commit_ts) VALUES ('r2', now() - interval '2 seconds'), ('r3', now() - interval '10 minutes')`);
      const lag = await request(base, 'GET', '/healthz');
      assert.equal(lag.status, 200, 'lag never makes /healthz 503');
      assert.equal(lag.json.status, 'degraded', 'r3 lags beyond replication.lagWarnSec');
      const peers = lag.json.checks.replication.peers as Array<{ peer: string; lagSec: number }>;
      assert.deepEqual(peers.map((p) => p.peer), ['r2', 'r3']);
      assert.ok(peers[0]!.lagSec >= 2 && peers[0]!.lagSec < 30, `r2 lag ${peers[0]!.lagSec}`);
      assert.ok(peers[1]!.lagSec >= 600, `r3 lag ${peers[1]!.lagSec}`);
      // Lag that cannot be read (here a view that fails) is not "no lag".
      await db.query(`DELETE FROM tandem.replication_status WHERE peer = 'r3'`);
      assert.equal((await request(base, 'GET', '/healthz')).json.status, 'ok', 'r2 alone is within lagWarnSec');
      await db.query('ALTER TABLE tandem.replication_status RENAME TO replication_status_aside');
      await db.query('CREATE VIEW tandem.replication_status AS SELECT (1 / 0)::text AS peer');
      const unknown = await request(base, 'GET', '/healthz');
      assert.equal(unknown.json.status, 'degraded');
      assert.equal(typeof unknown.json.checks.replication.error, 'string', JSON.stringify(unknown.json.checks.replication));
    } finally {
      await db.query('DROP SCHEMA tandem CASCADE');
    }
  });

  test('/metrics has request counts by route/method/status, a latency histogram, replays, conflicts and fenced rejections', async () => {
    const res = await request(base, 'GET', '/metrics');
    assert.equal(res.status, 200);
    assert.match(res.headers['content-type'] ?? '', /text\/plain/);
    const t = res.text;
    const m = parseMetrics(t);
    assert.ok(metricValue(m, 'tandem_http_requests_total', { route: '/v1/orders', method: 'POST', status: '201', component: 'app', region: 'r1' }) >= 5);
    assert.ok(metricValue(m, 'tandem_http_requests_total', { route: '/v1/orders', method: 'POST', status: '422' }) >= 1);
    const count = metricValue(m, 'tandem_http_request_duration_seconds_count', { route: '/v1/orders', method: 'POST' });
    assert.ok(count >= 5);
    assert.equal(metricValue(m, 'tandem_http_request_duration_seconds_bucket', { route: '/v1/orders', method: 'POST', le: '+Inf' }), count);
    assert.ok(m.some((s) => s.name === 'tandem_http_request_duration_seconds_bucket' && s.labels.le === '0.1'));
    assert.ok(metricValue(m, 'tandem_app_idempotency_replays_total', { route: '/v1/orders' }) >= 1);
    assert.ok(metricValue(m, 'tandem_app_idempotency_conflicts_total', { route: '/v1/orders', kind: 'mismatch' }) >= 1);
    assert.ok(metricValue(m, 'tandem_app_idempotency_conflicts_total', { route: '/v1/orders', kind: 'in_flight' }) >= 1);
    assert.ok(metricValue(m, 'tandem_app_fenced_rejections_total', { route: '/v1/orders' }) >= 1);
    assert.doesNotMatch(t, /route="\/v1\/orders\/[0-9a-f]{8}-/, 'route labels are patterns, not raw paths');
  });
});

describe('database timeouts', () => {
  test('a statement stuck behind a lock is cancelled by the statement/lock timeout and answered 503', async () => {
    const config = testConfig(cluster, { db: { poolSize: 2, connectTimeoutMs: 1_000, statementTimeoutMs: 300 } });
    const slow = new ShopService({ config, region: 'r1', logger: captureLogger().logger, purgeIntervalMs: 0 });
    await slow.start();
    const blocker = await client(cluster.servers[0]!);
    try {
      await blocker.query('BEGIN');
      await blocker.query('LOCK TABLE shop.orders IN ACCESS EXCLUSIVE MODE');
      const started = performance.now();
      const res = await request(slow.url, 'GET', `/v1/orders/${randomUUID()}`);
      const ms = performance.now() - started;
      assert.equal(res.status, 503, res.text);
      assert.equal(res.json.type, 'urn:tandem:problem:database-unavailable');
      assert.ok(ms < 3_000, `answered after ${Math.round(ms)} ms`);
      // A write on the same lock: cancelled, key released, so a retry after the lock is gone succeeds.
      const key = randomUUID();
      const w = await request(slow.url, 'POST', '/v1/orders', { body: order(), headers: { 'idempotency-key': sfKey(key) } });
      assert.equal(w.status, 503);
      await blocker.query('COMMIT');
      const retry = await request(slow.url, 'POST', '/v1/orders', { body: order(), headers: { 'idempotency-key': sfKey(key) } });
      assert.equal(retry.status, 201, retry.text);
    } finally {
      await blocker.query('ROLLBACK').catch(() => {});
      await blocker.end();
      await slow.stop();
    }
  });
});

describe('database outage', () => {
  test('with PostgreSQL killed, writes and /healthz answer 503 quickly; service recovers when it is back', async () => {
    const server = cluster.servers[0]!;
    await db.end();
    server.kill();
    await server.exited();
    const started = performance.now();
    const w = await post('/v1/orders', order(), randomUUID());
    const writeMs = performance.now() - started;
    assert.equal(w.status, 503, w.text);
    assert.equal(w.json.type, 'urn:tandem:problem:database-unavailable');
    assert.equal(w.headers['retry-after'], '5');
    const r = await request(base, 'GET', `/v1/orders/${randomUUID()}`);
    assert.equal(r.status, 503);
    const h = await request(base, 'GET', '/healthz');
    assert.equal(h.status, 503);
    assert.equal(h.json.status, 'fail');
    assert.equal(h.json.checks.database.ok, false);
    assert.ok(h.json.checks.database.error);
    // Bad input is still answered without the database.
    assert.equal((await post('/v1/orders', order())).status, 400);
    // Bounded by the connect timeout (app.db.connectTimeoutMs = 2000), not hanging.
    assert.ok(writeMs < 4_000, `write answered after ${Math.round(writeMs)} ms`);
    await cluster.restart(0);
    db = await client(cluster.servers[0]!);
    let ok = false;
    for (let i = 0; i < 50 && !ok; i++) {
      ok = (await request(base, 'GET', '/healthz')).status === 200;
      if (!ok) await new Promise((res) => setTimeout(res, 100));
    }
    assert.ok(ok, '/healthz is 200 again after the database came back');
    assert.equal((await post('/v1/orders', order(), randomUUID())).status, 201);
  });
});

async function fingerprintOf(body: unknown): Promise<string> {
  const { fingerprint } = await import('../../src/app/idempotency.ts');
  return fingerprint('POST', '/v1/orders', body);
}
