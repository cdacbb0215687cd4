/**
 * Interleaved sequences: with N regions, region i's sequences hand out only
 * values v with v ≡ i+1 (mod N) — `INCREMENT BY N`, restarted in its own
 * residue class above every value already present — so ids generated in
 * different regions never collide, even while they are partitioned. UUID or
 * ULID keys avoid the question altogether and are the recommendation.
 */
import { TandemError } from '../core/errors.ts';
import { parseTableName, quoteIdent, quoteTable, tableKey, type TableName } from '../core/sql.ts';
import type { Queryable } from './slot.ts';

/** Options of `setupInterleavedSequences`. */
export interface InterleaveOptions {
  /** This region's position in the config's `regions` list (0-based). */
  regionIndex: number;
  /** How many regions there are (the increment). */
  regionCount: number;
  /** The replicated tables (`schema.table` text or parsed names). */
  tables: ReadonlyArray<TableName | string>;
}

/** What was done to one sequence. */
export interface InterleavedSequence {
  /** The sequence, schema-qualified and quoted. */
  sequence: string;
  table: string;
  column: string;
  /** `serial` (owned), `identity`, or `default` (a column default calls nextval on it). */
  kind: 'serial' | 'identity' | 'default';
  increment: number;
  /** Values this region hands out are ≡ residue (mod increment). */
  residue: number;
  /** The next value nextval() returns, as text (sequences are bigint). */
  next: string;
  /** False when the sequence was already interleaved this way. */
  changed: boolean;
}

interface SeqRow {
  seq: string;
  col: string;
  kind: 'serial' | 'identity' | 'default';
  col_type: string;
  increment_by: string;
  start_value: string;
  min_value: string;
  max_value: string;
}

function mod(x: bigint, n: bigint): bigint {
  return ((x % n) + n) % n;
}

/** Smallest v > floor with v ≡ residue (mod n). */
export function nextInClass(floor: bigint, residue: bigint, n: bigint): bigint {
  const v = floor + 1n;
  return v + mod(residue - v, n);
}

/**
 * Give every sequence behind the replicated tables' columns (serial and
 * identity columns, and column defaults calling `nextval`) `INCREMENT BY
 * regionCount` and a next value in this region's residue class, above the
 * largest value in the column and above what the sequence already handed out.
 * Idempotent: a sequence already set up this way is left alone. Runs in one
 * transaction per table holding a lock that blocks writers of that table
 * meanwhile, so `db` must be a single connection (a Client), not a Pool.
 */
export async function setupInterleavedSequences(db: Queryable, opts: InterleaveOptions): Promise<InterleavedSequence[]> {
  const { regionIndex, regionCount } = opts;
  if (!Number.isInteger(regionCount) || regionCount < 1) throw new TandemError('TANDEM_ERR_USAGE', `regionCount must be a positive integer, found ${regionCount}`);
  if (!Number.isInteger(regionIndex) || regionIndex < 0 || regionIndex >= regionCount) {
    throw new TandemError('TANDEM_ERR_USAGE', `regionIndex must be an integer in 0..${regionCount - 1}, found ${regionIndex}`);
  }
  const n = BigInt(regionCount);
  const residue = BigInt(regionIndex + 1) % n;
  const out: InterleavedSequence[] = [];
  for (const t of opts.tables) {
    const name = typeof t === 'string' ? parseTableName(t) : t;
    const table = quoteTable(name);
    await db.query('BEGIN');
    try {
      const exists = await db.query<{ oid: string | null }>('SELECT to_regclass($1)::oid::text AS oid', [table]);
      if (!exists.rows[0]?.oid) throw new TandemError('TANDEM_ERR_NOT_FOUND', `table ${tableKey(name)} does not exist`);
      // Writers wait while we read the column maximum and restart the sequence; readers do not.
      await db.query(`LOCK TABLE ${table} IN SHARE ROW EXCLUSIVE MODE`);
      const { rows } = await db.query<SeqRow>(
        `WITH deps AS (
           -- serial ('a') and identity ('i') sequences are owned by the column
           SELECT d.objid AS seq, d.refobjsubid AS attnum, CASE d.deptype WHEN 'i' THEN 'identity' ELSE 'serial' END AS kind
           FROM pg_depend d
           WHERE d.classid = 'pg_class'::regclass AND d.refclassid = 'pg_class'::regclass
             AND d.refobjid = $1::regclass AND d.refobjsubid > 0 AND d.deptype IN ('a', 'i')
           UNION
           -- a column default that calls nextval() on some other sequence
           SELECT d.refobjid, ad.adnum, 'default'
           FROM pg_attrdef ad
           JOIN pg_depend d ON d.classid = 'pg_attrdef'::regclass AND d.objid = ad.oid AND d.refclassid = 'pg_class'::regclass
           JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
           WHERE ad.adrelid = $1::regclass
         )
         SELECT DISTINCT ON (deps.seq) format('%I.%I', sn.nspname, sc.relname) AS seq, a.attname AS col, deps.kind,
                format_type(a.atttypid, NULL) AS col_type,
                ps.seqincrement::text AS increment_by, ps.seqstart::text AS start_value, ps.seqmin::text AS min_value,
                ps.seqmax::text AS max_value
         FROM deps
         JOIN pg_attribute a ON a.attrelid = $1::regclass AND a.attnum = deps.attnum
         JOIN pg_sequence ps ON ps.seqrelid = deps.seq
         JOIN pg_class sc ON sc.oid = deps.seq
         JOIN pg_namespace sn ON sn.oid = sc.relnamespace
         ORDER BY deps.seq, deps.kind = 'default' -- owned (serial/identity) wins over a default using it
        `,
        [table],
      );
      for (const s of rows) {
        if (!['smallint', 'integer', 'bigint', 'numeric'].includes(s.col_type)) {
          throw new TandemError('TANDEM_ERR_UNSUPPORTED_TYPE', `column ${tableKey(name)}.${quoteIdent(s.col)} (${s.col_type}) takes values from sequence ${s.seq}; interleaving needs an integer column`);
        }
        const increment = BigInt(s.increment_by);
        if (increment < 0n) {
          throw new TandemError('TANDEM_ERR_STATE', `sequence ${s.seq} of ${tableKey(name)}.${quoteIdent(s.col)} counts down (increment ${increment}); interleaving supports ascending sequences only`);
        }
        // What nextval() would return now, without calling it (RESTART leaves is_called false).
        const { rows: state } = await db.query<{ last_value: string; is_called: boolean }>(`SELECT last_value::text, is_called FROM ${s.seq}`);
        const last = BigInt(state[0]!.last_value);
        const pending = state[0]!.is_called ? last + increment : last;
        const { rows: maxRows } = await db.query<{ m: string | null }>(`SELECT max(${quoteIdent(s.col)})::text AS m FROM ${table}`);
        const columnMax = maxRows[0]?.m == null ? null : BigInt(maxRows[0].m);
        if (increment === n && mod(pending - residue, n) === 0n) {
          // Interleaved already. Larger values of other regions' classes are fine (ours never reaches
          // them); only a value of our own class at or above the next one would collide.
          const clash = columnMax !== null && columnMax >= pending ? await ownClassMax(db, table, s.col, n, residue) : null;
          if (clash === null || clash < pending) {
            out.push({ sequence: s.seq, table: tableKey(name), column: s.col, kind: s.kind, increment: regionCount, residue: Number(residue), next: pending.toString(), changed: false });
            continue;
          }
        }
        const floor = [pending - 1n, columnMax ?? 0n, BigInt(s.min_value) - 1n].reduce((x, y) => (y > x ? y : x));
        const next = nextInClass(floor, residue, n);
        if (next > BigInt(s.max_value)) {
          throw new TandemError('TANDEM_ERR_STATE', `sequence ${s.seq} would restart at ${next}, above its maximum ${s.max_value}`);
        }
        // ALTER SEQUENCE takes literals; both numbers are bigints computed here.
        await db.query(`ALTER SEQUENCE ${s.seq} INCREMENT BY ${n} RESTART WITH ${next}`);
        out.push({ sequence: s.seq, table: tableKey(name), column: s.col, kind: s.kind, increment: regionCount, residue: Number(residue), next: next.toString(), changed: true });
      }
      await db.query('COMMIT');
    } catch (err) {
      await db.query('ROLLBACK').catch(() => {});
      throw err;
    }
  }
  return out;
}

/** The largest value of `col` in this region's residue class, or null. */
async function ownClassMax(db: Queryable, table: string, col: string, n: bigint, residue: bigint): Promise<bigint | null> {
  const { rows } = await db.query<{ m: string | null }>(
    `SELECT max(${quoteIdent(col)})::text AS m FROM ${table} WHERE mod(mod(${quoteIdent(col)}::numeric, $1::numeric) + $1::numeric, $1::numeric) = $2::numeric`,
    [n.toString(), residue.toString()],
  );
  return rows[0]?.m == null ? null : BigInt(rows[0].m);
}
