/**
 * The same kit routes served from Express and from Fastify, unchanged:
 * idempotency, correlation, bad input and pass-through of the framework's own
 * routes, against a real PostgreSQL.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import Fastify, { type FastifyInstance } from 'fastify';
import type pg from 'pg';
import { startCluster, type TestCluster } from '../helpers/pg.ts';
import type { Kit } from '../../src/app/kit.ts';
import { shopRoutes } from '../../src/service/routes.ts';
import { sessionSecrets } from '../../src/service/service.ts';
import { kitOnCluster, request, sfKey } from './helpers.ts';

let cluster: TestCluster;
let pool: pg.Pool;
let kit: Kit;

before(async () => {
  cluster = await startCluster(1);
  ({ kit, pool } = await kitOnCluster(cluster, { app: { maxBodyBytes: 4096 }, routes: shopRoutes(), sessionSecrets }));
});

after(async () => {
  await pool?.end();
  await cluster?.stop();
});

/** The checks both frameworks must pass, given the base URL of a server with the kit mounted and a GET /own route. */
async function commonChecks(base: string, framework: string): Promise<void> {
  const key = randomUUID();
  const body = { customer: framework, amountCents: 300, currency: 'INR' };
  const created = await request(base, 'POST', '/v1/orders', { body, headers: { 'idempotency-key': sfKey(key), 'x-correlation-id': `${framework}-1` } });
  assert.equal(created.status, 201, created.text);
  assert.equal(created.headers['x-tandem-region'], 'r1');
  assert.equal(created.headers['x-correlation-id'], `${framework}-1`);
  assert.equal(created.json.correlationId, `${framework}-1`);
  const replay = await request(base, 'POST', '/v1/orders', { body, headers: { 'idempotency-key': sfKey(key) } });
  assert.equal(replay.status, 201);
  assert.equal(replay.headers['idempotent-replayed'], 'true');
  assert.equal(replay.text, created.text);
  const mismatch = await request(base, 'POST', '/v1/orders', { body: { ...body, amountCents: 1 }, headers: { 'idempotency-key': sfKey(key) } });
  assert.equal(mismatch.status, 422);
  const missing = await request(base, 'POST', '/v1/orders', { body });
  assert.equal(missing.status, 400);
  assert.equal(missing.headers['content-type'], 'application/problem+json');
  const got = await request(base, 'GET', `/v1/orders/${created.json.id}`);
  assert.equal(got.status, 200);
  assert.equal(got.json.id, created.json.id);
  const bad = await request(base, 'POST', '/v1/orders', { raw: '{nope', headers: { 'content-type': 'application/json', 'idempotency-key': sfKey(randomUUID()) } });
  assert.equal(bad.status, 400);
  assert.equal(bad.json.type, 'urn:tandem:problem:invalid-json');
  const big = await request(base, 'POST', '/v1/orders', { body: { customer: 'x'.repeat(5000), amountCents: 1, currency: 'INR' }, headers: { 'idempotency-key': sfKey(randomUUID()) } });
  assert.equal(big.status, 413);
  const login = await request(base, 'POST', '/v1/login', { body: { user: framework } });
  assert.equal(login.status, 201);
  const me = await request(base, 'GET', '/v1/me', { headers: { authorization: `Bearer ${login.json.token}` } });
  assert.equal(me.json.user, framework);
  const health = await request(base, 'GET', '/healthz');
  assert.equal(health.status, 200);
  assert.equal(health.json.checks.database.writable, true);
  // The framework's own routes still work and are not touched by the kit.
  const own = await request(base, 'GET', '/own');
  assert.equal(own.status, 200);
  assert.deepEqual(own.json, { own: framework });
  assert.equal(own.headers['x-tandem-region'], undefined);
}

function listen(server: http.Server): Promise<string> {
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as AddressInfo).port}`)));
}

describe('Express', () => {
  test('kit.express() serves the kit routes and passes the rest on', async (t) => {
    const app = express();
    app.get('/own', (_req, res) => void res.json({ own: 'express' }));
    app.use(kit.express());
    app.use((_req, res) => void res.status(404).json({ from: 'express' }));
    const server = http.createServer(app);
    const base = await listen(server);
    t.after(() => new Promise<void>((r) => server.close(() => r())));
    await commonChecks(base, 'express');
    const notOurs = await request(base, 'GET', '/elsewhere');
    assert.equal(notOurs.status, 404);
    assert.deepEqual(notOurs.json, { from: 'express' });
  });

  test('a body already parsed by express.json() is used as is (same fingerprint as a raw read)', async (t) => {
    const app = express();
    app.use(express.json());
    app.use(kit.express());
    const server = http.createServer(app);
    const base = await listen(server);
    t.after(() => new Promise<void>((r) => server.close(() => r())));
    const raw = http.createServer(kit.handler);
    const rawBase = await listen(raw);
    t.after(() => new Promise<void>((r) => raw.close(() => r())));
    const key = randomUUID();
    const body = { customer: 'parsed', amountCents: 42, currency: 'INR' };
    const first = await request(base, 'POST', '/v1/orders', { body, headers: { 'idempotency-key': sfKey(key) } });
    assert.equal(first.status, 201, first.text);
    const second = await request(rawBase, 'POST', '/v1/orders', { body, headers: { 'idempotency-key': sfKey(key) } });
    assert.equal(second.headers['idempotent-replayed'], 'true');
  });
});

describe('Fastify', () => {
  let fastify: FastifyInstance;
  after(async () => {
    await fastify?.close();
  });

  test('kit.fastify() registers the kit routes; Fastify keeps its own routes, parsers and 404', async () => {
    fastify = Fastify({ logger: false });
    fastify.get('/own', async () => ({ own: 'fastify' }));
    fastify.post('/echo', async (req) => ({ echoed: req.body }));
    await fastify.register(kit.fastify());
    await fastify.listen({ port: 0, host: '127.0.0.1' });
    const base = `http://127.0.0.1:${(fastify.server.address() as AddressInfo).port}`;
    await commonChecks(base, 'fastify');
    const echo = await request(base, 'POST', '/echo', { body: { a: 1 } });
    assert.deepEqual(echo.json, { echoed: { a: 1 } }, "Fastify's JSON parser still serves its own routes");
    const notOurs = await request(base, 'GET', '/elsewhere');
    assert.equal(notOurs.status, 404);
    assert.equal(notOurs.headers['x-tandem-region'], undefined);
  });
});
