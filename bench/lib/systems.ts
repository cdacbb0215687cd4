/**
 * The two regions of the replication benchmark and the two systems compared
 * on them: tandem's agents (`tandem replicate run`, one child process per
 * region, production defaults) and PostgreSQL's own bidirectional logical
 * replication (`CREATE SUBSCRIPTION ... WITH (origin = none, copy_data =
 * false)` both ways). Every cross-region connection of either system goes
 * through the same WAN emulator.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdirSync, openSync, closeSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import pg from 'pg';
import { stringify } from 'yaml';
import { parseConfig, type ConfigInput } from '../../src/core/config/index.ts';
import { PostgresServer } from '../../src/lab/postgres.ts';
import { quoteIdent } from '../../src/core/sql.ts';
import { freePort } from '../../test/helpers/ports.ts';
import type { PidGroups } from './procstat.ts';
import { KEYS } from './pgbench.ts';
import { WanEmulator } from './wan.ts';

export const REPO_ROOT = path.resolve(import.meta.dirname, '../..');
export const DATABASE = 'bench';
export const PASSWORD = 'tandem-bench-pw';
const PASSWORD_ENV = 'TANDEM_BENCH_PG_PASSWORD';
const ADMIN_TOKEN = 'tandem-bench-admin-token';
export const TABLES = ['bench.items', 'bench.marker'] as const;

/** One region of the bench: its server and how the peer reaches it. */
export interface Region {
  index: number;
  name: string;
  host: string;
  server: PostgresServer;
  /** The WAN emulator's port in front of this server (the peer's connections use it). */
  proxyPort: number;
  /** An admin session (counts, catalog queries), direct. */
  db: pg.Client;
  /** A second one for the progress lines, so they never queue behind the phase's own queries. */
  progressDb: pg.Client;
}

export interface BedOptions {
  root: string;
  latencyMs: number;
  jitterMs: number;
  /** Load pg_stat_statements (for the bottleneck analysis). */
  statements: boolean;
  /** More server settings (they win over the bench's own). */
  settings?: Record<string, string>;
}

/** Two regions with fresh data directories, the schema, preloaded keys, and the WAN emulator between them. */
export interface Bed {
  regions: Region[];
  wan: WanEmulator;
  stop(): Promise<void>;
}

const live = new Set<PostgresServer>();
process.once('exit', () => {
  for (const s of live) s.kill();
});

export const REGION_NAMES = ['r-one', 'r-two'] as const;

/** Schema of the bench tables in region i (its own insert sequence); rows are preloaded through replication (`preloadStatements`). */
function schemaDdl(i: number): string[] {
  return [
    'CREATE SCHEMA bench',
    `CREATE TABLE bench.items (
       id bigint PRIMARY KEY,
       region smallint NOT NULL,
       nrows smallint NOT NULL DEFAULT 0,
       n integer NOT NULL DEFAULT 0,
       payload text NOT NULL,
       updated_at timestamptz NOT NULL DEFAULT now()
     )`,
    `CREATE SEQUENCE bench.ids START WITH ${KEYS.insertBase(i) + 1}`,
    `CREATE TABLE bench.marker (
       region smallint NOT NULL,
       seq bigint NOT NULL,
       written_at timestamptz NOT NULL DEFAULT clock_timestamp(),
       PRIMARY KEY (region, seq)
     )`,
  ];
}

/**
 * The preload of region i, run once replication flows: its own keys (and, in
 * the first region, the shared keys) in transactions of 2,000 rows. Loading
 * through replication gives every region the rows' true history (written by
 * their home region, then replicated), as after a while in production; rows
 * written locally in both regions would make tandem see every first remote
 * update of them as a conflict between regions.
 */
export function preloadStatements(i: number): string[] {
  const out: string[] = [];
  const chunk = 2_000;
  const range = (from: number, to: number, region: number) => {
    for (let a = from; a <= to; a += chunk) {
      out.push(`INSERT INTO bench.items (id, region, payload) SELECT g, ${region}, md5(g::text) FROM generate_series(${a}, ${Math.min(to, a + chunk - 1)}) g`);
    }
  };
  if (i === 0) range(1, KEYS.shared, 0);
  range(KEYS.ownBase(i) + 1, KEYS.ownBase(i) + KEYS.own, i + 1);
  return out;
}

export async function startBed(o: BedOptions): Promise<Bed> {
  mkdirSync(o.root, { recursive: true });
  chmodSync(o.root, 0o755); // PostgreSQL runs as "postgres" when we are root
  const servers = await Promise.all(
    REGION_NAMES.map(async (_, i) => {
      const host = `127.0.${i + 1}.1`;
      const s = new PostgresServer({
        dataDir: path.join(o.root, `r${i + 1}`),
        host,
        port: await freePort(host),
        password: PASSWORD,
        database: DATABASE,
        fsync: false,
        settings: {
          shared_buffers: '256MB',
          max_wal_size: '4GB',
          checkpoint_timeout: '30min',
          ...(o.statements ? { shared_preload_libraries: 'pg_stat_statements', 'pg_stat_statements.track': 'all' } : {}),
          ...(o.settings ?? {}),
        },
      });
      live.add(s);
      await s.start();
      return s;
    }),
  );
  const proxyPorts = await Promise.all(servers.map((s) => freePort(s.options.host)));
  const wan = await WanEmulator.start(
    servers.map((s, i) => ({
      region: REGION_NAMES[i]!,
      peer: REGION_NAMES[1 - i]!,
      listen: { host: s.options.host, port: proxyPorts[i]! },
      upstream: { host: s.options.host, port: s.options.port },
    })),
    { latencyMs: o.latencyMs, jitterMs: o.jitterMs },
  );
  const regions: Region[] = [];
  for (const [i, s] of servers.entries()) {
    const db = await s.connect(DATABASE);
    for (const ddl of schemaDdl(i)) await db.query(ddl);
    if (o.statements) await db.query('CREATE EXTENSION IF NOT EXISTS pg_stat_statements');
    regions.push({ index: i, name: REGION_NAMES[i]!, host: s.options.host, server: s, proxyPort: proxyPorts[i]!, db, progressDb: await s.connect(DATABASE) });
  }
  return {
    regions,
    wan,
    async stop() {
      await Promise.all(regions.flatMap((r) => [r.db, r.progressDb]).map((c) => c.end().catch(() => {})));
      await wan.stop();
      await Promise.all(
        servers.map(async (s) => {
          await s.stop().catch(() => s.kill());
          live.delete(s);
        }),
      );
      // The data directories are removed by the caller (after it kept the logs it wants).
    },
  };
}

/** A replication system under test. */
export interface ReplicationSystem {
  readonly kind: 'tandem' | 'native';
  start(): Promise<void>;
  /** The processes whose CPU is the cost of replication, by role. */
  pidGroups(): Promise<PidGroups>;
  /** System-specific figures (tandem: conflicts, group-commit batch sizes). */
  extras(): Promise<Record<string, unknown>>;
  stop(): Promise<void>;
}

/** Backends of one server by role (pg_stat_activity). */
async function backends(db: pg.Client): Promise<Array<{ pid: number; backend_type: string; application_name: string }>> {
  const { rows } = await db.query<{ pid: number; backend_type: string; application_name: string }>(
    `SELECT pid, backend_type, application_name FROM pg_stat_activity WHERE pid <> pg_backend_pid()`,
  );
  return rows;
}

/** PostgreSQL's own bidirectional replication: a publication in each region, a subscription to the other. */
export class NativeSystem implements ReplicationSystem {
  readonly kind = 'native' as const;
  constructor(private readonly bed: Bed) {}

  async start(): Promise<void> {
    const { regions } = this.bed;
    for (const r of regions) await r.db.query(`CREATE PUBLICATION bench_pub FOR TABLE ${TABLES.join(', ')}`);
    for (const target of regions) {
      const source = regions[1 - target.index]!;
      const conninfo = `host=${source.host} port=${source.proxyPort} dbname=${DATABASE} user=postgres password=${PASSWORD} application_name=native-from-${source.name}`;
      // CREATE SUBSCRIPTION takes no bind parameters; every part of the string is ours.
      await target.db.query(
        `CREATE SUBSCRIPTION ${quoteIdent(`bench_from_${source.name.replace('-', '_')}`)} CONNECTION '${conninfo}' PUBLICATION bench_pub WITH (origin = none, copy_data = false)`,
      );
    }
  }

  async pidGroups(): Promise<PidGroups> {
    const g: PidGroups = { decode: [], apply: [], other: [] };
    for (const r of this.bed.regions) {
      for (const b of await backends(r.db)) {
        if (b.backend_type === 'walsender') g.decode!.push(b.pid);
        else if (b.backend_type === 'logical replication apply worker') g.apply!.push(b.pid);
        else if (b.backend_type.startsWith('logical replication')) g.other!.push(b.pid);
      }
    }
    return g;
  }

  async extras(): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {};
    for (const r of this.bed.regions) {
      const { rows } = await r.db.query(`SELECT subname, apply_error_count::int AS apply_errors FROM pg_stat_subscription_stats`);
      out[r.name] = rows;
    }
    return out;
  }

  async stop(): Promise<void> {
    // The bed's servers are about to stop; dropping the subscriptions first keeps their shutdown quick and clean.
    for (const r of this.bed.regions) {
      const { rows } = await r.db.query<{ subname: string }>('SELECT subname FROM pg_subscription').catch(() => ({ rows: [] as { subname: string }[] }));
      for (const s of rows) await r.db.query(`DROP SUBSCRIPTION ${quoteIdent(s.subname)}`).catch(() => {});
    }
  }
}

/** Options of the tandem system. */
export interface TandemOptions {
  dir: string;
  /** Write V8 CPU profiles of the agents here (node --cpu-prof). */
  profileDir?: string;
}

/** tandem: `tandem replicate setup`, then one `tandem replicate run` child process per region. */
export class TandemSystem implements ReplicationSystem {
  readonly kind = 'tandem' as const;
  readonly #agents: ChildProcess[] = [];
  #apiPorts: number[] = [];
  #configFile = '';

  constructor(
    private readonly bed: Bed,
    private readonly o: TandemOptions,
  ) {}

  async start(): Promise<void> {
    const { regions } = this.bed;
    mkdirSync(this.o.dir, { recursive: true });
    this.#apiPorts = await Promise.all(regions.map((r) => freePort(r.host)));
    const input: ConfigInput = {
      adminToken: { env: 'TANDEM_ADMIN_TOKEN' },
      regions: regions.map((r) => ({
        name: r.name,
        addresses: [r.host],
        healthUrl: `http://${r.host}:8080/healthz`,
        database: { host: r.host, port: r.proxyPort, database: DATABASE, user: 'postgres', password: { env: PASSWORD_ENV } },
        localDatabase: { port: r.server.options.port },
        bindAddress: r.host,
        agent: { admin: `${r.host}:${this.#apiPorts[r.index]}` },
      })),
      replication: { tables: [...TABLES] },
    };
    process.env[PASSWORD_ENV] = PASSWORD;
    const config = parseConfig(input);
    this.#configFile = path.join(this.o.dir, 'tandem.yaml');
    writeFileSync(this.#configFile, stringify(input));
    const { setupReplication } = await import('../../src/replication/setup.ts');
    await setupReplication(config);
    if (this.o.profileDir) mkdirSync(this.o.profileDir, { recursive: true });
    for (const r of regions) {
      const logFd = openSync(path.join(this.o.dir, `agent-${r.name}.log`), 'a');
      const child = spawn(
        process.execPath,
        [
          ...(this.o.profileDir ? ['--cpu-prof', '--cpu-prof-dir', this.o.profileDir, '--cpu-prof-name', `agent-${r.name}-${Date.now()}.cpuprofile`] : []),
          'bin/tandem.js',
          'replicate',
          'run',
          '-c',
          this.#configFile,
          '--region',
          r.name,
        ],
        {
          cwd: REPO_ROOT,
          env: { ...process.env, TANDEM_LOG_LEVEL: process.env.BENCH_AGENT_LOG_LEVEL ?? 'warn', [PASSWORD_ENV]: PASSWORD, TANDEM_ADMIN_TOKEN: ADMIN_TOKEN },
          stdio: ['ignore', logFd, logFd],
        },
      );
      closeSync(logFd);
      this.#agents.push(child);
    }
    // Up when both status APIs answer.
    const deadline = Date.now() + 60_000;
    for (const r of regions) {
      for (;;) {
        try {
          await this.#status(r.index);
          break;
        } catch (err) {
          const dead = this.#agents.find((a) => a.exitCode !== null);
          if (dead) throw new Error(`a tandem agent exited during start-up (exit ${dead.exitCode}); see ${this.o.dir}/agent-*.log`);
          if (Date.now() > deadline) throw new Error(`the tandem agent of ${r.name} did not come up: ${(err as Error).message}`);
          await new Promise((res) => setTimeout(res, 200));
        }
      }
    }
  }

  get agentPids(): number[] {
    return this.#agents.map((a) => a.pid!).filter((p) => p !== undefined);
  }

  async #get(i: number, what: string): Promise<Response> {
    const r = this.bed.regions[i]!;
    const res = await fetch(`http://${r.host}:${this.#apiPorts[i]}${what}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` }, signal: AbortSignal.timeout(5_000) });
    if (!res.ok) throw new Error(`${what} answered ${res.status}`);
    return res;
  }

  async #status(i: number): Promise<{ peers: Array<{ peer: string; state: string; appliedTxns: number; appliedRows: number; conflicts: Record<string, number>; reconnects: number }> }> {
    return (await (await this.#get(i, '/v1/status')).json()) as never;
  }

  async pidGroups(): Promise<PidGroups> {
    const g: PidGroups = { decode: [], apply: [], agent: this.agentPids, other: [] };
    for (const r of this.bed.regions) {
      for (const b of await backends(r.db)) {
        if (b.backend_type === 'walsender') g.decode!.push(b.pid);
        else if (b.application_name.startsWith('tandem-apply-')) g.apply!.push(b.pid);
        else if (b.application_name.startsWith('tandem-')) g.other!.push(b.pid);
      }
    }
    return g;
  }

  /** Group-commit figures from each agent's /metrics, and conflicts and reconnects from its status. */
  async extras(): Promise<Record<string, unknown>> {
    const out: Record<string, unknown> = {};
    for (const r of this.bed.regions) {
      try {
        const text = await (await this.#get(r.index, '/metrics')).text();
        const metric = (name: string) => {
          const m = new RegExp(`^${name}\\{[^}]*\\} ([\\d.e+-]+)$`, 'm').exec(text);
          return m ? Number(m[1]) : NaN;
        };
        const st = await this.#status(r.index);
        const p = st.peers[0];
        out[r.name] = {
          batches: metric('tandem_replication_batch_seconds_count'),
          txnsPerBatch: metric('tandem_replication_batch_transactions_sum') / metric('tandem_replication_batch_transactions_count'),
          msPerBatch: (metric('tandem_replication_batch_seconds_sum') / metric('tandem_replication_batch_seconds_count')) * 1000,
          conflicts: p?.conflicts ?? {},
          reconnects: p?.reconnects ?? NaN,
        };
      } catch (err) {
        out[r.name] = { error: (err as Error).message };
      }
    }
    return out;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.#agents.map(async (a) => {
        if (a.exitCode !== null || a.signalCode !== null) return;
        const exited = new Promise<void>((res) => a.once('exit', () => res()));
        a.kill('SIGTERM');
        const timer = setTimeout(() => a.kill('SIGKILL'), 15_000);
        await exited;
        clearTimeout(timer);
      }),
    );
  }
}
