/**
 * Shared scaffolding for replication end-to-end tests: N real PostgreSQL
 * servers, a tandem config pointing at them, setup, agents (in-process or as
 * child processes), and convergence checks.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync, createWriteStream } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { stringify } from 'yaml';
import { startCluster, client, TEST_PG_PASSWORD, type TestCluster } from '../helpers/pg.ts';
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config/index.ts';
import { createLogger, silentLogger, type Logger } from '../../src/core/log.ts';
import { sleep } from '../../src/core/lifecycle.ts';
import { ReplicationAgent } from '../../src/replication/agent.ts';
import { setupReplication } from '../../src/replication/setup.ts';
import { WanProxy, WanState } from '../../src/lab/wan.ts';
import { freePort } from '../helpers/ports.ts';

export const PASSWORD_ENV = 'TANDEM_TEST_PG_PASSWORD';
process.env[PASSWORD_ENV] = TEST_PG_PASSWORD;

export const REGION_NAMES = ['r-one', 'r-two', 'r-three', 'r-four'];

/** A test bed: servers, config, admin clients per region, agents. */
export interface Bed {
  cluster: TestCluster;
  config: Config;
  configFile: string;
  dir: string;
  regions: string[];
  /** An application session per region (autocommit). */
  db: pg.Client[];
  agents: (ReplicationAgent | undefined)[];
  logger: Logger;
  startAgent(i: number, extra?: Partial<ConstructorParameters<typeof ReplicationAgent>[0]>): Promise<ReplicationAgent>;
  stopAgent(i: number): Promise<void>;
  /** Reconnect the app session of region i (after a server restart). */
  reconnect(i: number): Promise<void>;
  /** The WAN links between regions (when started with `wan`). */
  wan?: WanState;
  /** Cut region i off from every other region (or heal it). */
  isolate(i: number): void;
  partition(i: number, j: number): void;
  heal(): void;
  close(): Promise<void>;
}

/** Options of a bed. */
export interface BedOptions {
  regions: number;
  /** DDL run in every region before setup. */
  ddl: string[];
  tables: string[];
  replication?: Partial<NonNullable<ConfigInput['replication']>>;
  /** Ports for the agents' status APIs (index → port); none by default. */
  agentPorts?: number[];
  /** Files written into the bed's directory before anything starts (e.g. a custom resolver module; config paths are relative to it). */
  files?: Record<string, string>;
  /** Route cross-region connections through WAN proxies (so links can be partitioned); one-way latency in ms. */
  wan?: { latencyMs: number };
}

/** Start servers, write the config, create tables and run setup. */
export async function startBed(o: BedOptions): Promise<Bed> {
  const cluster = await startCluster(o.regions);
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-repl-'));
  for (const [name, text] of Object.entries(o.files ?? {})) writeFileSync(path.join(dir, name), text);
  const regions = REGION_NAMES.slice(0, o.regions);
  let wan: WanState | undefined;
  const proxies: WanProxy[] = [];
  const proxyPorts: number[] = [];
  if (o.wan) {
    wan = new WanState();
    wan.setShape({ latencyMs: o.wan.latencyMs, jitterMs: 0 });
    const byAddress = new Map(cluster.servers.map((s, i) => [s.options.host, regions[i]!]));
    for (const [i, s] of cluster.servers.entries()) {
      const port = await freePort(s.options.host);
      const proxy = new WanProxy({ region: regions[i]!, listen: { host: s.options.host, port }, upstream: { host: s.options.host, port: s.options.port }, state: wan, regionOf: (a) => byAddress.get(a.replace(/^::ffff:/, '')) });
      await proxy.start();
      proxies.push(proxy);
      proxyPorts.push(port);
    }
  }
  const input: ConfigInput = {
    regions: cluster.servers.map((s, i) => ({
      name: regions[i]!,
      addresses: [s.options.host],
      healthUrl: `http://${s.options.host}:8080/healthz`,
      database: { host: s.options.host, port: proxyPorts[i] ?? s.options.port, database: 'tandem', user: 'postgres', password: { env: PASSWORD_ENV } },
      ...(o.wan ? { localDatabase: { port: s.options.port } } : {}),
      bindAddress: s.options.host,
      ...(o.agentPorts?.[i] ? { agent: { admin: `${s.options.host}:${o.agentPorts[i]}` } } : {}),
    })),
    replication: { tables: o.tables, heartbeatIntervalMs: 200, batch: { maxTransactions: 500, maxRows: 10_000 }, ...(o.replication ?? {}) },
  };
  const config = parseConfig(input);
  const configFile = path.join(dir, 'tandem.yaml');
  writeFileSync(configFile, stringify(input));
  const db: pg.Client[] = [];
  for (const s of cluster.servers) {
    const c = await client(s);
    c.on('error', () => {});
    for (const ddl of o.ddl) await c.query(ddl);
    db.push(c);
  }
  await setupReplication(config);
  const logger = process.env.TANDEM_TEST_LOG ? createLogger({ name: 'test', level: process.env.TANDEM_TEST_LOG }) : silentLogger();
  const bed: Bed = {
    cluster,
    config,
    configFile,
    dir,
    regions,
    db,
    agents: regions.map(() => undefined),
    logger,
    ...(wan ? { wan } : {}),
    isolate(i) {
      for (let j = 0; j < regions.length; j++) if (j !== i) wan!.partition(regions[i]!, regions[j]!);
    },
    partition(i, j) {
      wan!.partition(regions[i]!, regions[j]!);
    },
    heal() {
      wan!.heal();
    },
    async startAgent(i, extra = {}) {
      const a = new ReplicationAgent({
        config,
        region: regions[i]!,
        logger: logger.child({ agent: regions[i] }),
        adminToken: 'test-token',
        backoff: { minMs: 100, maxMs: 1_000 },
        recheckIntervalMs: 300,
        stream: { statusIntervalMs: 1_000, receiveTimeoutMs: 10_000 },
        baseDir: dir,
        ...extra,
      });
      await a.start();
      bed.agents[i] = a;
      return a;
    },
    async stopAgent(i) {
      await bed.agents[i]?.stop();
      bed.agents[i] = undefined;
    },
    async reconnect(i) {
      await db[i]?.end().catch(() => {});
      const c = await client(cluster.servers[i]!);
      c.on('error', () => {});
      db[i] = c;
    },
    async close() {
      wan?.heal();
      await Promise.all(bed.agents.map((a) => a?.stop().catch(() => {})));
      await Promise.all(db.map((c) => c.end().catch(() => {})));
      await Promise.all(proxies.map((p) => p.stop().catch(() => {})));
      await cluster.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return bed;
}

/** Poll until `fn` returns a truthy value or the deadline passes (then throw with `what`). */
export async function waitFor<T>(what: string, fn: () => Promise<T | undefined | false | null>, timeoutMs = 20_000, everyMs = 50): Promise<T> {
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
    await sleep(everyMs);
  }
}

/** The content of a table in region i as one JSON text (rows ordered by the given key expression). */
export async function snapshot(db: pg.Client, table: string, orderBy: string): Promise<string> {
  const { rows } = await db.query(`SELECT coalesce(json_agg(t ORDER BY ${orderBy})::text, '[]') AS j FROM ${table} t`);
  return rows[0].j as string;
}

/** Wait until a table is identical in every region; returns its content. */
export async function waitConverged(bed: Bed, table: string, orderBy: string, timeoutMs = 30_000): Promise<string> {
  let last: string[] = [];
  try {
    return await waitFor(
      `${table} to converge`,
      async () => {
        last = await Promise.all(bed.db.map((c) => snapshot(c, table, orderBy)));
        return last.every((s) => s === last[0]) ? last[0] : undefined;
      },
      timeoutMs,
      100,
    );
  } catch (err) {
    const detail = last.map((s, i) => `${bed.regions[i]}: ${s.slice(0, 600)}`).join('\n');
    throw new Error(`${(err as Error).message}\n${detail}`);
  }
}

/** Run `tandem replicate run` for a region as a child process (logs to a file in the bed's dir). */
export function spawnAgent(bed: Bed, i: number, env: Record<string, string> = {}): ChildProcess {
  const log = createWriteStream(path.join(bed.dir, `agent-${bed.regions[i]}.log`), { flags: 'a' });
  const child = spawn(process.execPath, ['bin/tandem.js', 'replicate', 'run', '-c', bed.configFile, '--region', bed.regions[i]!], {
    cwd: path.resolve(import.meta.dirname, '../..'),
    env: { ...process.env, TANDEM_LOG_LEVEL: 'info', TANDEM_ADMIN_TOKEN: 'test-token', [PASSWORD_ENV]: TEST_PG_PASSWORD, ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  child.stdout!.pipe(log);
  child.stderr!.pipe(log);
  return child;
}

/** SIGKILL a child and wait for it to be gone. */
export async function killChild(child: ChildProcess, signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  await exited;
}

/**
 * Wait until every running agent has durably applied everything each of its
 * peers had written when this was called (heartbeats move progress along, so
 * this also works when the last change was long ago).
 */
export async function waitCaughtUp(bed: Bed, timeoutMs = 30_000): Promise<void> {
  const { parseLsn } = await import('../../src/replication/protocol.ts');
  const lsns = await Promise.all(bed.db.map(async (c) => parseLsn((await c.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l)));
  await waitFor(
    'every pipeline to catch up',
    async () => {
      for (const [t, agent] of bed.agents.entries()) {
        if (!agent) continue;
        for (const p of agent.status().peers) {
          const s = bed.regions.indexOf(p.peer);
          if (parseLsn(p.appliedLsn) < lsns[s]!) return false;
        }
        void t;
      }
      return true;
    },
    timeoutMs,
    100,
  );
}
