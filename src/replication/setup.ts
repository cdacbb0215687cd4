/**
 * `tandem replicate setup` and `teardown`: per ordered pair of regions, the
 * publication and a durable pgoutput slot on the source, and the replication
 * origin, the `tandem` schema and the capture triggers on the target. Both are
 * idempotent. Prerequisites and table definitions of every region are checked
 * before anything is changed anywhere.
 */
import type pg from 'pg';
import type { Config } from '../core/config/index.ts';
import { TandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { silentLogger } from '../core/log.ts';
import { connectClient } from '../core/pg.ts';
import { parseTableName, quoteIdent, quoteTable, tableKey, type TableName } from '../core/sql.ts';
import { describeTables, typeProblems, type TargetTable } from './catalog.ts';
import { checkPrerequisites, formatProblems, type PrereqReport } from './prereq.ts';
import {
  PUBLICATION,
  SCHEMA_DDL,
  captureTriggerDdl,
  dropCaptureTriggerDdl,
  dropPriorityTriggerDdl,
  priorityTriggerDdl,
  originName,
  slotName,
} from './schema.ts';
import { createLogicalSlot, dropSlot, type Queryable } from './slot.ts';
import { setupInterleavedSequences } from './sequences.ts';

/** The replicated tables of a config as parsed names. */
export function configuredTables(config: Config): TableName[] {
  return config.replication.tables.map((t) => parseTableName(t));
}

/** region-priority tables of a config: table key → the priority region. */
export function priorityTables(config: Config): Map<string, string> {
  const out = new Map<string, string>();
  for (const [table, p] of Object.entries(config.replication.conflicts)) if (p.policy === 'region-priority') out.set(tableKey(parseTableName(table)), p.region);
  return out;
}

/**
 * Check that every table exists, has a primary key, and only has types with a
 * stable text form. Returns their descriptions; throws the first class of
 * problem with every offending table named.
 */
export async function validateTables(db: Queryable, tables: readonly TableName[], where = 'this region'): Promise<Map<string, TargetTable>> {
  const described = await describeTables(db, tables);
  const missing = tables.filter((t) => !described.get(tableKey(t)));
  if (missing.length > 0) {
    throw new TandemError('TANDEM_ERR_NOT_FOUND', `${where}: replicated table${missing.length > 1 ? 's' : ''} ${missing.map(tableKey).join(', ')} not found`, {
      details: { tables: missing.map(tableKey) },
    });
  }
  const out = new Map<string, TargetTable>();
  for (const t of tables) out.set(tableKey(t), described.get(tableKey(t))!);
  const noPk = [...out.values()].filter((t) => t.keyColumns.length === 0);
  if (noPk.length > 0) {
    throw new TandemError(
      'TANDEM_ERR_NO_PRIMARY_KEY',
      `${where}: table${noPk.length > 1 ? 's' : ''} ${noPk.map((t) => t.key).join(', ')} ha${noPk.length > 1 ? 've' : 's'} no primary key; tandem identifies rows by their primary key and cannot replicate ${noPk.length > 1 ? 'them' : 'it'} safely`,
      { details: { tables: noPk.map((t) => t.key) } },
    );
  }
  const typeIssues: string[] = [];
  for (const t of out.values()) for (const p of await typeProblems(db, t)) typeIssues.push(`${t.key} ${p}`);
  if (typeIssues.length > 0) {
    throw new TandemError('TANDEM_ERR_UNSUPPORTED_TYPE', `${where}: unsupported column types:\n  - ${typeIssues.join('\n  - ')}`, { details: { problems: typeIssues } });
  }
  const partitioned = [...out.values()].filter((t) => t.relkind === 'p');
  if (partitioned.length > 0) {
    throw new TandemError('TANDEM_ERR_UNSUPPORTED_TYPE', `${where}: partitioned tables are not supported yet: ${partitioned.map((t) => t.key).join(', ')} (list the partitions instead)`);
  }
  return out;
}

/**
 * Install tandem's schema, the node row and the capture triggers in one
 * database (the per-region half of setup). Idempotent; refuses a database
 * that already belongs to another region.
 */
export async function installRegion(
  db: Queryable,
  opts: { region: string; tables: readonly TableName[]; where?: string; /** region-priority tables: table key → priority region */ priority?: ReadonlyMap<string, string> },
): Promise<Map<string, TargetTable>> {
  const where = opts.where ?? opts.region;
  const described = await validateTables(db, opts.tables, where);
  await db.query('BEGIN');
  try {
    // One setup at a time per database (two operators, or the lab and an operator).
    await db.query(`SELECT pg_advisory_xact_lock(hashtext('tandem.setup'))`);
    for (const ddl of SCHEMA_DDL) await db.query(ddl);
    const { rows } = await db.query<{ region: string }>('SELECT region FROM tandem.node');
    if (rows[0] && rows[0].region !== opts.region) {
      throw new TandemError(
        'TANDEM_ERR_STATE',
        `${where}: this database belongs to region "${rows[0].region}", not "${opts.region}"; check regions[].database in tandem.yaml`,
      );
    }
    if (!rows[0]) await db.query('INSERT INTO tandem.node (region) VALUES ($1)', [opts.region]);
    for (const t of described.values()) {
      const keys = t.keyColumns.map((c) => c.name);
      for (const ddl of captureTriggerDdl(t.name, keys, opts.region)) await db.query(ddl);
      const p = opts.priority?.get(t.key);
      const ddls = p && p !== opts.region ? priorityTriggerDdl(t.name, keys, opts.region, p) : dropPriorityTriggerDdl(t.name);
      for (const ddl of ddls) await db.query(ddl);
    }
    // Tables that left replication.tables lose their capture triggers.
    const { rows: stale } = await db.query<{ schema: string; table: string }>(
      `SELECT n.nspname AS schema, c.relname AS table
         FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
         JOIN pg_proc p ON p.oid = tg.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
        WHERE pn.nspname = 'tandem' AND tg.tgname = 'tandem_capture_delete'`,
    );
    const keep = new Set(described.keys());
    for (const s of stale) {
      const name = { schema: s.schema, table: s.table };
      if (!keep.has(tableKey(name))) for (const ddl of [...dropCaptureTriggerDdl(name), ...dropPriorityTriggerDdl(name)]) await db.query(ddl);
    }
    await db.query('COMMIT');
  } catch (err) {
    await db.query('ROLLBACK').catch(() => {});
    throw err;
  }
  return described;
}

/** Create or update the publication `tandem` to exactly these tables. */
export async function ensurePublication(db: Queryable, tables: readonly TableName[]): Promise<'created' | 'updated'> {
  const list = tables.map(quoteTable).join(', ');
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_publication WHERE pubname = $1', [PUBLICATION]);
  if (rows[0]!.n === 0) {
    await db.query(
      tables.length > 0
        ? `CREATE PUBLICATION ${quoteIdent(PUBLICATION)} FOR TABLE ${list} WITH (publish = 'insert, update, delete, truncate')`
        : `CREATE PUBLICATION ${quoteIdent(PUBLICATION)} WITH (publish = 'insert, update, delete, truncate')`,
    );
    return 'created';
  }
  if (tables.length > 0) await db.query(`ALTER PUBLICATION ${quoteIdent(PUBLICATION)} SET TABLE ${list}`);
  else {
    const { rows: cur } = await db.query<{ schemaname: string; tablename: string }>('SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = $1', [PUBLICATION]);
    if (cur.length > 0) await db.query(`ALTER PUBLICATION ${quoteIdent(PUBLICATION)} DROP TABLE ${cur.map((r) => quoteTable({ schema: r.schemaname, table: r.tablename })).join(', ')}`);
  }
  return 'updated';
}

/** Create the replication origin for changes from `source` if it does not exist. */
export async function ensureOrigin(db: Queryable, source: string): Promise<boolean> {
  const name = originName(source);
  const { rows } = await db.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_replication_origin WHERE roname = $1', [name]);
  if (rows[0]!.n > 0) return false;
  try {
    await db.query('SELECT pg_replication_origin_create($1)', [name]);
  } catch (err) {
    if ((err as { code?: string }).code !== '23505') throw err; // created concurrently
  }
  return true;
}

/** What setup did, per region. */
export interface SetupReport {
  /** `advice`: optional improvements found by the prerequisite check (`formatProblems(…, 'advice')`). */
  regions: Array<{ region: string; platform: PrereqReport['platform']; serverVersion: number; actions: string[]; advice: string[] }>;
}

/** Options of setup and teardown. */
export interface SetupOptions {
  logger?: Logger;
  /** Only check prerequisites and tables; change nothing. */
  checkOnly?: boolean;
}

/** A connection to one region's database. */
export interface Conn {
  region: string;
  db: pg.Client;
}

/** Connect to every region's database (all or none: on a failure the ones opened are closed). */
export async function connectAll(config: Config, applicationName = 'tandem-setup'): Promise<Conn[]> {
  const out: Conn[] = [];
  try {
    for (const [i, r] of config.regions.entries()) {
      const db = await connectClient(r.database, { applicationName }, `regions[${i}].database (${r.name})`);
      db.on('error', () => {});
      out.push({ region: r.name, db });
    }
  } catch (err) {
    await Promise.all(out.map((c) => c.db.end().catch(() => {})));
    throw err;
  }
  return out;
}

/**
 * Set replication up for every region of the config: check everything first,
 * then install schema/triggers, publication, origins and slots.
 */
export async function setupReplication(config: Config, opts: SetupOptions = {}): Promise<SetupReport> {
  const logger = opts.logger ?? silentLogger();
  const tables = configuredTables(config);
  if (config.regions.length < 2) throw new TandemError('TANDEM_ERR_CONFIG', 'replication needs at least two regions in tandem.yaml');
  const conns = await connectAll(config);
  try {
    const peers = config.regions.length - 1;
    const reports = new Map<string, PrereqReport>();
    const problems: string[] = [];
    for (const c of conns) {
      const rep = await checkPrerequisites(c.db, { slots: peers, senders: peers, role: 'setup' });
      reports.set(c.region, rep);
      problems.push(...formatProblems(c.region, rep));
    }
    if (problems.length > 0) {
      throw new TandemError('TANDEM_ERR_PG_PREREQ', `PostgreSQL is not ready for tandem replication:\n  - ${problems.join('\n  - ')}`, { details: { problems } });
    }
    for (const c of conns) await validateTables(c.db, tables, c.region);
    const report: SetupReport = { regions: [] };
    if (opts.checkOnly) {
      for (const c of conns) {
        const rep = reports.get(c.region)!;
        report.regions.push({ region: c.region, platform: rep.platform, serverVersion: rep.serverVersion, actions: ['checked'], advice: formatProblems(c.region, rep, 'advice') });
      }
      return report;
    }
    for (const c of conns) {
      const actions: string[] = [];
      await installRegion(c.db, { region: c.region, tables, priority: priorityTables(config) });
      actions.push(`schema tandem and capture triggers on ${tables.length} table(s)`);
      actions.push(`publication ${PUBLICATION} ${await ensurePublication(c.db, tables)}`);
      for (const peer of conns) {
        if (peer.region === c.region) continue;
        if (await ensureOrigin(c.db, peer.region)) actions.push(`origin ${originName(peer.region)} created`);
        await c.db.query('INSERT INTO tandem.replication_status (peer) VALUES ($1) ON CONFLICT (peer) DO NOTHING', [peer.region]);
      }
      const rep = reports.get(c.region)!;
      report.regions.push({ region: c.region, platform: rep.platform, serverVersion: rep.serverVersion, actions, advice: formatProblems(c.region, rep, 'advice') });
    }
    // Slots last: a slot marks where streaming starts, and everything above must exist by then.
    for (const source of conns) {
      const entry = report.regions.find((r) => r.region === source.region)!;
      for (const target of conns) {
        if (target.region === source.region) continue;
        const s = await createLogicalSlot(source.db, slotName(target.region), { ifNotExists: true });
        if (s.created) entry.actions.push(`slot ${s.slot} created`);
      }
    }
    if (config.replication.interleaveSequences) {
      for (const [i, c] of conns.entries()) {
        const done = await setupInterleavedSequences(c.db, { regionIndex: i, regionCount: conns.length, tables });
        const changed = done.filter((x) => x.changed).length;
        const residues = [...new Set(done.map((x) => x.residue))].join(', ');
        report.regions[i]!.actions.push(`${done.length} sequence(s) interleaved${done.length ? ` (values ≡ ${residues} mod ${conns.length})` : ''}${changed ? `, ${changed} changed` : ''}`);
      }
    }
    for (const r of report.regions) logger.info({ region: r.region, actions: r.actions }, `setup of ${r.region} done`);
    return report;
  } finally {
    await Promise.all(conns.map((c) => c.db.end().catch(() => {})));
  }
}

/** What teardown removed, per region. */
export interface TeardownReport {
  regions: Array<{ region: string; actions: string[] }>;
}

/**
 * Remove everything setup created: slots (an active slot means an agent is
 * still running: stop it first, or pass `force` to terminate its walsender),
 * the publication, the origins, the capture triggers and the `tandem` schema
 * (including its conflict log).
 */
export async function teardownReplication(config: Config, opts: SetupOptions & { force?: boolean } = {}): Promise<TeardownReport> {
  const logger = opts.logger ?? silentLogger();
  const conns = await connectAll(config);
  try {
    const report: TeardownReport = { regions: [] };
    for (const c of conns) {
      const actions: string[] = [];
      for (const target of conns) {
        if (target.region === c.region) continue;
        if (await dropSlot(c.db, slotName(target.region), { ifExists: true, terminateActive: opts.force ?? false })) actions.push(`slot ${slotName(target.region)} dropped`);
      }
      const { rows: pub } = await c.db.query<{ n: number }>('SELECT count(*)::int AS n FROM pg_publication WHERE pubname = $1', [PUBLICATION]);
      if (pub[0]!.n > 0) {
        await c.db.query(`DROP PUBLICATION ${quoteIdent(PUBLICATION)}`);
        actions.push(`publication ${PUBLICATION} dropped`);
      }
      const { rows: origins } = await c.db.query<{ roname: string }>(`SELECT roname FROM pg_replication_origin WHERE roname LIKE 'tandem\\_from\\_%'`);
      for (const o of origins) {
        try {
          await c.db.query('SELECT pg_replication_origin_drop($1)', [o.roname]);
          actions.push(`origin ${o.roname} dropped`);
        } catch (err) {
          throw new TandemError('TANDEM_ERR_STATE', `${c.region}: cannot drop replication origin ${o.roname} (is an agent still applying?): ${(err as Error).message}`, { cause: err });
        }
      }
      const { rows: schema } = await c.db.query<{ n: number }>(`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'tandem'`);
      if (schema[0]!.n > 0) {
        // CASCADE takes the capture functions and with them the triggers on the replicated tables.
        await c.db.query('DROP SCHEMA tandem CASCADE');
        actions.push('schema tandem (with capture triggers) dropped');
      }
      report.regions.push({ region: c.region, actions });
      logger.info({ region: c.region, actions }, `teardown of ${c.region} done`);
    }
    return report;
  } finally {
    await Promise.all(conns.map((c) => c.db.end().catch(() => {})));
  }
}
