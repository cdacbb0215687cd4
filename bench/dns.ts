/**
 * `npm run bench:dns`: tandem's DNS server against gdnsd, measured with
 * dnsperf in one run on this machine.
 *
 * - Throughput: dnsperf at full speed for `BENCH_SECONDS` against each server,
 *   without and with EDNS Client Subnet (a southern Indian /24).
 * - Latency p50/p99: dnsperf -v at a fixed rate (`BENCH_LATENCY_QPS`), per-query
 *   latencies parsed from its output.
 * - Failover: both servers probe the same two HTTP health targets with the same
 *   settings (gdnsd's minimum interval is 2 s); the southern target starts
 *   answering 503 and the bench polls both servers until the answer moves.
 *
 * gdnsd's geoip plugin reads only the GeoIP2 data model (continent / country /
 * subdivisions paths), not the flat layout of the bundled DB-IP file, so the
 * same database is exported as a gdnsd `nets` file: every network the policy
 * sends to a non-default region order, adjacent networks merged.
 *
 * Everything runs on loopback and is stopped at the end; the run is bounded
 * in time. Ratios, not absolute numbers, are what compares across machines.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, mkdirSync } from 'node:fs';
import { tmpdir, loadavg, cpus } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseConfig, type ConfigInput } from '../src/core/config/index.ts';
import { GeoPolicy } from '../src/dns/policy.ts';
import { openGeoDb } from '../src/dns/daemon.ts';
import { queryA } from '../src/dns/client.ts';
import { startHealthTarget } from '../test/dns/health-target.ts';

const SECONDS = Number(process.env.BENCH_SECONDS ?? 8);
const LATENCY_QPS = Number(process.env.BENCH_LATENCY_QPS ?? 5000);
const LATENCY_SECONDS = Number(process.env.BENCH_LATENCY_SECONDS ?? 4);
const CLIENTS = Number(process.env.BENCH_CLIENTS ?? 8);
const OUTSTANDING = Number(process.env.BENCH_OUTSTANDING ?? 200);
const HOST_TANDEM = '127.0.5.1';
const HOST_GDNSD = '127.0.5.2';
const PORT = 5300;
/** ECS option for dnsperf: code 8, family 1, source /24, scope 0, 106.51.0 (Bengaluru, Karnataka). */
const ECS_OPTION = '8:000118006a3300';
const ECS_SUBNET = '106.51.0.0/24';
const PROBE = { intervalMs: 2000, timeoutMs: 1000, failThreshold: 3, recoverThreshold: 2 };

const children: ChildProcess[] = [];
const cleanups: (() => Promise<void> | void)[] = [];

function log(line: string): void {
  process.stdout.write(`${line}\n`);
}

function run(cmd: string, args: string[], timeoutMs: number): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Start a long-running child, remembered for cleanup (killed by its PID). */
function daemon(cmd: string, args: string[], name: string): ChildProcess {
  const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, TANDEM_LOG_LEVEL: 'warn' } });
  let err = '';
  child.stderr?.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-4000);
  });
  child.on('exit', (code, signal) => {
    if (code && code !== 0) log(`! ${name} exited with ${code ?? signal}: ${err.trim().split('\n').slice(-5).join(' | ')}`);
  });
  children.push(child);
  return child;
}

async function waitAnswer(host: string, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      const r = await queryA({ host, port: PORT }, 'app.tandem.test', { timeoutMs: 300 });
      if (r.addresses.length) return;
    } catch {
      // not up yet
    }
    if (Date.now() > until) throw new Error(`${host}:${PORT} did not answer within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Export the policy's non-default networks as gdnsd nets entries, merging siblings with the same order. */
function exportNets(policy: GeoPolicy): { lines: string[]; count: number } {
  const db = policy.db;
  const tree = db.v4;
  const defaultOrder = policy.classes[1]!.orderIdx;
  const orderOfRecord = new Map<number, number>();
  // Post-order DFS; a subtree is "uniform" when both halves have the same order.
  type Frame = { node: number; depth: number; prefix: number; stage: number; left?: number; right?: number };
  const out: { prefix: number; depth: number; order: number }[] = [];
  const leafOrder = (record: number): number => {
    if (record === tree.nodeCount) return policy.classes[0]!.orderIdx;
    let o = orderOfRecord.get(record);
    if (o === undefined) {
      o = policy.classes[policy.classify(db.info(tree, record))]!.orderIdx;
      orderOfRecord.set(record, o);
    }
    return o;
  };
  const MIXED = -1;
  // Iterative to keep the stack small; returns the order of the root subtree or MIXED.
  const emit = (prefix: number, depth: number, order: number) => {
    if (order !== MIXED && order !== defaultOrder) out.push({ prefix, depth, order });
  };
  const stack: Frame[] = [{ node: db.v4Start, depth: 0, prefix: 0, stage: 0 }];
  const results: number[] = [];
  while (stack.length) {
    const f = stack[stack.length - 1]!;
    if (f.stage < 2) {
      const bit = f.stage;
      f.stage++;
      const child = tree.child(f.node, bit);
      const childPrefix = (f.prefix | (bit << (31 - f.depth))) >>> 0;
      if (child >= tree.nodeCount) results.push(leafOrder(child), childPrefix, f.depth + 1);
      else stack.push({ node: child, depth: f.depth + 1, prefix: childPrefix, stage: 0 });
      continue;
    }
    stack.pop();
    // Pop the two children's results (right then left).
    const rDepth = results.pop()!;
    const rPrefix = results.pop()!;
    const rOrder = results.pop()!;
    const lDepth = results.pop()!;
    const lPrefix = results.pop()!;
    const lOrder = results.pop()!;
    if (lOrder !== MIXED && lOrder === rOrder) results.push(lOrder, f.prefix, f.depth);
    else {
      emit(lPrefix, lDepth, lOrder);
      emit(rPrefix, rDepth, rOrder);
      results.push(MIXED, f.prefix, f.depth);
    }
  }
  const [rootOrder, rootPrefix, rootDepth] = results;
  emit(rootPrefix!, rootDepth!, rootOrder!);
  const lines = out.map((n) => {
    const ip = [n.prefix >>> 24, (n.prefix >>> 16) & 255, (n.prefix >>> 8) & 255, n.prefix & 255].join('.');
    return `${ip}/${n.depth} => [ ${policy.orders[n.order]!.map((i) => policy.regionNames[i]).join(', ')} ]`;
  });
  return { lines, count: out.length };
}

interface PerfResult {
  qps: number;
  lost: number;
  avgLatencyMs: number;
}

async function dnsperf(host: string, file: string, opts: { ecs: boolean; seconds: number; qps?: number; verbose?: boolean }): Promise<PerfResult & { latencies?: number[] }> {
  const args = ['-s', host, '-p', String(PORT), '-d', file, '-l', String(opts.seconds), '-c', String(CLIENTS), '-q', String(OUTSTANDING), '-t', '2', '-e'];
  if (opts.ecs) args.push('-E', ECS_OPTION);
  if (opts.qps) args.push('-Q', String(opts.qps));
  if (opts.verbose) args.push('-v');
  const r = await run('dnsperf', args, (opts.seconds + 20) * 1000);
  const qps = Number(/Queries per second:\s+([\d.]+)/.exec(r.stdout)?.[1] ?? NaN);
  const lost = Number(/Queries lost:\s+(\d+)/.exec(r.stdout)?.[1] ?? NaN);
  const avg = Number(/Average Latency \(s\):\s+([\d.]+)/.exec(r.stdout)?.[1] ?? NaN) * 1000;
  if (!Number.isFinite(qps)) throw new Error(`dnsperf failed: ${r.stderr || r.stdout}`);
  const result: PerfResult & { latencies?: number[] } = { qps, lost, avgLatencyMs: avg };
  if (opts.verbose) {
    // "> NOERROR app.tandem.test A 0.000123"
    result.latencies = [...r.stdout.matchAll(/^> \S+ .* ([\d.]+)$/gm)].map((m) => Number(m[1]) * 1000).sort((a, b) => a - b);
  }
  return result;
}

const pct = (sorted: number[], p: number) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]! : NaN);

async function failover(targetSouth: { mode: string }, hosts: Record<string, string>): Promise<Record<string, { failoverMs: number; recoveryMs: number }>> {
  const result: Record<string, { failoverMs: number; recoveryMs: number }> = {};
  const poll = async (want: string, since: number): Promise<Record<string, number>> => {
    const done: Record<string, number> = {};
    const deadline = since + 30_000;
    while (Object.keys(done).length < Object.keys(hosts).length && Date.now() < deadline) {
      await Promise.all(
        Object.entries(hosts).map(async ([name, host]) => {
          if (done[name] !== undefined) return;
          try {
            const r = await queryA({ host, port: PORT }, 'app.tandem.test', { ecs: ECS_SUBNET, timeoutMs: 500 });
            if (r.addresses[0] === want) done[name] = Date.now() - since;
          } catch {
            // keep polling
          }
        }),
      );
      await new Promise((r) => setTimeout(r, 20));
    }
    return done;
  };
  targetSouth.mode = '503';
  const down = await poll('127.0.2.1', Date.now());
  targetSouth.mode = 'ok';
  const up = await poll('127.0.1.1', Date.now());
  for (const name of Object.keys(hosts)) result[name] = { failoverMs: down[name] ?? NaN, recoveryMs: up[name] ?? NaN };
  return result;
}

async function main(): Promise<void> {
  const load0 = loadavg();
  const started = Date.now();
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-bench-dns-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const south = await startHealthTarget('127.0.1.1');
  const west = await startHealthTarget('127.0.2.1');
  cleanups.push(() => south.close(), () => west.close());
  const southPort = new URL(south.url).port;
  const westPort = new URL(west.url).port;

  // tandem config: the lab's geography.
  const input: ConfigInput = {
    dataDir: path.join(dir, 'data'),
    regions: [
      { name: 'aws-south', addresses: ['127.0.1.1'], healthUrl: south.url, database: { host: '127.0.1.1' }, dns: { listen: [`${HOST_TANDEM}:${PORT}`], admin: `${HOST_TANDEM}:0` } },
      { name: 'azure-west', addresses: ['127.0.2.1'], healthUrl: west.url, database: { host: '127.0.2.1' } },
    ],
    health: PROBE,
    dns: { zone: 'tandem.test.', services: [{ name: 'app' }] },
    geo: {
      rules: [
        { name: 'south', match: ['IN-TN', 'IN-KA', 'IN-KL', 'IN-TG', 'IN-AP'], order: ['aws-south', 'azure-west'] },
        { name: 'west', match: ['IN-MH', 'IN-GJ', 'IN-GA', 'IN-RJ'], order: ['azure-west', 'aws-south'] },
      ],
    },
  };
  const cfgFile = path.join(dir, 'tandem.yaml');
  writeFileSync(cfgFile, stringify(input));
  const config = parseConfig(input);

  // gdnsd config: same zone, same geography (as nets), same probes.
  const nets = exportNets(new GeoPolicy(config, openGeoDb(config.geo.database)));
  const gdir = path.join(dir, 'gdnsd');
  mkdirSync(path.join(gdir, 'zones'), { recursive: true });
  mkdirSync(path.join(gdir, 'run'), { recursive: true });
  mkdirSync(path.join(gdir, 'state'), { recursive: true });
  writeFileSync(path.join(gdir, 'nets'), `${nets.lines.join('\n')}\n`);
  const gdnsdThreads = Number(process.env.BENCH_GDNSD_THREADS ?? 1);
  writeFileSync(
    path.join(gdir, 'config'),
    `options => {
  listen => { ${HOST_GDNSD}:${PORT} => { udp_threads => ${gdnsdThreads}, tcp_threads => 1 } }
  run_dir => ${path.join(gdir, 'run')}
  state_dir => ${path.join(gdir, 'state')}
}
service_types => {
  web_south => { plugin => http_status, url_path => "/healthz", port => ${southPort}, interval => ${PROBE.intervalMs / 1000}, timeout => ${PROBE.timeoutMs / 1000}, down_thresh => ${PROBE.failThreshold}, up_thresh => ${PROBE.recoverThreshold}, ok_thresh => ${PROBE.recoverThreshold} }
  web_west => { plugin => http_status, url_path => "/healthz", port => ${westPort}, interval => ${PROBE.intervalMs / 1000}, timeout => ${PROBE.timeoutMs / 1000}, down_thresh => ${PROBE.failThreshold}, up_thresh => ${PROBE.recoverThreshold}, ok_thresh => ${PROBE.recoverThreshold} }
}
plugins => { geoip => {
  maps => { india => { datacenters => [aws-south, azure-west], nets => ${path.join(gdir, 'nets')} } }
  resources => { app => { map => india, dcmap => {
    aws-south => { addrs_v4 => 127.0.1.1, service_types => web_south },
    azure-west => { addrs_v4 => 127.0.2.1, service_types => web_west }
  } } }
} }
`,
  );
  writeFileSync(
    path.join(gdir, 'zones', 'tandem.test'),
    `$TTL 60
@ SOA ns-aws-south hostmaster 1 3600 600 604800 60
@ NS ns-aws-south
ns-aws-south A ${HOST_GDNSD}
app 60 DYNA geoip!app
`,
  );
  const qfile = path.join(dir, 'queries.txt');
  writeFileSync(qfile, 'app.tandem.test A\n'.repeat(1000));

  log(`# tandem DNS bench — ${new Date().toISOString()}, ${cpus().length} cores, load average before ${load0.map((x) => x.toFixed(2)).join(' ')}`);
  log(`# geography: ${nets.count} non-default networks exported to gdnsd nets (same DB-IP data)`);
  log(`# probes (both): interval ${PROBE.intervalMs} ms, timeout ${PROBE.timeoutMs} ms, down after ${PROBE.failThreshold}, up after ${PROBE.recoverThreshold}`);
  log(`# dnsperf: ${CLIENTS} clients, ${OUTSTANDING} outstanding, ${SECONDS} s per throughput run; latency at ${LATENCY_QPS} qps for ${LATENCY_SECONDS} s; gdnsd udp_threads=${gdnsdThreads}, tandem 1 process`);

  daemon(process.execPath, ['bin/tandem.js', 'dns', 'serve', '-c', cfgFile, '--region', 'aws-south'], 'tandem');
  daemon('gdnsd', ['-c', gdir, 'start'], 'gdnsd');
  await Promise.all([waitAnswer(HOST_TANDEM, 20_000), waitAnswer(HOST_GDNSD, 20_000)]);
  // Both see both regions up before measuring (first probes).
  await new Promise((r) => setTimeout(r, PROBE.intervalMs * 2 + 500));

  // Sanity: same answers from both for a southern and a western subnet.
  for (const subnet of [ECS_SUBNET, '115.96.0.0/24']) {
    const a = await queryA({ host: HOST_TANDEM, port: PORT }, 'app.tandem.test', { ecs: subnet, timeoutMs: 1000 });
    const b = await queryA({ host: HOST_GDNSD, port: PORT }, 'app.tandem.test', { ecs: subnet, timeoutMs: 1000 });
    log(`# ${subnet}: tandem ${a.addresses.join(',')} scope /${a.scopePrefix}, gdnsd ${b.addresses.join(',')} scope /${b.scopePrefix}`);
  }

  const rows: string[][] = [];
  const results: Record<string, Record<string, PerfResult & { p50?: number; p99?: number }>> = { tandem: {}, gdnsd: {} };
  for (const ecs of [false, true]) {
    for (const [name, host] of [
      ['gdnsd', HOST_GDNSD],
      ['tandem', HOST_TANDEM],
    ] as const) {
      const t = await dnsperf(host, qfile, { ecs, seconds: SECONDS });
      const l = await dnsperf(host, qfile, { ecs, seconds: LATENCY_SECONDS, qps: LATENCY_QPS, verbose: true });
      results[name]![ecs ? 'ecs' : 'plain'] = { ...t, p50: pct(l.latencies!, 50), p99: pct(l.latencies!, 99) };
    }
  }
  const fo = await failover(south, { tandem: HOST_TANDEM, gdnsd: HOST_GDNSD });
  for (const name of ['gdnsd', 'tandem'] as const) {
    for (const mode of ['plain', 'ecs'] as const) {
      const r = results[name]![mode]!;
      const ratio = r.qps / results.gdnsd![mode]!.qps;
      rows.push([name, mode === 'ecs' ? 'ECS' : 'no ECS', r.qps.toFixed(0), ratio.toFixed(2), String(r.lost), r.p50!.toFixed(3), r.p99!.toFixed(3)]);
    }
  }
  const load1 = loadavg();
  log('');
  log('| server | query | qps | × gdnsd | lost | p50 ms | p99 ms |');
  log('|---|---|---:|---:|---:|---:|---:|');
  for (const r of rows) log(`| ${r.join(' | ')} |`);
  log('');
  log('| server | failover ms | recovery ms | bound (interval × threshold + interval) |');
  log('|---|---:|---:|---:|');
  for (const name of ['gdnsd', 'tandem'] as const) {
    log(`| ${name} | ${fo[name]!.failoverMs} | ${fo[name]!.recoveryMs} | ${PROBE.intervalMs * PROBE.failThreshold + PROBE.intervalMs} / ${PROBE.intervalMs * PROBE.recoverThreshold + PROBE.intervalMs} |`);
  }
  log('');
  log(`# load average after ${load1.map((x) => x.toFixed(2)).join(' ')}; run took ${((Date.now() - started) / 1000).toFixed(0)} s`);
}

async function shutdown(): Promise<void> {
  for (const c of children) {
    if (c.exitCode === null && c.pid) {
      try {
        process.kill(c.pid, 'SIGTERM');
      } catch {
        // already gone
      }
    }
  }
  await new Promise((r) => setTimeout(r, 500));
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null && c.pid) {
      try {
        process.kill(c.pid, 'SIGKILL');
      } catch {
        // already gone
      }
    }
  }
  for (const f of cleanups.reverse()) await f();
}

const hardStop = setTimeout(() => {
  log('! bench exceeded its time bound; stopping');
  void shutdown().then(() => process.exit(1));
}, 10 * 60_000);
hardStop.unref();

try {
  await main();
  await shutdown();
} catch (err) {
  process.stderr.write(`bench failed: ${(err as Error).stack ?? err}\n`);
  await shutdown();
  process.exitCode = 1;
}
