/**
 * The DNS daemon on the wire: real UDP/TCP sockets on loopback, real HTTP
 * health targets, the admin API over HTTP, and `dig` for a cross-check.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import dnsPacket from 'dns-packet';
import { DnsDaemon } from '../../src/dns/daemon.ts';
import { queryA, query, exchange, buildQuery } from '../../src/dns/client.ts';
import { tcpFrame } from '../../src/dns/wire.ts';
import { callApi } from '../../src/core/http.ts';
import { isTandemError } from '../../src/core/errors.ts';
import { startHealthTarget, type HealthTargetServer } from './health-target.ts';
import { labConfigInput, writeConfig, expectedRegion, INDIAN_SAMPLES, waitFor } from './helpers.ts';
import type { ConfigInput } from '../../src/core/config/index.ts';

const TOKEN = 'test-admin-token';
let south: HealthTargetServer;
let west: HealthTargetServer;
let daemon: DnsDaemon;
let input: ConfigInput;
let file: string;
let dnsAddr: { host: string; port: number };
let admin: string;

const api = <T = unknown>(p: string, opts: { method?: string; body?: unknown; token?: string | undefined } = {}) =>
  callApi<T>(`${admin}${p}`, { token: TOKEN, ...opts });

async function startDaemon(): Promise<DnsDaemon> {
  const d = new DnsDaemon({ region: 'aws-south', configPath: file, token: TOKEN });
  await d.start();
  return d;
}

before(async () => {
  south = await startHealthTarget('127.0.1.1');
  west = await startHealthTarget('127.0.2.1');
  input = labConfigInput({ healthUrls: [south.url, west.url] });
  file = writeConfig(input).file;
  daemon = await startDaemon();
  dnsAddr = daemon.listeners[0]!;
  admin = daemon.adminUrl!;
  // Both regions healthy before the tests start.
  await waitFor(() => daemon.health.snapshot().every((h) => h.state === 'healthy'), 5_000);
});

after(async () => {
  await daemon?.stop();
  await south?.close();
  await west?.close();
});

const app = (opts: Parameters<typeof queryA>[2]) => queryA(dnsAddr, 'app.tandem.test', opts);

test('ECS from southern and western Indian networks gets the region the database implies, with the scope echoed', async () => {
  let checked = 0;
  const seen = new Set<string>();
  for (const ip of INDIAN_SAMPLES) {
    const expected = expectedRegion(ip);
    if (!expected) continue;
    const subnet = `${ip.split('.').slice(0, 3).join('.')}.0/24`;
    const r = await app({ ecs: subnet, timeoutMs: 2000 });
    const want = expected.region === 'aws-south' ? '127.0.1.1' : '127.0.2.1';
    assert.deepEqual(r.addresses, [want], `${subnet} is in ${expected.place} per the database`);
    assert.equal(r.rcode, 'NOERROR');
    assert.equal(r.authoritative, true);
    assert.equal(r.ttlSec, 60);
    assert.ok(r.scopePrefix !== undefined && r.scopePrefix > 0 && r.scopePrefix <= 32, `scope echoed: ${r.scopePrefix}`);
    // The scope is never wider than true: the whole scope block gets the same answer.
    const e = daemon.explain(ip, subnet);
    assert.equal(e.scopePrefix, r.scopePrefix);
    seen.add(expected.region);
    checked++;
  }
  assert.ok(checked >= 4, `at least 4 sample networks are in the southern/western states (got ${checked})`);
  assert.deepEqual([...seen].sort(), ['aws-south', 'azure-west']);
});

test('without ECS the source address decides (CIDR override for a chosen loopback source)', async () => {
  const viaOverride = await app({ timeoutMs: 2000, localAddress: '127.0.7.7', udpPayloadSize: false });
  assert.deepEqual(viaOverride.addresses, ['127.0.2.1'], '127.0.7.0/24 is overridden to azure-west first');
  const other = await app({ timeoutMs: 2000, localAddress: '127.0.8.8', udpPayloadSize: false });
  assert.deepEqual(other.addresses, ['127.0.1.1'], 'unknown addresses get the default order (aws-south first)');
  // ECS with SOURCE PREFIX-LENGTH 0 means "use the resolver's address"; the scope is 0.
  const zero = await app({ timeoutMs: 2000, localAddress: '127.0.7.8', ecs: '0.0.0.0/0' });
  assert.deepEqual(zero.addresses, ['127.0.2.1']);
  assert.equal(zero.scopePrefix, 0);
});

test('dig agrees: flags aa (no ra), the ECS option echoed with a scope', async () => {
  // Async: the server runs in this process, a blocking exec would starve it.
  const { stdout: out } = await promisify(execFile)('dig', ['+norec', '+time=2', '+tries=1', `@${dnsAddr.host}`, '-p', String(dnsAddr.port), 'app.tandem.test', 'A', '+subnet=49.204.1.0/24'], { encoding: 'utf8' });
  assert.match(out, /flags: qr aa;/);
  assert.match(out, /CLIENT-SUBNET: 49\.204\.1\.0\/24\/\d+/);
  assert.match(out, /app\.tandem\.test\.\s+60\s+IN\s+A\s+127\.0\.(1|2)\.1/);
});

test('zone answers: REFUSED outside, NXDOMAIN and NODATA with the SOA, static records, NS with glue', async () => {
  const refused = await query(dnsAddr, 'example.com', { timeoutMs: 2000 });
  assert.equal(refused.rcode, 'REFUSED');
  assert.equal(refused.flag_aa, false);
  const nx = await query(dnsAddr, 'missing.tandem.test', { timeoutMs: 2000 });
  assert.equal(nx.rcode, 'NXDOMAIN');
  assert.equal(nx.flag_aa, true);
  assert.equal(nx.answers?.length, 0);
  assert.equal(nx.authorities?.[0]?.type, 'SOA');
  assert.equal(nx.authorities?.[0]?.name, 'tandem.test');
  const nodata = await query(dnsAddr, 'app.tandem.test', { timeoutMs: 2000, type: 'MX' });
  assert.equal(nodata.rcode, 'NOERROR');
  assert.equal(nodata.answers?.length, 0);
  assert.equal(nodata.authorities?.[0]?.type, 'SOA');
  const ent = await query(dnsAddr, 'sub.tandem.test', { timeoutMs: 2000 });
  assert.equal(ent.rcode, 'NOERROR', 'an empty non-terminal is NODATA, not NXDOMAIN');
  const deep = await queryA(dnsAddr, 'DEEP.Sub.tandem.test', { timeoutMs: 2000 });
  assert.deepEqual(deep.addresses, ['127.0.9.8'], 'names match case-insensitively');
  const cname = await query(dnsAddr, 'www.tandem.test', { timeoutMs: 2000 });
  assert.equal(cname.answers?.[0]?.type, 'CNAME');
  assert.equal((cname.answers?.[0] as { data: string }).data, 'app.tandem.test');
  const txt = await query(dnsAddr, 'tandem.test', { timeoutMs: 2000, type: 'TXT' });
  assert.equal(Buffer.concat((txt.answers?.[0] as { data: Buffer[] }).data).toString(), 'tandem test zone');
  const soa = await query(dnsAddr, 'tandem.test', { timeoutMs: 2000, type: 'SOA' });
  assert.equal((soa.answers?.[0] as { data: { serial: number } }).data.serial, daemon.serial);
  const ns = await query(dnsAddr, 'tandem.test', { timeoutMs: 2000, type: 'NS' });
  assert.deepEqual(ns.answers?.map((a) => (a as { data: string }).data).sort(), ['ns-aws-south.tandem.test', 'ns-azure-west.tandem.test']);
  assert.ok((ns.additionals ?? []).some((a) => a.type === 'A' && a.name === 'ns-aws-south.tandem.test'), 'glue for the NS names');
  const rd = await query(dnsAddr, 'app.tandem.test', { timeoutMs: 2000 });
  assert.equal(rd.flag_rd, true, 'RD is copied');
  assert.equal(rd.flag_ra, false, 'no recursion available');
});

test('NOTIMP for other opcodes, FORMERR for bad ECS, BADVERS for EDNS version 1, silence for responses', async () => {
  const q = buildQuery('app.tandem.test', { id: 77 });
  const notify = Buffer.from(q);
  notify[2] = (notify[2]! & 0x87) | (4 << 3); // opcode NOTIFY
  const r1 = dnsPacket.decode(await exchange(dnsAddr, notify, { timeoutMs: 2000 })) as dnsPacket.DecodedPacket & { rcode: string };
  assert.equal(r1.rcode, 'NOTIMP');
  assert.equal(r1.id, 77);
  const badFamily = buildQuery('app.tandem.test', { ecs: '49.204.1.0/24', id: 78 });
  badFamily.writeUInt16BE(3, badFamily.length - 7); // ECS FAMILY := 3
  const r2 = dnsPacket.decode(await exchange(dnsAddr, badFamily, { timeoutMs: 2000 })) as dnsPacket.DecodedPacket & { rcode: string };
  assert.equal(r2.rcode, 'FORMERR');
  const v1 = buildQuery('app.tandem.test', { id: 79 });
  v1[v1.length - 5] = 1; // OPT TTL: version byte
  const raw = await exchange(dnsAddr, v1, { timeoutMs: 2000 });
  assert.equal(raw[raw.length - 6], 1, 'extended RCODE 1 in OPT = BADVERS (16)');
  const response = Buffer.from(q);
  response[2] = response[2]! | 0x80;
  await assert.rejects(exchange(dnsAddr, response, { timeoutMs: 300 }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_TIMEOUT'));
});

test('a big answer is truncated (TC) over UDP and complete over TCP', async () => {
  const many = Array.from({ length: 120 }, (_, i) => `127.0.${1 + Math.floor(i / 200)}.${(i % 250) + 2}`);
  const bigInput = labConfigInput({ healthUrls: [south.url, west.url], addresses: [many, ['127.0.2.1']] });
  const { file: bigFile } = writeConfig(bigInput);
  const d = new DnsDaemon({ region: 'aws-south', configPath: bigFile, token: TOKEN });
  await d.start();
  after(() => d.stop());
  const target = d.listeners[0]!;
  const udp = await queryA(target, 'app.tandem.test', { timeoutMs: 2000, ecs: '49.204.1.0/24' });
  assert.equal(udp.truncated, true);
  assert.equal(udp.addresses.length, 0);
  const small = await queryA(target, 'app.tandem.test', { timeoutMs: 2000, udpPayloadSize: false });
  assert.equal(small.truncated, true, 'no EDNS: 512 bytes');
  const tcp = await queryA(target, 'app.tandem.test', { timeoutMs: 2000, ecs: '49.204.1.0/24', tcp: true });
  assert.equal(tcp.truncated, false);
  assert.equal(tcp.addresses.length, 120);

  // A client that pipelines queries for a big answer and never reads: cut off, and the server keeps serving.
  const greedy = net.connect(target.port, target.host);
  greedy.on('error', () => {});
  await new Promise((r) => greedy.once('connect', r));
  greedy.pause();
  const f = tcpFrame(buildQuery('app.tandem.test', { id: 7, ecs: '49.204.1.0/24' }));
  const closed = new Promise<void>((r) => greedy.once('close', () => r()));
  for (let i = 0; i < 100 && !greedy.destroyed; i++) {
    greedy.write(Buffer.concat(Array.from({ length: 500 }, () => f)));
    await new Promise((r) => setImmediate(r));
  }
  const winner = await Promise.race([closed.then(() => 'closed'), new Promise((r) => setTimeout(() => r('still open'), 5_000))]);
  greedy.destroy();
  assert.equal(winner, 'closed', 'a client that does not read is cut off');
  const after2 = await queryA(target, 'app.tandem.test', { timeoutMs: 2000, ecs: '49.204.1.0/24', tcp: true });
  assert.equal(after2.addresses.length, 120, 'and the server keeps serving');
});

test('TCP: several queries on one connection, idle timeout, connection cap', async () => {
  // Pipelined queries on one connection, answered in order.
  const sock = net.connect(dnsAddr.port, dnsAddr.host);
  await new Promise((r) => sock.once('connect', r));
  const frames = [1, 2, 3].map((id) => tcpFrame(buildQuery('app.tandem.test', { id, ecs: '106.51.0.0/24' })));
  sock.write(Buffer.concat(frames));
  const ids: number[] = [];
  let acc = Buffer.alloc(0);
  await new Promise<void>((resolve) => {
    sock.on('data', (c: Buffer) => {
      acc = Buffer.concat([acc, c]);
      while (acc.length >= 2 && acc.length >= 2 + acc.readUInt16BE(0)) {
        ids.push(acc.readUInt16BE(2));
        acc = acc.subarray(2 + acc.readUInt16BE(0));
      }
      if (ids.length === 3) resolve();
    });
  });
  assert.deepEqual(ids, [1, 2, 3]);
  // Idle: the server closes the connection after dns.tcp.idleTimeoutMs (400 ms).
  const closedAfter = await new Promise<number>((resolve) => {
    const t0 = Date.now();
    sock.once('close', () => resolve(Date.now() - t0));
  });
  assert.ok(closedAfter >= 300 && closedAfter < 3000, `closed after ${closedAfter} ms`);

  // Cap of 4: with 4 connections in the middle of a frame, a 5th is refused.
  const open: net.Socket[] = [];
  after(() => open.forEach((s) => s.destroy()));
  const connect = async () => {
    const s = net.connect(dnsAddr.port, dnsAddr.host);
    s.on('error', () => {});
    open.push(s);
    await new Promise((r) => s.once('connect', r));
    return s;
  };
  for (let i = 0; i < 4; i++) (await connect()).write(Buffer.from([0x00]));
  await new Promise((r) => setTimeout(r, 50));
  await assert.rejects(queryA(dnsAddr, 'app.tandem.test', { timeoutMs: 1000, tcp: true }));
  open.forEach((s) => s.destroy());
  await new Promise((r) => setTimeout(r, 100));
  const again = await queryA(dnsAddr, 'app.tandem.test', { timeoutMs: 1000, tcp: true });
  assert.equal(again.rcode, 'NOERROR', 'served again once connections are freed');
  // With 4 idle connections at the cap, the one idle the longest makes room (RFC 7766 §6.2.2).
  const idle: net.Socket[] = [];
  for (let i = 0; i < 4; i++) idle.push(await connect());
  const firstClosed = new Promise((r) => idle[0]!.once('close', r));
  await new Promise((r) => setTimeout(r, 50));
  const served = await queryA(dnsAddr, 'app.tandem.test', { timeoutMs: 1000, tcp: true });
  assert.equal(served.rcode, 'NOERROR');
  await firstClosed;
  assert.equal(idle.slice(1).filter((s) => s.destroyed).length, 0, 'only the oldest idle connection was closed');
  open.forEach((s) => s.destroy());
});

test('TCP: a frame trickled a byte at a time is cut off', async () => {
  // Slowloris: a byte every 100 ms keeps resetting an idle timer, but a frame must arrive whole within 400 ms.
  const slow = net.connect(dnsAddr.port, dnsAddr.host);
  slow.on('error', () => {});
  await new Promise((r) => slow.once('connect', r));
  const t0 = Date.now();
  slow.write(Buffer.from([0xff, 0xff]));
  const drip = setInterval(() => slow.writable && slow.write(Buffer.from([0x00])), 100);
  const closedAfter = await Promise.race([
    new Promise<number>((resolve) => slow.once('close', () => resolve(Date.now() - t0))),
    new Promise<number>((resolve) => setTimeout(() => resolve(Infinity), 3_000)),
  ]);
  clearInterval(drip);
  slow.destroy();
  assert.ok(closedAfter < 2_000, `a trickled frame was cut off after ${closedAfter} ms`);

  const ok = await queryA(dnsAddr, 'app.tandem.test', { timeoutMs: 1000, tcp: true });
  assert.equal(ok.rcode, 'NOERROR');
});

test('failover on 503 and on a target that stops answering, and recovery, within the bounds', async () => {
  const { intervalMs, failThreshold, recoverThreshold } = daemon.config.health;
  const slackMs = 150; // timer jitter on a shared machine
  const southEcs = { ecs: '106.51.0.0/24', timeoutMs: 2000 } as const;
  assert.equal(expectedRegion('106.51.0.1')?.region, 'aws-south');
  for (const mode of ['503', 'hang'] as const) {
    assert.deepEqual((await app(southEcs)).addresses, ['127.0.1.1']);
    south.mode = mode;
    const t0 = Date.now();
    await waitFor(async () => (await app(southEcs)).addresses[0] === '127.0.2.1', 5_000, 10);
    const failoverMs = Date.now() - t0;
    console.log(`# failover (${mode}): ${failoverMs} ms, bound ${intervalMs * failThreshold + intervalMs} ms`);
    assert.ok(failoverMs <= intervalMs * failThreshold + intervalMs + slackMs, `failover took ${failoverMs} ms`);
    south.mode = 'ok';
    const t1 = Date.now();
    await waitFor(async () => (await app(southEcs)).addresses[0] === '127.0.1.1', 5_000, 10);
    const recoveryMs = Date.now() - t1;
    console.log(`# recovery (${mode}): ${recoveryMs} ms, bound ${intervalMs * recoverThreshold + intervalMs} ms`);
    // After a hang, the probe in flight still times out (up to timeoutMs) before successes count.
    const extra = mode === 'hang' ? daemon.config.health.timeoutMs : 0;
    assert.ok(recoveryMs <= intervalMs * recoverThreshold + intervalMs + extra + slackMs, `recovery took ${recoveryMs} ms`);
  }
});

test('fail open: every region unhealthy answers all of them', async () => {
  south.mode = '503';
  west.mode = '503';
  after(() => {
    south.mode = 'ok';
    west.mode = 'ok';
  });
  await waitFor(() => daemon.health.snapshot().every((h) => h.state === 'unhealthy'), 5_000);
  const r = await app({ ecs: '106.51.0.0/24', timeoutMs: 2000 });
  assert.deepEqual(r.addresses.sort(), ['127.0.1.1', '127.0.2.1']);
  south.mode = 'ok';
  west.mode = 'ok';
  await waitFor(() => daemon.health.snapshot().every((h) => h.state === 'healthy'), 5_000);
});

test('admin API: token required; drain, the last-region safety rule, force, undrain; state persisted across a restart', async () => {
  await assert.rejects(api('/v1/state', { token: undefined }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_AUTH'));
  await assert.rejects(api('/v1/state', { token: 'wrong' }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_AUTH'));
  const health = await fetch(`${admin}/healthz`);
  assert.equal(health.status, 200, '/healthz is public');
  const metrics = await (await fetch(`${admin}/metrics`)).text();
  assert.match(metrics, /tandem_dns_queries_total\{qtype="A",rcode="NOERROR",geography="IN-/);
  assert.match(metrics, /tandem_dns_geo_answers_total\{served="local"/);

  await api('/v1/regions/aws-south/drain', { method: 'POST', body: { reason: 'maintenance' } });
  assert.deepEqual((await app({ ecs: '106.51.0.0/24', timeoutMs: 2000 })).addresses, ['127.0.2.1'], 'drained region leaves the answers');
  await assert.rejects(api('/v1/regions/azure-west/drain', { method: 'POST', body: {} }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_SAFETY') && (err.details?.status as number) === 409);
  const state = await api<{ regions: { name: string; drained: boolean; drainReason?: string; drainedAt?: string }[]; zone: string; serial: number }>('/v1/state');
  assert.equal(state.zone, 'tandem.test.');
  const s = state.regions.find((r) => r.name === 'aws-south')!;
  assert.equal(s.drained, true);
  assert.equal(s.drainReason, 'maintenance');
  assert.ok(s.drainedAt);

  // Restart on the same state file: still drained.
  await daemon.stop();
  daemon = await startDaemon();
  dnsAddr = daemon.listeners[0]!;
  admin = daemon.adminUrl!;
  await waitFor(() => daemon.health.snapshot().every((h) => h.state === 'healthy'), 5_000);
  assert.deepEqual((await app({ ecs: '106.51.0.0/24', timeoutMs: 2000 })).addresses, ['127.0.2.1'], 'the drain survived the restart');
  const persisted = JSON.parse(readFileSync(daemon.config.dns?.stateFile ?? `${input.dataDir}/dns-state-aws-south.json`, 'utf8')) as { regions: Record<string, { drained: boolean }> };
  assert.equal(persisted.regions['aws-south']?.drained, true);

  // Forced drain of the last region: allowed, and answers fail open rather than go empty.
  await api('/v1/regions/azure-west/drain', { method: 'POST', body: { force: true, reason: 'drill' } });
  assert.deepEqual((await app({ ecs: '106.51.0.0/24', timeoutMs: 2000 })).addresses.sort(), ['127.0.1.1', '127.0.2.1']);
  await api('/v1/regions/azure-west/undrain', { method: 'POST' });
  await api('/v1/regions/aws-south/undrain', { method: 'POST' });
  assert.deepEqual((await app({ ecs: '106.51.0.0/24', timeoutMs: 2000 })).addresses, ['127.0.1.1']);
  await assert.rejects(api('/v1/regions/gcp-east/drain', { method: 'POST' }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_NOT_FOUND'));
});

test('weights: a 90/10 split follows the query id deterministically', async () => {
  await api('/v1/regions/aws-south/weight', { method: 'PUT', body: { weight: 90 } });
  await api('/v1/regions/azure-west/weight', { method: 'PUT', body: { weight: 10, service: 'app' } });
  const counts = new Map<string, number>();
  for (let id = 0; id < 200; id++) {
    const r = await app({ ecs: '115.96.0.0/24', timeoutMs: 2000, id });
    counts.set(r.addresses[0]!, (counts.get(r.addresses[0]!) ?? 0) + 1);
  }
  // ids 0..199: id % 100 < 90 goes to aws-south.
  assert.equal(counts.get('127.0.1.1'), 180);
  assert.equal(counts.get('127.0.2.1'), 20);
  const state = await api<{ regions: { name: string; weights?: Record<string, number> }[] }>('/v1/state');
  assert.deepEqual(state.regions.find((r) => r.name === 'azure-west')?.weights, { app: 10 });
  await api('/v1/regions/aws-south/weight', { method: 'PUT', body: { weight: null } });
  await api('/v1/regions/azure-west/weight', { method: 'PUT', body: { weight: null, service: 'app' } });
  assert.deepEqual((await app({ ecs: '115.96.0.0/24', timeoutMs: 2000 })).addresses, [expectedRegion('115.96.0.1')?.region === 'azure-west' ? '127.0.2.1' : '127.0.1.1']);
  await assert.rejects(api('/v1/regions/aws-south/weight', { method: 'PUT', body: { weight: 5000 } }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_USAGE'));
});

test('reload: a good config takes effect, a bad one is rejected and the old one keeps serving', async () => {
  const before = daemon.serial;
  const changed = structuredClone(input);
  (changed.dns!.records as unknown[]).push({ name: 'new', type: 'A', value: '127.0.9.7' });
  writeFileSync(file, stringify(changed));
  const res = await api<{ serial: number }>('/v1/reload', { method: 'POST' });
  assert.ok(res.serial > before);
  assert.deepEqual((await queryA(dnsAddr, 'new.tandem.test', { timeoutMs: 2000 })).addresses, ['127.0.9.7']);

  const bad = structuredClone(changed);
  (bad.geo!.rules as { match: string[] }[])[0]!.match.push('IN-ZZ');
  (bad.dns!.records as unknown[]).push({ name: 'other', type: 'A', value: '127.0.9.6' });
  writeFileSync(file, stringify(bad));
  await assert.rejects(api('/v1/reload', { method: 'POST' }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_CONFIG') && /IN-ZZ/.test(err.message));
  assert.equal((await queryA(dnsAddr, 'other.tandem.test', { timeoutMs: 2000 })).rcode, 'NXDOMAIN', 'the rejected config is not served');
  assert.deepEqual((await queryA(dnsAddr, 'new.tandem.test', { timeoutMs: 2000 })).addresses, ['127.0.9.7'], 'the old one still is');
  // A health change restarts the checker and keeps what it knew about unchanged targets.
  const healthChange = structuredClone(input);
  healthChange.health = { ...healthChange.health, intervalMs: 120 };
  writeFileSync(file, stringify(healthChange));
  const r2 = await api<{ changed: string[] }>('/v1/reload', { method: 'POST' });
  assert.ok(r2.changed.includes('health'));
  assert.ok(daemon.health.snapshot().every((h) => h.state === 'healthy'), 'states carried over the reload');
  writeFileSync(file, stringify(input));
  await api('/v1/reload', { method: 'POST' });
});

test('explain over the API', async () => {
  const e = await api<{ class: { label: string }; order: string[]; services: { A: { region: string }[] }[]; geo: { country: string } }>(`/v1/explain?ip=1.2.3.4&ecs=49.204.1.0/24`);
  const expected = expectedRegion('49.204.1.1');
  assert.equal(e.geo.country, 'IN');
  if (expected) {
    assert.equal(e.class.label, expected.place);
    assert.equal(e.order[0], expected.region);
    assert.equal(e.services[0]!.A[0]!.region, expected.region);
  }
});

test('IPv6 listener (UDP and TCP), AAAA answers, IPv6 ECS', async () => {
  const v6Input = labConfigInput({ healthUrls: [south.url, west.url], addresses: [['127.0.1.1', '::1:1'], ['127.0.2.1', '::2:1']] });
  const { file: v6File } = writeConfig(v6Input);
  const d = new DnsDaemon({ region: 'aws-south', configPath: v6File, token: TOKEN, listen: [{ host: '::1', port: 0 }] });
  await d.start();
  after(() => d.stop());
  const target = d.listeners[0]!;
  assert.equal(target.host, '::1');
  for (const tcp of [false, true]) {
    const a = await queryA(target, 'app.tandem.test', { timeoutMs: 2000, tcp, type: 'AAAA', ecs: '106.51.0.0/24' });
    assert.equal(a.rcode, 'NOERROR');
    assert.equal(a.addresses.length, 1);
    assert.ok(['::1:1', '::2:1'].includes(a.addresses[0]!));
  }
  // An IPv6 client subnet is looked up in the IPv6 file and echoed with a scope.
  const v6 = await queryA(target, 'app.tandem.test', { timeoutMs: 2000, ecs: '2401:4900::/32' });
  assert.equal(v6.addresses.length, 1);
  assert.ok(v6.scopePrefix !== undefined && v6.scopePrefix <= 128);
});

test('a drain that cannot be saved changes nothing: the error is returned and answers stay as they were', async () => {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'tandem-dns-state-'));
  const stateDir = path.join(dataDir, 'state');
  const cfg = labConfigInput({ healthUrls: [south.url, west.url], dataDir });
  cfg.dns = { ...cfg.dns!, stateFile: path.join(stateDir, 'dns.json') };
  const { file: cfgFile } = writeConfig(cfg);
  const d = new DnsDaemon({ region: 'aws-south', configPath: cfgFile, token: TOKEN });
  await d.start();
  after(() => d.stop());
  const target = d.listeners[0]!;
  const southAnswer = async () => (await queryA(target, 'app.tandem.test', { timeoutMs: 1000, ecs: '49.204.1.0/24' })).addresses;
  await waitFor(async () => (await southAnswer()).includes('127.0.1.1'), 5_000);
  // The state's directory turns into a file: every save fails.
  rmSync(stateDir, { recursive: true, force: true });
  writeFileSync(stateDir, 'not a directory');
  assert.throws(() => d.drain('aws-south', { reason: 'disk trouble' }));
  assert.equal(d.stateView().regions.find((r) => r.name === 'aws-south')?.drained, false, 'not drained in memory either');
  assert.throws(() => d.setWeight('azure-west', 5));
  // Saving works again: an unrelated change does not bring the failed drain back.
  rmSync(stateDir, { force: true });
  d.undrain('azure-west');
  assert.ok((await southAnswer()).includes('127.0.1.1'), 'aws-south still answered');
});

test('admin API: a bad percent-escape in a path is a 400 naming the parameter, not a server error', async () => {
  await assert.rejects(api('/v1/regions/%E0%A4%A/drain', { method: 'POST', body: {} }), /answered 400: path parameter "region" is not valid percent-encoding/);
});
