/**
 * The load client against two real regions (PostgreSQL + reference service on
 * 127.0.1.1 and 127.0.2.1, same port) found through a small authoritative DNS
 * stub on a real UDP socket: TTL caching, ECS, fallback to the next DNS
 * server, and a failover in which writes that failed in one region are
 * retried with the same key in the other and acknowledged once.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import net from 'node:net';
import type { AddressInfo } from 'node:net';
import dnsPacket from 'dns-packet';
import type pg from 'pg';
import { startCluster, client, type TestCluster } from '../helpers/pg.ts';
import { freePort } from '../helpers/ports.ts';
import { ShopService } from '../../src/service/service.ts';
import { runLoad, type LoadRecord } from '../../src/service/load.ts';
import { setFence } from '../../src/app/fence.ts';
import { entityId } from '../../src/app/idempotency.ts';
import { silentLogger } from '../../src/core/log.ts';
import { testConfig } from './helpers.ts';

/** A tiny authoritative server for one name: answers A with `answer`, records what it was asked. */
class DnsStub {
  readonly socket = dgram.createSocket('udp4');
  answer = { addresses: ['127.0.1.1'], ttlSec: 2 };
  queries: Array<{ name: string; ecs: string | undefined }> = [];

  async start(): Promise<{ host: string; port: number }> {
    this.socket.on('message', (msg, rinfo) => {
      const q = dnsPacket.decode(msg);
      const question = q.questions?.[0];
      const opt = (q.additionals ?? []).find((a) => a.type === 'OPT') as { options?: Array<{ code: number; ip?: string; sourcePrefixLength?: number }> } | undefined;
      const ecs = opt?.options?.find((o) => o.code === 8);
      this.queries.push({ name: question?.name ?? '', ecs: ecs ? `${ecs.ip}/${ecs.sourcePrefixLength}` : undefined });
      const res = dnsPacket.encode({
        type: 'response',
        id: q.id,
        flags: dnsPacket.AUTHORITATIVE_ANSWER,
        questions: q.questions,
        answers: this.answer.addresses.map((a) => ({ type: 'A' as const, name: question!.name, ttl: this.answer.ttlSec, class: 'IN' as const, data: a })),
      });
      this.socket.send(res, rinfo.port, rinfo.address);
    });
    await new Promise<void>((r) => this.socket.bind(0, '127.0.0.1', r));
    return { host: '127.0.0.1', port: (this.socket.address() as AddressInfo).port };
  }
}

let cluster: TestCluster;
const services: ShopService[] = [];
const dbs: pg.Client[] = [];
let port: number;
const stub = new DnsStub();
let stubAddr: { host: string; port: number };
const blackHole = dgram.createSocket('udp4');
let blackHoleAddr: { host: string; port: number };

/** A port free on both region addresses. */
async function commonPort(): Promise<number> {
  for (;;) {
    const p = await freePort('127.0.1.1');
    const free = await new Promise<boolean>((resolve) => {
      const srv = net.createServer();
      srv.once('error', () => resolve(false));
      srv.listen(p, '127.0.2.1', () => srv.close(() => resolve(true)));
    });
    if (free) return p;
  }
}

before(async () => {
  cluster = await startCluster(2);
  const config = testConfig(cluster, { fenceCacheMs: 100 });
  port = await commonPort();
  for (const [i, r] of config.regions.entries()) {
    const s = new ShopService({ config, region: r.name, logger: silentLogger(), migrate: true, listen: { host: `127.0.${i + 1}.1`, port }, purgeIntervalMs: 0 });
    await s.start();
    services.push(s);
    dbs.push(await client(cluster.servers[i]!));
  }
  stubAddr = await stub.start();
  await new Promise<void>((r) => blackHole.bind(0, '127.0.0.1', r));
  blackHoleAddr = { host: '127.0.0.1', port: (blackHole.address() as AddressInfo).port };
});

after(async () => {
  stub.socket.close();
  blackHole.close();
  for (const d of dbs) await d.end().catch(() => {});
  for (const s of services) await s.stop();
  await cluster?.stop();
});

test('resolves through DNS with ECS, honours the TTL, falls back past a dead DNS server, records every request', async () => {
  stub.answer = { addresses: ['127.0.1.1'], ttlSec: 30 };
  stub.queries = [];
  const seen: LoadRecord[] = [];
  const result = await runLoad({
    serviceName: 'app.tandem.test',
    dnsServers: [blackHoleAddr, stubAddr],
    dnsTimeoutMs: 150,
    port,
    geos: [
      { geo: 'chennai', ecs: '49.204.1.0/24' },
      { geo: 'ahmedabad', ecs: '27.54.160.0/24' },
    ],
    ratePerSec: 25,
    count: 10,
    writeRatio: 0.6,
    seed: 7,
    onRecord: (r) => seen.push(r),
  });
  assert.equal(result.seed, 7);
  assert.equal(result.stats.operations, 20);
  assert.equal(result.byGeo.chennai!.operations, 10);
  assert.equal(result.stats.writesFailed, 0);
  assert.equal(result.stats.readsOk, result.stats.reads);
  assert.deepEqual(result.stats.byRegion, { r1: 20 });
  // One resolution per geography: the dead server (timed out), then the stub; the TTL covers the rest.
  assert.equal(result.dnsQueries, 4);
  assert.equal(stub.queries.length, 2);
  assert.deepEqual(stub.queries.map((q) => q.ecs).sort(), ['27.54.160.0/24', '49.204.1.0/24']);
  assert.ok(stub.queries.every((q) => q.name === 'app.tandem.test'));
  assert.equal(seen.length, result.records.length);
  for (const r of result.records) {
    assert.equal(r.address, '127.0.1.1');
    assert.equal(r.region, 'r1');
    assert.ok(r.t > 0 && r.latencyMs >= 0 && r.attempt === 1);
    assert.equal(r.acknowledged, r.op === 'create' && r.ok);
  }
  // Every acknowledged write is in the region's database under the id derived from its key.
  assert.equal(result.acknowledged.length, result.stats.writes);
  for (const a of result.acknowledged) {
    assert.equal(a.orderId, entityId(`client:load-${a.geo}`, a.key, 'order'));
    const { rows } = await dbs[0]!.query('SELECT region FROM shop.orders WHERE id = $1', [a.orderId]);
    assert.equal(rows[0]?.region, 'r1');
  }
});

test('failover: writes refused in one region are retried with the same key in the other once the DNS answer expires', async () => {
  stub.answer = { addresses: ['127.0.1.1'], ttlSec: 2 };
  stub.queries = [];
  const switchover = setTimeout(() => {
    // The region becomes read-only and DNS starts answering with the other region; clients keep the old answer until its TTL (2 s) ends.
    void setFence(dbs[0]!, 'r1', true, 'load test failover');
    stub.answer = { addresses: ['127.0.2.1'], ttlSec: 2 };
  }, 500);
  let result;
  try {
    result = await runLoad({
      serviceName: 'app.tandem.test',
      dnsServers: [stubAddr],
      port,
      geos: [{ geo: 'mumbai', ecs: '115.96.0.0/24' }],
      ratePerSec: 10,
      durationMs: 3_500,
      writeRatio: 1,
      retryDelayMs: 100,
      maxRetryDelayMs: 300,
      seed: 11,
    });
  } finally {
    clearTimeout(switchover);
    await setFence(dbs[0]!, 'r1', false);
  }
  const byKey = new Map<string, LoadRecord[]>();
  for (const r of result.records) byKey.set(r.key, [...(byKey.get(r.key) ?? []), r]);
  assert.equal(result.stats.writesFailed, 0, JSON.stringify(result.records.filter((r) => !r.ok).slice(0, 3)));
  const retried = [...byKey.values()].filter((list) => list.some((r) => r.status === 503 && r.region === 'r1') && list.some((r) => r.acknowledged && r.region === 'r2'));
  assert.ok(retried.length > 0, 'some writes were refused by r1 and acknowledged by r2 under the same key');
  assert.ok(result.stats.byRegion.r1 && result.stats.byRegion.r2, JSON.stringify(result.stats.byRegion));
  for (const [key, list] of byKey) {
    assert.equal(list.filter((r) => r.acknowledged).length, 1, `key ${key} acknowledged exactly once`);
    const ack = list.find((r) => r.acknowledged)!;
    assert.ok(list.every((r) => r.attempt >= 1) && ack.attempt === list.length, 'attempts are numbered and stop at the acknowledgement');
    const db = ack.region === 'r1' ? dbs[0]! : dbs[1]!;
    const { rows } = await db.query('SELECT count(*)::int AS n FROM shop.orders WHERE id = $1', [ack.orderId]);
    assert.equal(rows[0].n, 1);
  }
  assert.ok(stub.queries.length >= 2, 'the expired answer was asked for again');
});

test('bounded by an AbortSignal: stops promptly and reports what it did', async () => {
  stub.answer = { addresses: ['127.0.1.1'], ttlSec: 30 };
  const ac = new AbortController();
  setTimeout(() => ac.abort(), 300);
  const started = performance.now();
  const result = await runLoad({ serviceName: 'app.tandem.test', dnsServers: [stubAddr], port, geos: [{ geo: 'x' }], ratePerSec: 20, durationMs: 60_000, signal: ac.signal });
  assert.ok(performance.now() - started < 5_000);
  assert.ok(result.stats.operations >= 1 && result.stats.operations <= 20, String(result.stats.operations));
  await assert.rejects(runLoad({ serviceName: 'a', dnsServers: [stubAddr], port, geos: [{ geo: 'x' }], ratePerSec: 1 }), /count or durationMs/);
});

test('refuses to send traffic outside loopback', async () => {
  stub.answer = { addresses: ['192.0.2.10'], ttlSec: 30 };
  const result = await runLoad({ serviceName: 'app.tandem.test', dnsServers: [stubAddr], port, geos: [{ geo: 'x' }], ratePerSec: 50, count: 2, writeRatio: 0, seed: 1 });
  assert.equal(result.stats.readsOk, 0);
  assert.ok(result.records.every((r) => r.status === 0 && /outside loopback/.test(r.error ?? '')));
});

test('tandem app load: the same client from the command line, records as JSON lines', async () => {
  stub.answer = { addresses: ['127.0.2.1'], ttlSec: 30 };
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-load-cli-'));
  try {
    const configFile = path.join(dir, 'tandem.yaml');
    writeFileSync(configFile, stringify({ regions: [{ name: 'r1', addresses: ['127.0.1.1'], healthUrl: 'http://127.0.1.1/healthz', database: { host: '127.0.1.1' } }] }));
    const out = path.join(dir, 'records.jsonl');
    const args = ['bin/tandem.js', 'app', 'load', '-c', configFile, '--dns', `${stubAddr.host}:${stubAddr.port}`, '--name', 'app.tandem.test', '--port', String(port)];
    args.push('--geo', 'pune=115.96.0.0/24', '--rate', '20', '--count', '6', '--seed', '3', '--out', out, '--json');
    const child = spawn(process.execPath, args, { cwd: path.resolve(import.meta.dirname, '../..'), stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', resolve));
    assert.equal(code, 0, stderr);
    const summary = JSON.parse(stdout) as { seed: number; stats: { operations: number; byRegion: Record<string, number> } };
    assert.equal(summary.seed, 3);
    assert.equal(summary.stats.operations, 6);
    assert.deepEqual(summary.stats.byRegion, { r2: 6 });
    const lines = readFileSync(out, 'utf8').trim().split('\n').map((l) => JSON.parse(l) as LoadRecord);
    assert.equal(lines.length, 6);
    assert.ok(lines.every((r) => r.geo === 'pune' && r.region === 'r2' && r.ok));
    const usage = spawn(process.execPath, ['bin/tandem.js', 'app', 'load', '-c', configFile, '--count', '1', '--dns', 'nonsense'], { cwd: path.resolve(import.meta.dirname, '../..') });
    assert.equal(await new Promise<number | null>((resolve) => usage.once('exit', resolve)), 2);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
