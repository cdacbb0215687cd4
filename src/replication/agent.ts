/**
 * The replication agent of one region (`tandem replicate run --region T`):
 * one `PeerPipeline` per peer (their slot `tandem_<t>` → this database), a
 * heartbeat emitter (`pg_logical_emit_message` every heartbeatIntervalMs, so
 * lag is measured even when idle, with a running-transactions snapshot in the
 * WAL at least every second, so peers' slots restart close to where they
 * stopped), tombstone expiry, lag alerts in the log,
 * Prometheus metrics and the status API (`GET /v1/status`, `GET /metrics`).
 *
 * A peer's failure never stops the others: each pipeline reconnects on its
 * own with capped backoff.
 */
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type pg from 'pg';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import type { Config, RegionConfig } from '../core/config/index.ts';
import { localDatabase, regionByName } from '../core/config/index.ts';
import { TandemError, toError } from '../core/errors.ts';
import { ApiServer } from '../core/http.ts';
import { BaseService, sleep } from '../core/lifecycle.ts';
import { silentLogger, type Logger } from '../core/log.ts';
import { createRegistry } from '../core/metrics.ts';
import { closeClient, connectClient } from '../core/pg.ts';
import { parseTableName, tableKey } from '../core/sql.ts';
import type { ApplyStats, PausedTable } from './apply.ts';
import { PeerPipeline, type PeerStatus } from './peer.ts';
import { CONFLICT_KINDS, type CustomResolver, type Policy } from './resolve.ts';
import { HEARTBEAT_PREFIX } from './schema.ts';

/** Options of the agent. */
export interface AgentOptions {
  config: Config;
  /** The region this agent applies into. */
  region: string;
  logger?: Logger;
  /** Metrics go here (default: a new registry labelled replication/<region>). */
  registry?: Registry;
  /** The admin token of the status API; without it the API answers 401 except /metrics. */
  adminToken?: string | undefined;
  /** Serve the status API on `regions[T].agent.admin` (default true when configured). */
  api?: boolean;
  /** Relative custom resolver modules are resolved against this directory (the config file's). */
  baseDir?: string;
  /** Reconnect backoff (default: `replication.reconnect`). */
  backoff?: { minMs: number; maxMs: number };
  recheckIntervalMs?: number;
  stream?: { statusIntervalMs?: number; receiveTimeoutMs?: number };
  /** How often tombstones are expired (default: a tenth of the retention, at most 60 s). */
  purgeIntervalMs?: number;
}

/** What `GET /v1/status` returns. */
export interface AgentStatusReport {
  region: string;
  at: string;
  peers: Array<PeerStatus & { txPerSec: number; rowsPerSec: number }>;
  /** Paused tables of every peer. */
  paused: Array<PausedTable & { peer: string }>;
  heartbeat: { lastAt: string | null; lastError: string | null };
  thresholds: { lagWarnSec: number; lagCriticalSec: number };
}

/** Per-second buckets over a short window, for tx/s and rows/s. */
class RateWindow {
  #buckets = new Map<number, { txns: number; rows: number }>();
  constructor(readonly windowSec = 10) {}
  add(txns: number, rows: number): void {
    const s = Math.floor(Date.now() / 1000);
    const b = this.#buckets.get(s) ?? { txns: 0, rows: 0 };
    b.txns += txns;
    b.rows += rows;
    this.#buckets.set(s, b);
    for (const k of this.#buckets.keys()) if (k < s - this.windowSec) this.#buckets.delete(k);
  }
  rates(): { txPerSec: number; rowsPerSec: number } {
    const s = Math.floor(Date.now() / 1000);
    let txns = 0;
    let rows = 0;
    // Complete seconds only (the current one is still filling).
    for (const [k, b] of this.#buckets) {
      if (k < s && k >= s - this.windowSec) {
        txns += b.txns;
        rows += b.rows;
      }
    }
    return { txPerSec: txns / this.windowSec, rowsPerSec: rows / this.windowSec };
  }
}

/** Load the per-table policies of the config, importing custom resolver modules. */
export async function loadPolicies(config: Config, baseDir = process.cwd()): Promise<Map<string, Policy>> {
  const out = new Map<string, Policy>();
  for (const [table, p] of Object.entries(config.replication.conflicts)) {
    const key = tableKey(parseTableName(table));
    if (p.policy === 'lww') out.set(key, { kind: 'lww' });
    else if (p.policy === 'region-priority') out.set(key, { kind: 'region-priority', region: p.region });
    else {
      const file = path.isAbsolute(p.module) ? p.module : path.resolve(baseDir, p.module);
      let mod: Record<string, unknown>;
      try {
        mod = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
      } catch (cause) {
        throw new TandemError('TANDEM_ERR_CONFIG', `replication.conflicts["${table}"].module: cannot load ${file}: ${(cause as Error).message}`, { cause });
      }
      const fn = mod[p.export];
      if (typeof fn !== 'function') {
        throw new TandemError('TANDEM_ERR_CONFIG', `replication.conflicts["${table}"].export: ${file} has no function export "${p.export}"`);
      }
      out.set(key, { kind: 'custom', resolve: fn as CustomResolver, name: `${path.basename(file)}#${p.export}` });
    }
  }
  return out;
}

/** The replication agent of one region. */
export class ReplicationAgent extends BaseService {
  readonly name: string;
  readonly registry: Registry;
  readonly #o: AgentOptions;
  readonly #log: Logger;
  readonly #region: RegionConfig;
  #pipelines = new Map<string, PeerPipeline>();
  #rates = new Map<string, RateWindow>();
  #api: ApiServer | undefined;
  #abort = new AbortController();
  #tasks: Promise<void>[] = [];
  #heartbeat: { lastAt: Date | null; lastError: string | null } = { lastAt: null, lastError: null };
  #metrics: ReturnType<ReplicationAgent['makeMetrics']>;
  #lagAlert = new Map<string, { level: 'ok' | 'warn' | 'critical'; loggedAt: number }>();

  constructor(opts: AgentOptions) {
    super();
    this.#o = opts;
    this.#region = regionByName(opts.config, opts.region);
    this.name = `replication agent ${opts.region}`;
    this.#log = (opts.logger ?? silentLogger()).child({ component: 'replication' });
    this.registry = opts.registry ?? createRegistry('replication', opts.region);
    this.#metrics = this.makeMetrics();
  }

  /** The API server (when serving), e.g. to read its bound address. */
  get api(): ApiServer | undefined {
    return this.#api;
  }

  private makeMetrics() {
    const r = this.registry;
    const peers = () => [...this.#pipelines.entries()];
    const heartbeatAt = (): Date | null => this.#heartbeat.lastAt;
    return {
      applied: new Counter({ name: 'tandem_replication_applied_transactions_total', help: 'Source transactions applied, per peer', labelNames: ['peer'], registers: [r] }),
      rows: new Counter({ name: 'tandem_replication_applied_rows_total', help: 'Rows written by apply, per peer', labelNames: ['peer'], registers: [r] }),
      conflicts: new Counter({ name: 'tandem_replication_conflicts_total', help: 'Conflicts resolved, per peer and kind', labelNames: ['peer', 'kind'], registers: [r] }),
      unapplicable: new Counter({
        name: 'tandem_replication_unapplicable_total',
        help: 'Changes that could not be applied (unchanged TOAST values of a missing row); alert on any increase',
        labelNames: ['peer'],
        registers: [r],
      }),
      parked: new Counter({ name: 'tandem_replication_parked_total', help: 'Changes parked because their table is paused', labelNames: ['peer'], registers: [r] }),
      reconnects: new Counter({ name: 'tandem_replication_reconnects_total', help: 'Pipeline restarts after errors', labelNames: ['peer'], registers: [r] }),
      batchSeconds: new Histogram({
        name: 'tandem_replication_batch_seconds',
        help: 'Time to apply and commit one batch',
        labelNames: ['peer'],
        buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
        registers: [r],
      }),
      batchTxns: new Histogram({ name: 'tandem_replication_batch_transactions', help: 'Source transactions per target transaction (group commit)', labelNames: ['peer'], buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500], registers: [r] }),
      lagSeconds: new Gauge({
        name: 'tandem_replication_lag_seconds',
        help: 'Now minus the source commit (or heartbeat) time of the last change applied from the peer',
        labelNames: ['peer'],
        registers: [r],
        collect() {
          for (const [peer, p] of peers()) {
            const s = p.status();
            if (s.lagSec !== null) this.set({ peer }, s.lagSec);
          }
        },
      }),
      lagBytes: new Gauge({
        name: 'tandem_replication_lag_bytes',
        help: "The peer's WAL end as last seen minus what is durably applied here",
        labelNames: ['peer'],
        registers: [r],
        collect() {
          for (const [peer, p] of peers()) {
            const s = p.status();
            if (s.lagBytes !== null) this.set({ peer }, s.lagBytes);
          }
        },
      }),
      paused: new Gauge({
        name: 'tandem_replication_paused_tables',
        help: 'Tables whose apply from the peer is paused (schema drift, apply errors); alert on > 0',
        labelNames: ['peer'],
        registers: [r],
        collect() {
          for (const [peer, p] of peers()) this.set({ peer }, p.status().paused.length);
        },
      }),
      parkedNow: new Gauge({
        name: 'tandem_replication_parked_changes',
        help: 'Changes waiting in tandem.parked for their table to resume',
        labelNames: ['peer'],
        registers: [r],
        collect() {
          for (const [peer, p] of peers()) this.set({ peer }, p.status().paused.reduce((n, t) => n + t.parked, 0));
        },
      }),
      backlog: new Gauge({
        name: 'tandem_replication_backlog_transactions',
        help: 'Source transactions received and not yet applied',
        labelNames: ['peer'],
        registers: [r],
        collect() {
          for (const [peer, p] of peers()) this.set({ peer }, p.status().backlogTxns);
        },
      }),
      connected: new Gauge({
        name: 'tandem_replication_connected',
        help: '1 while the pipeline from the peer is streaming',
        labelNames: ['peer'],
        registers: [r],
        collect() {
          for (const [peer, p] of peers()) this.set({ peer }, p.status().state === 'streaming' ? 1 : 0);
        },
      }),
      heartbeatAge: new Gauge({
        name: 'tandem_replication_heartbeat_age_seconds',
        help: 'Seconds since this agent last emitted a heartbeat into its own database',
        registers: [r],
        collect(): void {
          const at = heartbeatAt();
          if (at) this.set((Date.now() - at.getTime()) / 1000);
        },
      }),
    };
  }

  protected async onStart(): Promise<void> {
    const cfg = this.#o.config;
    const policies = await loadPolicies(cfg, this.#o.baseDir);
    const tables = new Set(cfg.replication.tables.map((t) => tableKey(parseTableName(t))));
    const policyFor = (t: string): Policy => policies.get(t) ?? { kind: 'lww' };
    this.#abort = new AbortController();
    const seed = await this.#readStatusSeed().catch((err: unknown) => {
      this.#log.warn({ err: toError(err).message }, 'cannot read tandem.replication_status yet');
      return new Map<string, { ts: bigint | undefined; appliedAt: Date | undefined }>();
    });
    for (const peer of cfg.regions) {
      if (peer.name === this.#region.name) continue;
      const p = new PeerPipeline({
        localRegion: this.#region.name,
        peer: peer.name,
        target: localDatabase(this.#region),
        source: peer.database,
        ...(this.#region.bindAddress ? { bindAddress: this.#region.bindAddress } : {}),
        tables,
        policyFor,
        batch: cfg.replication.batch,
        logger: this.#log,
        metrics: {
          applied: (peerName: string, stats: ApplyStats, txns: number, seconds: number) => this.#onApplied(peerName, stats, txns, seconds),
          reconnect: (peerName: string) => this.#metrics.reconnects.inc({ peer: peerName }),
        },
        backoff: this.#o.backoff ?? cfg.replication.reconnect,
        applyTimeoutMs: cfg.replication.applyTimeoutSec * 1000,
        heartbeatIntervalMs: cfg.replication.heartbeatIntervalMs,
        ...(this.#o.recheckIntervalMs ? { recheckIntervalMs: this.#o.recheckIntervalMs } : {}),
        ...(this.#o.stream ? { stream: this.#o.stream } : {}),
      });
      const s = seed.get(peer.name);
      if (s) p.seedStatus(s.ts, s.appliedAt);
      this.#pipelines.set(peer.name, p);
      this.#rates.set(peer.name, new RateWindow());
    }
    if ((this.#o.api ?? true) && this.#region.agent) {
      this.#api = new ApiServer({
        name: `replication agent API ${this.#region.name}`,
        listen: this.#region.agent.admin,
        token: this.#o.adminToken,
        registry: this.registry,
        logger: this.#log,
        routes: [
          { method: 'GET', path: '/v1/status', handler: async () => ({ body: this.status() }) },
          {
            method: 'GET',
            path: '/v1/conflicts',
            handler: async (ctx) => ({ body: await this.recentConflicts(Number(ctx.url.searchParams.get('limit') ?? 50)) }),
          },
        ],
      });
      await this.#api.start();
    }
    for (const p of this.#pipelines.values()) await p.start();
    const signal = this.#abort.signal;
    this.#tasks.push(this.#heartbeatLoop(signal), this.#maintenanceLoop(signal), this.#lagLoop(signal));
    this.#log.info({ peers: [...this.#pipelines.keys()], tables: [...tables] }, `replication agent of ${this.#region.name} started`);
  }

  protected async onStop(): Promise<void> {
    this.#abort.abort(new TandemError('TANDEM_ERR_ABORTED', 'agent stopping'));
    await Promise.all([...this.#pipelines.values()].map((p) => p.stop().catch(() => {})));
    await Promise.all(this.#tasks);
    this.#tasks = [];
    await this.#api?.stop().catch(() => {});
    this.#log.info(`replication agent of ${this.#region.name} stopped`);
  }

  /** Status of every peer pipeline, for the API and the CLI. */
  status(): AgentStatusReport {
    const peers = [...this.#pipelines.values()].map((p) => {
      const s = p.status();
      return { ...s, ...this.#rates.get(s.peer)!.rates() };
    });
    return {
      region: this.#region.name,
      at: new Date().toISOString(),
      peers,
      paused: peers.flatMap((p) => p.paused.map((t) => ({ ...t, peer: p.peer }))),
      heartbeat: { lastAt: this.#heartbeat.lastAt?.toISOString() ?? null, lastError: this.#heartbeat.lastError },
      thresholds: { lagWarnSec: this.#o.config.replication.lagWarnSec, lagCriticalSec: this.#o.config.replication.lagCriticalSec },
    };
  }

  /** The latest conflicts recorded in this region. */
  async recentConflicts(limit = 50): Promise<unknown[]> {
    const db = await this.#connectLocal('tandem-agent-api');
    try {
      const { rows } = await db.query(
        `SELECT id::text, at, peer, relname, pk, kind, decision, reason, local_region, remote_region, local_commit_ts, remote_commit_ts
           FROM tandem.conflicts ORDER BY id DESC LIMIT $1`,
        [Math.max(1, Math.min(1000, Number.isFinite(limit) ? limit : 50))],
      );
      return rows;
    } finally {
      await closeClient(db);
    }
  }

  #onApplied(peer: string, stats: ApplyStats, txns: number, seconds: number): void {
    const m = this.#metrics;
    m.applied.inc({ peer }, txns);
    m.rows.inc({ peer }, stats.rows);
    if (stats.unapplicable) m.unapplicable.inc({ peer }, stats.unapplicable);
    if (stats.parked) m.parked.inc({ peer }, stats.parked);
    for (const [kind, n] of Object.entries(stats.conflicts)) if (n) m.conflicts.inc({ peer, kind }, n);
    if (txns > 0) {
      m.batchSeconds.observe({ peer }, seconds);
      m.batchTxns.observe({ peer }, txns);
    }
    this.#rates.get(peer)?.add(txns, stats.rows);
  }

  /** A session to this region's database; every query has the apply deadline, so a hung server cannot hold a loop or a stop. */
  async #connectLocal(app: string): Promise<pg.Client> {
    const queryTimeoutMs = this.#o.config.replication.applyTimeoutSec * 1000;
    const db = await connectClient(localDatabase(this.#region), { applicationName: app, queryTimeoutMs }, `${this.#region.name} database`);
    db.on('error', () => {});
    return db;
  }

  async #readStatusSeed(): Promise<Map<string, { ts: bigint | undefined; appliedAt: Date | undefined }>> {
    const db = await this.#connectLocal('tandem-agent');
    try {
      const { rows } = await db.query<{ peer: string; ts: string | null; applied_at: Date | null }>(
        `SELECT peer, (extract(epoch from source_commit_ts) * 1000000)::int8::text AS ts, applied_at FROM tandem.replication_status`,
      );
      return new Map(rows.map((r) => [r.peer, { ts: r.ts === null ? undefined : BigInt(r.ts), appliedAt: r.applied_at ?? undefined }]));
    } finally {
      await closeClient(db);
    }
  }

  /** Emit a heartbeat into this region's WAL every heartbeatIntervalMs; peers record it in their replication_status. */
  async #heartbeatLoop(signal: AbortSignal): Promise<void> {
    const interval = this.#o.config.replication.heartbeatIntervalMs;
    let db: pg.Client | undefined;
    let emit = '';
    // A slot restarts decoding at the last running-transactions snapshot in the WAL before its confirmed
    // position; PostgreSQL logs one every 15 s (and at checkpoints), so a peer reconnecting after a partition
    // would decode up to 15 s of this region's WAL again (~1.5 s at 1,000 tx/s) before its first new change.
    // Logging one every second keeps that short. Needs PostgreSQL 16 and EXECUTE on the function.
    let snapshot: boolean | undefined;
    let snapshotAt = 0;
    while (!signal.aborted) {
      try {
        if (!db) {
          db = await this.#connectLocal('tandem-heartbeat');
          // The message must reach disk now: walsenders decode only flushed WAL, and a non-transactional
          // message is not flushed by itself (the WAL writer flushes full pages and async commits only).
          // When every region is idle, unflushed heartbeats would stall each other and lag would grow forever.
          // PostgreSQL 17 has a flush argument; before it, a transactional message is flushed by its commit.
          const { rows } = await db.query<{ v: number; snap: boolean }>(
            `SELECT current_setting('server_version_num')::int AS v,
                    CASE WHEN current_setting('server_version_num')::int >= 160000 AND NOT pg_is_in_recovery()
                         THEN has_function_privilege('pg_catalog.pg_log_standby_snapshot()', 'EXECUTE') ELSE false END AS snap`,
          );
          emit = rows[0]!.v >= 170000 ? 'SELECT pg_logical_emit_message(false, $1, $2, true)' : 'SELECT pg_logical_emit_message(true, $1, $2)';
          if (!rows[0]!.snap && snapshot === undefined) {
            this.#log.info('no EXECUTE on pg_log_standby_snapshot() (or PostgreSQL before 16): a peer that reconnects re-decodes up to 15 s of this region\'s WAL first');
          }
          snapshot = rows[0]!.snap;
        }
        const at = BigInt(Date.now()) * 1000n;
        await db.query(emit, [HEARTBEAT_PREFIX, JSON.stringify({ region: this.#region.name, at: at.toString() })]);
        if (snapshot && Date.now() - snapshotAt >= 1_000) {
          await db.query('SELECT pg_log_standby_snapshot()');
          snapshotAt = Date.now();
        }
        this.#heartbeat = { lastAt: new Date(), lastError: null };
      } catch (err) {
        const message = toError(err).message;
        if (this.#heartbeat.lastError !== message) this.#log.warn({ err: message }, 'cannot emit heartbeat into the local database');
        this.#heartbeat.lastError = message;
        if (db) await closeClient(db);
        db = undefined;
      }
      await sleep(interval, signal).catch(() => {});
    }
    if (db) await closeClient(db);
  }

  /** Expire tombstones older than the retention (commit times of local deletes are resolved first). */
  async #maintenanceLoop(signal: AbortSignal): Promise<void> {
    const retentionSec = this.#o.config.replication.tombstoneRetentionSec;
    const every = this.#o.purgeIntervalMs ?? Math.min(60_000, Math.max(1_000, (retentionSec * 1000) / 10));
    while (!signal.aborted) {
      await sleep(every, signal).catch(() => {});
      if (signal.aborted) break;
      try {
        const n = await this.purgeTombstones();
        if (n > 0) this.#log.info({ purged: n, retentionSec }, 'expired tombstones');
      } catch (err) {
        this.#log.warn({ err: toError(err).message }, 'tombstone expiry failed; will retry');
      }
    }
  }

  /** Delete tombstones older than `tombstoneRetentionSec`; returns how many. */
  async purgeTombstones(): Promise<number> {
    const db = await this.#connectLocal('tandem-maintenance');
    try {
      return await purgeTombstones(db, this.#o.config.replication.tombstoneRetentionSec);
    } finally {
      await closeClient(db);
    }
  }

  /** Log a warning above lagWarnSec and an error above lagCriticalSec (then every minute while it lasts). */
  async #lagLoop(signal: AbortSignal): Promise<void> {
    const { lagWarnSec, lagCriticalSec } = this.#o.config.replication;
    while (!signal.aborted) {
      await sleep(1_000, signal).catch(() => {});
      for (const [peer, p] of this.#pipelines) {
        const s = p.status();
        if (s.lagSec === null) continue;
        const level = s.lagSec > lagCriticalSec ? 'critical' : s.lagSec > lagWarnSec ? 'warn' : 'ok';
        const prev = this.#lagAlert.get(peer) ?? { level: 'ok', loggedAt: 0 };
        const due = level !== prev.level || (level !== 'ok' && Date.now() - prev.loggedAt > 60_000);
        if (!due) continue;
        const fields = { peer, lagSec: Math.round(s.lagSec * 10) / 10, state: s.state, lastError: s.lastError };
        if (level === 'critical') this.#log.error({ ...fields, code: 'TANDEM_ERR_REPLICATION', thresholdSec: lagCriticalSec }, `replication from ${peer} lags ${fields.lagSec} s (critical > ${lagCriticalSec} s)`);
        else if (level === 'warn') this.#log.warn({ ...fields, thresholdSec: lagWarnSec }, `replication from ${peer} lags ${fields.lagSec} s (warning > ${lagWarnSec} s)`);
        else this.#log.info(fields, `replication from ${peer} caught up (lag ${fields.lagSec} s)`);
        this.#lagAlert.set(peer, { level, loggedAt: Date.now() });
      }
    }
  }
}

/**
 * Expire tombstones: resolve the commit time of local deletes (the capture
 * trigger leaves it NULL), then delete tombstones older than the retention,
 * in slices so no lock is held long. Returns how many were deleted.
 */
export async function purgeTombstones(db: pg.ClientBase, retentionSec: number): Promise<number> {
  await db.query(
    `UPDATE tandem.row_versions SET commit_ts = COALESCE(pg_xact_commit_timestamp(xid(xid)), 'epoch'::timestamptz)
      WHERE deleted AND commit_ts IS NULL`,
  );
  let total = 0;
  for (;;) {
    const { rowCount } = await db.query(
      `DELETE FROM tandem.row_versions v USING (
         SELECT relname, pk FROM tandem.row_versions WHERE deleted AND commit_ts < clock_timestamp() - make_interval(secs => $1) LIMIT 5000
       ) old WHERE v.relname = old.relname AND v.pk = old.pk AND v.deleted AND v.commit_ts < clock_timestamp() - make_interval(secs => $1)`,
      [retentionSec],
    );
    total += rowCount ?? 0;
    if ((rowCount ?? 0) < 5000) return total;
  }
}

export { CONFLICT_KINDS };
