/**
 * The batch applier: applies the changes of one or more source transactions
 * from one peer in ONE target transaction (group commit), with set-based
 * statements per table — the number of statements per batch does not grow
 * with the number of rows.
 *
 * Per table and batch:
 *   1. one statement reads, for every key, the row's `xmin` (and that
 *      transaction's commit time) and the key's `tandem.row_versions` entry;
 *   2. (only when needed) the local rows as JSON for conflict records and
 *      custom resolvers;
 *   3. every key is resolved in TypeScript (`resolve.ts`), then one statement
 *      writes everything: deletes, updates, inserts, version entries and
 *      conflicts. Updates and deletes are conditioned on the `xmin` that was
 *      read, entry updates on the entry's `xid`, inserts on the key still
 *      being absent (`ON CONFLICT DO NOTHING`).
 * The write statement returns row counts; a count that differs from the plan
 * means a concurrent writer got in between (a local write, another peer's
 * apply — READ COMMITTED re-checks the conditions on the newest row version)
 * and the whole batch is retried. No row is locked before it is written and no
 * row is ever overwritten blindly.
 *
 * Progress commits atomically with the data: `pg_replication_origin_xact_setup`
 * runs in the same transaction and `tandem.replication_status` is updated
 * there too. The caller acknowledges the source only after `apply` returns.
 */
import { createHash } from 'node:crypto';
import type pg from 'pg';
import { TandemError, isTandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { sleep } from '../core/lifecycle.ts';
import { quoteIdent, tableKey } from '../core/sql.ts';
import { UNCHANGED_TOAST, type TupleValue } from './pgoutput.ts';
import { formatLsn, parseLsn } from './protocol.ts';
import { describeTables, schemaDrift, type SourceRelation, type TargetColumn, type TargetTable } from './catalog.ts';
import {
  EPOCH_US,
  decide,
  incompleteReason,
  sameRegionStale,
  runCustomResolver,
  squashWinner,
  type ConflictKind,
  type Decision,
  type LocalState,
  type Policy,
  type TextRow,
  type Version,
} from './resolve.ts';
import { CANONICAL_SETTINGS, originName, sqlLiteral } from './schema.ts';

/** A row change from a source region, ready to apply. */
export interface RowChange {
  op: 'insert' | 'update' | 'delete';
  rel: SourceRelation;
  newTuple?: TupleValue[];
  oldTuple?: TupleValue[];
  oldKind?: 'K' | 'O';
  /** (source commit time in Unix µs, source region). */
  version: Version;
  /** Commit LSN of the source transaction (for conflict records). */
  lsn: bigint;
  /**
   * region-priority: canonical keys (JSON text arrays) of this table that the
   * source's capture trigger marked as inheriting the priority rank in this transaction.
   */
  priorityKeys?: ReadonlySet<string>;
}

/** A TRUNCATE from a source region. */
export interface TruncateChange {
  op: 'truncate';
  rels: SourceRelation[];
  cascade: boolean;
  restartIdentity: boolean;
  version: Version;
  lsn: bigint;
}

export type Change = RowChange | TruncateChange;

/** What one target transaction applies: changes of whole source transactions plus progress. */
export interface Batch {
  changes: Change[];
  /** Number of source transactions in the batch. */
  txns: number;
  /** The origin progress to commit: end LSN and commit time (Unix µs) of the last source transaction or heartbeat. */
  progress: { lsn: bigint; tsUs: bigint };
  /** Latest source commit time or heartbeat time in the batch (Unix µs): what lag is measured from. */
  sourceTsUs: bigint;
  /** Latest heartbeat time in the batch (Unix µs), if any. */
  heartbeatUs?: bigint;
}

/** Counters of one applied batch. */
export interface ApplyStats {
  rows: number;
  parked: number;
  replayed: number;
  conflicts: Partial<Record<ConflictKind, number>>;
  /** Conflicts whose change could not be applied at all (unchanged TOAST with no row). */
  unapplicable: number;
  attempts: number;
}

/** Why a table is paused for this peer. */
export interface PausedTable {
  table: string;
  reason: string;
  kind: 'drift' | 'error' | 'unconfigured';
  since: Date;
  parked: number;
}

/** Hooks for metrics and alerts. */
export interface ApplierEvents {
  onPause?(p: PausedTable): void;
  onResume?(table: string, replayed: number): void;
}

export interface ApplierOptions {
  /** The target session; `attach()` replaces it after a reconnect. */
  db: pg.ClientBase;
  /** This region (the target). */
  localRegion: string;
  /** The source region. */
  peer: string;
  /** Canonical names (`tableKey`) of the replicated tables; changes of any other table are parked. */
  tables: ReadonlySet<string>;
  /** Conflict policy of a table (by `tableKey`). */
  policyFor(table: string): Policy;
  logger: Logger;
  events?: ApplierEvents;
  /** Retries of a batch after races, deadlocks and serialization failures. */
  maxAttempts?: number;
  /** Test hook: runs after a table's reads and before its write (to inject a concurrent writer). */
  beforeWrite?(table: string, attempt: number): Promise<void>;
  /**
   * Decide last-writer-wins and region-priority inside PostgreSQL, one statement per table (default true).
   * Tests turn it off to compare with the TypeScript path, which custom resolvers always take.
   */
  sqlDecisions?: boolean;
}

/**
 * A value for a column only this region has (the source does not know it):
 * an update leaves it alone, an insert lets it take its default.
 */
const NOT_SENT: unique symbol = Symbol('tandem.notSent');
/** A column value inside the applier: a tuple value or NOT_SENT. */
type Value = TupleValue | typeof NOT_SENT;
/** Keep the stored value: unchanged TOAST, or not sent at all. */
const keepsLocal = (v: Value | undefined) => v === UNCHANGED_TOAST || v === NOT_SENT;

/** SQL: Unix microseconds (int8) → timestamptz, exactly (interval arithmetic on integers; no float rounding). */
const usToTs = (expr: string) => `('epoch'::timestamptz + (${expr} / 1000000) * interval '1 second' + (${expr} % 1000000) * interval '1 microsecond')`;

/** SQL: a timestamptz as Unix microseconds (text, exact). */
const tsUs = (expr: string) => `(extract(epoch from ${expr}) * 1000000)::int8::text`;

const tsCache = new Map<bigint, string>();
/** Unix µs → a timestamptz literal PostgreSQL parses exactly. Memoized: a batch repeats few distinct times. */
export function usToTimestamp(us: bigint): string {
  let text = tsCache.get(us);
  if (text === undefined) {
    const ms = us >= 0n ? us / 1000n : -((-us + 999n) / 1000n);
    const micro = us - ms * 1000n;
    const iso = new Date(Number(ms)).toISOString(); // YYYY-MM-DDTHH:MM:SS.mmmZ
    text = `${iso.slice(0, 23)}${micro.toString().padStart(3, '0')}+00`;
    if (tsCache.size >= 4096) tsCache.clear();
    tsCache.set(us, text);
  }
  return text;
}

/** A key's identity inside one table's batch: PostgreSQL text cannot contain NUL, so NUL-joined texts are unambiguous. */
const keyIdOf = (key: readonly string[]) => (key.length === 1 ? key[0]! : key.join('\u0000'));
/** The `stale` of an entry that is its key's only change in the batch (never mutated). */
const NO_STALE: KeyEntry['stale'] = [];

/** An error that a retry of the whole batch fixes (a concurrent writer, a deadlock). */
class RaceError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'RaceError';
  }
}

/** An error raised while applying one table's changes. */
class TableApplyError extends Error {
  constructor(
    readonly table: string,
    override readonly cause: unknown,
  ) {
    super(`${table}: ${(cause as Error)?.message ?? String(cause)}`);
    this.name = 'TableApplyError';
  }
}

const RETRYABLE_SQLSTATES = new Set(['40001', '40P01', '55P03']);
/** SQLSTATEs that smell of a schema change under us: refresh the catalog and re-check drift. */
const SCHEMA_SQLSTATES = new Set(['42703', '42P01', '42804', '42883', '42P10', '0A000', '42846']);

/** Errors that belong to one table's data or definition (not to the session or the connection). */
function isTableError(err: TableApplyError): boolean {
  if (err.cause instanceof TandemError) return err.cause.code !== 'TANDEM_ERR_INTERNAL';
  const state = sqlState(err);
  return state !== undefined && /^(22|23|42|0A|2B|2F|39|P0)/.test(state);
}

/**
 * The session is gone or its last statement's outcome is unknown: the client's deadline passed (the
 * statement may still be running, and commit), the connection broke, or the server is shutting down.
 * Nothing more may be sent on it; the pipeline drops it and resumes from the committed progress.
 */
function sessionLost(err: unknown): boolean {
  const e = (err instanceof TableApplyError ? err.cause : err) as { code?: unknown; message?: unknown };
  const code = typeof e?.code === 'string' ? e.code : '';
  const message = typeof e?.message === 'string' ? e.message : '';
  return (
    /^E[A-Z]+$/.test(code) || // a socket error (ECONNRESET, EPIPE, ...)
    /^(08|57P0)/.test(code) || // connection exceptions, operator intervention (shutdown)
    message === 'Query read timeout' ||
    message.startsWith('Connection terminated') ||
    message.endsWith('is not queryable')
  );
}

function sqlState(err: unknown): string | undefined {
  const e = (err instanceof TableApplyError ? err.cause : err) as { code?: unknown };
  return typeof e?.code === 'string' ? e.code : undefined;
}

/** One key's squashed change, ready to resolve. */
interface KeyEntry {
  /** Raw key texts as the source sent them. */
  key: string[];
  keyId: string;
  op: 'insert' | 'update' | 'delete';
  /** Values in target column order (undefined for deletes); UNCHANGED_TOAST where still unknown, NOT_SENT for columns only this region has. */
  values?: Value[];
  version: Version;
  lsn: bigint;
  /** Key-changing update: where to take still-unknown TOAST values from (the old key, raw texts). */
  fillFrom?: string[];
  /** region-priority: keys whose write inherited the priority rank at the source. */
  priorityKeys?: ReadonlySet<string>;
  /** Superseded changes of this key in the batch with a lower version (recorded as conflicts). */
  stale: Array<{ op: 'insert' | 'update' | 'delete'; version: Version; lsn: bigint; values?: Value[] }>;
}

interface LocalInfo {
  pk: string[];
  state: LocalState;
  /** The row exists; `xmin` is the row version the decision was made on, `ctid` where it was. */
  exists: boolean;
  xmin?: string;
  ctid?: string;
  /** A row_versions entry exists; `entryXid` is the entry the decision was made on. */
  hasEntry: boolean;
  entryXid?: string;
}

/** The per-table write plan, gathered from decisions. */
interface WritePlan {
  deletes: Array<{ e: KeyEntry; xmin: string; ctid: string }>;
  updates: Array<{ e: KeyEntry; values: Value[]; xmin: string; ctid: string }>;
  inserts: Array<{ e: KeyEntry; values: Value[] }>;
  versions: Array<{ pk: string[]; version: Version; deleted: boolean; entryXid: string | undefined }>;

  conflicts: ConflictRecord[];
}

interface ConflictRecord {
  pk: string[];
  kind: ConflictKind;
  local?: Version;
  remote: Version;
  localRow?: unknown;
  remoteRow?: Record<string, string | null>;
  decision: 'apply' | 'skip' | 'custom';
  reason?: string;
  lsn: bigint;
  /** Filled once local rows are read. */
  needsLocalRow: boolean;
  entryIndex: number;
}

/** Applies batches from one peer into the local database over one session. */
export class Applier {
  readonly #o: ApplierOptions;
  #targets = new Map<string, TargetTable | undefined>();
  #targetsLoadedAt = 0;
  #driftCache = new WeakMap<SourceRelation, { at: number; diffs: string[] }>();
  #paused = new Map<string, PausedTable>();
  /** Tables that failed with a non-transient error: table → consecutive failures. */
  #failures = new Map<string, number>();
  #maxAttempts: number;
  #statementNames = new Map<string, string>();
  /** A target transaction left open by `applyChunk` (a source transaction too large for one batch). */
  #open = false;
  /** SQL text of the set-based statements, by table and shape. */
  #sqlCache = new Map<string, string>();

  constructor(opts: ApplierOptions) {
    this.#o = opts;
    this.#maxAttempts = opts.maxAttempts ?? 8;
  }

  /** Use a new session (after a reconnect); call `init()` next. */
  attach(db: pg.ClientBase): void {
    this.#o.db = db;
    this.#open = false;
    this.#statementNames.clear();
  }

  /** Paused tables of this peer (drift, errors, unconfigured), with parked counts. */
  get paused(): PausedTable[] {
    return [...this.#paused.values()];
  }

  /**
   * Prepare the session: canonical text settings, `session_replication_role =
   * replica` (no user triggers or FK checks for applied rows), the replication
   * origin of this peer, the paused tables left by an earlier run. Returns the
   * origin's durable progress (0 when nothing was applied yet).
   */
  async init(): Promise<bigint> {
    const db = this.#o.db;
    // Every apply statement joins one batch of keys to the tables through their primary keys: nested loops
    // of index probes are right for every batch size here. The planner cannot know a batch's size (a jsonb
    // array counts as 100 rows) and plans from statistics that lag behind a table that grows fast:
    // - for tables of some ten thousand rows it preferred hashing the whole of tandem.row_versions to 100
    //   index lookups (30-130 ms per statement instead of 1-3 ms);
    // - with statistics from when tandem.row_versions was small (a bulk load replicating into a new
    //   table) it read every entry of the table once (a bitmap scan on relname alone), materialized them
    //   and compared each key with each entry: 8,000 keys x 2,000 entries took 6 s, quadratic in the load.
    // Only index probes are left to it (a table without a usable index still gets its sequential scan).
    const planner = [['enable_hashjoin', 'off'], ['enable_mergejoin', 'off'], ['enable_seqscan', 'off'], ['enable_bitmapscan', 'off'], ['enable_material', 'off']] as const;
    const sets = [...CANONICAL_SETTINGS, ['session_replication_role', 'replica'] as const, ...planner].map(([k, v]) => `SET ${k} = '${v.replaceAll("'", "''")}'`);
    await db.query(sets.join('; '));
    const origin = originName(this.#o.peer);
    // A reused session may still have an origin set up (a previous applier on it).
    await db.query('SELECT pg_replication_origin_session_reset() WHERE pg_replication_origin_session_is_setup()');
    try {
      await db.query('SELECT pg_replication_origin_session_setup($1)', [origin]);
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === '42704') throw new TandemError('TANDEM_ERR_STATE', `replication origin "${origin}" does not exist in this region; run \`tandem replicate setup\``, { cause: err });
      if (code === '55006') throw new TandemError('TANDEM_ERR_STATE', `replication origin "${origin}" is in use by another session (is a second agent of this region running?)`, { cause: err });
      throw err;
    }
    const { rows } = await db.query<{ lsn: string | null }>('SELECT pg_replication_origin_progress($1, true)::text AS lsn', [origin]);
    await this.#loadParked();
    await this.refreshTargets();
    const lsn = rows[0]?.lsn;
    return lsn ? parseLsn(lsn) : 0n;
  }

  async #loadParked(): Promise<void> {
    const { rows } = await this.#o.db.query<{ relname: string; n: string; reason: string; since: Date }>(
      `SELECT relname, count(*)::text AS n, (array_agg(reason ORDER BY id DESC))[1] AS reason, min(parked_at) AS since
         FROM tandem.parked WHERE peer = $1 GROUP BY relname`,
      [this.#o.peer],
    );
    for (const r of rows) {
      const kind = r.reason.startsWith('apply error') ? 'error' : r.reason.includes('replication.tables') ? 'unconfigured' : 'drift';
      this.#paused.set(r.relname, { table: r.relname, reason: r.reason, kind, since: r.since, parked: Number(r.n) });
    }
  }

  /** Re-read the target tables' definitions (drift is judged against them). */
  async refreshTargets(): Promise<void> {
    const names = [...this.#o.tables].map(parseKey);
    for (const p of this.#paused.keys()) if (!this.#o.tables.has(p)) names.push(parseKey(p));
    this.#targets = await describeTables(this.#o.db, names);
    this.#targetsLoadedAt = Date.now();
    // The set-based statements spell out column names, casts and keys: build them again from the new definitions.
    this.#sqlCache.clear();
  }

  /** Drift between a source relation and this region's table; [] when they match. Cached per Relation message. */
  #drift(rel: SourceRelation): string[] {
    const cached = this.#driftCache.get(rel);
    if (cached && cached.at === this.#targetsLoadedAt) return cached.diffs;
    const diffs = this.#o.tables.has(rel.key)
      ? schemaDrift(rel, this.#targets.get(rel.key))
      : [`${rel.key} is published by ${this.#o.peer} but is not in this region's replication.tables`];
    this.#driftCache.set(rel, { at: this.#targetsLoadedAt, diffs });
    return diffs;
  }

  /** Whether changes of this relation are parked instead of applied (and pause it on first drift). */
  #isPaused(rel: SourceRelation): boolean {
    if (this.#paused.has(rel.key)) return true;
    const diffs = this.#drift(rel);
    if (diffs.length === 0) return false;
    const kind = this.#o.tables.has(rel.key) ? 'drift' : 'unconfigured';
    this.#pause(rel.key, `schema drift: ${diffs.join('; ')}`, kind);
    return true;
  }

  /** Whether a table's changes are parked: it is paused, or one of their relations drifted (which pauses it). */
  #parks(table: string, list: readonly RowChange[]): boolean {
    if (this.#paused.has(table)) return true;
    let rel: SourceRelation | undefined;
    for (const c of list) {
      if (c.rel === rel) continue; // a batch's changes share few relations: check each once
      rel = c.rel;
      if (this.#isPaused(rel)) return true;
    }
    return false;
  }

  #pause(table: string, reason: string, kind: PausedTable['kind']): void {
    const p: PausedTable = { table, reason, kind, since: new Date(), parked: 0 };
    this.#paused.set(table, p);
    const code = kind === 'error' ? 'TANDEM_ERR_REPLICATION' : 'TANDEM_ERR_SCHEMA_DRIFT';
    this.#o.logger.error({ code, peer: this.#o.peer, table, reason }, `apply of ${table} from ${this.#o.peer} paused: ${reason}; its changes are parked in tandem.parked and replayed once fixed`);
    this.#o.events?.onPause?.(p);
  }

  /**
   * Apply one batch in one target transaction, retrying races, deadlocks and
   * serialization failures. Schema errors refresh the catalog (the table then
   * pauses on drift); a table that keeps failing with a data error is paused
   * with that error. Throws only when the session itself is broken.
   */
  async apply(batch: Batch): Promise<ApplyStats> {
    if (this.#open) {
      // The end of a chunked source transaction: no retry possible (earlier chunks are only in this transaction).
      const stats: ApplyStats = { rows: 0, parked: 0, replayed: 0, conflicts: {}, unapplicable: 0, attempts: 1 };
      try {
        await this.#applyChanges(batch.changes, stats);
        await this.#writeStatus(batch, stats);
        await this.#o.db.query('COMMIT');
        return stats;
      } catch (err) {
        if (!sessionLost(err)) await this.#o.db.query('ROLLBACK').catch(() => {});
        if (err instanceof TableApplyError && isTableError(err)) this.#countFailure(err);
        throw err instanceof TableApplyError ? err.cause : err;
      } finally {
        this.#open = false;
      }
    }
    let attempt = 0;
    /** After an error of the one-statement form: find the failing table through the per-table form. */
    let perTable = false;
    for (;;) {
      attempt++;
      const stats: ApplyStats = { rows: 0, parked: 0, replayed: 0, conflicts: {}, unapplicable: 0, attempts: attempt };
      let oneStatement = false;
      try {
        if (batch.changes.length === 0) {
          // Heartbeats only: the status statement is a transaction of its own (one round trip).
          await this.#writeStatus(batch, stats);
          return stats;
        }
        const parts = perTable ? undefined : this.#onePlan(batch.changes);
        if (parts) {
          // The usual batch: every table decided inside PostgreSQL, data, versions, conflicts and progress
          // in ONE statement, which is its own transaction (one round trip per batch).
          oneStatement = true;
          await this.#runSql(parts, stats, batch);
          this.#failures.clear();
          return stats;
        }
        await this.#o.db.query('BEGIN');
        await this.#applyChanges(batch.changes, stats);
        await this.#writeStatus(batch, stats);
        await this.#o.db.query('COMMIT');
        this.#failures.clear();
        return stats;
      } catch (err) {
        // Not even a ROLLBACK: it would wait behind a statement still running on the server.
        if (sessionLost(err)) throw err instanceof TableApplyError ? err.cause : err;
        // The one statement is a transaction of its own: nothing to roll back.
        if (!oneStatement) await this.#o.db.query('ROLLBACK').catch(() => {});
        if (attempt >= this.#maxAttempts * 4) throw err;
        const state = sqlState(err);
        if (err instanceof RaceError || (state && RETRYABLE_SQLSTATES.has(state))) {
          if (attempt >= this.#maxAttempts) {
            // Persistent contention: keep going, but slower and visibly.
            this.#o.logger.warn({ peer: this.#o.peer, attempt, err: (err as Error).message }, 'apply keeps racing with concurrent writers; retrying');
          }
          await sleep(Math.min(1000, 5 * 2 ** Math.min(attempt, 8)) * (0.5 + Math.random()));
          continue;
        }
        if (oneStatement && !isTandemError(err, 'TANDEM_ERR_INTERNAL')) {
          // The one statement spans every table: retry table by table, which names the failing one (and pauses it if it keeps failing).
          perTable = true;
          attempt--;
          continue;
        }
        if (err instanceof TableApplyError && isTableError(err)) {
          if (state && SCHEMA_SQLSTATES.has(state)) {
            this.#o.logger.warn({ peer: this.#o.peer, table: err.table, err: (err as Error).message }, 'apply hit a schema error; re-reading the table definitions');
            await this.refreshTargets();
          } else {
            this.#o.logger.warn({ peer: this.#o.peer, table: err.table, err: (err as Error).message }, 'apply of a table failed; retrying');
          }
          this.#countFailure(err);
          continue;
        }
        throw err instanceof TableApplyError ? err.cause : err;
      }
    }
  }

  /**
   * Apply part of a source transaction too large to hold in memory, in a
   * target transaction that stays open until `apply()` commits it with the
   * rest. Any error rolls it back and is thrown: the caller restarts the
   * stream from the committed progress (the earlier chunks are gone).
   */
  async applyChunk(changes: readonly Change[]): Promise<ApplyStats> {
    const stats: ApplyStats = { rows: 0, parked: 0, replayed: 0, conflicts: {}, unapplicable: 0, attempts: 1 };
    try {
      if (!this.#open) {
        await this.#o.db.query('BEGIN');
        this.#open = true;
      }
      await this.#applyChanges(changes, stats);
      return stats;
    } catch (err) {
      if (!sessionLost(err)) await this.#o.db.query('ROLLBACK').catch(() => {});
      this.#open = false;
      if (err instanceof TableApplyError && isTableError(err)) {
        this.#countFailure(err);
        throw err.cause;
      }
      throw err instanceof TableApplyError ? err.cause : err;
    }
  }

  /** Whether a chunked target transaction is open. */
  get chunkOpen(): boolean {
    return this.#open;
  }

  #countFailure(err: TableApplyError): void {
    const n = (this.#failures.get(err.table) ?? 0) + 1;
    this.#failures.set(err.table, n);
    if (n >= 3 && !this.#paused.has(err.table)) {
      this.#pause(err.table, `apply error: ${(err.cause as Error)?.message ?? String(err.cause)} (SQLSTATE ${sqlState(err) ?? '?'})`, 'error');
    }
  }

  async #writeStatus(batch: Batch, stats: ApplyStats): Promise<void> {
    await this.#o.db.query(
      this.#named(statusUpsert({ peer: '$1', commitTs: '$2', lsn: '$3', heartbeat: '$4', txns: '$5::int8', rows: '$6::int8', originTs: '$7' })),
      [this.#o.peer, ...statusParams(batch, stats)],
    );
  }

  /** A statement with a stable name so PostgreSQL plans it once per session. */
  #named(text: string): pg.QueryConfig {
    let name = this.#statementNames.get(text);
    if (!name) {
      name = `tandem_${createHash('sha1').update(text).digest('hex').slice(0, 20)}`;
      if (this.#statementNames.size > 2000) this.#statementNames.clear();
      this.#statementNames.set(text, name);
    }
    return { name, text };
  }

  async #applyChanges(changes: readonly Change[], stats: ApplyStats): Promise<void> {
    // Paused tables' changes are parked (same transaction); truncates are barriers: apply what came before them first.
    let segment: RowChange[] = [];
    const flush = async () => {
      if (segment.length === 0) return;
      const byTable = new Map<string, RowChange[]>();
      for (const c of segment) {
        let list = byTable.get(c.rel.key);
        if (!list) byTable.set(c.rel.key, (list = []));
        list.push(c);
      }
      segment = [];
      for (const [table, list] of byTable) {
        if (this.#parks(table, list)) {
          await this.#park(table, list, stats);
        } else {
          await this.#applyTable(table, list, stats);
        }
      }
    };
    for (const c of changes) {
      if (c.op === 'truncate') {
        await flush();
        await this.#truncate(c, stats);
      } else {
        segment.push(c);
      }
    }
    await flush();
  }

  async #truncate(c: TruncateChange, stats: ApplyStats): Promise<void> {
    const apply: TargetTable[] = [];
    for (const rel of c.rels) {
      if (this.#paused.has(rel.key) || this.#isPaused(rel)) {
        await this.#parkRows(rel.key, [{ kind: 'truncate', c, rel }], stats);
        continue;
      }
      const t = this.#targets.get(rel.key);
      if (t) apply.push(t);
    }
    if (apply.length === 0) return;
    const sql = `TRUNCATE ONLY ${apply.map((t) => t.quoted).join(', ')}${c.cascade ? ' CASCADE' : ''}`;
    try {
      await this.#o.db.query(sql);
    } catch (err) {
      throw new TableApplyError(apply[0]!.key, err);
    }
    stats.rows += apply.length;
  }

  async #park(table: string, list: RowChange[], stats: ApplyStats): Promise<void> {
    await this.#parkRows(
      table,
      list.map((c) => ({ kind: 'row' as const, c })),
      stats,
    );
  }

  async #parkRows(
    table: string,
    items: Array<{ kind: 'row'; c: RowChange } | { kind: 'truncate'; c: TruncateChange; rel: SourceRelation }>,
    stats: ApplyStats,
  ): Promise<void> {
    if (!this.#paused.has(table)) {
      // Only reached for tables paused by #isPaused, which registers them; be defensive.
      this.#pause(table, 'paused', 'drift');
    }
    const reason = this.#paused.get(table)!.reason;
    const lsn: string[] = [];
    const ts: string[] = [];
    const op: string[] = [];
    const relation: string[] = [];
    const newT: (string | null)[] = [];
    const oldT: (string | null)[] = [];
    const oldK: (string | null)[] = [];
    const options: (string | null)[] = [];
    for (const it of items) {
      lsn.push(formatLsn(it.c.lsn));
      ts.push(usToTimestamp(it.c.version.tsUs));
      if (it.kind === 'row') {
        const c = it.c;
        op.push(c.op);
        relation.push(JSON.stringify(relationToJson(c.rel)));
        newT.push(c.newTuple ? JSON.stringify(tupleToJson(c.newTuple)) : null);
        oldT.push(c.oldTuple ? JSON.stringify(tupleToJson(c.oldTuple)) : null);
        oldK.push(c.oldKind ?? null);
        options.push(null);
      } else {
        op.push('truncate');
        relation.push(JSON.stringify(relationToJson(it.rel)));
        newT.push(null);
        oldT.push(null);
        oldK.push(null);
        options.push(JSON.stringify({ cascade: it.c.cascade, restartIdentity: it.c.restartIdentity }));
      }
    }
    await this.#o.db.query(
      this.#named(`INSERT INTO tandem.parked (peer, relname, reason, source_lsn, commit_ts, op, relation, new_tuple, old_tuple, old_kind, options)
       SELECT $1, $2, $3, k.lsn::pg_lsn, k.ts::timestamptz, k.op, k.rel::jsonb, k.nt::jsonb, k.ot::jsonb, k.ok, k.opt::jsonb
         FROM unnest($4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[]) WITH ORDINALITY
              AS k(lsn, ts, op, rel, nt, ot, ok, opt, n)
        ORDER BY k.n`),
      [this.#o.peer, table, reason, lsn, ts, op, relation, newT, oldT, oldK, options],
    );
    stats.parked += items.length;
    const p = this.#paused.get(table);
    if (p) p.parked += items.length;
  }

  /**
   * Try to resume paused tables: re-read the catalog, and for each paused
   * table whose parked changes now match it, replay them (in order, through
   * the normal resolution) and delete them, in one transaction per table and
   * at most `limit` changes at a time. Returns the number replayed.
   */
  async resumePaused(limit = 10_000): Promise<number> {
    if (this.#paused.size === 0) return 0;
    await this.refreshTargets();
    let total = 0;
    for (const [table, p] of [...this.#paused]) {
      if (!this.#o.tables.has(table)) continue;
      const t = this.#targets.get(table);
      if (!t) continue;
      for (;;) {
        const r = await this.#replayOnce(table, p, limit);
        if (r.applied < 0) break; // still drifting or failed
        total += r.applied;
        if (r.drained) {
          // Drained: the table flows again; a later Relation message is checked afresh.
          this.#paused.delete(table);
          this.#failures.delete(table);
          this.#o.logger.info({ peer: this.#o.peer, table, replayed: total }, `apply of ${table} from ${this.#o.peer} resumed`);
          this.#o.events?.onResume?.(table, total);
          break;
        }
      }
    }
    return total;
  }

  /**
   * Replay up to `limit` parked changes of one table in one transaction.
   * `applied` is -1 when none can be applied yet; `drained` when nothing is left.
   */
  async #replayOnce(table: string, p: PausedTable, limit: number): Promise<{ applied: number; drained: boolean }> {
    const db = this.#o.db;
    const stats: ApplyStats = { rows: 0, parked: 0, replayed: 0, conflicts: {}, unapplicable: 0, attempts: 1 };
    for (let attempt = 1; ; attempt++) {
      try {
        await db.query('BEGIN');
        const { rows } = await db.query<{
          id: string;
          source_lsn: string;
          ts: string;
          op: string;
          relation: RelationJson;
          new_tuple: TupleJson | null;
          old_tuple: TupleJson | null;
          old_kind: 'K' | 'O' | null;
          options: { cascade: boolean; restartIdentity: boolean } | null;
        }>(
          `SELECT id::text, source_lsn::text, ${tsUs('commit_ts')} AS ts, op, relation, new_tuple, old_tuple, old_kind, options
             FROM tandem.parked WHERE peer = $1 AND relname = $2 ORDER BY id LIMIT $3 FOR UPDATE`,
          [this.#o.peer, table, limit],
        );
        if (rows.length === 0) {
          await db.query('COMMIT');
          return { applied: 0, drained: true };
        }
        const changes: Change[] = [];
        const rels = new Map<string, SourceRelation>();
        let lastId = '0';
        for (const r of rows) {
          const sig = JSON.stringify(r.relation);
          let rel = rels.get(sig);
          if (!rel) rels.set(sig, (rel = relationFromJson(r.relation)));
          if (schemaDrift(rel, this.#targets.get(table)).length > 0) break; // replay up to the first change that still drifts
          const version: Version = { tsUs: BigInt(r.ts), region: this.#o.peer };
          const lsn = parseLsn(r.source_lsn);
          if (r.op === 'truncate') {
            changes.push({ op: 'truncate', rels: [rel], cascade: r.options?.cascade ?? false, restartIdentity: r.options?.restartIdentity ?? false, version, lsn });
          } else {
            const c: RowChange = { op: r.op as RowChange['op'], rel, version, lsn };
            if (r.new_tuple) c.newTuple = tupleFromJson(r.new_tuple);
            if (r.old_tuple) c.oldTuple = tupleFromJson(r.old_tuple);
            if (r.old_kind) c.oldKind = r.old_kind;
            changes.push(c);
          }
          lastId = r.id;
        }
        if (changes.length === 0) {
          await db.query('ROLLBACK');
          return { applied: -1, drained: false };
        }
        // Apply as if not paused (the paused flag is lifted for the duration of the replay).
        this.#paused.delete(table);
        try {
          await this.#applyChanges(changes, stats);
        } finally {
          if (!this.#paused.has(table)) this.#paused.set(table, p);
        }
        if (stats.parked > 0) throw new TandemError('TANDEM_ERR_SCHEMA_DRIFT', `${table}: replayed changes were parked again`);
        await db.query('DELETE FROM tandem.parked WHERE peer = $1 AND relname = $2 AND id <= $3::int8', [this.#o.peer, table, lastId]);
        await db.query('COMMIT');
        p.parked = Math.max(0, p.parked - changes.length);
        stats.replayed = changes.length;
        return { applied: changes.length, drained: changes.length === rows.length && rows.length < limit };
      } catch (err) {
        await db.query('ROLLBACK').catch(() => {});
        const state = sqlState(err);
        if ((err instanceof RaceError || (state && RETRYABLE_SQLSTATES.has(state))) && attempt < this.#maxAttempts) {
          await sleep(10 * attempt);
          continue;
        }
        if (isTandemError(err) || err instanceof TableApplyError || state) {
          p.reason = p.kind === 'error' || err instanceof TableApplyError ? `apply error: ${(err as Error).message}` : p.reason;
          this.#o.logger.warn({ peer: this.#o.peer, table, err: (err as Error).message }, 'replay of parked changes failed; the table stays paused');
          return { applied: -1, drained: false };
        }
        throw err;
      }
    }
  }

  /**
   * Build one key entry per key (squashed), sorted by key: concurrent batches then lock rows in the same
   * order (fewer deadlocks).
   */
  #squash(t: TargetTable, list: RowChange[], policy: Policy): KeyEntry[] {
    // The hot path of apply: most keys change once per batch, so a key's first entry is kept as is and
    // only keys changed again get a chain.
    const first = new Map<string, KeyEntry>();
    const chains = new Map<string, KeyEntry[]>();
    /** Latest known values per key in this batch (target column order), for unchanged TOAST. */
    const lastValues = new Map<string, Value[]>();
    const push = (e: KeyEntry) => {
      const f = first.get(e.keyId);
      if (f === undefined) {
        first.set(e.keyId, e);
        return;
      }
      let chain = chains.get(e.keyId);
      if (!chain) chains.set(e.keyId, (chain = [f]));
      chain.push(e);
    };
    const entry = (c: RowChange, key: string[], keyId: string, op: KeyEntry['op'], values: Value[] | undefined): KeyEntry => ({
      key,
      keyId,
      op,
      values,
      version: c.version,
      lsn: c.lsn,
      fillFrom: undefined,
      priorityKeys: c.priorityKeys,
      stale: NO_STALE,
    });
    let rel: SourceRelation | undefined;
    let map: number[] = [];
    let keyAt: number[] = [];
    for (const c of list) {
      if (c.rel !== rel) {
        rel = c.rel;
        map = columnMap(rel, t);
        keyAt = t.keyColumns.map((kc) => map[t.columns.indexOf(kc)]!);
      }
      if (c.op === 'delete') {
        const key = keyFrom(c.oldTuple, keyAt, t, c);
        push(entry(c, key, keyIdOf(key), 'delete', undefined));
        continue;
      }
      const newKey = keyFrom(c.newTuple, keyAt, t, c);
      const values = valuesFrom(c.newTuple!, map);
      const newId = keyIdOf(newKey);
      let oldKey: string[] | undefined;
      let oldId = '';
      if (c.op === 'update' && c.oldTuple) {
        const k = keyFrom(c.oldTuple, keyAt, t, c);
        oldId = keyIdOf(k);
        if (oldId !== newId) oldKey = k;
        // REPLICA IDENTITY FULL: the old tuple carries the full old row, TOASTed values included.
        if (c.oldKind === 'O') {
          const old = valuesFrom(c.oldTuple, map);
          for (let i = 0; i < values.length; i++) if (values[i] === UNCHANGED_TOAST && old[i] !== UNCHANGED_TOAST) values[i] = old[i]!;
        }
      }
      if (values.includes(UNCHANGED_TOAST)) {
        const prev = lastValues.get(oldKey ? oldId : newId);
        if (prev) for (let i = 0; i < values.length; i++) if (values[i] === UNCHANGED_TOAST && prev[i] !== UNCHANGED_TOAST) values[i] = prev[i]!;
      }
      if (oldKey) {
        push(entry(c, oldKey, oldId, 'delete', undefined));
        const e = entry(c, newKey, newId, 'insert', values);
        if (values.includes(UNCHANGED_TOAST)) e.fillFrom = oldKey;
        push(e);
      } else {
        push(entry(c, newKey, newId, c.op, values));
      }
      lastValues.set(newId, values);
    }
    const out: KeyEntry[] = [];
    for (const [id, only] of first) {
      const chain = chains.get(id);
      if (!chain) {
        out.push(only);
        continue;
      }
      const w = squashWinner(
        chain.map((e) => ({ version: e.version, item: e })),
        policy,
      );
      const winner = chain[w]!;
      let op = winner.op;
      if (op === 'update') {
        // An insert earlier in the batch (after the last delete) means the row did not have to exist before the batch.
        for (let i = w - 1; i >= 0; i--) {
          if (chain[i]!.op === 'delete') break;
          if (chain[i]!.op === 'insert') {
            op = 'insert';
            break;
          }
        }
      }
      out.push({ ...winner, op, stale: chain.slice(w + 1).map((e) => ({ op: e.op, version: e.version, lsn: e.lsn, ...(e.values ? { values: e.values } : {}) })) });
    }
    return out.sort((a, b) => (a.keyId < b.keyId ? -1 : a.keyId > b.keyId ? 1 : 0));
  }

  async #applyTable(table: string, list: RowChange[], stats: ApplyStats): Promise<void> {
    try {
      await this.#applyTableInner(table, list, stats);
    } catch (err) {
      if (err instanceof RaceError || (sqlState(err) && RETRYABLE_SQLSTATES.has(sqlState(err)!))) throw err;
      throw new TableApplyError(table, err);
    }
  }

  async #applyTableInner(table: string, list: RowChange[], stats: ApplyStats): Promise<void> {
    const t = this.#targets.get(table)!;
    const policy = this.#o.policyFor(table);
    const entries = this.#squash(t, list, policy);
    if (this.#sqlEligible(policy, list, entries)) {
      await this.#runSql([this.#sqlPart(t, table, policy, list[0]!.rel, entries)], stats, undefined);
      return;
    }
    const db = this.#o.db;
    const kc = t.keyColumns;
    const n = entries.length;
    const idx = entries.map((_, i) => i);
    const keyArrays = kc.map((_, j) => entries.map((e) => e.key[j]!));
    const cast = (c: TargetColumn, expr: string) => `(${expr})::${c.castType}`;
    const keyMatch = (alias: string, prefix: string) => kc.map((c, j) => `${alias}.${quoteIdent(c.name)} = ${cast(c, `k.${prefix}${j}`)}`).join(' AND ');
    const keyCols = (prefix: string) => kc.map((_, j) => `${prefix}${j}`).join(', ');
    const keyParams = (from: number) => kc.map((_, j) => `$${from + j}::text[]`).join(', ');

    // 1. Read every key's row (its xmin and that transaction's commit time) and version entry, in one statement.
    //    No locks: the write statement is conditioned on exactly what was read here (the row's xmin, the
    //    entry's xid), so any concurrent change makes a row count differ and the batch is retried.
    const canon = `ARRAY[${kc.map((c, j) => `(${cast(c, `k.k${j}`)})::text`).join(', ')}]::text[]`;
    const s1 = await db.query<{
      i: number;
      pk: string[] | null;
      xmin: string | null;
      tid: string | null;
      ts: string | null;
      exid: string | null;
      deleted: boolean | null;
      region: string | null;
      ets: string | null;
      priority: boolean | null;
    }>(
      // The canonical key text comes back only when it differs from the source's text (rare), to spare parsing.
      this.#named(`SELECT k.i, NULLIF(${canon}, ARRAY[${keyCols('k.k')}]::text[]) AS pk, t.xmin::text AS xmin, t.ctid::text AS tid, ${tsUs('pg_xact_commit_timestamp(t.xmin)')} AS ts,
              e.xid::text AS exid, e.deleted, e.region, ${tsUs('COALESCE(e.commit_ts, pg_xact_commit_timestamp(xid(e.xid)))')} AS ets, e.priority
         FROM unnest($1::int4[], ${keyParams(3)}) AS k(i, ${keyCols('k')})
         LEFT JOIN ${t.quoted} t ON ${keyMatch('t', 'k')}
         LEFT JOIN tandem.row_versions e ON e.relname = $2 AND e.pk = ${canon}`),
      [idx, table, ...keyArrays],
    );
    const info: LocalInfo[] = new Array(n);
    const seenPk = new Set<string>();
    for (const r of s1.rows) {
      const pk = r.pk ?? entries[r.i]!.key;
      const pkId = keyIdOf(pk);
      if (seenPk.has(pkId)) throw new TandemError('TANDEM_ERR_INTERNAL', `${table}: two keys of one batch map to the same primary key ${JSON.stringify(pk)}`);
      seenPk.add(pkId);
      const li: LocalInfo = {
        pk,
        exists: r.xmin !== null,
        ...(r.xmin !== null ? { xmin: r.xmin, ctid: r.tid! } : {}),
        hasEntry: r.exid !== null,
        ...(r.exid !== null ? { entryXid: r.exid } : {}),
        state:
          r.xmin !== null
            ? { kind: 'row', version: { tsUs: r.ts === null ? EPOCH_US : BigInt(r.ts), region: this.#o.localRegion } }
            : { kind: 'absent' },
      };
      if (r.exid !== null) {
        const v: Version = { tsUs: r.ets === null ? EPOCH_US : BigInt(r.ets), region: r.region!, ...(r.priority ? { priority: true } : {}) };
        if (li.exists) {
          // The entry describes the row only if the apply transaction that wrote it also wrote the row version we see.
          if (!r.deleted && (BigInt(r.exid) & 0xffff_ffffn) === BigInt(r.xmin!)) li.state = { kind: 'row', version: v };
        } else if (r.deleted) {
          li.state = { kind: 'tombstone', version: v };
        }
      }
      info[r.i] = li;
    }
    // region-priority: a write the source marked inherits the priority rank (its version says so everywhere).
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      if (e.priorityKeys?.has(JSON.stringify(info[i]!.pk))) e.version = { ...e.version, priority: true };
    }

    // Key-changing updates with still-unknown TOAST values: take them from the old key's local row.
    await this.#fillFromOldKeys(t, entries);

    // 3. Decide.
    const plan: WritePlan = { deletes: [], updates: [], inserts: [], versions: [], conflicts: [] };
    const merges: number[] = [];
    const decisions: Decision[] = new Array(n);
    for (let i = 0; i < n; i++) {
      const e = entries[i]!;
      const li = info[i]!;
      const complete = e.values ? !e.values.includes(UNCHANGED_TOAST) : true; // NOT_SENT columns take their default
      const d = decide({ op: e.op, version: e.version, complete }, li.state, policy);
      decisions[i] = d;
      const localV = li.state.kind === 'absent' ? undefined : li.state.version;
      switch (d.action) {
        case 'upsert':
          if (li.exists) plan.updates.push({ e, values: e.values!, xmin: li.xmin!, ctid: li.ctid! });
          else plan.inserts.push({ e, values: e.values! });
          plan.versions.push({ pk: li.pk, version: e.version, deleted: false, entryXid: li.entryXid });
          break;
        case 'delete':
          plan.deletes.push({ e, xmin: li.xmin!, ctid: li.ctid! });
          plan.versions.push({ pk: li.pk, version: e.version, deleted: true, entryXid: li.entryXid });
          break;
        case 'tombstone':
          plan.versions.push({ pk: li.pk, version: e.version, deleted: true, entryXid: li.entryXid });
          break;
        case 'merge':
          merges.push(i);
          break;
        case 'skip':
          if (d.reason && d.reason.includes('TOAST')) stats.unapplicable++;
          break;
      }
      if (d.conflict) {
        plan.conflicts.push({
          pk: li.pk,
          kind: d.conflict,
          ...(localV ? { local: localV } : {}),
          remote: e.version,
          ...(e.values ? { remoteRow: textRow(t, e.values) } : {}),
          decision: d.action === 'skip' ? 'skip' : d.action === 'merge' ? 'custom' : 'apply',
          ...(d.reason ? { reason: d.reason } : {}),
          lsn: e.lsn,
          needsLocalRow: li.exists,
          entryIndex: i,
        });
      }
      // Superseded changes of the same key in this batch (the source's clock stepped back) are conflicts too.
      for (const s of e.stale) {
        plan.conflicts.push({
          pk: li.pk,
          kind: s.op === 'delete' ? 'delete_origin_differs' : s.op === 'insert' ? 'insert_exists' : 'update_origin_differs',
          local: e.version,
          remote: s.version,
          ...(s.values ? { remoteRow: textRow(t, s.values) } : {}),
          decision: 'skip',
          reason: 'superseded within the batch by a change of the same key with a higher version (the source clock stepped back?)',
          lsn: s.lsn,
          needsLocalRow: false,
          entryIndex: i,
        });
      }
    }
    if (merges.length > 0) await this.#merge(t, table, policy, entries, info, merges, plan);

    // Local rows for conflict records (only when there are conflicts on existing rows).
    const needRows = plan.conflicts.filter((c) => c.needsLocalRow);
    if (needRows.length > 0) {
      const want = [...new Set(needRows.map((c) => c.entryIndex))];
      const { rows } = await db.query<{ i: number; row: unknown }>(
        this.#named(`SELECT k.i, to_jsonb(t.*) AS row FROM unnest($1::int4[], ${keyParams(2)}) AS k(i, ${keyCols('k')})
           JOIN ${t.quoted} t ON ${keyMatch('t', 'k')}`),
        [want, ...kc.map((_, j) => want.map((i) => entries[i]!.key[j]!))],
      );
      const byI = new Map(rows.map((r) => [r.i, r.row]));
      for (const c of needRows) c.localRow = byI.get(c.entryIndex) ?? null;
    }

    // 4. Write everything in one statement and check the counts.
    if (this.#o.beforeWrite) await this.#o.beforeWrite(table, stats.attempts);
    await this.#write(t, table, plan, stats);
    for (const c of plan.conflicts) stats.conflicts[c.kind] = (stats.conflicts[c.kind] ?? 0) + 1;
    void decisions;
  }

  /**
   * Whether a table's batch can be decided inside PostgreSQL: last-writer-wins or region-priority, one
   * source relation, and none of the rare cases the TypeScript path handles (a write that inherited the
   * priority rank, unchanged TOAST values to take from an old key's row, changes superseded within the batch).
   */
  #sqlEligible(policy: Policy, list: RowChange[], entries: KeyEntry[]): boolean {
    if (this.#o.sqlDecisions === false || policy.kind === 'custom') return false;
    const rel = list[0]!.rel;
    for (const c of list) if (c.rel !== rel || c.priorityKeys) return false;
    for (const e of entries) if (e.stale.length > 0 || e.fillFrom) return false;
    return true;
  }

  /**
   * The one-statement form of a batch: every table unpaused, decided by last-writer-wins or
   * region-priority, with nothing that needs the TypeScript path (and no TRUNCATE). Undefined otherwise.
   */
  #onePlan(changes: readonly Change[]): SqlPart[] | undefined {
    if (this.#o.sqlDecisions === false) return undefined;
    const byTable = new Map<string, RowChange[]>();
    for (const c of changes) {
      if (c.op === 'truncate') return undefined;
      let list = byTable.get(c.rel.key);
      if (!list) byTable.set(c.rel.key, (list = []));
      list.push(c);
    }
    const parts: SqlPart[] = [];
    try {
      for (const [table, list] of byTable) {
        if (this.#parks(table, list)) return undefined;
        const t = this.#targets.get(table);
        if (!t) return undefined;
        const policy = this.#o.policyFor(table);
        const entries = this.#squash(t, list, policy);
        if (!this.#sqlEligible(policy, list, entries)) return undefined;
        parts.push(this.#sqlPart(t, table, policy, list[0]!.rel, entries));
      }
    } catch {
      return undefined; // the per-table form reports the error with its table
    }
    return parts;
  }

  /** One table's share of a set-based statement: its squashed changes as jsonb rows and the statement's shape. */
  #sqlPart(t: TargetTable, table: string, policy: Policy, rel: SourceRelation, entries: KeyEntry[]): SqlPart {
    const map = columnMap(rel, t);
    const sent: number[] = [];
    for (let j = 0; j < map.length; j++) if (map[j]! >= 0) sent.push(j);
    const allSent = sent.length === map.length;
    // Columns with an unchanged TOAST value somewhere in this batch: their update keeps the stored value there.
    const toast = new Set<number>();
    const rows: unknown[] = new Array(entries.length);
    let lastVersion: Version | undefined;
    let ts: number | string = 0;
    let lastLsn = -1n;
    let lsnText = '';
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!;
      if (e.version !== lastVersion) {
        lastVersion = e.version;
        const n = Number(e.version.tsUs);
        ts = Number.isSafeInteger(n) ? n : e.version.tsUs.toString();
      }
      if (e.lsn !== lastLsn) {
        lastLsn = e.lsn;
        lsnText = formatLsn(e.lsn);
      }
      let vals: Array<string | null | 0> | Value[] | null = null;
      let complete = true;
      if (e.values && allSent && !e.values.includes(UNCHANGED_TOAST)) {
        vals = e.values; // every column, in order, all values known: as it is
      } else if (e.values) {
        vals = new Array(sent.length);
        for (let p = 0; p < sent.length; p++) {
          const v = e.values[sent[p]!];
          if (v === UNCHANGED_TOAST || v === NOT_SENT || v === undefined) {
            // 0 (a JSON number, never a column value) marks "keep the stored value".
            vals[p] = 0;
            complete = false;
            toast.add(p);
          } else {
            vals[p] = v as string | null;
          }
        }
      }
      rows[i] = [e.op === 'delete' ? 'd' : e.op === 'insert' ? 'i' : 'u', ts, e.version.region, complete, lsnText, e.key, vals];
    }
    return { t, table, sent, toast, priority: policy.kind === 'region-priority' ? policy.region : null, rows: JSON.stringify(rows), names: this.#namesJson(t, sent) };
  }

  /**
   * Run ONE statement for the parts (tables) of a batch: for every key it reads the local state (row xmin
   * and its commit time, the `row_versions` entry), decides exactly as `resolve.decide` does, and writes
   * only where the incoming version wins: data conditioned on the xmin it read, version entries on the
   * entry's xid, conflict records with both rows. With `status` it also records the batch's progress
   * (`replication_status`, replication origin). A concurrent writer that got in between makes a count
   * differ, or an insert of a key it made first violate the key's uniqueness, and the statement then fails
   * (so nothing of it stays, also outside a transaction block): the caller retries the batch.
   */
  async #runSql(parts: SqlPart[], stats: ApplyStats, status: Batch | undefined): Promise<void> {
    const params: unknown[] = [this.#o.localRegion, this.#o.peer];
    if (status) params.push(...statusParams(status, stats));
    for (const part of parts) params.push(part.rows, part.table, part.names, part.priority);
    const sql = this.#statementFor(parts, status !== undefined);
    if (this.#o.beforeWrite) for (const part of parts) await this.#o.beforeWrite(part.table, stats.attempts);
    let out: Record<string, unknown>;
    try {
      out = (await this.#o.db.query<Record<string, unknown>>(this.#named(sql), params)).rows[0]!;
    } catch (err) {
      const e = err as { code?: string; message?: string; schema?: string; table?: string; constraint?: string };
      const message = e.message ?? '';
      const marked = (mark: string) => message.slice(message.indexOf(mark)).replace(/"$/, '');
      if (e.code === '22P02' && message.includes(RACE_MARK)) throw new RaceError(`${marked(RACE_MARK)}; retrying the batch`);
      if (e.code === '22P02' && message.includes(DUP_MARK)) throw new TandemError('TANDEM_ERR_INTERNAL', marked(DUP_MARK), { cause: err });
      if (e.code === '23505') {
        // A key inserted by a concurrent writer after the statement's snapshot: a race, not an error of the table
        // (a violation of another unique index is one, and goes to the per-table form, which names the table).
        const race = e.schema === 'tandem' ? e.table === 'row_versions' : parts.find((p) => p.t.name.schema === e.schema && p.t.name.table === e.table && p.t.keyIndex === e.constraint);
        if (race) throw new RaceError(`${e.schema}.${e.table}: a concurrent writer inserted a key of this batch first (${e.constraint}); retrying the batch`);
      }
      throw err;
    }
    parts.forEach((_, n) => {
      const r = (k: string) => out[`${k}${n}`] as number;
      stats.rows += r('wd') + r('wu') + r('wi');
      stats.unapplicable += r('unapplicable');
      const kinds = out[`kinds${n}`] as Record<string, number> | null;
      if (kinds) for (const [k, c] of Object.entries(kinds)) stats.conflicts[k as ConflictKind] = (stats.conflicts[k as ConflictKind] ?? 0) + c;
    });
  }

  #namesCache = new WeakMap<TargetTable, Map<string, string>>();
  /** JSON array of the sent columns' names (for the remote row of conflict records). */
  #namesJson(t: TargetTable, sent: number[]): string {
    let m = this.#namesCache.get(t);
    if (!m) this.#namesCache.set(t, (m = new Map()));
    const sig = sent.join(',');
    let j = m.get(sig);
    if (j === undefined) m.set(sig, (j = JSON.stringify(sent.map((i) => t.columns[i]!.name))));
    return j;
  }

  /** The statement of `#runSql` for these parts' shapes (cached: a pipeline sees few shapes). */
  #statementFor(parts: SqlPart[], status: boolean): string {
    const cacheKey = `${status}\u0001${parts.map((p) => `${p.t.key}\u0000${p.sent.join(',')}\u0000${[...p.toast].join(',')}\u0000${p.priority !== null}`).join('\u0001')}`;
    let sql = this.#sqlCache.get(cacheKey);
    if (sql !== undefined) return sql;
    const base = status ? 8 : 2;
    const ctes: string[] = [];
    const results: string[] = [];
    const oks: string[] = [];
    const written: string[] = [];
    parts.forEach((part, n) => {
      const g = tableCtes(part, n, base + 4 * n);
      ctes.push(...g.ctes);
      results.push(g.result);
      oks.push(g.ok);
      written.push(`(SELECT count(*) FROM wd${n}) + (SELECT count(*) FROM wu${n}) + (SELECT count(*) FROM wi${n})`);
    });
    if (status) {
      const rows = `$7::int8 + ${written.join(' + ')}`;
      ctes.push(`st AS (${statusUpsert({ peer: '$2', commitTs: '$3', lsn: '$4', heartbeat: '$5', txns: '$6::int8', rows, originTs: '$8' })} RETURNING 1)`);
    }
    // A failed check raises an error (a cast of text that is not a number), so the statement leaves nothing behind.
    const fail = (mark: string, detail: string) => `(${sqlLiteral(`${mark} `)} || ${detail})::int`;
    sql = `WITH ${ctes.join(',\n')}
SELECT ${results.map((_, n) => `p${n}.*`).join(', ')},
       CASE WHEN NOT (${oks.join(' AND ')}) THEN ${fail(RACE_MARK, `${parts.map((p, n) => `CASE WHEN NOT (${oks[n]}) THEN ${sqlLiteral(p.table + ' ')} ELSE '' END`).join(' || ')}`)}
            ELSE 0 END AS checked
  FROM ${results.map((r, n) => `(${r}) p${n}`).join(', ')}`;
    if (this.#sqlCache.size > 500) this.#sqlCache.clear();
    this.#sqlCache.set(cacheKey, sql);
    return sql;
  }

  async #fillFromOldKeys(t: TargetTable, entries: KeyEntry[]): Promise<void> {
    const need = entries.map((e, i) => ({ e, i })).filter(({ e }) => e.fillFrom && e.values?.includes(UNCHANGED_TOAST));
    if (need.length === 0) return;
    const kc = t.keyColumns;
    const cols = t.columns;
    const { rows } = await this.#o.db.query<{ i: number; vals: (string | null)[] }>(
      this.#named(`SELECT k.i, ARRAY[${cols.map((c) => `t.${quoteIdent(c.name)}::text`).join(', ')}]::text[] AS vals
         FROM unnest($1::int4[], ${kc.map((_, j) => `$${j + 2}::text[]`).join(', ')}) AS k(i, ${kc.map((_, j) => `k${j}`).join(', ')})
         JOIN ${t.quoted} t ON ${kc.map((c, j) => `t.${quoteIdent(c.name)} = (k.k${j})::${c.castType}`).join(' AND ')}`),
      [need.map((x) => x.i), ...kc.map((_, j) => need.map((x) => x.e.fillFrom![j]!))],
    );
    for (const r of rows) {
      const e = entries[r.i]!;
      e.values = e.values!.map((v, j) => (v === UNCHANGED_TOAST ? (r.vals[j] ?? null) : v));
    }
  }

  async #merge(t: TargetTable, table: string, policy: Policy, entries: KeyEntry[], info: LocalInfo[], merges: number[], plan: WritePlan): Promise<void> {
    if (policy.kind !== 'custom') return;
    const kc = t.keyColumns;
    const cols = t.columns;
    // Canonical text of both sides, computed in this session, so every region hands the resolver identical input.
    const remoteArrays = cols.map((_, j) =>
      merges.map((i) => {
        const v = entries[i]!.values![j];
        return keepsLocal(v) || v === undefined ? null : (v as string | null);
      }),
    );
    const unchanged = cols.map((_, j) => merges.map((i) => keepsLocal(entries[i]!.values![j])));
    const base = 2 + kc.length;
    const { rows } = await this.#o.db.query<{ i: number; l: (string | null)[]; r: (string | null)[] }>(
      this.#named(`SELECT k.i,
           ARRAY[${cols.map((c) => `t.${quoteIdent(c.name)}::text`).join(', ')}]::text[] AS l,
           ARRAY[${cols.map((c, j) => `CASE WHEN k.u${j} THEN t.${quoteIdent(c.name)}::text ELSE ((k.c${j})::${c.castType})::text END`).join(', ')}]::text[] AS r
         FROM unnest($1::int4[], ${kc.map((_, j) => `$${j + 2}::text[]`).join(', ')}, ${cols.map((_, j) => `$${base + j}::text[]`).join(', ')}, ${cols.map((_, j) => `$${base + cols.length + j}::bool[]`).join(', ')})
              AS k(i, ${kc.map((_, j) => `k${j}`).join(', ')}, ${cols.map((_, j) => `c${j}`).join(', ')}, ${cols.map((_, j) => `u${j}`).join(', ')})
         JOIN ${t.quoted} t ON ${kc.map((c, j) => `t.${quoteIdent(c.name)} = (k.k${j})::${c.castType}`).join(' AND ')}`),
      [merges, ...kc.map((_, j) => merges.map((i) => entries[i]!.key[j]!)), ...remoteArrays, ...unchanged],
    );
    const byI = new Map(rows.map((r) => [r.i, r]));
    const names = cols.map((c) => c.name);
    for (const i of merges) {
      const e = entries[i]!;
      const li = info[i]!;
      const r = byI.get(i);
      const local = li.state.kind === 'row' ? li.state.version : undefined;
      if (!r || !local) throw new RaceError(`${table}: row of a merge disappeared`);
      const toRow = (vals: (string | null)[]) => Object.fromEntries(names.map((nm, j) => [nm, vals[j] ?? null])) as TextRow;
      let merged: { row: TextRow; version: Version };
      try {
        merged = runCustomResolver(policy, table, { row: toRow(r.l), commitTsUs: local.tsUs, region: local.region }, { row: toRow(r.r), commitTsUs: e.version.tsUs, region: e.version.region }, names);
      } catch (err) {
        throw new TandemError('TANDEM_ERR_REPLICATION', `custom resolver ${policy.name} failed for ${table}: ${(err as Error).message}`, { cause: err });
      }
      const values: Value[] = names.map((nm) => merged.row[nm] ?? null);
      plan.updates.push({ e, values, xmin: li.xmin!, ctid: li.ctid! });
      plan.versions.push({ pk: li.pk, version: merged.version, deleted: false, entryXid: li.entryXid });
    }
  }

  async #write(t: TargetTable, table: string, plan: WritePlan, stats: ApplyStats): Promise<void> {
    const kc = t.keyColumns;
    const cols = t.columns;
    const params: unknown[] = [];
    const p = (v: unknown, type: string) => {
      params.push(v);
      return `$${params.length}::${type}`;
    };
    const ctes: string[] = [];
    const counts: string[] = [];
    const expect: Record<string, number> = {};
    // Updates and deletes only touch the row version the decision was made on (its xmin), found where it
    // was read (its ctid: one TID probe per key, whatever the planner's statistics say; see `init`).
    const keyMatch = `t.ctid = k.tid::tid AND t.xmin = k.x::xid AND ${kc.map((c, j) => `t.${quoteIdent(c.name)} = (k.k${j})::${c.castType}`).join(' AND ')}`;
    if (plan.deletes.length > 0) {
      const args = [...kc.map((_, j) => p(plan.deletes.map((d) => d.e.key[j]!), 'text[]')), p(plan.deletes.map((d) => d.xmin), 'text[]'), p(plan.deletes.map((d) => d.ctid), 'text[]')];
      ctes.push(`d AS (DELETE FROM ${t.quoted} t USING unnest(${args.join(', ')}) AS k(${kc.map((_, j) => `k${j}`).join(', ')}, x, tid) WHERE ${keyMatch} RETURNING 1)`);
      counts.push('(SELECT count(*) FROM d)::int AS d');
      expect.d = plan.deletes.length;
    }
    if (plan.updates.length > 0) {
      const keyIdx = new Set(kc.map((c) => cols.indexOf(c)));
      const names: string[] = [];
      const args: string[] = [];
      kc.forEach((_, j) => {
        args.push(p(plan.updates.map((u) => u.e.key[j]!), 'text[]'));
        names.push(`k${j}`);
      });
      args.push(p(plan.updates.map((u) => u.xmin), 'text[]'), p(plan.updates.map((u) => u.ctid), 'text[]'));
      names.push('x', 'tid');
      const sets: string[] = [];
      cols.forEach((c, j) => {
        if (keyIdx.has(j)) return;
        const vals = plan.updates.map((u) => u.values[j]);
        if (vals.every((v) => v === NOT_SENT)) return; // a column only this region has
        const anyU = vals.some(keepsLocal);
        args.push(p(vals.map((v) => (keepsLocal(v) ? null : (v as string | null))), 'text[]'));
        names.push(`c${j}`);
        if (anyU) {
          args.push(p(vals.map(keepsLocal), 'bool[]'));
          names.push(`u${j}`);
          sets.push(`${quoteIdent(c.name)} = CASE WHEN k.u${j} THEN t.${quoteIdent(c.name)} ELSE (k.c${j})::${c.castType} END`);
        } else {
          sets.push(`${quoteIdent(c.name)} = (k.c${j})::${c.castType}`);
        }
      });
      if (sets.length === 0) {
        // Only key columns: nothing to change, but touch the row so its xmin is this transaction (the version entry must match it).
        const kn = kc[0]!.name;
        sets.push(`${quoteIdent(kn)} = t.${quoteIdent(kn)}`);
      }
      ctes.push(`u AS (UPDATE ${t.quoted} t SET ${sets.join(', ')} FROM unnest(${args.join(', ')}) AS k(${names.join(', ')}) WHERE ${keyMatch} RETURNING 1)`);
      counts.push('(SELECT count(*) FROM u)::int AS u');
      expect.u = plan.updates.length;
    }
    if (plan.inserts.length > 0) {
      // Columns the source did not send take their default: one INSERT per set of sent columns (usually one).
      const groups = new Map<string, Array<{ values: Value[] }>>();
      for (const x of plan.inserts) {
        const sig = x.values.map((v) => (v === NOT_SENT ? '0' : '1')).join('');
        let g = groups.get(sig);
        if (!g) groups.set(sig, (g = []));
        g.push(x);
      }
      let gi = 0;
      for (const [sig, rows] of groups) {
        const sent = cols.map((c, j) => ({ c, j })).filter(({ j }) => sig[j] === '1');
        const args = sent.map(({ j }) => p(rows.map((x) => x.values[j] as string | null), 'text[]'));
        const name = `i${gi++}`;
        ctes.push(
          `${name} AS (INSERT INTO ${t.quoted} (${sent.map(({ c }) => quoteIdent(c.name)).join(', ')})${overriding(sent.map(({ c }) => c))}
             SELECT ${sent.map(({ c, j }) => `(k.c${j})::${c.castType}`).join(', ')} FROM unnest(${args.join(', ')}) AS k(${sent.map(({ j }) => `c${j}`).join(', ')})
             ON CONFLICT (${kc.map((c) => quoteIdent(c.name)).join(', ')}) DO NOTHING RETURNING 1)`,
        );
        counts.push(`(SELECT count(*) FROM ${name})::int AS ${name}`);
        expect[name] = rows.length;
      }
    }
    const rel = plan.versions.length + plan.conflicts.length > 0 ? p(table, 'text') : '';
    if (plan.versions.length > 0) {
      const vs = plan.versions;
      const args = [
        ...kc.map((_, j) => p(vs.map((v) => v.pk[j]!), 'text[]')),
        p(vs.map((v) => v.version.tsUs.toString()), 'int8[]'),
        p(vs.map((v) => v.version.region), 'text[]'),
        p(vs.map((v) => v.entryXid ?? null), 'text[]'),
        p(vs.map((v) => v.deleted), 'bool[]'),
        p(vs.map((v) => v.version.priority === true), 'bool[]'),
      ];
      ctes.push(
        versionUpsert(
          'v',
          `SELECT ${rel}, ARRAY[${kc.map((_, j) => `k.p${j}`).join(', ')}]::text[], ${usToTs('k.ts')}, k.region, k.ex::xid8, k.deleted, k.priority
             FROM unnest(${args.join(', ')}) AS k(${kc.map((_, j) => `p${j}`).join(', ')}, ts, region, ex, deleted, priority)`,
        ),
      );
      counts.push('(SELECT count(*) FROM v WHERE ok)::int AS v');
      expect.v = vs.length;
    }
    if (plan.conflicts.length > 0) {
      const cf = plan.conflicts;
      const args = [
        p(cf.map((c) => JSON.stringify(c.pk)), 'text[]'),
        p(cf.map((c) => c.kind), 'text[]'),
        p(cf.map((c) => (c.local ? usToTimestamp(c.local.tsUs) : null)), 'text[]'),
        p(cf.map((c) => c.local?.region ?? null), 'text[]'),
        p(cf.map((c) => usToTimestamp(c.remote.tsUs)), 'text[]'),
        p(cf.map((c) => c.remote.region), 'text[]'),
        p(cf.map((c) => (c.localRow === undefined || c.localRow === null ? null : JSON.stringify(c.localRow))), 'text[]'),
        p(cf.map((c) => (c.remoteRow ? JSON.stringify(c.remoteRow) : null)), 'text[]'),
        p(cf.map((c) => c.decision), 'text[]'),
        p(cf.map((c) => c.reason ?? null), 'text[]'),
        p(cf.map((c) => formatLsn(c.lsn)), 'text[]'),
      ];
      ctes.push(
        `c AS (INSERT INTO tandem.conflicts (peer, relname, pk, kind, local_commit_ts, local_region, remote_commit_ts, remote_region, local_row, remote_row, decision, reason, source_lsn)
           SELECT ${p(this.#o.peer, 'text')}, ${rel}, ARRAY(SELECT jsonb_array_elements_text(k.pk::jsonb)), k.kind, k.lts::timestamptz, k.lr, k.rts::timestamptz, k.rr,
                  k.lrow::jsonb, k.rrow::jsonb, k.decision, k.reason, k.lsn::pg_lsn
             FROM unnest(${args.join(', ')}) AS k(pk, kind, lts, lr, rts, rr, lrow, rrow, decision, reason, lsn) RETURNING 1)`,
      );
      counts.push('(SELECT count(*) FROM c)::int AS c');
      expect.c = plan.conflicts.length;
    }
    if (ctes.length === 0) return;
    const { rows } = await this.#o.db.query<Record<string, number>>(this.#named(`WITH ${ctes.join(',\n')}\nSELECT ${counts.join(', ')}`), params);
    const got = rows[0]!;
    for (const [k, want] of Object.entries(expect)) {
      if (got[k] !== want) {
        throw new RaceError(`${table}: expected ${want} rows for "${k}" but ${got[k]} were written (a concurrent writer got in between); retrying the batch`);
      }
    }
    stats.rows += plan.deletes.length + plan.updates.length + plan.inserts.length;
  }
}

/** The source's value goes in as it is, also into `GENERATED ALWAYS AS IDENTITY` columns (every region must hold the same value). */
function overriding(cols: readonly TargetColumn[]): string {
  return cols.some((c) => c.identityAlways) ? ' OVERRIDING SYSTEM VALUE' : '';
}

/** The values of `statusUpsert`'s arguments after the peer: commit time, LSN, heartbeat, transactions, rows, origin time. */
function statusParams(batch: Batch, stats: ApplyStats): unknown[] {
  return [
    usToTimestamp(batch.sourceTsUs),
    formatLsn(batch.progress.lsn),
    batch.heartbeatUs === undefined ? null : usToTimestamp(batch.heartbeatUs),
    batch.txns,
    stats.rows,
    usToTimestamp(batch.progress.tsUs),
  ];
}

/**
 * The upsert of this peer's `tandem.replication_status` row that also sets up the replication origin's
 * progress for the transaction (so both commit with the data). Arguments are SQL expressions.
 */
function statusUpsert(a: { peer: string; commitTs: string; lsn: string; heartbeat: string; txns: string; rows: string; originTs: string }): string {
  return `INSERT INTO tandem.replication_status AS s (peer, source_commit_ts, source_lsn, applied_at, last_heartbeat_at, applied_txns, applied_rows)
   SELECT ${a.peer}, ${a.commitTs}::timestamptz, ${a.lsn}::pg_lsn, clock_timestamp(), ${a.heartbeat}::timestamptz, ${a.txns}, ${a.rows}
     FROM (SELECT pg_replication_origin_xact_setup(${a.lsn}::pg_lsn, ${a.originTs}::timestamptz)) AS origin
   ON CONFLICT (peer) DO UPDATE SET
     source_commit_ts = GREATEST(s.source_commit_ts, EXCLUDED.source_commit_ts),
     source_lsn = EXCLUDED.source_lsn,
     applied_at = EXCLUDED.applied_at,
     last_heartbeat_at = COALESCE(GREATEST(s.last_heartbeat_at, EXCLUDED.last_heartbeat_at), s.last_heartbeat_at),
     applied_txns = s.applied_txns + EXCLUDED.applied_txns,
     applied_rows = s.applied_rows + EXCLUDED.applied_rows`;
}

/**
 * A CTE that writes version entries: `select` yields (relname, pk, commit_ts, region, expected xid,
 * deleted, priority) per key, the expected xid being that of the entry the decision was made on, or null
 * when there was none. One INSERT ... ON CONFLICT, so each key is one probe of the primary key whatever
 * the planner believes about the table (a join here was planned as a scan of every entry of the table
 * once its statistics lagged behind a bulk load: quadratic). It returns `ok` per key written as planned:
 * a new entry, or the expected entry updated. A concurrent writer makes a key come back not ok (an entry
 * that vanished is inserted with the stale xid) or not at all (an entry changed or appeared), so the
 * counts differ and the batch is retried.
 */
function versionUpsert(name: string, select: string): string {
  return `${name} AS (INSERT INTO tandem.row_versions AS v (relname, pk, commit_ts, region, xid, deleted, priority)
   SELECT s.relname, s.pk, s.commit_ts, s.region, COALESCE(s.expected, pg_current_xact_id()), s.deleted, s.priority
     FROM (${select}) AS s(relname, pk, commit_ts, region, expected, deleted, priority)
   ON CONFLICT (relname, pk) DO UPDATE SET commit_ts = EXCLUDED.commit_ts, region = EXCLUDED.region, xid = pg_current_xact_id(),
     deleted = EXCLUDED.deleted, priority = EXCLUDED.priority
     WHERE v.xid = EXCLUDED.xid
   RETURNING v.xid = pg_current_xact_id() AS ok)`;
}

/** Marks of the errors the set-based statement raises on purpose (see `tableCtes`). */
const RACE_MARK = 'tandem: a concurrent writer changed rows of';
const DUP_MARK = 'tandem: two keys of one batch map to the same primary key';

/** One table's share of a set-based apply statement. */
interface SqlPart {
  t: TargetTable;
  table: string;
  /** Target column indexes the source sends, in order: the value arrays hold these. */
  sent: number[];
  /** Positions (in `sent`) with an unchanged TOAST value somewhere in the batch. */
  toast: Set<number>;
  priority: string | null;
  /** jsonb: [op, commit µs, region, complete, lsn, [key texts], [values] | null] per key. */
  rows: string;
  names: string;
}

/**
 * The CTEs of one table (suffix `n`) in a set-based apply statement, with its parameters at `$b+1`
 * (rows), `$b+2` (relname), `$b+3` (column names), `$b+4` (priority region); `$1` is this region and
 * `$2` the peer. Returns the CTEs, a subquery of counts (`p<n>`) and the condition that every write
 * touched exactly the rows it planned.
 */
function tableCtes(part: SqlPart, n: number, b: number): { ctes: string[]; result: string; ok: string } {
  const { t, sent, toast } = part;
  const kc = t.keyColumns;
  const cols = t.columns;
  const q = (c: TargetColumn) => quoteIdent(c.name);
  const [rowsP, relP, namesP, prioP] = [`$${b + 1}::jsonb`, `$${b + 2}::text`, `$${b + 3}::jsonb`, `$${b + 4}::text`];
  const [k, dec] = [`k${n}`, `dec${n}`];
  const keyMatch = (alias: string) => kc.map((c, j) => `${alias}.${q(c)} = d.k${j}`).join(' AND ');
  const pkExpr = `ARRAY[${kc.map((_, j) => `k.k${j}::text`).join(', ')}]::text[]`;
  // Remote version vs local version under the policy (resolve.compareUnderPolicy): the rank first
  // (region-priority), then the commit time, then the region bytewise.
  const lww = `(l.rts > l.lts OR (l.rts = l.lts AND l.region COLLATE "C" >= l.lreg COLLATE "C"))`;
  const wins = part.priority !== null ? `CASE WHEN (l.region = ${prioP}) IS DISTINCT FROM (l.lreg = ${prioP} OR l.lprio) THEN l.region = ${prioP} ELSE ${lww} END` : lww;
  const incomplete = sqlLiteral(incompleteReason);
  const stale = sqlLiteral(sameRegionStale);
  const ctes: string[] = [];
  ctes.push(`${k} AS MATERIALIZED (
  SELECT x.o AS i, x.r->>0 AS op, ${usToTs('(x.r->>1)::int8')} AS rts, x.r->>2 AS region, (x.r->>3)::bool AS complete, x.r->>4 AS lsn, x.r->6 AS v,
         ${kc.map((c, j) => `(x.r->5->>${j})::${c.castType} AS k${j}`).join(', ')}
    FROM jsonb_array_elements(${rowsP}) WITH ORDINALITY AS x(r, o)
)`);
  // The local state (lk): 'e' row written by apply (entry xid = row xmin), 'l' local row, 't' tombstone,
  // 'a' absent; then resolve.decide's table, case by case.
  ctes.push(`${dec} AS MATERIALIZED (
  SELECT w.*,
    CASE WHEN w.op = 'd' THEN CASE WHEN w.lk = 'a' OR (w.lk = 't' AND w.wins) THEN 'tombstone' WHEN w.lk = 't' THEN 'skip' WHEN w.wins THEN 'delete' ELSE 'skip' END
         WHEN w.lk = 'a' THEN CASE WHEN w.complete THEN 'upsert' ELSE 'skip' END
         WHEN w.lk = 't' THEN CASE WHEN w.wins AND w.complete THEN 'upsert' ELSE 'skip' END
         WHEN w.wins THEN 'upsert' ELSE 'skip' END AS act,
    CASE WHEN w.op = 'd' THEN CASE WHEN w.lk IN ('a', 't') THEN 'delete_missing' WHEN w.wins AND w.same THEN NULL ELSE 'delete_origin_differs' END
         WHEN w.lk = 'a' THEN CASE WHEN w.op = 'i' AND w.complete THEN NULL ELSE 'update_missing' END
         WHEN w.lk = 't' THEN CASE WHEN w.op = 'u' THEN 'update_deleted' WHEN w.wins AND w.complete THEN NULL ELSE 'insert_deleted' END
         WHEN w.op = 'u' AND w.same AND w.wins THEN NULL
         WHEN w.op = 'i' THEN 'insert_exists' ELSE 'update_origin_differs' END AS kind,
    CASE WHEN w.op <> 'd' AND NOT w.complete AND (w.lk = 'a' OR (w.lk = 't' AND w.wins)) THEN ${incomplete}
         WHEN w.lk IN ('l', 'e') AND w.same AND NOT w.wins AND w.op <> 'i' THEN ${stale} END AS reason
  FROM (SELECT l.*, (l.lk = 'a' OR ${wins}) AS wins, l.lreg = l.region AS same
          FROM (SELECT s.*,
                  CASE s.lk WHEN 'a' THEN NULL WHEN 'l' THEN COALESCE(pg_xact_commit_timestamp(s.txmin), 'epoch'::timestamptz)
                            ELSE COALESCE(s.ects, pg_xact_commit_timestamp(xid(s.exid)), 'epoch'::timestamptz) END AS lts,
                  CASE s.lk WHEN 'a' THEN NULL WHEN 'l' THEN $1::text ELSE s.ereg END AS lreg,
                  (s.lk IN ('e', 't') AND s.eprio) AS lprio
                  FROM (SELECT k.*, ${pkExpr} AS pk, t.xmin AS txmin, t.ctid AS tctid, e.xid AS exid, e.ctid AS ectid, e.commit_ts AS ects, e.region AS ereg, e.priority AS eprio,
                          CASE WHEN t.xmin IS NOT NULL THEN CASE WHEN NOT e.deleted AND xid(e.xid) = t.xmin THEN 'e' ELSE 'l' END
                               WHEN e.deleted THEN 't' ELSE 'a' END AS lk
                          FROM ${k} k
                          LEFT JOIN ${t.quoted} t ON ${kc.map((c, j) => `t.${q(c)} = k.k${j}`).join(' AND ')}
                          LEFT JOIN tandem.row_versions e ON e.relname = ${relP} AND e.pk = ${pkExpr}) s) l) w
)`);
  // Two keys of the batch with different texts but one primary key value (the types differ between regions)
  // would make the writes below ambiguous: checked once, before the first insert (the inserts' InitPlan).
  ctes.push(`g${n} AS (SELECT CASE WHEN count(*) = count(DISTINCT pk) THEN true
     ELSE (${sqlLiteral(`${DUP_MARK} in ${part.table}: `)} || (count(*) - count(DISTINCT pk))::text)::int = 0 END AS ok FROM ${dec})`);
  const pos = new Map(sent.map((j, p) => [j, p]));
  const keyIdx = new Set(kc.map((c) => cols.indexOf(c)));
  const sets: string[] = [];
  for (const j of sent) {
    if (keyIdx.has(j)) continue;
    const c = cols[j]!;
    const p = pos.get(j)!;
    const value = `(d.v->>${p})::${c.castType}`;
    sets.push(toast.has(p) ? `${q(c)} = CASE WHEN jsonb_typeof(d.v->${p}) = 'number' THEN t.${q(c)} ELSE ${value} END` : `${q(c)} = ${value}`);
  }
  // Only key columns: touch the row so its xmin is this transaction (the version entry must match it).
  if (sets.length === 0) sets.push(`${q(kc[0]!)} = t.${q(kc[0]!)}`);
  const sentCols = sent.map((j) => cols[j]!);
  ctes.push(
    `wd${n} AS (DELETE FROM ${t.quoted} t USING ${dec} d WHERE d.act = 'delete' AND t.ctid = d.tctid AND t.xmin = d.txmin AND ${keyMatch('t')} RETURNING 1)`,
    `wu${n} AS (UPDATE ${t.quoted} t SET ${sets.join(', ')} FROM ${dec} d WHERE d.act = 'upsert' AND d.txmin IS NOT NULL AND t.ctid = d.tctid AND t.xmin = d.txmin AND ${keyMatch('t')} RETURNING 1)`,
    `wi${n} AS (INSERT INTO ${t.quoted} (${sentCols.map(q).join(', ')})${overriding(sentCols)}
   SELECT ${sent.map((j, p) => `(d.v->>${p})::${cols[j]!.castType}`).join(', ')} FROM ${dec} d WHERE d.act = 'upsert' AND d.txmin IS NULL AND (SELECT ok FROM g${n})
   RETURNING 1)`,
    // Version entries: one that exists is updated where it was read (its ctid, if it still has the xid the
    // decision saw: a HOT update, no index work), a new one inserted. New rows and entries are plain INSERTs,
    // without ON CONFLICT (which costs a second index probe per row): a concurrent writer that made the same
    // key first makes them fail with a unique violation, which `#runSql` turns into a retry of the batch.
    `vu${n} AS (UPDATE tandem.row_versions e SET commit_ts = d.rts, region = d.region, xid = pg_current_xact_id(), deleted = d.act <> 'upsert', priority = false
   FROM ${dec} d WHERE d.act <> 'skip' AND d.exid IS NOT NULL AND e.ctid = d.ectid AND e.xid = d.exid AND e.pk = d.pk RETURNING 1)`,
    `vn${n} AS (INSERT INTO tandem.row_versions (relname, pk, commit_ts, region, xid, deleted, priority)
   SELECT ${relP}, d.pk, d.rts, d.region, pg_current_xact_id(), d.act <> 'upsert', false FROM ${dec} d WHERE d.act <> 'skip' AND d.exid IS NULL AND (SELECT ok FROM g${n})
   RETURNING 1)`,
    `wc${n} AS (INSERT INTO tandem.conflicts (peer, relname, pk, kind, local_commit_ts, local_region, remote_commit_ts, remote_region, local_row, remote_row, decision, reason, source_lsn)
   SELECT $2, ${relP}, d.pk, d.kind, d.lts, d.lreg, d.rts, d.region,
          CASE WHEN d.txmin IS NOT NULL THEN (SELECT to_jsonb(t.*) FROM ${t.quoted} t WHERE ${keyMatch('t')}) END,
          CASE WHEN d.op <> 'd' THEN (SELECT jsonb_object_agg(c.name, x.val) FROM jsonb_array_elements(d.v) WITH ORDINALITY AS x(val, o)
                                        JOIN jsonb_array_elements_text(${namesP}) WITH ORDINALITY AS c(name, o) USING (o)
                                       WHERE jsonb_typeof(x.val) <> 'number') END,
          CASE WHEN d.act = 'skip' THEN 'skip' ELSE 'apply' END, d.reason, d.lsn::pg_lsn
     FROM ${dec} d WHERE d.kind IS NOT NULL RETURNING 1)`,
  );
  // distinct<n> is not read: selecting it runs the duplicate check also for a batch that inserts nothing.
  const result = `SELECT (SELECT count(*) FROM wd${n})::int AS wd${n}, (SELECT count(*) FROM wu${n})::int AS wu${n}, (SELECT count(*) FROM wi${n})::int AS wi${n},
         ((SELECT count(*) FROM vu${n}) + (SELECT count(*) FROM vn${n}))::int AS vx${n}, ${prioP} AS priority${n},
         count(*) FILTER (WHERE act = 'delete')::int AS xd${n},
         count(*) FILTER (WHERE act = 'upsert' AND txmin IS NOT NULL)::int AS xu${n},
         count(*) FILTER (WHERE act = 'upsert' AND txmin IS NULL)::int AS xi${n},
         count(*) FILTER (WHERE act <> 'skip')::int AS xvx${n},
         count(*) FILTER (WHERE reason = ${incomplete})::int AS unapplicable${n},
         (SELECT ok FROM g${n}) AS distinct${n},
         (SELECT jsonb_object_agg(z.kind, z.c) FROM (SELECT kind, count(*)::int AS c FROM ${dec} WHERE kind IS NOT NULL GROUP BY kind) z) AS kinds${n}
    FROM ${dec}`;
  const pairs = [['wd', 'xd'], ['wu', 'xu'], ['wi', 'xi'], ['vx', 'xvx']] as const;
  const ok = pairs.map(([got, want]) => `p${n}.${got}${n} = p${n}.${want}${n}`).join(' AND ');
  return { ctes, result, ok };
}

/** Map from target column index to source column index (by name). */
const columnMaps = new WeakMap<SourceRelation, WeakMap<TargetTable, number[]>>();
function columnMap(rel: SourceRelation, t: TargetTable): number[] {
  let m = columnMaps.get(rel);
  if (!m) columnMaps.set(rel, (m = new WeakMap()));
  let map = m.get(t);
  if (!map) {
    const byName = new Map(rel.columns.map((c, i) => [c.name, i]));
    // -1: a column only this region has; apply leaves it alone (default on insert, unchanged on update).
    map = t.columns.map((c) => byName.get(c.name) ?? -1);
    m.set(t, map);
  }
  return map;
}

function valuesFrom(tuple: TupleValue[], map: number[]): Value[] {
  const values: Value[] = new Array<Value>(map.length);
  for (let j = 0; j < map.length; j++) {
    const i = map[j]!;
    if (i < 0) {
      values[j] = NOT_SENT;
      continue;
    }
    const v = tuple[i];
    if (v === undefined) throw new TandemError('TANDEM_ERR_PROTOCOL', `tuple has ${tuple.length} columns, expected at least ${i + 1}`);
    if (Buffer.isBuffer(v)) throw new TandemError('TANDEM_ERR_PROTOCOL', 'binary tuple values are not expected (the stream runs in text mode)');
    values[j] = v;
  }
  return values;
}

/** The key's texts; `keyAt` holds the tuple position of each key column. */
function keyFrom(tuple: TupleValue[] | undefined, keyAt: number[], t: TargetTable, c: RowChange): string[] {
  if (!tuple) throw new TandemError('TANDEM_ERR_PROTOCOL', `${t.key}: ${c.op} without the tuple that identifies the row`);
  const key: string[] = new Array<string>(keyAt.length);
  for (let j = 0; j < keyAt.length; j++) {
    const v = tuple[keyAt[j]!];
    if (typeof v !== 'string') {
      throw new TandemError(
        'TANDEM_ERR_REPLICATION',
        `${t.key}: key column "${t.keyColumns[j]!.name}" of a ${c.op} has no value (${v === null ? 'null' : v === UNCHANGED_TOAST ? 'unchanged TOAST' : 'binary'})`,
      );
    }
    key[j] = v;
  }
  return key;
}

function textRow(t: TargetTable, values: Value[]): Record<string, string | null> {
  const out: Record<string, string | null> = {};
  t.columns.forEach((c, j) => {
    const v = values[j];
    if (!keepsLocal(v) && v !== undefined) out[c.name] = v as string | null;
  });
  return out;
}

function parseKey(key: string): { schema: string; table: string } {
  // tableKey output is always two quoted identifiers; parse them back.
  const m = /^"((?:[^"]|"")*)"\."((?:[^"]|"")*)"$/.exec(key);
  if (!m) throw new TandemError('TANDEM_ERR_INTERNAL', `not a canonical table key: ${key}`);
  return { schema: m[1]!.replaceAll('""', '"'), table: m[2]!.replaceAll('""', '"') };
}

/** JSON forms of relations and tuples for `tandem.parked`. */
interface RelationJson {
  relationId: number;
  schema: string;
  name: string;
  replicaIdentity: SourceRelation['replicaIdentity'];
  columns: SourceRelation['columns'];
  userTypes: Array<[number, { schema: string; name: string }]>;
}
type TupleJson = Array<string | null | { u: true } | { b: string }>;

function relationToJson(rel: SourceRelation): RelationJson {
  return { relationId: rel.relationId, schema: rel.schema, name: rel.name, replicaIdentity: rel.replicaIdentity, columns: rel.columns, userTypes: [...rel.userTypes] };
}

function relationFromJson(j: RelationJson): SourceRelation {
  return {
    relationId: j.relationId,
    schema: j.schema,
    name: j.name,
    replicaIdentity: j.replicaIdentity,
    columns: j.columns,
    userTypes: new Map(j.userTypes),
    key: tableKey({ schema: j.schema, table: j.name }),
  };
}

function tupleToJson(t: TupleValue[]): TupleJson {
  return t.map((v) => (v === UNCHANGED_TOAST ? { u: true as const } : Buffer.isBuffer(v) ? { b: v.toString('base64') } : v));
}

function tupleFromJson(t: TupleJson): TupleValue[] {
  return t.map((v) => (v !== null && typeof v === 'object' ? ('u' in v ? UNCHANGED_TOAST : Buffer.from(v.b, 'base64')) : v));
}

/** Exposed for tests. */
export const internals = { relationToJson, relationFromJson, tupleToJson, tupleFromJson, parseKey };
