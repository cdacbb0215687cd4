/**
 * Small helpers around durable logical replication slots (pgoutput): create
 * and drop them, create one with an exported snapshot for a consistent
 * initial copy, read a slot's state, and read the server's current WAL LSN.
 *
 * https://www.postgresql.org/docs/17/functions-admin.html#FUNCTIONS-REPLICATION
 * https://www.postgresql.org/docs/17/protocol-replication.html (CREATE_REPLICATION_SLOT)
 */
import pg from 'pg';
import type { PgConnectionConfig } from '../core/config/common.ts';
import { TandemError } from '../core/errors.ts';
import { sleep } from '../core/lifecycle.ts';
import { pgClientConfig } from '../core/pg.ts';
import { quoteIdent } from '../core/sql.ts';
import { parseLsn } from './protocol.ts';

/** Anything that runs a parameterised query: a pg Client, PoolClient or Pool. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/** Slot names PostgreSQL accepts: lower-case letters, digits and underscores, at most 63. */
export const SLOT_NAME_PATTERN = /^[a-z0-9_]{1,63}$/;

/** Throw a clear error unless `name` is a valid replication slot name. */
export function assertSlotName(name: string): void {
  if (!SLOT_NAME_PATTERN.test(name)) {
    throw new TandemError('TANDEM_ERR_USAGE', `invalid replication slot name ${JSON.stringify(name)}: use 1-63 lower-case letters, digits and "_"`);
  }
}

/** The state of one replication slot, from `pg_replication_slots`. */
export interface SlotState {
  slotName: string;
  plugin: string | null;
  slotType: 'logical' | 'physical';
  database: string | null;
  temporary: boolean;
  /** A walsender is streaming from it right now. */
  active: boolean;
  activePid: number | null;
  /** Oldest WAL the slot still needs (WAL before it can be recycled). */
  restartLsn: bigint | null;
  /** Up to where the consumer has acknowledged (logical slots): a restart streams transactions committed after it. */
  confirmedFlushLsn: bigint | null;
  /** `reserved`, `extended`, `unreserved` or `lost` (WAL removed: the slot is unusable). */
  walStatus: string | null;
  /** `true` once the slot was invalidated (e.g. `wal_removed`); PostgreSQL 16+ reports why. */
  conflicting: boolean | null;
  invalidationReason: string | null;
}

function lsnOrNull(text: string | null): bigint | null {
  return text === null ? null : parseLsn(text);
}

/** Read a slot's state; `undefined` when it does not exist. */
export async function readSlot(db: Queryable, slot: string): Promise<SlotState | undefined> {
  // to_jsonb(s) keeps this working across versions whose pg_replication_slots columns differ.
  const { rows } = await db.query<{ s: Record<string, unknown> }>('SELECT to_jsonb(s) AS s FROM pg_replication_slots s WHERE slot_name = $1', [slot]);
  const s = rows[0]?.s;
  if (!s) return undefined;
  const str = (k: string) => (typeof s[k] === 'string' ? (s[k] as string) : null);
  return {
    slotName: String(s.slot_name),
    plugin: str('plugin'),
    slotType: s.slot_type === 'physical' ? 'physical' : 'logical',
    database: str('database'),
    temporary: s.temporary === true,
    active: s.active === true,
    activePid: typeof s.active_pid === 'number' ? s.active_pid : null,
    restartLsn: lsnOrNull(str('restart_lsn')),
    confirmedFlushLsn: lsnOrNull(str('confirmed_flush_lsn')),
    walStatus: str('wal_status'),
    conflicting: typeof s.conflicting === 'boolean' ? s.conflicting : null,
    invalidationReason: str('invalidation_reason'),
  };
}

/** The server's current WAL write position (`pg_current_wal_lsn()`). */
export async function currentWalLsn(db: Queryable): Promise<bigint> {
  const { rows } = await db.query<{ lsn: string }>('SELECT pg_current_wal_lsn()::text AS lsn');
  return parseLsn(rows[0]!.lsn);
}

/** What `createLogicalSlot` did. */
export interface CreatedSlot {
  slot: string;
  /** The slot's consistent point (`lsn` of pg_create_logical_replication_slot), or its confirmed_flush_lsn if it already existed. */
  lsn: bigint;
  created: boolean;
}

/**
 * Create a durable logical slot using pgoutput in the connected database.
 * With `ifNotExists`, an existing pgoutput slot of this database is accepted
 * (anything else under that name is an error naming what is there).
 */
export async function createLogicalSlot(db: Queryable, slot: string, opts: { ifNotExists?: boolean } = {}): Promise<CreatedSlot> {
  assertSlotName(slot);
  const existing = async (): Promise<CreatedSlot | undefined> => {
    const s = await readSlot(db, slot);
    if (!s) return undefined;
    const { rows } = await db.query<{ db: string }>('SELECT current_database() AS db');
    if (s.slotType !== 'logical' || s.plugin !== 'pgoutput' || s.database !== rows[0]!.db || s.temporary) {
      throw new TandemError(
        'TANDEM_ERR_REPLICATION',
        `replication slot "${slot}" exists but is a ${s.temporary ? 'temporary ' : ''}${s.slotType} slot${s.plugin ? ` of plugin ${s.plugin}` : ''} in database ${s.database ?? '(none)'}; drop it or choose another name`,
      );
    }
    return { slot, lsn: s.confirmedFlushLsn ?? s.restartLsn ?? 0n, created: false };
  };
  if (opts.ifNotExists) {
    const found = await existing();
    if (found) return found;
  }
  try {
    const { rows } = await db.query<{ lsn: string }>(`SELECT lsn::text AS lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')`, [slot]);
    return { slot, lsn: parseLsn(rows[0]!.lsn), created: true };
  } catch (err) {
    // 42710 duplicate_object: created concurrently (or exists and ifNotExists was not given).
    if ((err as { code?: string }).code === '42710' && opts.ifNotExists) {
      const found = await existing();
      if (found) return found;
    }
    throw slotError(err, `cannot create replication slot "${slot}"`);
  }
}

/**
 * Drop a slot. With `ifExists` a missing slot is fine (returns false). With
 * `terminateActive` a walsender still streaming from it is terminated first
 * (otherwise dropping an active slot fails).
 */
export async function dropSlot(db: Queryable, slot: string, opts: { ifExists?: boolean; terminateActive?: boolean; waitMs?: number } = {}): Promise<boolean> {
  assertSlotName(slot);
  const deadline = Date.now() + (opts.waitMs ?? 10_000);
  for (;;) {
    const s = await readSlot(db, slot);
    if (!s) {
      if (opts.ifExists) return false;
      throw new TandemError('TANDEM_ERR_NOT_FOUND', `replication slot "${slot}" does not exist`);
    }
    if (s.active && s.activePid !== null) {
      if (!opts.terminateActive) {
        throw new TandemError('TANDEM_ERR_STATE', `replication slot "${slot}" is in use by process ${s.activePid}; stop its consumer first (or pass terminateActive)`);
      }
      await db.query('SELECT pg_terminate_backend($1)', [s.activePid]);
    } else {
      try {
        await db.query('SELECT pg_drop_replication_slot($1)', [slot]);
        return true;
      } catch (err) {
        const code = (err as { code?: string }).code;
        if (code === '42704' && opts.ifExists) return false; // dropped concurrently
        if (code !== '55006') throw slotError(err, `cannot drop replication slot "${slot}"`); // 55006: became active again
      }
    }
    if (Date.now() > deadline) throw new TandemError('TANDEM_ERR_TIMEOUT', `replication slot "${slot}" stayed active; could not drop it`);
    await sleep(100);
  }
}

/** A slot created over a replication connection together with an exported snapshot. */
export interface SnapshotSlot {
  slot: string;
  /** Changes committed after this LSN stream from the slot; everything before it is in the snapshot. */
  consistentPoint: bigint;
  /** Use with `SET TRANSACTION SNAPSHOT` in a REPEATABLE READ transaction, until `release()`. */
  snapshotName: string;
  /** Close the replication connection; the snapshot stops being importable, the slot stays. */
  release(): Promise<void>;
}

/**
 * Create a durable pgoutput slot with `CREATE_REPLICATION_SLOT ... LOGICAL
 * pgoutput (SNAPSHOT 'export')` and keep its replication connection open so
 * the exported snapshot stays valid: copy the initial data in transactions
 * that `SET TRANSACTION SNAPSHOT snapshotName`, then `release()` and stream
 * from `consistentPoint`. The bootstrap of a new region uses this.
 */
export async function createSlotWithSnapshot(
  connection: PgConnectionConfig,
  slot: string,
  opts: { bindAddress?: string; applicationName?: string; what?: string } = {},
): Promise<SnapshotSlot> {
  assertSlotName(slot);
  const what = opts.what ?? 'source database';
  const client = new pg.Client(
    pgClientConfig(connection, { replication: 'database', bindAddress: opts.bindAddress, applicationName: opts.applicationName ?? 'tandem-bootstrap' }, what),
  );
  client.on('error', () => {}); // surfaced through the failing query instead
  try {
    await client.connect();
  } catch (cause) {
    throw new TandemError('TANDEM_ERR_REPLICATION', `cannot open a replication connection to ${what} at ${connection.host}:${connection.port}: ${(cause as Error).message}`, { cause });
  }
  try {
    const { rows: v } = await client.query<{ server_version_num: string }>('SHOW server_version_num');
    const version = Number(v[0]!.server_version_num);
    // PostgreSQL 15 introduced the parenthesised option list; 14 only knows EXPORT_SNAPSHOT.
    const options = version >= 150000 ? `(SNAPSHOT 'export')` : 'EXPORT_SNAPSHOT';
    const { rows } = await client.query<{ slot_name: string; consistent_point: string; snapshot_name: string }>(
      `CREATE_REPLICATION_SLOT ${quoteIdent(slot)} LOGICAL pgoutput ${options}`,
    );
    const row = rows[0]!;
    let released = false;
    return {
      slot: row.slot_name,
      consistentPoint: parseLsn(row.consistent_point),
      snapshotName: row.snapshot_name,
      async release() {
        if (released) return;
        released = true;
        await client.end().catch(() => {});
      },
    };
  } catch (err) {
    await client.end().catch(() => {});
    throw slotError(err, `cannot create replication slot "${slot}" with an exported snapshot`);
  }
}

function slotError(err: unknown, what: string): TandemError {
  if (err instanceof TandemError) return err;
  const e = err as { code?: string; message?: string };
  const hint =
    e.code === '55000'
      ? ' (is wal_level=logical?)'
      : e.code === '53400'
        ? ' (all replication slots are in use: raise max_replication_slots)'
        : e.code === '42501'
          ? ' (the role needs the REPLICATION attribute)'
          : '';
  return new TandemError('TANDEM_ERR_REPLICATION', `${what}: ${e.message ?? String(err)}${hint}`, { cause: err, details: { sqlState: e.code } });
}
