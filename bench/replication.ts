/**
 * `npm run bench:replication`: tandem's multi-master replication against
 * PostgreSQL's own bidirectional logical replication (`origin = none`
 * subscriptions both ways), in one run on this machine.
 *
 * Two regions, each a real PostgreSQL 17 on its own loopback address
 * (127.0.1.1, 127.0.2.1), and between them a WAN emulator (15 ms one way)
 * that every cross-region connection of either system goes through. Both
 * regions write at once with pgbench (1 INSERT + 0–2 UPDATEs per transaction;
 * for tandem 3 % of the updates hit keys both regions write, the native anchor
 * runs the same load without shared keys because it has no conflict
 * resolution). Phases, for each system on fresh servers:
 *
 *   1. saturated: both regions write as fast as they can; applied tx/s and
 *      rows/s per direction, counted on the target;
 *   2. catch-up after the load stops (time until the target has everything);
 *   3. fixed rate (1,000 tx/s per region): lag p50/p99/max, source commit →
 *      visible on the target, from marker rows polled every 2 ms; CPU per
 *      1,000 rows of the replication processes (/proc utime+stime);
 *   4. a 60 s partition under that load, then the time from the heal until
 *      the target is again less than 1 s behind.
 *
 * Prints a table with tandem, native and the ratio, plus the load average
 * before and after. `--quick` runs short phases (a smoke run), `--runs N`
 * repeats and summarises by the median. See docs/bench-replication.md.
 */
import { chmodSync, cpSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { sleep } from '../src/core/lifecycle.ts';
import { MarkerPoller, MarkerWriter, markerLagsMs } from './lib/markers.ts';
import { KEYS, checkPgbench, runPgbench, writeScript, type PgbenchRun } from './lib/pgbench.ts';
import { cpuDelta, sampleCpu, type CpuSample, type PidGroups } from './lib/procstat.ts';
import { distribution, fmt, markdownTable, median, ratio, table, type Distribution } from './lib/stats.ts';
import { DATABASE, NativeSystem, PASSWORD, TandemSystem, preloadStatements, startBed, type Bed, type ReplicationSystem } from './lib/systems.ts';
import { benchArgs } from './lib/args.ts';

// ---------------------------------------------------------------- options

const argv = benchArgs('bench:replication', {
  quick: { type: 'boolean', default: false },
  runs: { type: 'string', default: '1' },
  only: { type: 'string' },
  json: { type: 'string' },
  markdown: { type: 'boolean', default: false },
  statements: { type: 'boolean', default: false },
  profile: { type: 'string' },
  'saturated-sec': { type: 'string' },
  'fixed-sec': { type: 'string' },
  'partition-sec': { type: 'string' },
  rate: { type: 'string', default: '1000' },
  clients: { type: 'string', default: '8' },
  'shared-pct': { type: 'string', default: '3' },
  'latency-ms': { type: 'string', default: '15' },
  phases: { type: 'string', default: 'saturated,fixed,partition' },
  logs: { type: 'string' },
  report: { type: 'string', multiple: true },
  'pg-setting': { type: 'string', multiple: true },
  help: { type: 'boolean', default: false },
});

if (argv.help) {
  process.stdout.write(`npm run bench:replication -- [options]
  --quick               short phases (smoke run, ~2 min)
  --runs N              repeat N times (alternating which system goes first); summary by median
  --only tandem|native  run one system only
  --json FILE           write every figure of every run as JSON
  --markdown            also print the summary as a Markdown table
  --statements          load pg_stat_statements and print the apply sessions' top statements
  --profile DIR         run tandem's agents with node --cpu-prof, profiles into DIR
  --saturated-sec N --fixed-sec N --partition-sec N   phase lengths (default 20, 20, 60)
  --rate N              fixed rate per region (default 1000 tx/s)
  --clients N           pgbench connections per region (default 8)
  --shared-pct N        % of tandem's updates on keys both regions write (default 3)
  --latency-ms N        one-way WAN latency (default 15)
  --phases LIST         which phases to run (default saturated,fixed,partition), e.g. for profiling one
  --logs DIR            keep the tandem agents' logs (and PostgreSQL's) in DIR;
                        agents log warnings, BENCH_AGENT_LOG_LEVEL=info (environment) for more
  --report FILE         print the summary of earlier --json files (repeatable); runs nothing
  --pg-setting K=V      an extra PostgreSQL setting for both servers (repeatable), e.g. for auto_explain
`);
  process.exit(0);
}

function intArg(name: string, v: string | undefined, min: number): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isInteger(n) || n < min) {
    process.stderr.write(`--${name} must be an integer >= ${min}, found ${JSON.stringify(v)}\n`);
    process.exit(2);
  }
  return n;
}

const quick = argv.quick;
const OPT = {
  runs: intArg('runs', argv.runs, 1)!,
  saturatedSec: intArg('saturated-sec', argv['saturated-sec'], 2) ?? (quick ? 6 : 20),
  fixedSec: intArg('fixed-sec', argv['fixed-sec'], 2) ?? (quick ? 6 : 20),
  partitionSec: intArg('partition-sec', argv['partition-sec'], 1) ?? (quick ? 10 : 60),
  warmSec: quick ? 2 : 3,
  maxCatchUpSec: quick ? 30 : 120,
  rate: intArg('rate', argv.rate, 1)!,
  clients: intArg('clients', argv.clients, 1)!,
  sharedPermille: Math.round(Number(argv['shared-pct']) * 10),
  latencyMs: intArg('latency-ms', argv['latency-ms'], 0)!,
  markerIntervalMs: 10,
  pollIntervalMs: 2,
  /** "Caught up" = the newest source commit visible on the target is younger than this. */
  caughtUpMs: 1_000,
};
if (!(OPT.sharedPermille >= 0 && OPT.sharedPermille <= 1000)) {
  process.stderr.write(`--shared-pct must be between 0 and 100\n`);
  process.exit(2);
}
const PHASES = new Set(argv.phases.split(',').map((p) => p.trim()));
for (const p of PHASES) {
  if (!['saturated', 'fixed', 'partition'].includes(p)) {
    process.stderr.write(`--phases: unknown phase ${JSON.stringify(p)} (saturated, fixed, partition)\n`);
    process.exit(2);
  }
}
const pgSettings: Record<string, string> = {};
for (const kv of argv['pg-setting'] ?? []) {
  const eq = kv.indexOf('=');
  if (eq <= 0) {
    process.stderr.write(`--pg-setting expects name=value, found ${JSON.stringify(kv)}\n`);
    process.exit(2);
  }
  pgSettings[kv.slice(0, eq)] = kv.slice(eq + 1);
}
const only = argv.only;
if (only !== undefined && only !== 'tandem' && only !== 'native') {
  process.stderr.write(`--only must be "tandem" or "native", found ${JSON.stringify(only)}\n`);
  process.exit(2);
}

// ---------------------------------------------------------------- output and cleanup

const started = Date.now();
function log(line: string): void {
  const s = ((Date.now() - started) / 1000).toFixed(0).padStart(4);
  process.stdout.write(`[${s}s] ${line}\n`);
}

const cleanups: Array<() => Promise<void>> = [];
async function cleanupAll(): Promise<void> {
  while (cleanups.length) await cleanups.pop()!().catch((err: unknown) => log(`! cleanup: ${(err as Error).message}`));
}
let interrupted = false;
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    interrupted = true;
    log(`${sig}: stopping everything the bench started`);
    void cleanupAll().finally(() => process.exit(130));
  });
}

const loadStr = () => loadavg().map((l) => l.toFixed(2)).join(' ');

// ---------------------------------------------------------------- results

interface CpuResult {
  /** CPU seconds by role over the window. */
  seconds: Record<string, number>;
  rows: number;
  msPer1kRows: number;
  msPer1kRowsByRole: Record<string, number>;
  /** The part of msPer1kRowsByRole spent in the kernel (system time). */
  systemMsPer1kRowsByRole: Record<string, number>;
  vanishedPids: number;
}

interface DirThroughput {
  dir: string;
  writtenTxPerSec: number;
  appliedTxPerSec: number;
  appliedRowsPerSec: number;
}

interface PartitionDir {
  dir: string;
  /** Transactions the source committed that the target did not have at the heal. */
  backlogTxns: number;
  /** Heal → the target shows the first new data. */
  resumedSec: number;
  /** Heal → the newest source commit visible on the target is less than `caughtUpMs` old. */
  catchUpSec: number;
  /** Transactions applied per second between resuming and catching up (the source keeps writing meanwhile). */
  drainTxPerSec: number;
}

interface SystemResult {
  kind: 'tandem' | 'native';
  /** Region names, in order. */
  names: string[];
  saturated?: { dirs: Array<DirThroughput & { catchUpSec: number }>; cpu: CpuResult; lagMs: Distribution };
  fixed?: { dirs: Array<DirThroughput & { lagMs: Distribution; missingMarkers: number }>; lagMs: Distribution; cpu: CpuResult };
  partition?: { dirs: PartitionDir[] };
  extras: Record<string, unknown>;
  statements?: unknown;
}

interface RunResult {
  run: number;
  loadBefore: number[];
  loadAfter: number[];
  systems: SystemResult[];
}

// ---------------------------------------------------------------- one system

interface Ctx {
  kind: 'tandem' | 'native';
  bed: Bed;
  system: ReplicationSystem;
  scriptFile: string;
  sharedPermille: number;
  /** writers[i]: markers committed in region i; pollers[i]: region i's markers watched in the other region. */
  writers: MarkerWriter[];
  pollers: MarkerPoller[];
  clients: pg.Client[];
}

const dirName = (bed: Bed, source: number) => `${bed.regions[source]!.name}→${bed.regions[1 - source]!.name}`;

/** Rows inserted by region `source` after id `afterId`, as seen in `db`: transactions and the rows they changed. */
async function counted(db: pg.Client, source: number, afterId: number): Promise<{ txns: number; rows: number }> {
  const { rows } = await db.query<{ txns: string; rows: string }>(
    `SELECT count(*)::text AS txns, coalesce(sum(nrows), 0)::text AS rows FROM bench.items WHERE id > $1 AND id < $2`,
    [afterId, KEYS.insertEnd(source)],
  );
  return { txns: Number(rows[0]!.txns), rows: Number(rows[0]!.rows) };
}

/** Per direction: written (on the source) and applied (on the target) counts, at one moment. */
interface Snapshot {
  atMs: number;
  dirs: Array<{ written: { txns: number; rows: number }; applied: { txns: number; rows: number } }>;
}

async function snapshot(bed: Bed, startIds: number[], session: 'db' | 'progressDb' = 'db'): Promise<Snapshot> {
  const t0 = Date.now();
  // seen[r][s]: rows inserted by region s as region r sees them (one query at a time per session).
  const seen = await Promise.all(
    bed.regions.map(async (r) => {
      const out: Array<{ txns: number; rows: number }> = [];
      for (let s = 0; s < bed.regions.length; s++) out.push(await counted(r[session], s, startIds[s]!));
      return out;
    }),
  );
  const dirs = bed.regions.map((_, i) => ({ written: seen[i]![i]!, applied: seen[1 - i]![i]! }));
  // The regions' counts are read concurrently; their moment is the middle of the reads.
  return { atMs: (t0 + Date.now()) / 2, dirs };
}

async function sequenceValues(bed: Bed): Promise<number[]> {
  return Promise.all(bed.regions.map(async (r) => Number((await r.db.query<{ v: string }>('SELECT last_value::text AS v FROM bench.ids')).rows[0]!.v)));
}

function startLoad(ctx: Ctx, seconds: number, rate: number | undefined): PgbenchRun[] {
  return ctx.bed.regions.map((r) =>
    runPgbench({
      scriptFile: ctx.scriptFile,
      host: r.host,
      port: r.server.options.port,
      password: PASSWORD,
      database: DATABASE,
      region: r.index,
      clients: OPT.clients,
      seconds,
      ...(rate ? { rate } : {}),
      sharedPermille: ctx.sharedPermille,
    }),
  );
}

/** Age (ms) of the newest marker of `source` visible on the target, as of the poller's last poll. */
function visibleAgeMs(ctx: Ctx, source: number): number {
  const p = ctx.pollers[source]!;
  const acked = ctx.writers[source]!.ackedAtMs[p.latest.seq];
  return acked === undefined ? Infinity : p.latest.atMs - acked;
}

/** Print a progress line every `everyMs` until stopped. */
function ticker(ctx: Ctx, label: string, startIds: number[] | undefined, everyMs = 5_000): () => Promise<void> {
  let stop = false;
  const t0 = Date.now();
  const loop = (async () => {
    let prev = startIds ? await snapshot(ctx.bed, startIds, 'progressDb') : undefined;
    while (!stop) {
      const until = Date.now() + everyMs;
      while (!stop && Date.now() < until) await sleep(100);
      if (stop) break;
      const parts: string[] = [];
      const snap = startIds ? await snapshot(ctx.bed, startIds, 'progressDb').catch(() => undefined) : undefined;
      for (let i = 0; i < ctx.bed.regions.length; i++) {
        let s = `${dirName(ctx.bed, i)}`;
        if (snap && prev) {
          const dt = (snap.atMs - prev.atMs) / 1000;
          s += ` written ${fmt((snap.dirs[i]!.written.txns - prev.dirs[i]!.written.txns) / dt, 0)} applied ${fmt((snap.dirs[i]!.applied.txns - prev.dirs[i]!.applied.txns) / dt, 0)} tx/s`;
        }
        const age = visibleAgeMs(ctx, i);
        s += ` behind ${age === Infinity ? '—' : age >= 10_000 ? `${fmt(age / 1000, 0)} s` : `${fmt(age, 0)} ms`}`;
        parts.push(s);
      }
      if (snap) prev = snap;
      log(`  ${ctx.kind} ${label} ${Math.round((Date.now() - t0) / 1000)}s: ${parts.join(' | ')}`);
    }
  })();
  return async () => {
    stop = true;
    await loop;
  };
}

async function cpuWindowStart(ctx: Ctx): Promise<{ groups: PidGroups; sample: CpuSample }> {
  const groups = await ctx.system.pidGroups();
  return { groups, sample: sampleCpu(groups) };
}

async function cpuWindowEnd(ctx: Ctx, start: { groups: PidGroups; sample: CpuSample }, rows: number): Promise<CpuResult> {
  const endGroups = await ctx.system.pidGroups();
  const after = sampleCpu({ ...endGroups, _start: Object.values(start.groups).flat() });
  const merged: PidGroups = {};
  for (const k of new Set([...Object.keys(start.groups), ...Object.keys(endGroups)])) merged[k] = [...new Set([...(start.groups[k] ?? []), ...(endGroups[k] ?? [])])];
  const { seconds, systemSeconds, vanished } = cpuDelta(merged, start.sample, after);
  const total = Object.values(seconds).reduce((a, b) => a + b, 0);
  const per = (s: number) => (rows > 0 ? (s * 1000 * 1000) / rows : NaN);
  return {
    seconds,
    rows,
    msPer1kRows: per(total),
    msPer1kRowsByRole: Object.fromEntries(Object.entries(seconds).map(([k, s]) => [k, per(s)])),
    systemMsPer1kRowsByRole: Object.fromEntries(Object.entries(systemSeconds).map(([k, s]) => [k, per(s)])),
    vanishedPids: vanished.length,
  };
}

/** Wait until every direction's target has the first marker its source committed after `afterMs`; seconds per direction (NaN on timeout). */
async function catchUpAfter(ctx: Ctx, afterMs: number[], timeoutMs: number): Promise<number[]> {
  return Promise.all(
    ctx.writers.map(async (w, i) => {
      const deadline = Date.now() + timeoutMs;
      // The first marker acknowledged after the moment (the writer keeps committing one every few ms).
      let seq = w.lastSeq;
      while ((w.ackedAtMs[seq] ?? 0) <= afterMs[i]! && Date.now() < deadline) {
        await sleep(2);
        seq = w.lastSeq;
        if ((w.ackedAtMs[seq] ?? 0) > afterMs[i]!) {
          // Step back to the earliest such marker.
          while (seq > 1 && (w.ackedAtMs[seq - 1] ?? 0) > afterMs[i]!) seq--;
        }
      }
      const seenUs = await ctx.pollers[i]!.waitFor(seq, Math.max(0, deadline - Date.now()));
      return seenUs === undefined ? NaN : Math.max(0, seenUs / 1000 - afterMs[i]!) / 1000;
    }),
  );
}

async function phaseSaturated(ctx: Ctx): Promise<NonNullable<SystemResult['saturated']>> {
  const { bed } = ctx;
  log(`${ctx.kind}: phase 1, saturated writes in both regions for ${OPT.saturatedSec} s (${OPT.clients} pgbench connections per region)`);
  const startIds = await sequenceValues(bed);
  const runs = startLoad(ctx, OPT.saturatedSec, undefined);
  const stopTicker = ticker(ctx, 'saturated', startIds);
  const ended: number[] = [];
  const done = runs.map((r, i) => r.done.then((s) => ((ended[i] = Date.now()), s)));
  await sleep(OPT.warmSec * 1000);
  const cpu0 = await cpuWindowStart(ctx);
  const s0 = await snapshot(bed, startIds);
  const markerFrom = ctx.writers.map((w) => w.lastSeq + 1);
  const summaries = await Promise.all(done);
  const s1 = await snapshot(bed, startIds);
  const markerTo = ctx.writers.map((w) => w.lastSeq);
  await stopTicker();
  const dt = (s1.atMs - s0.atMs) / 1000;
  const appliedRows = s1.dirs.reduce((n, d, i) => n + d.applied.rows - s0.dirs[i]!.applied.rows, 0);
  const cpu = await cpuWindowEnd(ctx, cpu0, appliedRows);
  log(`${ctx.kind}: load stopped (pgbench: ${summaries.map((s) => `${fmt(s?.tps, 0)} tx/s, ${s?.failed ?? 0} failed`).join('; ')}); waiting for the targets to catch up`);
  const catchUp = await catchUpAfter(ctx, ended, OPT.maxCatchUpSec * 1000);
  const lags: number[] = [];
  for (let i = 0; i < ctx.writers.length; i++) lags.push(...(await markerLagsMs(ctx.writers[i]!, ctx.pollers[i]!, markerFrom[i]!, markerTo[i]!)).lagsMs);
  const dirs = s1.dirs.map((d, i) => ({
    dir: dirName(bed, i),
    writtenTxPerSec: (d.written.txns - s0.dirs[i]!.written.txns) / dt,
    appliedTxPerSec: (d.applied.txns - s0.dirs[i]!.applied.txns) / dt,
    appliedRowsPerSec: (d.applied.rows - s0.dirs[i]!.applied.rows) / dt,
    catchUpSec: catchUp[i]!,
  }));
  for (const d of dirs) log(`  ${ctx.kind} ${d.dir}: written ${fmt(d.writtenTxPerSec, 0)} tx/s, applied ${fmt(d.appliedTxPerSec, 0)} tx/s (${fmt(d.appliedRowsPerSec, 0)} rows/s), caught up ${fmt(d.catchUpSec)} s after the load stopped`);
  return { dirs, cpu, lagMs: distribution(lags) };
}

async function phaseFixed(ctx: Ctx): Promise<NonNullable<SystemResult['fixed']>> {
  const { bed } = ctx;
  log(`${ctx.kind}: phase 2, fixed rate ${OPT.rate} tx/s per region for ${OPT.fixedSec} s`);
  const startIds = await sequenceValues(bed);
  const runs = startLoad(ctx, OPT.fixedSec, OPT.rate);
  const stopTicker = ticker(ctx, 'fixed', startIds);
  await sleep(OPT.warmSec * 1000);
  const cpu0 = await cpuWindowStart(ctx);
  const s0 = await snapshot(bed, startIds);
  const markerFrom = ctx.writers.map((w) => w.lastSeq + 1);
  await Promise.all(runs.map((r) => r.done));
  const s1 = await snapshot(bed, startIds);
  const markerTo = ctx.writers.map((w) => w.lastSeq);
  await stopTicker();
  const dt = (s1.atMs - s0.atMs) / 1000;
  const appliedRows = s1.dirs.reduce((n, d, i) => n + d.applied.rows - s0.dirs[i]!.applied.rows, 0);
  const cpu = await cpuWindowEnd(ctx, cpu0, appliedRows);
  // Every marker of the window must have arrived before its lag is known.
  await Promise.all(ctx.pollers.map((p, i) => p.waitFor(markerTo[i]!, OPT.maxCatchUpSec * 1000)));
  const all: number[] = [];
  const dirs = [];
  for (let i = 0; i < ctx.writers.length; i++) {
    const { lagsMs, missing } = await markerLagsMs(ctx.writers[i]!, ctx.pollers[i]!, markerFrom[i]!, markerTo[i]!);
    all.push(...lagsMs);
    const d = s1.dirs[i]!;
    dirs.push({
      dir: dirName(bed, i),
      writtenTxPerSec: (d.written.txns - s0.dirs[i]!.written.txns) / dt,
      appliedTxPerSec: (d.applied.txns - s0.dirs[i]!.applied.txns) / dt,
      appliedRowsPerSec: (d.applied.rows - s0.dirs[i]!.applied.rows) / dt,
      lagMs: distribution(lagsMs),
      missingMarkers: missing,
    });
  }
  for (const d of dirs) log(`  ${ctx.kind} ${d.dir}: applied ${fmt(d.appliedTxPerSec, 0)} tx/s, lag p50 ${fmt(d.lagMs.p50, 1)} ms, p99 ${fmt(d.lagMs.p99, 1)} ms, max ${fmt(d.lagMs.max, 1)} ms (${d.lagMs.count} markers)`);
  log(`  ${ctx.kind} CPU per 1,000 rows: ${fmt(cpu.msPer1kRows, 1)} ms (${Object.entries(cpu.msPer1kRowsByRole).map(([k, v]) => `${k} ${fmt(v, 1)}`).join(', ')})`);
  return { dirs, lagMs: distribution(all), cpu };
}

async function phasePartition(ctx: Ctx): Promise<NonNullable<SystemResult['partition']>> {
  const { bed } = ctx;
  log(`${ctx.kind}: phase 3, ${OPT.partitionSec} s partition under ${OPT.rate} tx/s per region, then heal`);
  const startIds = await sequenceValues(bed);
  const runs = startLoad(ctx, OPT.warmSec + OPT.partitionSec + OPT.maxCatchUpSec + 10, OPT.rate);
  // pgbench ending early means it failed: stop waiting at once.
  const failed = Promise.race(runs.map((r) => r.done.then(() => new Promise<never>(() => {}))));
  try {
    await sleep(OPT.warmSec * 1000);
    await bed.wan.partition(bed.regions[0]!.name, bed.regions[1]!.name);
    const stopTicker = ticker(ctx, 'partitioned', undefined, 10_000);
    await Promise.race([sleep(OPT.partitionSec * 1000), failed]);
    await stopTicker();
    const atHeal = await snapshot(bed, startIds);
    const seenAtHeal = ctx.pollers.map((p) => p.lastSeen);
    const healMs = Date.now();
    await bed.wan.heal();
    log(`${ctx.kind}: healed; waiting until each target is less than ${OPT.caughtUpMs} ms behind`);
    const stopTicker2 = ticker(ctx, 'healed', undefined, 2_000);
    const dirs = await Promise.all(
      ctx.pollers.map(async (p, i): Promise<PartitionDir> => {
        const deadline = healMs + OPT.maxCatchUpSec * 1000;
        let resumedMs = NaN;
        for (;;) {
          if (Number.isNaN(resumedMs) && p.lastSeen > seenAtHeal[i]!) resumedMs = p.latest.atMs;
          if (p.latest.atMs > healMs && visibleAgeMs(ctx, i) < OPT.caughtUpMs) break;
          if (Date.now() > deadline) break;
          await sleep(5);
        }
        const caughtUpMs = p.latest.atMs > healMs && visibleAgeMs(ctx, i) < OPT.caughtUpMs ? p.latest.atMs : NaN;
        const applied = await counted(bed.regions[1 - i]!.db, i, startIds[i]!);
        return {
          dir: dirName(bed, i),
          backlogTxns: atHeal.dirs[i]!.written.txns - atHeal.dirs[i]!.applied.txns,
          resumedSec: (resumedMs - healMs) / 1000,
          catchUpSec: (caughtUpMs - healMs) / 1000,
          drainTxPerSec: (applied.txns - atHeal.dirs[i]!.applied.txns) / ((Date.now() - resumedMs) / 1000),
        };
      }),
    );
    await stopTicker2();
    for (const d of dirs) {
      log(
        `  ${ctx.kind} ${d.dir}: ${fmt(d.backlogTxns, 0)} transactions behind at the heal; resumed after ${fmt(d.resumedSec)} s, applied ${fmt(d.drainTxPerSec, 0)} tx/s, caught up ${Number.isNaN(d.catchUpSec) ? `not within ${OPT.maxCatchUpSec} s` : `${fmt(d.catchUpSec)} s`} after the heal`,
      );
    }
    return { dirs };
  } finally {
    await bed.wan.heal().catch(() => {});
    await Promise.all(runs.map((r) => r.stop()));
  }
}

/** The apply sessions' most expensive statements (pg_stat_statements), per region. */
async function topStatements(ctx: Ctx): Promise<unknown> {
  const out: Record<string, unknown> = {};
  for (const r of ctx.bed.regions) {
    const { rows } = await r.db.query(
      `SELECT round(s.total_exec_time::numeric, 1) AS total_ms, s.calls, round((s.total_exec_time / greatest(s.calls, 1))::numeric, 3) AS mean_ms, s.rows,
              left(regexp_replace(s.query, '\\s+', ' ', 'g'), 160) AS query
         FROM pg_stat_statements s JOIN pg_roles u ON u.oid = s.userid
        WHERE s.query NOT ILIKE '%bench.marker%' AND s.query NOT ILIKE '%pg_stat%' AND s.query NOT ILIKE '%sum(nrows)%'
        ORDER BY s.total_exec_time DESC LIMIT 12`,
    );
    out[r.name] = rows;
  }
  return out;
}

async function runSystem(kind: 'tandem' | 'native', run: number): Promise<SystemResult> {
  const root = mkdtempSync(path.join(tmpdir(), `tandem-bench-repl-${kind}-`));
  chmodSync(root, 0o755); // PostgreSQL runs as "postgres" when we are root
  const localCleanups: Array<() => Promise<void>> = [];
  const onCleanup = (fn: () => Promise<void>) => {
    localCleanups.push(fn);
    cleanups.push(fn);
  };
  try {
    log(`${kind}: starting two PostgreSQL servers, the schema and the WAN emulator (${OPT.latencyMs} ms one way)`);
    const bed = await startBed({ root: path.join(root, 'pg'), latencyMs: OPT.latencyMs, jitterMs: 0, statements: argv.statements, settings: pgSettings });
    onCleanup(() => bed.stop());
    const scriptFile = path.join(root, 'workload.sql');
    writeScript(scriptFile);
    const system: ReplicationSystem =
      kind === 'tandem'
        ? new TandemSystem(bed, { dir: path.join(root, 'tandem'), ...(argv.profile ? { profileDir: path.resolve(argv.profile, `run${run}`) } : {}) })
        : new NativeSystem(bed);
    log(`${kind}: setting up replication`);
    await system.start();
    onCleanup(() => system.stop());
    const clients: pg.Client[] = [];
    const writers: MarkerWriter[] = [];
    const pollers: MarkerPoller[] = [];
    for (const r of bed.regions) {
      const w = await r.server.connect(DATABASE);
      const p = await bed.regions[1 - r.index]!.server.connect(DATABASE);
      clients.push(w, p);
      writers.push(new MarkerWriter(w, r.index, OPT.markerIntervalMs));
      pollers.push(new MarkerPoller(p, r.index, OPT.pollIntervalMs));
    }
    for (const x of [...writers, ...pollers]) x.start();
    onCleanup(async () => {
      await Promise.all([...writers, ...pollers].map((x) => x.stop()));
      await Promise.all(clients.map((c) => c.end().catch(() => {})));
    });
    const ctx: Ctx = { kind, bed, system, scriptFile, sharedPermille: kind === 'tandem' ? OPT.sharedPermille : 0, writers, pollers, clients };
    // Flowing both ways before anything is measured.
    const first = await Promise.all(writers.map(async (w, i) => pollers[i]!.waitFor(Math.max(1, w.lastSeq), 60_000)));
    if (first.some((x) => x === undefined)) throw new Error(`${kind}: replication did not start flowing within 60 s`);
    log(`${kind}: preloading ${fmt(KEYS.shared + 2 * KEYS.own, 0)} rows through replication (each region its own keys)`);
    const t0 = Date.now();
    await Promise.all(bed.regions.map(async (r) => {
      for (const sql of preloadStatements(r.index)) await r.db.query(sql);
    }));
    const loaded = await catchUpAfter(ctx, [Date.now(), Date.now()], 300_000);
    if (loaded.some((x) => Number.isNaN(x))) throw new Error(`${kind}: the preload did not replicate within 5 minutes`);
    // Statistics as an established system has them (tandem's own tables included), so no plan is chosen for empty tables.
    for (const r of bed.regions) await r.db.query('VACUUM (ANALYZE)');
    log(`${kind}: preloaded in ${fmt((Date.now() - t0) / 1000, 1)} s`);
    if (argv.statements) for (const r of bed.regions) await r.db.query('SELECT pg_stat_statements_reset()');
    const saturated = PHASES.has('saturated') ? await phaseSaturated(ctx) : undefined;
    const fixed = PHASES.has('fixed') ? await phaseFixed(ctx) : undefined;
    const statements = argv.statements ? await topStatements(ctx) : undefined;
    const partition = PHASES.has('partition') ? await phasePartition(ctx) : undefined;
    const extras = await system.extras();
    return { kind, names: bed.regions.map((r) => r.name), ...(saturated ? { saturated } : {}), ...(fixed ? { fixed } : {}), ...(partition ? { partition } : {}), extras, ...(statements ? { statements } : {}) };
  } finally {
    log(`${kind}: stopping`);
    for (const fn of localCleanups.reverse()) {
      const i = cleanups.indexOf(fn);
      if (i >= 0) cleanups.splice(i, 1);
      await fn().catch((err: unknown) => log(`! ${kind} cleanup: ${(err as Error).message}`));
    }
    if (argv.logs) {
      const dest = path.resolve(argv.logs, `run${run}-${kind}`);
      mkdirSync(dest, { recursive: true });
      for (const f of [...listLogs(path.join(root, 'tandem')), ...listLogs(path.join(root, 'pg'))]) cpSync(f, path.join(dest, path.basename(f)));
      log(`${kind}: logs kept in ${dest}`);
    }
    rmSync(root, { recursive: true, force: true });
  }
}

function listLogs(dir: string): string[] {
  try {
    return readdirSync(dir)
      .filter((f) => f.endsWith('.log'))
      .map((f) => path.join(dir, f));
  } catch {
    return [];
  }
}

// ---------------------------------------------------------------- report

type Row = { label: string; get: (s: SystemResult) => number | undefined; digits?: number; target?: (t: number, n: number) => string };

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const worst = (xs: number[]) => (xs.length ? Math.max(...xs.map((x) => (Number.isNaN(x) ? Infinity : x))) : undefined);

function rowsFor(names: string[]): Row[] {
  const dirs = [`${names[0]}→${names[1]}`, `${names[1]}→${names[0]}`];
  const sat = (s: SystemResult, d: string) => s.saturated?.dirs.find((x) => x.dir === d);
  const atLeastNative = (t: number, n: number) => (t >= n ? '✓ ≥ 1.0×' : '✗ ≥ 1.0×');
  return [
    ...dirs.map((d) => ({ label: `saturated: applied tx/s ${d}`, get: (s: SystemResult) => sat(s, d)?.appliedTxPerSec, digits: 0, target: atLeastNative })),
    ...dirs.map((d) => ({ label: `saturated: applied rows/s ${d}`, get: (s: SystemResult) => sat(s, d)?.appliedRowsPerSec, digits: 0 })),
    { label: 'saturated: written tx/s, both regions', get: (s) => (s.saturated ? sum(s.saturated.dirs.map((d) => d.writtenTxPerSec)) : undefined), digits: 0 },
    {
      label: 'saturated: applied ÷ written',
      get: (s) => (s.saturated ? sum(s.saturated.dirs.map((d) => d.appliedTxPerSec)) / sum(s.saturated.dirs.map((d) => d.writtenTxPerSec)) : undefined),
      digits: 2,
    },
    { label: 'catch-up after the load stops, s', get: (s) => worst(s.saturated?.dirs.map((d) => d.catchUpSec) ?? []), digits: 2 },
    { label: `lag p50 at ${OPT.rate} tx/s/region, ms`, get: (s) => s.fixed?.lagMs.p50, digits: 1 },
    { label: `lag p99 at ${OPT.rate} tx/s/region, ms`, get: (s) => s.fixed?.lagMs.p99, digits: 1, target: (t) => (t <= 50 ? '✓ ≤ 50 ms' : '✗ ≤ 50 ms') },
    { label: `lag max at ${OPT.rate} tx/s/region, ms`, get: (s) => s.fixed?.lagMs.max, digits: 1 },
    { label: `CPU ms per 1,000 rows at ${OPT.rate} tx/s`, get: (s) => s.fixed?.cpu.msPer1kRows, digits: 0 },
    { label: 'CPU ms per 1,000 rows, saturated', get: (s) => s.saturated?.cpu.msPer1kRows, digits: 0 },
    { label: `partition ${OPT.partitionSec} s: resumed after heal, s`, get: (s) => worst(s.partition?.dirs.map((d) => d.resumedSec) ?? []), digits: 2 },
    { label: `partition ${OPT.partitionSec} s: backlog apply, tx/s`, get: (s) => (s.partition ? Math.min(...s.partition.dirs.map((d) => d.drainTxPerSec)) : undefined), digits: 0 },
    {
      label: `partition ${OPT.partitionSec} s: caught up after heal, s`,
      get: (s) => worst(s.partition?.dirs.map((d) => d.catchUpSec) ?? []),
      digits: 2,
      target: (t) => (t <= 15 ? '✓ ≤ 15 s' : '✗ ≤ 15 s'),
    },
  ];
}

function report(results: RunResult[]): { text: string; markdown: string } {
  const names = results[0]!.systems[0]!.names;
  const pick = (kind: string, r: Row) =>
    results
      .map((run) => run.systems.find((s) => s.kind === kind))
      .filter((s): s is SystemResult => s !== undefined)
      .map((s) => r.get(s))
      .filter((v): v is number => v !== undefined && !Number.isNaN(v));
  const header = ['figure', 'tandem', 'native', 'tandem/native', 'target'];
  const body: string[][] = [];
  for (const r of rowsFor(names)) {
    const ts = pick('tandem', r);
    const ns = pick('native', r);
    if (ts.length === 0 && ns.length === 0) continue;
    const t = median(ts);
    const n = median(ns);
    const spread = (xs: number[]) => (xs.length > 1 ? ` (${fmt(Math.min(...xs), r.digits)}–${fmt(Math.max(...xs), r.digits)})` : '');
    body.push([r.label, `${fmt(t, r.digits)}${spread(ts)}`, `${fmt(n, r.digits)}${spread(ns)}`, ratio(t, n), r.target && ts.length ? r.target(t, n) : '']);
  }
  return { text: table([header, ...body]), markdown: markdownTable([header, ...body]) };
}

function details(s: SystemResult): string {
  const lines = [`  ${s.kind}:`];
  const cpu = (c: CpuResult) =>
    `${fmt(c.msPer1kRows, 1)} ms/1k rows = ${Object.entries(c.msPer1kRowsByRole)
      .map(([k, v]) => `${k} ${fmt(v, 1)} (sys ${fmt(c.systemMsPer1kRowsByRole[k], 1)})`)
      .join(' + ')}${c.vanishedPids ? ` (${c.vanishedPids} processes exited in the window)` : ''}`;
  if (s.fixed) lines.push(`    CPU at fixed rate: ${cpu(s.fixed.cpu)}`);
  if (s.saturated) {
    lines.push(`    CPU saturated:     ${cpu(s.saturated.cpu)}`);
    lines.push(`    lag while saturated: p50 ${fmt(s.saturated.lagMs.p50, 0)} ms, p99 ${fmt(s.saturated.lagMs.p99, 0)} ms, max ${fmt(s.saturated.lagMs.max, 0)} ms`);
  }
  for (const d of s.fixed?.dirs ?? []) {
    lines.push(`    fixed ${d.dir}: written ${fmt(d.writtenTxPerSec, 0)} tx/s, lag p50 ${fmt(d.lagMs.p50, 1)} p99 ${fmt(d.lagMs.p99, 1)} max ${fmt(d.lagMs.max, 1)} ms${d.missingMarkers ? `, ${d.missingMarkers} markers missing` : ''}`);
  }
  for (const d of s.partition?.dirs ?? []) {
    lines.push(`    partition ${d.dir}: backlog ${fmt(d.backlogTxns, 0)} tx; resumed ${fmt(d.resumedSec)} s, applied ${fmt(d.drainTxPerSec, 0)} tx/s, caught up ${fmt(d.catchUpSec)} s after the heal`);
  }
  lines.push(`    ${JSON.stringify(s.extras)}`);
  return lines.join('\n');
}

// ---------------------------------------------------------------- main

/** `--report`: the summary of runs saved with `--json`, without running anything. */
function reportSaved(files: string[]): void {
  const results: RunResult[] = [];
  for (const f of files) {
    const saved = JSON.parse(readFileSync(f, 'utf8')) as { results: RunResult[] };
    results.push(...saved.results);
  }
  const loads = results.map((r) => `run ${r.run}: ${r.loadBefore.map((l) => l.toFixed(2)).join(' ')} → ${r.loadAfter.map((l) => l.toFixed(2)).join(' ')}`);
  const summary = report(results);
  process.stdout.write(`summary of ${results.length} saved runs (median, min–max in parentheses):\n${summary.text}\n\n${summary.markdown}\n\nload averages (1, 5, 15 min) before → after: ${loads.join('; ')}\n`);
}

async function main(): Promise<void> {
  if (argv.report) return reportSaved(argv.report);
  const pgbench = checkPgbench();
  log(`replication bench: ${cpus().length} CPUs, load average ${loadStr()}; ${pgbench}; phases ${OPT.saturatedSec} s saturated, ${OPT.fixedSec} s at ${OPT.rate} tx/s, ${OPT.partitionSec} s partition; ${OPT.runs} run(s)`);
  const results: RunResult[] = [];
  for (let run = 1; run <= OPT.runs && !interrupted; run++) {
    const loadBefore = loadavg();
    log(`run ${run}/${OPT.runs}: load average before ${loadStr()}`);
    const kinds: Array<'tandem' | 'native'> = only ? [only as 'tandem' | 'native'] : run % 2 === 1 ? ['tandem', 'native'] : ['native', 'tandem'];
    const systems: SystemResult[] = [];
    for (const k of kinds) systems.push(await runSystem(k, run));
    const loadAfter = loadavg();
    log(`run ${run}/${OPT.runs}: load average after ${loadStr()}`);
    const r: RunResult = { run, loadBefore, loadAfter, systems };
    results.push(r);
    process.stdout.write(`\nrun ${run}: load average before ${loadBefore.map((l) => l.toFixed(2)).join(' ')}, after ${loadAfter.map((l) => l.toFixed(2)).join(' ')}\n${report([r]).text}\n`);
    for (const s of systems) process.stdout.write(`${details(s)}\n`);
    for (const s of systems) if (s.statements) process.stdout.write(`  ${s.kind} top statements: ${JSON.stringify(s.statements, null, 1)}\n`);
    process.stdout.write('\n');
    if (argv.json) writeFileSync(argv.json, JSON.stringify({ options: OPT, results }, null, 2));
  }
  if (results.length > 1) {
    process.stdout.write(`summary of ${results.length} runs (median, min–max in parentheses):\n${report(results).text}\n`);
  }
  if (argv.markdown) process.stdout.write(`\n${report(results).markdown}\n`);
  process.stdout.write(
    `\nload average: before ${results[0]!.loadBefore.map((l) => l.toFixed(2)).join(' ')}, after ${results.at(-1)!.loadAfter.map((l) => l.toFixed(2)).join(' ')} (${cpus().length} CPUs shared with everything else on this machine)\n`,
  );
}

main().then(
  async () => {
    await cleanupAll();
    process.exit(0);
  },
  async (err: unknown) => {
    log(`bench failed: ${(err as Error).stack ?? String(err)}`);
    await cleanupAll();
    process.exit(1);
  },
);
