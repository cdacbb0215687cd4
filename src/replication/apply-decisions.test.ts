/**
 * Differential test of the applier's decisions against the oracle, `resolve.decide`.
 *
 * Seeded: every key of several tables (last-writer-wins, and region-priority
 * with the priority region being the source, this region, or a third one) is
 * put into a random local state — absent, a local row, a row written by
 * apply with an exact version entry, an entry gone stale under a later local
 * update, a tombstone of any region, a tombstone of a local delete (lazy
 * commit time), an entry without its row — and then receives one random
 * change (insert, update or delete; complete or with an unchanged TOAST
 * column) whose version is the local one nudged by -1, 0 or +1 µs, or far
 * away. The applier runs once with decisions made inside PostgreSQL and once
 * with the TypeScript path; for every key the resulting row, version entry,
 * conflict record and counters must be exactly what `decide` says about the
 * same inputs. Rerun a seed with TANDEM_SEED=<n>.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { sourceRelationOf } from '../../test/helpers/relation.ts';
import { startCluster, client, type TestCluster } from '../../test/helpers/pg.ts';
import { silentLogger } from '../core/log.ts';
import { prng } from '../core/random.ts';
import { parseTableName, tableKey, type TableName } from '../core/sql.ts';
import { UNCHANGED_TOAST, type TupleValue } from './pgoutput.ts';
import { Applier, type Batch, type RowChange } from './apply.ts';
import { decide, type Decision, type LocalState, type Policy, type Version } from './resolve.ts';
import { ensureOrigin, installRegion } from './setup.ts';

const SEED = Number(process.env.TANDEM_SEED ?? Math.floor(Math.random() * 2 ** 31));
const KEYS_PER_TABLE = 48;

const TABLES: Array<{ name: TableName; policy: Policy }> = [
  { name: parseTableName('public.d_lww'), policy: { kind: 'lww' } },
  { name: parseTableName('public.d_prio_src'), policy: { kind: 'region-priority', region: 'a' } },
  { name: parseTableName('public.d_prio_here'), policy: { kind: 'region-priority', region: 'b' } },
  { name: parseTableName('public.d_prio_third'), policy: { kind: 'region-priority', region: 'c' } },
];

let cluster: TestCluster;
let db: pg.Client;
let user: pg.Client;
let lsn = 0x2000_0000n;

before(async () => {
  cluster = await startCluster(1);
  db = await client(cluster.servers[0]!);
  user = await client(cluster.servers[0]!);
  for (const t of TABLES) await user.query(`CREATE TABLE ${tableKey(t.name)} (id int PRIMARY KEY, v text, body text)`);
  await installRegion(user, { region: 'b', tables: TABLES.map((t) => t.name) });
  await ensureOrigin(user, 'a');
});

after(async () => {
  await db?.end().catch(() => {});
  await user?.end().catch(() => {});
  await cluster?.stop();
});

type Setup = 'absent' | 'local' | 'entry' | 'stale-entry' | 'tombstone' | 'local-tombstone' | 'orphan-entry';
const SETUPS: Setup[] = ['absent', 'local', 'entry', 'stale-entry', 'tombstone', 'local-tombstone', 'orphan-entry'];

const usExpr = (expr: string) => `(extract(epoch from ${expr}) * 1000000)::int8::text`;
const tsOf = (us: bigint) => `('epoch'::timestamptz + (${us}::int8 / 1000000) * interval '1 second' + (${us}::int8 % 1000000) * interval '1 microsecond')`;

interface KeyCase {
  id: number;
  setup: Setup;
  local: LocalState;
  change: { op: 'insert' | 'update' | 'delete'; version: Version; complete: boolean };
  before: { row?: { v: string; body: string }; entry?: EntryRow };
}

interface EntryRow {
  region: string;
  ts: string;
  deleted: boolean;
  priority: boolean;
}

async function readRow(table: string, id: number): Promise<{ v: string; body: string } | undefined> {
  return (await user.query(`SELECT v, body FROM ${table} WHERE id = $1`, [id])).rows[0];
}

async function readEntry(table: string, id: number): Promise<EntryRow | undefined> {
  const { rows } = await user.query(
    `SELECT region, ${usExpr('COALESCE(commit_ts, pg_xact_commit_timestamp(xid(xid)))')} AS ts, deleted, priority
       FROM tandem.row_versions WHERE relname = $1 AND pk = ARRAY[$2::text]`,
    [table, String(id)],
  );
  return rows[0];
}

/** Put key `id` into the local state `setup`; returns that state as the oracle sees it. */
async function prepare(table: string, id: number, setup: Setup, rnd: () => number, baseUs: bigint): Promise<LocalState> {
  const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
  const entryVersion = (): Version => {
    const v: Version = { tsUs: baseUs + BigInt(pick([-2, -1, 0, 1, 2])), region: pick(['a', 'b', 'c']) };
    if (rnd() < 0.3) v.priority = true;
    return v;
  };
  const writeEntry = async (v: Version, deleted: boolean) =>
    user.query(
      `INSERT INTO tandem.row_versions (relname, pk, commit_ts, region, xid, deleted, priority) VALUES ($1, ARRAY[$2::text], ${tsOf(v.tsUs)}, $3, pg_current_xact_id(), $4, $5)
       ON CONFLICT (relname, pk) DO UPDATE SET commit_ts = EXCLUDED.commit_ts, region = EXCLUDED.region, xid = EXCLUDED.xid, deleted = EXCLUDED.deleted, priority = EXCLUDED.priority`,
      [table, String(id), v.region, deleted, v.priority === true],
    );
  const localTs = async () => BigInt((await user.query(`SELECT ${usExpr('pg_xact_commit_timestamp(xmin)')} AS ts FROM ${table} WHERE id = $1`, [id])).rows[0].ts);
  switch (setup) {
    case 'absent':
      return { kind: 'absent' };
    case 'local':
      await user.query(`INSERT INTO ${table} VALUES ($1, 'local', 'local-body')`, [id]);
      return { kind: 'row', version: { tsUs: await localTs(), region: 'b' } };
    case 'entry': {
      const v = entryVersion();
      await user.query('BEGIN');
      await user.query(`INSERT INTO ${table} VALUES ($1, 'applied', 'applied-body')`, [id]);
      await writeEntry(v, false);
      await user.query('COMMIT');
      return { kind: 'row', version: v };
    }
    case 'stale-entry': {
      await user.query('BEGIN');
      await user.query(`INSERT INTO ${table} VALUES ($1, 'applied', 'applied-body')`, [id]);
      await writeEntry(entryVersion(), false);
      await user.query('COMMIT');
      await user.query(`UPDATE ${table} SET v = 'local-later' WHERE id = $1`, [id]);
      return { kind: 'row', version: { tsUs: await localTs(), region: 'b' } };
    }
    case 'tombstone': {
      const v = entryVersion();
      await writeEntry(v, true);
      return { kind: 'tombstone', version: v };
    }
    case 'local-tombstone': {
      await user.query(`INSERT INTO ${table} VALUES ($1, 'local', 'local-body')`, [id]);
      await user.query(`DELETE FROM ${table} WHERE id = $1`, [id]);
      const e = (await readEntry(table, id))!;
      return { kind: 'tombstone', version: { tsUs: BigInt(e.ts), region: e.region } };
    }
    case 'orphan-entry':
      await writeEntry(entryVersion(), false);
      return { kind: 'absent' };
  }
}

const relationOf = (t: TableName) => sourceRelationOf(db, t);

for (const sqlDecisions of [true, false]) {
  test(`applier decisions equal resolve.decide, seed ${SEED} (${sqlDecisions ? 'inside PostgreSQL' : 'TypeScript path'})`, async () => {
    const rnd = prng(SEED + (sqlDecisions ? 0 : 1));
    const pick = <T>(xs: readonly T[]) => xs[Math.floor(rnd() * xs.length)]!;
    const applier = new Applier({
      db,
      localRegion: 'b',
      peer: 'a',
      tables: new Set(TABLES.map((t) => tableKey(t.name))),
      policyFor: (k) => TABLES.find((t) => tableKey(t.name) === k)!.policy,
      logger: silentLogger(),
      sqlDecisions,
    });
    await applier.init();
    const offset = sqlDecisions ? 0 : 100_000;
    const changes: RowChange[] = [];
    const cases = new Map<string, KeyCase[]>();
    const baseUs = BigInt(Date.now()) * 1000n - 5_000_000n;
    for (const [ti, t] of TABLES.entries()) {
      const table = tableKey(t.name);
      const rel = await relationOf(t.name);
      const list: KeyCase[] = [];
      for (let k = 0; k < KEYS_PER_TABLE; k++) {
        const id = offset + ti * 1000 + k;
        const setup = pick(SETUPS);
        const local = await prepare(table, id, setup, rnd, baseUs);
        const op = pick(['insert', 'update', 'delete'] as const);
        const near = local.kind === 'absent' ? baseUs : local.version.tsUs;
        const tsUs = near + BigInt(pick([-1, 0, 0, 1, 1, -1_000_000, 1_000_000]));
        const complete = op === 'delete' || rnd() < 0.75;
        const version: Version = { tsUs, region: 'a' };
        const before = { row: await readRow(table, id), entry: await readEntry(table, id) };
        list.push({ id, setup, local, change: { op, version, complete }, before });
        const tuple: TupleValue[] = [String(id), `remote-${id}`, complete ? `remote-body-${id}` : UNCHANGED_TOAST];
        lsn += 0x100n;
        changes.push(
          op === 'delete'
            ? { op, rel, oldKind: 'K', oldTuple: [String(id), null, null], version, lsn }
            : { op, rel, newTuple: tuple, version, lsn },
        );
      }
      cases.set(table, list);
    }
    // Shuffle so tables interleave as they would in a stream.
    for (let i = changes.length - 1; i > 0; i--) {
      const j = Math.floor(rnd() * (i + 1));
      [changes[i], changes[j]] = [changes[j]!, changes[i]!];
    }
    const maxTs = changes.reduce((m, c) => (c.version.tsUs > m ? c.version.tsUs : m), 0n);
    const b: Batch = { changes, txns: changes.length, progress: { lsn: (lsn += 0x100n), tsUs: maxTs }, sourceTsUs: maxTs };
    const { rows: [{ last }] } = await user.query(`SELECT coalesce(max(id), 0)::int8::text AS last FROM tandem.conflicts`);
    const stats = await applier.apply(b);
    assert.equal(stats.attempts, 1);

    let unapplicable = 0;
    const kinds: Record<string, number> = {};
    for (const t of TABLES) {
      const table = tableKey(t.name);
      for (const c of cases.get(table)!) {
        const d: Decision = decide(c.change, c.local, t.policy);
        const what = `seed ${SEED} ${table} key ${c.id}: setup ${c.setup}, local ${JSON.stringify(c.local, (_, v) => (typeof v === 'bigint' ? String(v) : v))}, change ${c.change.op} @${c.change.version.tsUs} complete=${c.change.complete} → decide ${JSON.stringify(d)}`;
        const row = await readRow(table, c.id);
        const entry = await readEntry(table, c.id);
        const remoteEntry = { region: 'a', ts: String(c.change.version.tsUs), priority: false };
        switch (d.action) {
          case 'upsert':
            assert.deepEqual(row, { v: `remote-${c.id}`, body: c.change.complete ? `remote-body-${c.id}` : c.before.row?.body }, what);
            assert.deepEqual(entry, { ...remoteEntry, deleted: false }, what);
            break;
          case 'delete':
          case 'tombstone':
            assert.equal(row, undefined, what);
            assert.deepEqual(entry, { ...remoteEntry, deleted: true }, what);
            break;
          case 'skip':
            assert.deepEqual(row, c.before.row, what);
            assert.deepEqual(entry, c.before.entry, what);
            break;
          default:
            assert.fail(`unexpected action ${d.action}: ${what}`);
        }
        const { rows: recorded } = await user.query(
          `SELECT kind, decision, reason, local_region, ${usExpr('local_commit_ts')} AS lts, remote_region, ${usExpr('remote_commit_ts')} AS rts,
                  local_row IS NOT NULL AS has_local_row, remote_row
             FROM tandem.conflicts WHERE id > $1 AND relname = $2 AND pk = ARRAY[$3::text]`,
          [last, table, String(c.id)],
        );
        if (!d.conflict) {
          assert.deepEqual(recorded, [], what);
          continue;
        }
        kinds[d.conflict] = (kinds[d.conflict] ?? 0) + 1;
        if (d.reason?.includes('TOAST')) unapplicable++;
        const localV = c.local.kind === 'absent' ? undefined : c.local.version;
        assert.deepEqual(
          recorded,
          [
            {
              kind: d.conflict,
              decision: d.action === 'skip' ? 'skip' : 'apply',
              reason: d.reason ?? null,
              local_region: localV?.region ?? null,
              lts: localV ? String(localV.tsUs) : null,
              remote_region: 'a',
              rts: String(c.change.version.tsUs),
              has_local_row: c.before.row !== undefined,
              remote_row:
                c.change.op === 'delete'
                  ? null
                  : c.change.complete
                    ? { id: String(c.id), v: `remote-${c.id}`, body: `remote-body-${c.id}` }
                    : { id: String(c.id), v: `remote-${c.id}` },
            },
          ],
          what,
        );
      }
    }
    assert.equal(stats.unapplicable, unapplicable);
    assert.deepEqual(stats.conflicts, kinds);
  });
}
