/**
 * The write load of the replication benchmark: Debian's `pgbench` (package
 * `postgresql-client-15`) running a custom script against one region's
 * PostgreSQL, saturating or at a fixed rate (`-R`, Poisson arrivals).
 *
 * One transaction = one INSERT of a new row plus 0–2 UPDATEs of existing
 * rows (1–3 rows, 2 on average). The inserted row carries how many rows its
 * transaction changed (`nrows`), so counting inserted rows on a target gives
 * applied transactions and applied rows exactly. An UPDATE goes to a key
 * shared by both regions with probability `sharedPermille`/1000, otherwise to
 * one of this region's own keys.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { writeFileSync } from 'node:fs';

/** Keys and id ranges of the workload (the same in every region's database). */
export const KEYS = {
  /** Shared keys: 1..shared (preloaded in both regions). */
  shared: 1_000,
  /** Own keys of region i (0-based): ownBase(i)+1 .. ownBase(i)+own. */
  own: 20_000,
  ownBase: (i: number) => (i + 1) * 1_000_000_000,
  /** Ids of rows inserted by region i start here (each region's `bench.ids` sequence). */
  insertBase: (i: number) => (i + 1) * 1_000_000_000 + 500_000_000,
  /** End (exclusive) of region i's inserted ids. */
  insertEnd: (i: number) => (i + 2) * 1_000_000_000,
} as const;

/** The pgbench script (variables come from `-D`). */
export const WORKLOAD_SCRIPT = `\\set k random(0, 2)
\\set nrows :k + 1
\\set u1 case when random(1, 1000) <= :shared_permille then random(1, :nshared) else :own_base + random(1, :nown) end
\\set u2 case when random(1, 1000) <= :shared_permille then random(1, :nshared) else :own_base + random(1, :nown) end
BEGIN;
INSERT INTO bench.items (id, region, nrows, payload) VALUES (nextval('bench.ids'), :region, :nrows, md5(random()::text));
\\if :k >= 1
UPDATE bench.items SET n = n + 1, payload = md5(:u1::text), updated_at = now() WHERE id = :u1;
\\endif
\\if :k >= 2
UPDATE bench.items SET n = n + 1, payload = md5(:u2::text), updated_at = now() WHERE id = :u2;
\\endif
END;
`;

/** Is pgbench there? Returns its version line or throws with what to install. */
export function checkPgbench(): string {
  const r = spawnSync('pgbench', ['--version'], { encoding: 'utf8' });
  if (r.error || r.status !== 0) {
    throw new Error(
      'pgbench not found: the replication benchmark drives its load with PostgreSQL\'s pgbench. Install it with `apt-get install -y postgresql-client-15` (Debian 12; any pgbench ≥ 11 works) and run again.',
    );
  }
  return r.stdout.trim();
}

/** What pgbench printed at the end of a run. */
export interface PgbenchSummary {
  transactions: number;
  failed: number;
  tps: number;
  latencyAvgMs: number;
}

/** Parse pgbench's final report (stdout). */
export function parsePgbenchSummary(text: string): PgbenchSummary {
  const num = (re: RegExp) => {
    const m = re.exec(text);
    return m ? Number(m[1]) : NaN;
  };
  const s: PgbenchSummary = {
    transactions: num(/number of transactions actually processed:\s*(\d+)/),
    failed: num(/number of failed transactions:\s*(\d+)/),
    tps: num(/tps = ([\d.]+)/),
    latencyAvgMs: num(/latency average = ([\d.]+) ms/),
  };
  if (Number.isNaN(s.failed)) s.failed = 0;
  if (!Number.isFinite(s.transactions) || !Number.isFinite(s.tps)) throw new Error(`cannot read pgbench's report:\n${text.slice(-800)}`);
  return s;
}

/** One pgbench run against one region. */
export interface PgbenchRunOptions {
  scriptFile: string;
  host: string;
  port: number;
  password: string;
  database: string;
  /** 0-based region index (chooses the key ranges). */
  region: number;
  clients: number;
  seconds: number;
  /** Transactions per second over all clients; omit to saturate. */
  rate?: number;
  /** Per mille of updates that go to shared keys. */
  sharedPermille: number;
}

/** A running pgbench: its summary when it ends, or a kill (by its PID) when the caller is done early. */
export interface PgbenchRun {
  readonly child: ChildProcess;
  readonly done: Promise<PgbenchSummary | undefined>;
  /** SIGINT pgbench (used when a phase ends on its own condition); `done` then resolves undefined. */
  stop(): Promise<void>;
}

export function writeScript(file: string): void {
  writeFileSync(file, WORKLOAD_SCRIPT);
}

export function runPgbench(o: PgbenchRunOptions): PgbenchRun {
  const args = [
    '-h', o.host, '-p', String(o.port), '-U', 'postgres', '-n', '-M', 'prepared',
    '-f', o.scriptFile, '-c', String(o.clients), '-j', '1', '-T', String(o.seconds),
    // Deadlocks between a local transaction and an apply batch on a shared key are retried, as an application would.
    '--max-tries', '10',
    '-D', `region=${o.region + 1}`,
    '-D', `own_base=${KEYS.ownBase(o.region)}`,
    '-D', `nown=${KEYS.own}`,
    '-D', `nshared=${KEYS.shared}`,
    '-D', `shared_permille=${o.sharedPermille}`,
    ...(o.rate ? ['-R', String(o.rate)] : []),
    o.database,
  ];
  const child = spawn('pgbench', args, { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, PGPASSWORD: o.password } });
  let stdout = '';
  let stderr = '';
  child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
  child.stderr!.on('data', (d: Buffer) => (stderr = (stderr + d.toString()).slice(-8000)));
  let stopped = false;
  const done = new Promise<PgbenchSummary | undefined>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      if (stopped) return resolve(undefined);
      if (code !== 0) return reject(new Error(`pgbench (region ${o.region + 1}) exited with ${code ?? signal}: ${stderr.trim().split('\n').slice(-5).join(' | ')}`));
      try {
        resolve(parsePgbenchSummary(stdout));
      } catch (err) {
        reject(err as Error);
      }
    });
  });
  return {
    child,
    done,
    async stop() {
      if (child.exitCode !== null || child.signalCode !== null) return;
      stopped = true;
      child.kill('SIGINT');
      await done.catch(() => undefined);
    },
  };
}
