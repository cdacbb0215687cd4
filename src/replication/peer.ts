/**
 * One ordered pipeline: a peer region's slot → this region's database.
 *
 * A reader turns the peer's pgoutput stream into whole source transactions
 * (and heartbeats) and queues them; an applier takes every transaction that
 * is queued (up to `replication.batch`) and applies them in ONE target
 * transaction, then acknowledges the batch's end LSN to the peer. Reading
 * continues while a batch is being applied, which is what makes group commit
 * effective. The queue is bounded: when it is full the reader stops reading,
 * and the stream stops reading from the socket (backpressure).
 *
 * A failure (either database gone, a protocol error) tears the session down
 * and it starts again from the replication origin's committed progress, with
 * capped exponential backoff. Nothing is acknowledged that is not committed,
 * so a restart at any moment neither loses nor repeats a transaction.
 */
import pg from 'pg';
import { BaseService, sleep } from '../core/lifecycle.ts';
import { TandemError, toError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { closeClient, destroySocket, pgClientConfig } from '../core/pg.ts';
import { tableKey } from '../core/sql.ts';
import type { PgConnectionConfig } from '../core/config/common.ts';
import { DEFAULT_BATCH_WAIT_MS } from '../core/config/replication.ts';
import { Applier, type ApplyStats, type Batch, type Change, type PausedTable, type RowChange } from './apply.ts';
import type { SourceRelation } from './catalog.ts';
import { UnitQueue, type Unit } from './queue.ts';
import type { PgOutputMessage } from './pgoutput.ts';
import { formatLsn, pgTimeToUnixUs } from './protocol.ts';
import type { Policy } from './resolve.ts';
import { HEARTBEAT_PREFIX, PRIORITY_PREFIX, PUBLICATION, slotName } from './schema.ts';
import { ReplicationStream, type StreamItem } from './stream.ts';
import { replicationLagSec } from './status.ts';

/** What the pipeline reports about itself (status API, metrics). */
export interface PeerStatus {
  peer: string;
  state: 'connecting' | 'streaming' | 'backoff' | 'stopped';
  /** Source commit time (or heartbeat time) of the last applied change, ISO. */
  sourceCommitAt: string | null;
  appliedAt: string | null;
  /** Seconds between that source time and now (grows while the peer is unreachable). */
  lagSec: number | null;
  /** The peer's WAL end as last seen minus what is durably applied here. */
  lagBytes: number | null;
  appliedLsn: string;
  walEnd: string | null;
  appliedTxns: number;
  appliedRows: number;
  conflicts: Record<string, number>;
  unapplicable: number;
  paused: PausedTable[];
  /** Source transactions received and not yet applied. */
  backlogTxns: number;
  reconnects: number;
  lastError: string | null;
  lastErrorAt: string | null;
  /** What the pipeline is doing right now, and since when (a stuck pipeline says what it waits for). */
  activity: string;
  activitySince: string;
}

/** Counters and gauges the agent exposes; the pipeline calls these. */
export interface PeerMetricsSink {
  applied(peer: string, stats: ApplyStats, txns: number, seconds: number): void;
  reconnect(peer: string): void;
}

export interface PeerPipelineOptions {
  localRegion: string;
  peer: string;
  /** This region's own database (`localDatabase`). */
  target: PgConnectionConfig;
  /** The peer's database as this region reaches it (`regions[peer].database`). */
  source: PgConnectionConfig;
  /** Source address for the replication connection (the lab's WAN emulator). */
  bindAddress?: string;
  tables: ReadonlySet<string>;
  policyFor(table: string): Policy;
  /**
   * Group commit: at most this many source transactions / rows per target transaction; `maxWaitMs` caps
   * the wait for more before each batch (it waits as long as the previous batch took to apply; 0: never).
   */
  batch: { maxTransactions: number; maxRows: number; maxWaitMs?: number };
  logger: Logger;
  metrics?: PeerMetricsSink;
  /** Backoff between reconnects: from `minMs`, doubling up to `maxMs`. */
  backoff?: { minMs: number; maxMs: number };
  /** How often paused tables are re-checked (drift fixed?) and the catalog re-read. */
  recheckIntervalMs?: number;
  /** Client-side deadline of one apply statement (ms); the session is dropped and rebuilt after it. */
  applyTimeoutMs?: number;
  /** The peers' heartbeat interval: lag does not count time within it as behind (`replicationLagSec`). */
  heartbeatIntervalMs?: number;
  /** Stream tuning passed through (tests use short timeouts). */
  stream?: { statusIntervalMs?: number; receiveTimeoutMs?: number };
  events?: { onPause?(p: PausedTable): void; onResume?(table: string, replayed: number): void };
}

/** How long a stopping pipeline lets a batch in flight (or a closing connection) finish before dropping the socket. */
const STOP_GRACE_MS = 2_000;

/** Streams one peer into this region, forever, until stopped. */
export class PeerPipeline extends BaseService {
  readonly name: string;
  readonly #o: PeerPipelineOptions;
  readonly #log: Logger;
  readonly #applier: Applier;
  #abort = new AbortController();
  #loop: Promise<void> | undefined;
  #state: PeerStatus['state'] = 'connecting';
  /** Durable progress: the origin's LSN after the last commit. */
  #progress = 0n;
  /** The highest LSN acknowledged to the source (never goes back). */
  #acked = 0n;
  #walEnd: bigint | undefined;
  #sourceTsUs: bigint | undefined;
  #appliedAt: Date | undefined;
  #appliedTxns = 0;
  #appliedRows = 0;
  #conflicts: Record<string, number> = {};
  #unapplicable = 0;
  #reconnects = 0;
  #lastError: { message: string; at: Date } | undefined;
  #queue: UnitQueue | undefined;
  #stream: ReplicationStream | undefined;
  #recheckDue = 0;
  #activity = { what: 'starting', since: new Date() };

  #doing(what: string): void {
    this.#activity = { what, since: new Date() };
  }

  constructor(opts: PeerPipelineOptions) {
    super();
    this.#o = opts;
    this.name = `replication ${opts.peer} → ${opts.localRegion}`;
    this.#log = opts.logger.child({ peer: opts.peer });
    this.#applier = new Applier({
      db: undefined as unknown as pg.ClientBase, // attached per session
      localRegion: opts.localRegion,
      peer: opts.peer,
      tables: opts.tables,
      policyFor: opts.policyFor,
      logger: this.#log,
      events: opts.events,
    });
  }

  /** Seed lag from `tandem.replication_status` so it is known before the first batch after a restart. */
  seedStatus(sourceTsUs: bigint | undefined, appliedAt: Date | undefined): void {
    if (sourceTsUs !== undefined && this.#sourceTsUs === undefined) this.#sourceTsUs = sourceTsUs;
    if (appliedAt && !this.#appliedAt) this.#appliedAt = appliedAt;
  }

  /** The source time (Unix µs) of the last applied change or heartbeat. */
  get sourceTsUs(): bigint | undefined {
    return this.#sourceTsUs;
  }

  status(): PeerStatus {
    const sourceMs = this.#sourceTsUs === undefined ? undefined : Number(this.#sourceTsUs) / 1000;
    const lagSec =
      sourceMs === undefined ? null : replicationLagSec(sourceMs, this.#appliedAt?.getTime() ?? sourceMs, Date.now(), this.#appliedAt ? (this.#o.heartbeatIntervalMs ?? 0) : 0);
    return {
      peer: this.#o.peer,
      state: this.#state,
      sourceCommitAt: this.#sourceTsUs === undefined ? null : new Date(Number(this.#sourceTsUs / 1000n)).toISOString(),
      appliedAt: this.#appliedAt?.toISOString() ?? null,
      lagSec,
      lagBytes: this.#walEnd === undefined ? null : Math.max(0, Number(this.#walEnd - (this.#acked > this.#progress ? this.#acked : this.#progress))),
      appliedLsn: formatLsn(this.#progress),
      walEnd: this.#walEnd === undefined ? null : formatLsn(this.#walEnd),
      appliedTxns: this.#appliedTxns,
      appliedRows: this.#appliedRows,
      conflicts: { ...this.#conflicts },
      unapplicable: this.#unapplicable,
      paused: this.#applier.paused,
      backlogTxns: this.#queue?.txns ?? 0,
      reconnects: this.#reconnects,
      lastError: this.#lastError?.message ?? null,
      lastErrorAt: this.#lastError?.at.toISOString() ?? null,
      activity: this.#activity.what,
      activitySince: this.#activity.since.toISOString(),
    };
  }

  protected async onStart(): Promise<void> {
    this.#abort = new AbortController();
    this.#loop = this.#run(this.#abort.signal).catch((err: unknown) => {
      // #run only ends by being aborted; anything else is a bug worth failing loudly on.
      this.#log.error({ err: toError(err).message }, 'replication pipeline crashed');
      this.fail(err);
    });
  }

  protected async onStop(): Promise<void> {
    this.#abort.abort(new TandemError('TANDEM_ERR_ABORTED', `${this.name} stopped`));
    this.#queue?.close();
    await this.#stream?.stop().catch(() => {});
    await this.#loop;
    this.#state = 'stopped';
  }

  async #run(signal: AbortSignal): Promise<void> {
    const backoff = this.#o.backoff ?? { minMs: 500, maxMs: 2_000 };
    let delay = backoff.minMs;
    while (!signal.aborted) {
      this.#state = 'connecting';
      const attemptAt = Date.now();
      let db: pg.Client | undefined;
      let stream: ReplicationStream | undefined;
      let healthy = false;
      try {
        this.#doing('connecting to this region\'s database');
        db = await this.#connectTarget();
        this.#applier.attach(db);
        this.#doing('reading the replication origin\'s progress');
        this.#progress = await this.#applier.init();
        if (this.#acked < this.#progress) this.#acked = this.#progress;
        signal.throwIfAborted();
        stream = new ReplicationStream({
          connection: this.#o.source,
          ...(this.#o.bindAddress ? { bindAddress: this.#o.bindAddress } : {}),
          applicationName: `tandem-${this.#o.localRegion}`,
          slot: slotName(this.#o.localRegion),
          publication: PUBLICATION,
          startLsn: this.#progress,
          origin: 'none',
          messages: true,
          logger: this.#log,
          what: `region ${this.#o.peer}`,
          // The reader queues two batches ahead (see #consume); the socket's buffer need not hold much more.
          highWaterMark: 4_000,
          highWaterMarkBytes: 4 << 20,
          ...(this.#o.stream ?? {}),
        });
        this.#stream = stream;
        this.#doing(`connecting to ${this.#o.peer}`);
        await stream.start(signal);
        this.#state = 'streaming';
        this.#log.info({ startLsn: formatLsn(this.#progress) }, `streaming from ${this.#o.peer}`);
        const started = Date.now();
        await this.#consume(stream, db, signal, () => {
          if (!healthy && Date.now() - started > 0) {
            healthy = true;
            delay = backoff.minMs;
          }
        });
      } catch (err) {
        if (signal.aborted) break;
        const message = toError(err).message;
        this.#lastError = { message, at: new Date() };
        this.#log.warn({ err: message, code: (err as TandemError).code, retryInMs: delay }, `replication from ${this.#o.peer} interrupted; reconnecting`);
      } finally {
        this.#queue?.close();
        await stream?.stop().catch(() => {});
        this.#stream = undefined;
        if (db) await closeClient(db, STOP_GRACE_MS);
      }
      if (signal.aborted) break;
      this.#reconnects++;
      this.#o.metrics?.reconnect(this.#o.peer);
      this.#state = 'backoff';
      // Attempts start at most every `delay`: one that already took that long (a connect that timed out
      // on a black-holed path) is followed at once, so a healed network is found within one attempt.
      const wait = delay * (0.75 + Math.random() * 0.5) - (Date.now() - attemptAt);
      this.#doing(`waiting ${Math.round(Math.max(0, wait))} ms before reconnecting`);
      if (wait > 0) await sleep(wait, signal).catch(() => {});
      delay = Math.min(backoff.maxMs, delay * 2);
    }
    this.#state = 'stopped';
  }

  /** The apply session: this region's database, with a client-side deadline on every statement. */
  async #connectTarget(): Promise<pg.Client> {
    const extras = { applicationName: `tandem-apply-${this.#o.peer}`, queryTimeoutMs: this.#o.applyTimeoutMs ?? 60_000 };
    const db = new pg.Client(pgClientConfig(this.#o.target, extras, `${this.#o.localRegion} database`));
    db.on('error', (err) => this.#log.debug({ err: err.message }, 'target connection error'));
    try {
      await db.connect();
    } catch (cause) {
      await closeClient(db, STOP_GRACE_MS);
      throw new TandemError('TANDEM_ERR_REPLICATION', `cannot connect to ${this.#o.localRegion}'s database at ${this.#o.target.host}:${this.#o.target.port}: ${(cause as Error).message}`, { cause });
    }
    return db;
  }

  /** Run the reader and the applier of one session until one of them fails or we are stopped. */
  async #consume(stream: ReplicationStream, db: pg.Client, signal: AbortSignal, onProgress: () => void): Promise<void> {
    const { maxTransactions, maxRows, maxWaitMs = DEFAULT_BATCH_WAIT_MS } = this.#o.batch;
    // Read ahead about two batches: enough that the next batch is ready when one commits. More only holds
    // memory (after a partition the source sends as fast as it can) and makes garbage collection slower.
    const queue = new UnitQueue(maxRows * 2, maxTransactions * 2);
    this.#queue = queue;
    let openTxn = false;
    const fail = (err: unknown) => {
      queue.close(toError(err));
      void stream.stop().catch(() => {});
    };
    let graceTimer: NodeJS.Timeout | undefined;
    const onAbort = () => {
      fail(signal.reason);
      // A batch in flight may still commit; a target that hangs does not hold the stop up to applyTimeoutSec.
      graceTimer = setTimeout(() => destroySocket(db), STOP_GRACE_MS);
    };
    signal.addEventListener('abort', onAbort, { once: true });

    const reader = (async () => {
      const relations = new Map<number, SourceRelation>();
      const types = new Map<number, { schema: string; name: string }>();
      let txn:
        | {
            commitUs: bigint;
            finalLsn: bigint;
            changes: Change[];
            rows: number;
            spilled: boolean;
            priority: Set<string>;
            skip: boolean;
            heartbeatUs?: bigint;
            version?: { tsUs: bigint; region: string };
          }
        | undefined;
      for await (const item of stream.messages() as AsyncIterable<StreamItem>) {
        if (item.keepalive) {
          this.#noteWalEnd(item.walEnd);
          // Idle (nothing received is unapplied): acknowledge the WAL end so the source can recycle WAL.
          if (!openTxn && queue.idle && !this.#applier.chunkOpen) this.#ack(stream, item.walEnd);
          continue;
        }
        this.#noteWalEnd(item.walEnd);
        const m: PgOutputMessage = item.message;
        switch (m.tag) {
          case 'begin':
            // A commit record before the durable progress was applied already (exactly once across restarts).
            txn = { commitUs: pgTimeToUnixUs(m.commitTime), finalLsn: m.finalLsn, changes: [], rows: 0, spilled: false, priority: new Set(), skip: m.finalLsn < this.#progress };
            openTxn = true;
            break;
          case 'relation': {
            const key = tableKey({ schema: m.schema, table: m.name });
            const userTypes = new Map<number, { schema: string; name: string }>();
            for (const c of m.columns) {
              const t = types.get(c.typeOid);
              if (t) userTypes.set(c.typeOid, t);
            }
            relations.set(m.relationId, { relationId: m.relationId, schema: m.schema, name: m.name, replicaIdentity: m.replicaIdentity, columns: m.columns, userTypes, key });
            break;
          }
          case 'type':
            types.set(m.typeOid, { schema: m.schema, name: m.name });
            break;
          case 'origin':
            break; // with origin 'none' only local transactions arrive; nothing to do
          case 'insert':
          case 'update':
          case 'delete': {
            if (!txn) throw new TandemError('TANDEM_ERR_PROTOCOL', `${m.tag} outside a transaction from ${this.#o.peer}`);
            const rel = relations.get(m.relationId);
            if (!rel) throw new TandemError('TANDEM_ERR_PROTOCOL', `${m.tag} for unknown relation ${m.relationId} from ${this.#o.peer}`);
            if (txn.skip) break;
            // One version object per source transaction (never mutated: the applier copies before changing it).
            const version = (txn.version ??= { tsUs: txn.commitUs, region: this.#o.peer });
            const c: RowChange =
              m.tag === 'insert'
                ? { op: 'insert', rel, newTuple: m.newTuple, version, lsn: txn.finalLsn }
                : m.tag === 'update'
                  ? { op: 'update', rel, newTuple: m.newTuple, version, lsn: txn.finalLsn, ...(m.oldTuple ? { oldTuple: m.oldTuple, oldKind: m.oldKind } : {}) }
                  : { op: 'delete', rel, oldTuple: m.oldTuple, oldKind: m.oldKind, version, lsn: txn.finalLsn };
            txn.changes.push(c);
            txn.rows++;
            break;
          }
          case 'truncate': {
            if (!txn) throw new TandemError('TANDEM_ERR_PROTOCOL', `truncate outside a transaction from ${this.#o.peer}`);
            if (txn.skip) break;
            const rels = m.relationIds.map((id) => {
              const rel = relations.get(id);
              if (!rel) throw new TandemError('TANDEM_ERR_PROTOCOL', `truncate of unknown relation ${id} from ${this.#o.peer}`);
              return rel;
            });
            txn.changes.push({ op: 'truncate', rels, cascade: m.cascade, restartIdentity: m.restartIdentity, version: { tsUs: txn.commitUs, region: this.#o.peer }, lsn: txn.finalLsn });
            txn.rows++;
            break;
          }
          case 'message':
            if (m.prefix === HEARTBEAT_PREFIX && !m.transactional) {
              const atUs = parseHeartbeat(m.content);
              if (m.lsn > this.#progress && atUs !== undefined) queue.push({ kind: 'heartbeat', lsn: m.lsn, atUs });
            } else if (m.prefix === HEARTBEAT_PREFIX && m.transactional && txn) {
              // PostgreSQL 16 peers send heartbeats in a transaction of their own: it becomes a heartbeat at its commit.
              txn.heartbeatUs = parseHeartbeat(m.content) ?? txn.commitUs;
            } else if (m.prefix === PRIORITY_PREFIX && m.transactional && txn) {
              txn.priority.add(m.content.toString('utf8'));
            }
            break;
          case 'commit': {
            if (!txn) throw new TandemError('TANDEM_ERR_PROTOCOL', `commit without begin from ${this.#o.peer}`);
            const t = txn;
            txn = undefined;
            openTxn = false;
            if (t.skip || m.endLsn <= this.#progress) break; // applied before
            if (t.heartbeatUs !== undefined && t.changes.length === 0 && !t.spilled) {
              queue.push({ kind: 'heartbeat', lsn: m.endLsn, atUs: t.heartbeatUs });
              break;
            }
            if (t.priority.size > 0) markPriority(t.changes, t.priority);
            queue.push({ kind: 'txn', changes: t.changes, rows: t.rows, endLsn: m.endLsn, commitUs: t.commitUs, spilled: t.spilled });
            break;
          }
        }
        // A transaction too large for one batch is applied in chunks inside one open target transaction.
        if (txn && txn.rows >= maxRows) {
          if (txn.priority.size > 0) markPriority(txn.changes, txn.priority);
          queue.push({ kind: 'chunk', changes: txn.changes, rows: txn.rows });
          txn.changes = [];
          txn.rows = 0;
          txn.spilled = true;
        }
        if (queue.full) await queue.room();
      }
      queue.close();
    })().catch((err: unknown) => {
      fail(err);
      throw err;
    });

    const applierLoop = (async () => {
      /** How long the last batch took to apply (ms): the next one waits up to that long to grow. */
      let lastApplyMs = 0;
      for (;;) {
        // Not inside a chunked transaction: its target transaction is open and holds its locks.
        const wait = this.#applier.chunkOpen ? 0 : Math.min(maxWaitMs, lastApplyMs);
        if (wait >= 1) {
          this.#doing(`grouping transactions for up to ${Math.round(wait)} ms`);
          await queue.fill(maxTransactions, maxRows, wait);
        }
        this.#doing('waiting for changes');
        const units = await queue.take(maxTransactions, maxRows);
        if (!units) return;
        this.#doing(`applying ${units.filter((u) => u.kind === 'txn').length} transaction(s)${units[0]?.kind === 'chunk' ? ' (a chunk of a large one)' : ''}`);
        try {
          lastApplyMs = (await this.#applyUnits(units, stream)) * 1000;
          onProgress();
        } finally {
          queue.done();
        }
        if (Date.now() >= this.#recheckDue && !this.#applier.chunkOpen) {
          this.#recheckDue = Date.now() + (this.#o.recheckIntervalMs ?? 5_000);
          this.#doing('re-checking paused tables');
          await this.#recheck();
        }
      }
    })().catch((err: unknown) => {
      fail(err);
      throw err;
    });

    // Paused tables are re-checked even while the peer is idle.
    const recheckTimer = setInterval(() => {
      if (queue.idle && !this.#applier.chunkOpen && Date.now() >= this.#recheckDue) queue.push({ kind: 'heartbeat', lsn: -1n, atUs: -1n });
    }, Math.min(this.#o.recheckIntervalMs ?? 5_000, 1_000));
    try {
      const results = await Promise.allSettled([reader, applierLoop]);
      const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
      if (failed && !signal.aborted) throw failed.reason;
    } finally {
      clearInterval(recheckTimer);
      clearTimeout(graceTimer);
      signal.removeEventListener('abort', onAbort);
      void db;
    }
  }

  async #recheck(): Promise<void> {
    try {
      await this.#applier.refreshTargets();
      const n = await this.#applier.resumePaused();
      if (n > 0) this.#log.info({ replayed: n }, 'replayed parked changes');
    } catch (err) {
      this.#log.warn({ err: toError(err).message }, 're-checking paused tables failed');
      throw err;
    }
  }

  /** Apply what the applier took; returns the seconds the target spent on it (0 when there was nothing new). */
  async #applyUnits(units: Unit[], stream: ReplicationStream): Promise<number> {
    const first = units[0]!;
    const t0 = performance.now();
    if (first.kind === 'chunk') {
      const stats = await this.#applier.applyChunk(first.changes);
      return this.#count(stats, 0, (performance.now() - t0) / 1000);
    }
    const changes: Change[] = [];
    let txns = 0;
    let progress: { lsn: bigint; tsUs: bigint } | undefined;
    let sourceTsUs = -1n;
    let heartbeatUs: bigint | undefined;
    for (const u of units) {
      if (u.kind === 'txn') {
        for (const c of u.changes) changes.push(c);
        txns++;
        progress = { lsn: u.endLsn, tsUs: u.commitUs };
        if (u.commitUs > sourceTsUs) sourceTsUs = u.commitUs;
      } else if (u.kind === 'heartbeat' && u.lsn >= 0n) {
        if (!progress || u.lsn > progress.lsn) progress = { lsn: u.lsn, tsUs: u.atUs };
        if (u.atUs > sourceTsUs) sourceTsUs = u.atUs;
        if (heartbeatUs === undefined || u.atUs > heartbeatUs) heartbeatUs = u.atUs;
      }
    }
    if (!progress || progress.lsn <= this.#progress) {
      // Nothing new (a recheck tick, or heartbeats already covered by the progress).
      if (this.#applier.chunkOpen) throw new TandemError('TANDEM_ERR_INTERNAL', 'a chunked transaction ended without progress');
      return 0;
    }
    const batch: Batch = { changes, txns, progress, sourceTsUs, ...(heartbeatUs !== undefined ? { heartbeatUs } : {}) };
    const stats = await this.#applier.apply(batch);
    // Committed: now, and only now, the source may forget these transactions.
    this.#progress = progress.lsn;
    this.#ack(stream, progress.lsn);
    if (this.#sourceTsUs === undefined || sourceTsUs > this.#sourceTsUs) this.#sourceTsUs = sourceTsUs;
    this.#appliedAt = new Date();
    return this.#count(stats, txns, (performance.now() - t0) / 1000);
  }

  /** Count an applied batch or chunk; returns `seconds`. */
  #count(stats: ApplyStats, txns: number, seconds: number): number {
    this.#appliedTxns += txns;
    this.#appliedRows += stats.rows;
    this.#unapplicable += stats.unapplicable;
    for (const [k, n] of Object.entries(stats.conflicts)) this.#conflicts[k] = (this.#conflicts[k] ?? 0) + (n ?? 0);
    if (stats.unapplicable > 0) {
      this.#log.error(
        { code: 'TANDEM_ERR_REPLICATION', count: stats.unapplicable },
        `${stats.unapplicable} change(s) from ${this.#o.peer} could not be applied (unchanged TOAST values of a row missing here); see tandem.conflicts`,
      );
    }
    this.#o.metrics?.applied(this.#o.peer, stats, txns, seconds);
    return seconds;
  }

  #noteWalEnd(walEnd: bigint): void {
    if (this.#walEnd === undefined || walEnd > this.#walEnd) this.#walEnd = walEnd;
  }

  /** Acknowledge `lsn` as flushed (monotonic; only durable positions are ever passed here). */
  #ack(stream: ReplicationStream, lsn: bigint): void {
    if (lsn > this.#acked) this.#acked = lsn;
    const written = this.#walEnd !== undefined && this.#walEnd > this.#acked ? this.#walEnd : this.#acked;
    stream.sendStatus({ written, flushed: this.#acked, applied: this.#acked });
  }
}

/** Parse a heartbeat's JSON (`{region, at}` with `at` in Unix µs or ISO); undefined when malformed. */
export function parseHeartbeat(content: Buffer): bigint | undefined {
  try {
    const j = JSON.parse(content.toString('utf8')) as { at?: unknown };
    if (typeof j.at === 'string' && /^\d+$/.test(j.at)) return BigInt(j.at);
    if (typeof j.at === 'number' && Number.isFinite(j.at)) return BigInt(Math.round(j.at)) * 1000n;
    if (typeof j.at === 'string') {
      const ms = Date.parse(j.at);
      if (Number.isFinite(ms)) return BigInt(ms) * 1000n;
    }
  } catch {
    // ignore
  }
  return undefined;
}

/**
 * Mark the changes of a transaction whose keys its capture trigger flagged as
 * overwriting a priority-ranked version (region-priority tables only).
 * Message content: JSON `[relname, [pk texts...]]`.
 */
function markPriority(changes: Change[], keys: Set<string>): void {
  const flagged = new Map<string, Set<string>>();
  for (const k of keys) {
    try {
      const [rel, pk] = JSON.parse(k) as [string, string[]];
      let s = flagged.get(rel);
      if (!s) flagged.set(rel, (s = new Set()));
      s.add(JSON.stringify(pk));
    } catch {
      // malformed marker: ignore (the change then competes without the inherited rank)
    }
  }
  for (const c of changes) {
    if (c.op === 'truncate') continue;
    if (flagged.has(c.rel.key)) c.priorityKeys = flagged.get(c.rel.key)!;
  }
}
