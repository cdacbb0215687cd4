/**
 * tandem's own bookkeeping schema, `tandem.*`, created in every region by
 * `tandem replicate setup`. It is never published (the publication lists only
 * the replicated tables), so each region keeps its own copy:
 *
 * - `node`: which region this database is.
 * - `row_versions`: the version (source commit time, region) of every row the
 *   apply wrote, and every tombstone (local deletes via the capture trigger,
 *   remote deletes via apply).
 * - `conflicts`: every conflict, with both versions and the decision.
 * - `replication_status`: per peer, the last applied source commit time and
 *   LSN; what `readLag()` and the controller read.
 * - `parked`: changes of a table whose apply is paused by schema drift.
 */
import { createHash } from 'node:crypto';
import { quoteIdent, quoteTable, tableKey, type TableName } from '../core/sql.ts';

/** The schema name; fixed so every part of tandem finds it. */
export const TANDEM_SCHEMA = 'tandem';

/**
 * Session settings under which every text form tandem compares is produced:
 * the apply session and the capture trigger use them, so a key's text is the
 * same in every region whatever the user's session settings are.
 */
export const CANONICAL_SETTINGS: ReadonlyArray<readonly [string, string]> = [
  ['datestyle', 'ISO, MDY'],
  ['intervalstyle', 'postgres'],
  ['extra_float_digits', '3'],
  ['timezone', 'UTC'],
  ['bytea_output', 'hex'],
];

/** DDL of the `tandem` schema; every statement is idempotent. */
export const SCHEMA_DDL: readonly string[] = [
  `CREATE SCHEMA IF NOT EXISTS tandem`,
  `COMMENT ON SCHEMA tandem IS 'tandem replication bookkeeping; per region, never replicated'`,
  `CREATE TABLE IF NOT EXISTS tandem.node (
     singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
     region text NOT NULL,
     created_at timestamptz NOT NULL DEFAULT now()
   )`,
  // fillfactor leaves room for HOT updates: apply rewrites the same keys' versions over and over.
  // COLLATE "C": keys are compared bytewise, without the database's (possibly ICU/libc) collation cost.
  `CREATE TABLE IF NOT EXISTS tandem.row_versions (
     relname text COLLATE "C" NOT NULL,
     pk text[] COLLATE "C" NOT NULL,
     commit_ts timestamptz,
     region text NOT NULL,
     xid xid8 NOT NULL,
     deleted boolean NOT NULL,
     priority boolean NOT NULL DEFAULT false,
     PRIMARY KEY (relname, pk)
   ) WITH (fillfactor = 80)`,
  // Apply joins every batch to this table: statistics taken while it was small make the planner hash every
  // entry of the table for a 20-row batch. A table that grows by one entry per applied row needs analyzing
  // (and its dead versions vacuuming) far sooner than the default 10 % / 20 % of its size.
  `ALTER TABLE tandem.row_versions SET (autovacuum_analyze_scale_factor = 0.005, autovacuum_vacuum_scale_factor = 0.01)`,
  // Tombstone expiry finds tombstones through an index whose columns (relname, and deleted in its predicate)
  // stay the same when a live entry gets a newer version, so those updates are HOT: no index entry, same
  // page. The earlier index on commit_ts made every version update a full one (its column changed).
  `DROP INDEX IF EXISTS tandem.row_versions_tombstones`,
  `CREATE INDEX IF NOT EXISTS row_versions_deleted ON tandem.row_versions (relname) WHERE deleted`,
  `CREATE TABLE IF NOT EXISTS tandem.conflicts (
     id bigserial PRIMARY KEY,
     at timestamptz NOT NULL DEFAULT now(),
     peer text NOT NULL,
     relname text NOT NULL,
     pk text[] NOT NULL,
     kind text NOT NULL,
     local_commit_ts timestamptz,
     local_region text,
     remote_commit_ts timestamptz NOT NULL,
     remote_region text NOT NULL,
     local_row jsonb,
     remote_row jsonb,
     decision text NOT NULL,
     reason text,
     source_lsn pg_lsn
   )`,
  `CREATE INDEX IF NOT EXISTS conflicts_at ON tandem.conflicts (at)`,
  `CREATE INDEX IF NOT EXISTS conflicts_key ON tandem.conflicts (relname, pk)`,
  `CREATE TABLE IF NOT EXISTS tandem.replication_status (
     peer text PRIMARY KEY,
     source_commit_ts timestamptz,
     source_lsn pg_lsn,
     applied_at timestamptz,
     last_heartbeat_at timestamptz,
     applied_txns bigint NOT NULL DEFAULT 0,
     applied_rows bigint NOT NULL DEFAULT 0
   ) WITH (fillfactor = 50)`,
  `CREATE TABLE IF NOT EXISTS tandem.parked (
     id bigserial PRIMARY KEY,
     peer text NOT NULL,
     relname text NOT NULL,
     parked_at timestamptz NOT NULL DEFAULT now(),
     reason text NOT NULL,
     source_lsn pg_lsn NOT NULL,
     commit_ts timestamptz NOT NULL,
     op text NOT NULL CHECK (op IN ('insert', 'update', 'delete', 'truncate')),
     relation jsonb NOT NULL,
     new_tuple jsonb,
     old_tuple jsonb,
     old_kind text,
     options jsonb
   )`,
  `CREATE INDEX IF NOT EXISTS parked_peer_rel ON tandem.parked (peer, relname, id)`,
];

/** Name of the capture trigger function of one table (deterministic, fits in 63 bytes). */
export function captureFunctionName(t: TableName): string {
  const h = createHash('sha256').update(tableKey(t)).digest('hex').slice(0, 16);
  return `capture_delete_${h}`;
}

/** Trigger names on replicated tables. */
export const CAPTURE_DELETE_TRIGGER = 'tandem_capture_delete';
export const CAPTURE_KEY_CHANGE_TRIGGER = 'tandem_capture_key_change';

/**
 * DDL that installs the capture trigger on one table: after a local DELETE (or
 * an UPDATE that changes the key) it upserts a tombstone into
 * `tandem.row_versions` with the deleting transaction's id; its commit time is
 * resolved lazily with `pg_xact_commit_timestamp`, which is exactly the commit
 * time pgoutput sends to the peers for that transaction. Apply sessions run
 * with `session_replication_role = replica`, so it never fires for applied
 * changes. The function is generated per table so the key's text is computed
 * without dynamic SQL; its SET clauses fix the text form of the key.
 */
export function captureTriggerDdl(t: TableName, keyColumns: readonly string[], region: string): string[] {
  const fn = `tandem.${quoteIdent(captureFunctionName(t))}`;
  const table = quoteTable(t);
  const pkOld = `ARRAY[${keyColumns.map((c) => `(OLD.${quoteIdent(c)})::text`).join(', ')}]::text[]`;
  const settings = CANONICAL_SETTINGS.map(([k, v]) => `SET ${k} TO ${sqlLiteral(v)}`).join(' ');
  const changed = keyColumns.map((c) => `OLD.${quoteIdent(c)} IS DISTINCT FROM NEW.${quoteIdent(c)}`).join(' OR ');
  return [
    `CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql ${settings} AS $tandem$
BEGIN
  INSERT INTO tandem.row_versions AS v (relname, pk, commit_ts, region, xid, deleted)
  VALUES (${sqlLiteral(tableKey(t))}, ${pkOld}, NULL, ${sqlLiteral(region)}, pg_current_xact_id(), true)
  ON CONFLICT (relname, pk) DO UPDATE SET commit_ts = NULL, region = EXCLUDED.region, xid = EXCLUDED.xid, deleted = true,
    -- a region-priority trigger of this same transaction may have marked the tombstone as inheriting the rank
    priority = (v.xid = EXCLUDED.xid AND v.priority);
  RETURN NULL;
END
$tandem$`,
    `COMMENT ON FUNCTION ${fn}() IS ${sqlLiteral(`tandem: tombstones for local deletes of ${tableKey(t)}`)}`,
    `CREATE OR REPLACE TRIGGER ${quoteIdent(CAPTURE_DELETE_TRIGGER)} AFTER DELETE ON ${table} FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
    `CREATE OR REPLACE TRIGGER ${quoteIdent(CAPTURE_KEY_CHANGE_TRIGGER)} AFTER UPDATE OF ${keyColumns.map(quoteIdent).join(', ')} ON ${table}
       FOR EACH ROW WHEN (${changed}) EXECUTE FUNCTION ${fn}()`,
  ];
}

/** Name of the region-priority trigger function of one table. */
export function priorityFunctionName(t: TableName): string {
  const h = createHash('sha256').update(tableKey(t)).digest('hex').slice(0, 16);
  return `capture_priority_${h}`;
}

export const PRIORITY_TRIGGER_BEFORE = 'tandem_priority_before';
export const PRIORITY_TRIGGER_AFTER = 'tandem_priority_after';

/**
 * region-priority tables, in every region except the priority one: a local
 * write that replaces a version of the priority region (or one that already
 * inherited its rank) inherits the rank. The trigger records that in
 * `row_versions` (so this region's own view of the row's version agrees) and
 * emits a transactional `tandem.priority` message with the key, which the
 * peers' agents read from the stream and apply to that write's version.
 * Without it, a later write over the priority region's row would lose in
 * every other region but stay here: divergence.
 *
 * UPDATE/DELETE are checked BEFORE the row changes (the replaced version's
 * xmin is still readable); INSERT AFTER (only a real insert, over a tombstone).
 */
export function priorityTriggerDdl(t: TableName, keyColumns: readonly string[], region: string, priorityRegion: string): string[] {
  const fn = `tandem.${quoteIdent(priorityFunctionName(t))}`;
  const table = quoteTable(t);
  const rel = sqlLiteral(tableKey(t));
  const pkOf = (rec: string) => `ARRAY[${keyColumns.map((c) => `(${rec}.${quoteIdent(c)})::text`).join(', ')}]::text[]`;
  const match = keyColumns.map((c) => `t.${quoteIdent(c)} = OLD.${quoteIdent(c)}`).join(' AND ');
  const settings = CANONICAL_SETTINGS.map(([k, v]) => `SET ${k} TO ${sqlLiteral(v)}`).join(' ');
  const ranked = `(e.priority OR e.region = ${sqlLiteral(priorityRegion)})`;
  const mark = (pk: string, deleted: string) => `
      PERFORM pg_logical_emit_message(true, ${sqlLiteral(PRIORITY_PREFIX)}, json_build_array(${rel}, ${pk})::text);
      INSERT INTO tandem.row_versions AS v (relname, pk, commit_ts, region, xid, deleted, priority)
      VALUES (${rel}, ${pk}, NULL, ${sqlLiteral(region)}, pg_current_xact_id(), ${deleted}, true)
      ON CONFLICT (relname, pk) DO UPDATE SET commit_ts = NULL, region = EXCLUDED.region, xid = EXCLUDED.xid, deleted = EXCLUDED.deleted, priority = true;`;
  return [
    `CREATE OR REPLACE FUNCTION ${fn}() RETURNS trigger LANGUAGE plpgsql ${settings} AS $tandem$
DECLARE
  oldpk text[];
  newpk text[];
  x xid;
  e record;
BEGIN
  IF TG_OP = 'INSERT' THEN
    newpk := ${pkOf('NEW')};
    SELECT v.deleted, v.priority, v.region INTO e FROM tandem.row_versions v WHERE v.relname = ${rel} AND v.pk = newpk;
    IF FOUND AND e.deleted AND ${ranked} THEN${mark('newpk', 'false')}
    END IF;
    RETURN NULL;
  END IF;
  oldpk := ${pkOf('OLD')};
  SELECT t.xmin INTO x FROM ${table} t WHERE ${match};
  SELECT v.deleted, v.priority, v.region, v.xid, v.commit_ts INTO e FROM tandem.row_versions v WHERE v.relname = ${rel} AND v.pk = oldpk;
  -- The entry describes the replaced row version when it was written with it: same transaction, or (for an
  -- entry this trigger wrote, whose row may carry a subtransaction id) the same commit.
  IF FOUND AND NOT e.deleted AND ${ranked}
     AND (xid(e.xid) = x OR (e.commit_ts IS NULL AND pg_xact_commit_timestamp(xid(e.xid)) = pg_xact_commit_timestamp(x))) THEN
    IF TG_OP = 'DELETE' THEN${mark('oldpk', 'true')}
    ELSE
      newpk := ${pkOf('NEW')};
      IF newpk <> oldpk THEN${mark('oldpk', 'true')}
      END IF;${mark('newpk', 'false')}
    END IF;
  END IF;
  IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
  RETURN NEW;
END
$tandem$`,
    `COMMENT ON FUNCTION ${fn}() IS ${sqlLiteral(`tandem: region-priority rank inheritance for ${tableKey(t)} (priority region ${priorityRegion})`)}`,
    `CREATE OR REPLACE TRIGGER ${quoteIdent(PRIORITY_TRIGGER_BEFORE)} BEFORE UPDATE OR DELETE ON ${table} FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
    `CREATE OR REPLACE TRIGGER ${quoteIdent(PRIORITY_TRIGGER_AFTER)} AFTER INSERT ON ${table} FOR EACH ROW EXECUTE FUNCTION ${fn}()`,
  ];
}

/** DDL that removes the region-priority triggers and function of one table. */
export function dropPriorityTriggerDdl(t: TableName): string[] {
  const table = quoteTable(t);
  return [
    `DROP TRIGGER IF EXISTS ${quoteIdent(PRIORITY_TRIGGER_BEFORE)} ON ${table}`,
    `DROP TRIGGER IF EXISTS ${quoteIdent(PRIORITY_TRIGGER_AFTER)} ON ${table}`,
    `DROP FUNCTION IF EXISTS tandem.${quoteIdent(priorityFunctionName(t))}()`,
  ];
}

/** DDL that removes the capture triggers and function of one table. */
export function dropCaptureTriggerDdl(t: TableName): string[] {
  const table = quoteTable(t);
  return [
    `DROP TRIGGER IF EXISTS ${quoteIdent(CAPTURE_DELETE_TRIGGER)} ON ${table}`,
    `DROP TRIGGER IF EXISTS ${quoteIdent(CAPTURE_KEY_CHANGE_TRIGGER)} ON ${table}`,
    `DROP FUNCTION IF EXISTS tandem.${quoteIdent(captureFunctionName(t))}()`,
  ];
}

/** A string literal for DDL (values in DML always go as bound parameters). */
export function sqlLiteral(value: string): string {
  if (value.includes('\u0000')) throw new TypeError('SQL literal contains a NUL byte');
  return `'${value.replaceAll("'", "''")}'`;
}

/** The publication every region publishes its replicated tables in. */
export const PUBLICATION = 'tandem';

/** Region name as it appears in slot and origin names ('-' is not allowed there). */
export function regionIdent(region: string): string {
  return region.replaceAll('-', '_');
}

/** The slot on `source` that the agent of `target` streams from. */
export function slotName(target: string): string {
  return `tandem_${regionIdent(target)}`;
}

/** The replication origin in the target that tracks progress of changes from `source`. */
export function originName(source: string): string {
  return `tandem_from_${regionIdent(source)}`;
}

/** Prefix of heartbeat messages (`pg_logical_emit_message`, non-transactional). */
export const HEARTBEAT_PREFIX = 'tandem.heartbeat';

/** Prefix of the transactional marker a region-priority capture trigger emits for a write that inherits the priority rank. */
export const PRIORITY_PREFIX = 'tandem.priority';
