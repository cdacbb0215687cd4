/**
 * `tandem verify`: are the replicated tables of two regions identical, and if
 * not, which rows differ? Each region hashes primary-key ranges inside
 * PostgreSQL; ranges whose (row count, hash sum) differ are split again at
 * key boundaries taken from one region, until a range is small enough to
 * compare its keys and row hashes directly (the approach of data-diff and
 * pgEdge ACE). Tables are never pulled into Node: only one line per range,
 * and keys plus row hashes of the small differing ranges at the leaves.
 *
 * Ranges are order-preserving key intervals `[lo, hi)` compared with row
 * comparison on the primary key (`(a, b) >= ($1, $2)`), so composite, text
 * and uuid keys work as well as integers, and the primary-key index serves
 * every range.
 */
import type pg from 'pg';
import { localDatabase, regionByName, type Config } from '../core/config/index.ts';
import { TandemError } from '../core/errors.ts';
import { silentLogger, type Logger } from '../core/log.ts';
import { connectClient } from '../core/pg.ts';
import { parseTableName, quoteIdent, tableKey, type TableName } from '../core/sql.ts';
import { describeTables, type TargetColumn, type TargetTable } from './catalog.ts';

/** How a row differs between region A and region B. */
export type DifferenceKind = 'changed' | 'missing-in-a' | 'missing-in-b' | 'schema';

/** One differing row (or, for `schema`, a table that cannot be compared). */
export interface VerifyDifference {
  /** Canonical table name (`"public"."orders"`). */
  table: string;
  /** Primary key column → value as text; empty for `schema`. */
  key: Record<string, string>;
  kind: DifferenceKind;
  /** The region that lacks the row (missing-in-*), for people. */
  missingIn?: string;
  /** What is wrong with the table (schema). */
  detail?: string;
}

/** The result for one table. */
export interface TableVerifyResult {
  table: string;
  /** Row counts in region A and region B. */
  rows: [number, number];
  identical: boolean;
  differences: VerifyDifference[];
  /** More differences existed than `maxDifferences`; the list is a prefix. */
  truncated: boolean;
  /** Range-hash queries run per region (a measure of the bisection's work). */
  rangeQueries: number;
  elapsedMs: number;
}

/** What `verifyTables` returns. */
export interface VerifyReport {
  regions: [string, string];
  identical: boolean;
  tables: TableVerifyResult[];
  /** Every difference of every table. */
  differences: VerifyDifference[];
  /** Tables named but skipped (tandem's own bookkeeping). */
  skipped: string[];
  /** The row hash used. */
  rowHash: RowHash;
  elapsedMs: number;
}

/** Options of `verifyTables`. */
export interface VerifyOptions {
  config: Config;
  /** The two regions to compare; default the first two of the config. */
  regions?: [string, string];
  /** Tables to compare (`schema.table`); default `replication.tables`. */
  tables?: string[];
  /** Connect with each region's `localDatabase` (from inside the region, as the lab does) instead of `database`. */
  useLocal?: boolean;
  /** Stop collecting a table's differences after this many; default 1000. */
  maxDifferences?: number;
  /** Ranges a differing range is split into; default 32. */
  fanout?: number;
  /** A range with at most this many rows (in both regions) is compared key by key; default 256. */
  leafRows?: number;
  /**
   * Replication in flight shows up as differences. When > 0, differing keys
   * are read again after this many ms and only those still differing are
   * reported (repeated up to `recheckAttempts` times, default 3).
   */
  recheckDelayMs?: number;
  recheckAttempts?: number;
  /** Row hash function; default `auto` (see `RowHash`). */
  rowHash?: RowHash | 'auto';
  logger?: Logger;
  signal?: AbortSignal;
}

/** Session settings so every value renders as the same text in both regions. */
const SESSION_SETUP = `SET datestyle = ISO; SET intervalstyle = postgres; SET extra_float_digits = 3; SET timezone = 'UTC'; SET bytea_output = hex`;

/** A key interval [lo, hi); undefined bounds are open. Bounds are key values as text, in key column order. */
interface KeyRange {
  lo?: string[];
  hi?: string[];
}

/** Count and hash sums of one range in one region. */
interface RangeHash {
  n: number;
  s: string;
}

/** A range known to differ, with its row counts in A and B. */
interface PendingRange {
  range: KeyRange;
  nA: number;
  nB: number;
}

/** How one table is compared: its key columns, its row expression, identical in both regions. */
interface TablePlan {
  key: string;
  quoted: string;
  keyColumns: TargetColumn[];
  /** `ROW("a", "b", ...)::text` over every column, in one fixed order. */
  rowText: string;
  /** A signed 64-bit hash of `rowText` (see `RowHash`). */
  rowHash: string;
}

/**
 * How a row's text is hashed. `fast`: PostgreSQL's `hashtextextended` (the
 * function behind hash partitioning, so stable across versions and
 * pg_upgrade, but it differs between little- and big-endian servers); about
 * as cheap as producing the row text. `md5`: defined identically everywhere,
 * about twice the cost per row.
 */
export type RowHash = 'fast' | 'md5';

function rowHashSql(rowText: string, kind: RowHash): string {
  return kind === 'fast' ? `hashtextextended(${rowText}, 0)` : `('x' || left(md5(${rowText}), 16))::bit(64)::int8`;
}

/** `auto` uses the fast hash when both servers compute the same value for a probe, md5 otherwise. */
async function chooseRowHash(a: pg.Client, b: pg.Client, wanted: RowHash | 'auto'): Promise<RowHash> {
  if (wanted !== 'auto') return wanted;
  const probe = `SELECT hashtextextended('tandem verify probe: ünïcode, 0123456789', 0)::text AS h`;
  const [x, y] = await Promise.all([a.query<{ h: string }>(probe), b.query<{ h: string }>(probe)]);
  return x.rows[0]!.h === y.rows[0]!.h ? 'fast' : 'md5';
}

/** Compare the replicated tables of two regions; see the module comment. */
export async function verifyTables(opts: VerifyOptions): Promise<VerifyReport> {
  const started = Date.now();
  const log = opts.logger ?? silentLogger();
  const config = opts.config;
  if (!opts.regions && config.regions.length < 2) {
    throw new TandemError('TANDEM_ERR_USAGE', 'verify needs two regions; the config has only one');
  }
  const names: [string, string] = opts.regions ?? [config.regions[0]!.name, config.regions[1]!.name];
  if (names[0] === names[1]) throw new TandemError('TANDEM_ERR_USAGE', `verify compares two different regions, found "${names[0]}" twice`);
  const regions = names.map((n) => regionByName(config, n));
  const requested = opts.tables ?? config.replication.tables;
  const parsed: TableName[] = [];
  const skipped: string[] = [];
  for (const t of requested) {
    let name: TableName;
    try {
      name = parseTableName(t);
    } catch (err) {
      throw new TandemError('TANDEM_ERR_USAGE', `table ${JSON.stringify(t)}: ${(err as Error).message}`);
    }
    if (name.schema === 'tandem') {
      skipped.push(tableKey(name));
      continue;
    }
    if (!parsed.some((p) => tableKey(p) === tableKey(name))) parsed.push(name);
  }
  if (skipped.length) log.info({ skipped }, "skipping tandem's own bookkeeping tables");

  const clients: pg.Client[] = [];
  try {
    for (const [i, r] of regions.entries()) {
      const conn = opts.useLocal ? localDatabase(r) : r.database;
      const c = await connectClient(conn, { applicationName: 'tandem-verify' }, `region ${r.name} database`);
      c.on('error', () => {}); // surfaced by the failing query
      clients.push(c);
      await c.query(SESSION_SETUP);
      log.debug({ region: r.name, index: i }, 'connected');
    }
    const [a, b] = clients as [pg.Client, pg.Client];
    const [descA, descB] = await Promise.all([describeTables(a, parsed), describeTables(b, parsed)]);
    const hash = await chooseRowHash(a, b, opts.rowHash ?? 'auto');
    log.debug({ hash }, 'row hash chosen');
    const tables: TableVerifyResult[] = [];
    for (const name of parsed) {
      opts.signal?.throwIfAborted();
      const key = tableKey(name);
      const t0 = Date.now();
      const plan = planTable(key, descA.get(key), descB.get(key), names, hash);
      if (typeof plan === 'string') {
        tables.push({ table: key, rows: [0, 0], identical: false, differences: [{ table: key, key: {}, kind: 'schema', detail: plan }], truncated: false, rangeQueries: 0, elapsedMs: Date.now() - t0 });
        continue;
      }
      const result = await verifyTable(a, b, plan, names, opts, log);
      result.elapsedMs = Date.now() - t0;
      log.info({ table: key, rows: result.rows, differences: result.differences.length, rangeQueries: result.rangeQueries, ms: result.elapsedMs }, 'table verified');
      tables.push(result);
    }
    const differences = tables.flatMap((t) => t.differences);
    return { regions: names, identical: differences.length === 0, tables, differences, skipped, rowHash: hash, elapsedMs: Date.now() - started };
  } finally {
    await Promise.all(clients.map((c) => c.end().catch(() => {})));
  }
}

/** Build the comparison plan, or say why the two tables cannot be compared. */
function planTable(key: string, ta: TargetTable | undefined, tb: TargetTable | undefined, names: [string, string], hash: RowHash): TablePlan | string {
  if (!ta && !tb) return `table ${key} exists in neither ${names[0]} nor ${names[1]}`;
  if (!ta) return `table ${key} is missing in ${names[0]}`;
  if (!tb) return `table ${key} is missing in ${names[1]}`;
  if (ta.keyColumns.length === 0) return `table ${key} has no primary key in ${names[0]}`;
  const keysA = ta.keyColumns.map((c) => c.name).join(', ');
  const keysB = tb.keyColumns.map((c) => c.name).join(', ');
  if (keysA !== keysB) return `primary key of ${key} differs: (${keysA}) in ${names[0]}, (${keysB || 'none'}) in ${names[1]}`;
  const colsB = new Map(tb.allColumns.map((c) => [c.name, c]));
  const problems: string[] = [];
  for (const c of ta.allColumns) {
    const other = colsB.get(c.name);
    if (!other) problems.push(`column ${quoteIdent(c.name)} is missing in ${names[1]}`);
    else if (other.formatted !== c.formatted) problems.push(`column ${quoteIdent(c.name)} is ${c.formatted} in ${names[0]} but ${other.formatted} in ${names[1]}`);
  }
  for (const c of tb.allColumns) if (!ta.allColumns.some((x) => x.name === c.name)) problems.push(`column ${quoteIdent(c.name)} is missing in ${names[0]}`);
  if (problems.length) return `${key}: ${problems.join('; ')}`;
  // Columns by name in A's order, so a different physical column order in B does not matter.
  const rowText = `ROW(${ta.allColumns.map((c) => quoteIdent(c.name)).join(', ')})::text`;
  return { key, quoted: ta.quoted, keyColumns: ta.keyColumns, rowText, rowHash: rowHashSql(rowText, hash) };
}

/** SQL for "this row's key is inside `r`", appending bound parameters to `params`. */
function rangePredicate(plan: TablePlan, r: KeyRange, params: unknown[]): string {
  const cols = plan.keyColumns;
  const tuple = cols.length === 1 ? quoteIdent(cols[0]!.name) : `(${cols.map((c) => quoteIdent(c.name)).join(', ')})`;
  const bound = (values: string[]) => {
    const ps = values.map((v, i) => {
      params.push(v);
      return `$${params.length}::${cols[i]!.castType}`;
    });
    return cols.length === 1 ? ps[0]! : `(${ps.join(', ')})`;
  };
  const parts: string[] = [];
  if (r.lo) parts.push(`${tuple} >= ${bound(r.lo)}`);
  if (r.hi) parts.push(`${tuple} < ${bound(r.hi)}`);
  return parts.length ? parts.join(' AND ') : 'true';
}

function keyList(plan: TablePlan): string {
  return plan.keyColumns.map((c) => quoteIdent(c.name)).join(', ');
}

function keyTextList(plan: TablePlan): string {
  return plan.keyColumns.map((c, i) => `${quoteIdent(c.name)}::text AS k${i}`).join(', ');
}

/**
 * Count and hash many ranges in one round trip. A range's hash is the sum of
 * its rows' 64-bit hashes (order-independent, so no sort is needed) plus
 * the row count.
 */
async function hashRanges(db: pg.Client, plan: TablePlan, ranges: KeyRange[]): Promise<RangeHash[]> {
  const params: unknown[] = [];
  const parts = ranges.map(
    (r, i) =>
      `SELECT ${i} AS i, count(*) AS n, coalesce(sum(${plan.rowHash}), 0)::text AS s
       FROM ${plan.quoted} WHERE ${rangePredicate(plan, r, params)}`,
  );
  const { rows } = await db.query<{ i: number; n: string; s: string }>(parts.join('\nUNION ALL\n'), params);
  const out: RangeHash[] = new Array<RangeHash>(ranges.length);
  for (const row of rows) out[row.i] = { n: Number(row.n), s: row.s };
  return out;
}

/** Rows in the table by the planner's statistics (exactness does not matter: it only sizes the first split). */
async function estimatedRows(db: pg.Client, plan: TablePlan): Promise<number> {
  const { rows } = await db.query<{ n: string | null }>(`SELECT reltuples::int8::text AS n FROM pg_class WHERE oid = $1::regclass`, [plan.quoted]);
  const n = Number(rows[0]?.n ?? -1);
  if (n > 0) return n;
  const { rows: counted } = await db.query<{ n: string }>(`SELECT count(*)::text AS n FROM ${plan.quoted}`);
  return Number(counted[0]!.n);
}

/** Keys that cut `range` into about `fanout` pieces of equal row count (in this region). */
async function boundaries(db: pg.Client, plan: TablePlan, range: KeyRange, rows: number, fanout: number): Promise<string[][]> {
  const step = Math.max(1, Math.ceil(rows / fanout));
  const params: unknown[] = [];
  const where = rangePredicate(plan, range, params);
  params.push(step);
  const { rows: found } = await db.query<Record<string, string>>(
    `SELECT ${plan.keyColumns.map((_, i) => `k${i}`).join(', ')} FROM (
       SELECT ${keyTextList(plan)}, row_number() OVER (ORDER BY ${keyList(plan)}) AS rn
       FROM ${plan.quoted} WHERE ${where}
     ) s WHERE (rn - 1) % $${params.length} = 0 AND rn > 1 ORDER BY rn`,
    params,
  );
  return found.map((r) => plan.keyColumns.map((_, i) => r[`k${i}`]!));
}

/** Keys and row hashes of a small range. */
async function leafRows(db: pg.Client, plan: TablePlan, range: KeyRange): Promise<Map<string, { key: string[]; hash: string }>> {
  const params: unknown[] = [];
  const { rows } = await db.query<Record<string, string>>(
    `SELECT ${keyTextList(plan)}, ${plan.rowHash}::text AS h FROM ${plan.quoted} WHERE ${rangePredicate(plan, range, params)}`,
    params,
  );
  const out = new Map<string, { key: string[]; hash: string }>();
  for (const r of rows) {
    const key = plan.keyColumns.map((_, i) => r[`k${i}`]!);
    out.set(JSON.stringify(key), { key, hash: r.h! });
  }
  return out;
}

/** Row hashes of specific keys (for rechecks). */
async function rowsByKey(db: pg.Client, plan: TablePlan, keys: string[][]): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const cols = plan.keyColumns;
  for (let i = 0; i < keys.length; i += 500) {
    const chunk = keys.slice(i, i + 500);
    const params: unknown[] = [];
    const tuples = chunk.map((k) => `(${k.map((v, j) => (params.push(v), `$${params.length}::${cols[j]!.castType}`)).join(', ')})`);
    const { rows } = await db.query<Record<string, string>>(
      `SELECT ${keyTextList(plan)}, ${plan.rowHash}::text AS h FROM ${plan.quoted} WHERE (${keyList(plan)}) IN (${tuples.join(', ')})`,
      params,
    );
    for (const r of rows) out.set(JSON.stringify(cols.map((_, j) => r[`k${j}`]!)), r.h!);
  }
  return out;
}

function sameHash(x: RangeHash, y: RangeHash): boolean {
  return x.n === y.n && x.s === y.s;
}

/** Bisect one table whose plan is valid in both regions. */
async function verifyTable(a: pg.Client, b: pg.Client, plan: TablePlan, names: [string, string], opts: VerifyOptions, log: Logger): Promise<TableVerifyResult> {
  const maxDiffs = opts.maxDifferences ?? 1000;
  const fanout = Math.max(2, opts.fanout ?? 32);
  const leafLimit = Math.max(fanout, opts.leafRows ?? 256);
  let rangeQueries = 0;
  // One snapshot per region for the whole table, so the bisection sees a fixed state on each side.
  await Promise.all([a.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY'), b.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY')]);
  // Leaf results keyed by key text: a key reported missing on both sides in different ranges
  // (possible only if the two regions order text keys differently) is reconciled at the end.
  const onlyA = new Map<string, { key: string[]; hash: string }>();
  const onlyB = new Map<string, { key: string[]; hash: string }>();
  const changed = new Map<string, string[]>();
  const count = () => onlyA.size + onlyB.size + changed.size;
  let truncated = false;
  let rows: [number, number] = [0, 0];
  try {
    // The first level splits the whole table at once (sized by the planner's estimate), so an
    // identical table costs one pass over its key index and one hashing pass in each region.
    const estimate = Math.max(await estimatedRows(a, plan), 1);
    let pending: PendingRange[] = [{ range: {}, nA: estimate, nB: 0 }];
    let first = true;
    for (let depth = 0; pending.length > 0; depth++) {
      opts.signal?.throwIfAborted();
      if (depth > 64) throw new TandemError('TANDEM_ERR_INTERNAL', `verify of ${plan.key}: bisection did not converge`);
      const next: PendingRange[] = [];
      for (const p of pending) {
        if (count() >= maxDiffs) {
          truncated = true;
          break;
        }
        if (!first && Math.max(p.nA, p.nB) <= leafLimit) {
          const [la, lb] = await Promise.all([leafRows(a, plan, p.range), leafRows(b, plan, p.range)]);
          for (const [k, ra] of la) {
            const rb = lb.get(k);
            if (!rb) onlyA.set(k, ra);
            else if (rb.hash !== ra.hash) changed.set(k, ra.key);
          }
          for (const [k, rb] of lb) if (!la.has(k)) onlyB.set(k, rb);
          continue;
        }
        // Split at keys of the region holding more rows of this range; both regions hash the same pieces.
        const [splitDb, splitRows] = p.nA >= p.nB ? [a, p.nA] : [b, p.nB];
        const cuts = await boundaries(splitDb, plan, p.range, splitRows, fanout);
        const pieces: KeyRange[] = [];
        let lo = p.range.lo;
        for (const cut of cuts) {
          pieces.push({ ...(lo ? { lo } : {}), hi: cut });
          lo = cut;
        }
        pieces.push({ ...(lo ? { lo } : {}), ...(p.range.hi ? { hi: p.range.hi } : {}) });
        const [ha, hb] = await Promise.all([hashRanges(a, plan, pieces), hashRanges(b, plan, pieces)]);
        rangeQueries++;
        if (first) rows = [ha.reduce((n, h) => n + h.n, 0), hb.reduce((n, h) => n + h.n, 0)];
        pieces.forEach((range, i) => {
          if (!sameHash(ha[i]!, hb[i]!)) next.push({ range, nA: ha[i]!.n, nB: hb[i]!.n });
        });
      }
      first = false;
      log.debug({ table: plan.key, depth, differingRanges: next.length }, 'bisection level done');
      pending = truncated ? [] : next;
    }
  } finally {
    await Promise.all([a.query('COMMIT').catch(() => {}), b.query('COMMIT').catch(() => {})]);
  }
  for (const [k, ra] of onlyA) {
    const rb = onlyB.get(k);
    if (!rb) continue;
    onlyA.delete(k);
    onlyB.delete(k);
    if (ra.hash !== rb.hash) changed.set(k, ra.key);
  }

  let differences = collect(plan, names, onlyA, onlyB, changed);
  const attempts = opts.recheckDelayMs && opts.recheckDelayMs > 0 ? (opts.recheckAttempts ?? 3) : 0;
  for (let i = 0; i < attempts && differences.length > 0; i++) {
    await new Promise((r) => setTimeout(r, opts.recheckDelayMs));
    const keys = differences.map((d) => plan.keyColumns.map((c) => d.key[c.name]!));
    const [ha, hb] = await Promise.all([rowsByKey(a, plan, keys), rowsByKey(b, plan, keys)]);
    const ra = new Map<string, { key: string[]; hash: string }>();
    const rb = new Map<string, { key: string[]; hash: string }>();
    const ch = new Map<string, string[]>();
    for (const key of keys) {
      const k = JSON.stringify(key);
      const x = ha.get(k);
      const y = hb.get(k);
      if (x !== undefined && y === undefined) ra.set(k, { key, hash: x });
      else if (x === undefined && y !== undefined) rb.set(k, { key, hash: y });
      else if (x !== undefined && y !== undefined && x !== y) ch.set(k, key);
    }
    differences = collect(plan, names, ra, rb, ch);
    log.debug({ table: plan.key, attempt: i + 1, remaining: differences.length }, 'rechecked differing keys');
  }
  if (differences.length > maxDiffs) {
    differences = differences.slice(0, maxDiffs);
    truncated = true;
  }
  return { table: plan.key, rows, identical: differences.length === 0, differences, truncated, rangeQueries, elapsedMs: 0 };
}

function collect(
  plan: TablePlan,
  names: [string, string],
  onlyA: Map<string, { key: string[] }>,
  onlyB: Map<string, { key: string[] }>,
  changed: Map<string, string[]>,
): VerifyDifference[] {
  const keyObject = (key: string[]) => Object.fromEntries(plan.keyColumns.map((c, i) => [c.name, key[i]!]));
  const out: VerifyDifference[] = [];
  for (const key of changed.values()) out.push({ table: plan.key, key: keyObject(key), kind: 'changed' });
  for (const { key } of onlyB.values()) out.push({ table: plan.key, key: keyObject(key), kind: 'missing-in-a', missingIn: names[0] });
  for (const { key } of onlyA.values()) out.push({ table: plan.key, key: keyObject(key), kind: 'missing-in-b', missingIn: names[1] });
  return out;
}

/** `Key (tenant, id)=(acme, 42)`, as PostgreSQL words key details. */
export function formatKey(key: Record<string, string>): string {
  const cols = Object.keys(key);
  return `(${cols.map(quoteIdentIfNeeded).join(', ')})=(${cols.map((c) => key[c]).join(', ')})`;
}

function quoteIdentIfNeeded(name: string): string {
  return /^[a-z_][a-z0-9_]*$/.test(name) ? name : quoteIdent(name);
}

/** The report for people: one line per table, one per difference. */
export function formatVerifyReport(report: VerifyReport): string {
  const [ra, rb] = report.regions;
  const lines: string[] = [`verify ${ra} vs ${rb}: ${report.identical ? 'identical' : `${report.differences.length} difference(s)`} in ${(report.elapsedMs / 1000).toFixed(1)} s`];
  for (const t of report.tables) {
    const status = t.identical ? 'identical' : t.differences.some((d) => d.kind === 'schema') ? 'cannot compare' : `${t.differences.length}${t.truncated ? '+' : ''} differing row(s)`;
    lines.push(`  ${t.table}: ${status} (${t.rows[0]} rows in ${ra}, ${t.rows[1]} in ${rb}; ${(t.elapsedMs / 1000).toFixed(1)} s)`);
    for (const d of t.differences) {
      if (d.kind === 'schema') lines.push(`    schema: ${d.detail}`);
      else if (d.kind === 'changed') lines.push(`    changed        key ${formatKey(d.key)}`);
      else lines.push(`    missing in ${d.missingIn}  key ${formatKey(d.key)}`);
    }
    if (t.truncated) lines.push('    (more differences not listed; raise --max-diffs)');
  }
  if (report.skipped.length) lines.push(`  skipped (tandem bookkeeping): ${report.skipped.join(', ')}`);
  return lines.join('\n');
}
