/**
 * The batch applier against a real PostgreSQL, fed with hand-made changes as
 * the stream would deliver them from peer "a" into region "b".
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';
import { sourceRelationOf } from '../../test/helpers/relation.ts';
import { startCluster, client, type TestCluster } from '../../test/helpers/pg.ts';
import { silentLogger } from '../core/log.ts';
import { tableKey, parseTableName, type TableName } from '../core/sql.ts';
import { UNCHANGED_TOAST, type TupleValue } from './pgoutput.ts';
import { Applier, usToTimestamp, type Batch, type Change, type RowChange } from './apply.ts';
import type { SourceRelation } from './catalog.ts';
import { installRegion, ensureOrigin } from './setup.ts';
import type { Policy, Version } from './resolve.ts';

let cluster: TestCluster;
let db: pg.Client; // the applier's session
let user: pg.Client; // a local application session
let racer: pg.Client; // a concurrent local writer
let lsn = 0x1000_0000n;

const T1 = parseTableName('public.items');
const ODD = parseTableName('"Mixed Case"."we""ird tbl"');
const TOAST = parseTableName('public.docs');
const PRIO = parseTableName('public.prio');
const CUSTOM = parseTableName('public.counters');
const IDS = parseTableName('public.tickets');
const ALL = [T1, ODD, TOAST, PRIO, CUSTOM, IDS];

const policies = new Map<string, Policy>([
  [tableKey(PRIO), { kind: 'region-priority', region: 'a' }],
  [
    tableKey(CUSTOM),
    {
      kind: 'custom',
      name: 'max-count',
      // Symmetric and deterministic: keep the larger count, join the labels in sorted order.
      resolve: ({ local, remote }) => ({
        n: String(Math.max(Number(local.row.n), Number(remote.row.n))),
        label: [local.row.label ?? '', remote.row.label ?? ''].sort().join('+'),
      }),
    },
  ],
]);

function makeApplier(extra: Partial<ConstructorParameters<typeof Applier>[0]> = {}): Applier {
  return new Applier({
    db,
    localRegion: 'b',
    peer: 'a',
    tables: new Set(ALL.map(tableKey)),
    policyFor: (t) => policies.get(t) ?? { kind: 'lww' },
    logger: silentLogger(),
    ...extra,
  });
}

/** The source relation as the peer would describe it (same schema, built from this database). */
const relation = (t: TableName, relationId = 1) => sourceRelationOf(db, t, relationId);

const V = (tsUs: bigint, region = 'a'): Version => ({ tsUs, region });
const ins = (rel: SourceRelation, newTuple: TupleValue[], version: Version): RowChange => ({ op: 'insert', rel, newTuple, version, lsn: (lsn += 0x100n) });
const upd = (rel: SourceRelation, newTuple: TupleValue[], version: Version, old?: { kind: 'K' | 'O'; tuple: TupleValue[] }): RowChange => ({
  op: 'update',
  rel,
  newTuple,
  version,
  lsn: (lsn += 0x100n),
  ...(old ? { oldKind: old.kind, oldTuple: old.tuple } : {}),
});
const del = (rel: SourceRelation, oldTuple: TupleValue[], version: Version): RowChange => ({ op: 'delete', rel, oldKind: 'K', oldTuple, version, lsn: (lsn += 0x100n) });

function batch(changes: Change[], txns = 1): Batch {
  const last = changes.reduce((m, c) => (c.version.tsUs > m ? c.version.tsUs : m), 0n);
  return { changes, txns, progress: { lsn: (lsn += 0x100n), tsUs: last }, sourceTsUs: last };
}

/** Commit time (Unix µs) of the transaction that last wrote a row, as the peers would see it. */
async function localVersion(t: TableName, id: string): Promise<bigint> {
  const { rows } = await user.query(`SELECT (extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000000)::int8::text AS ts FROM ${tableKey(t)} WHERE id = $1`, [id]);
  return BigInt(rows[0]!.ts);
}

async function conflicts(kind?: string): Promise<Array<Record<string, unknown>>> {
  const { rows } = await user.query(`SELECT * FROM tandem.conflicts ${kind ? 'WHERE kind = $1' : ''} ORDER BY id`, kind ? [kind] : []);
  return rows;
}

async function entry(t: TableName, pk: string[]): Promise<{ region: string; ts: string; deleted: boolean } | undefined> {
  const { rows } = await user.query(
    `SELECT region, (extract(epoch from COALESCE(commit_ts, pg_xact_commit_timestamp(xid(xid)))) * 1000000)::int8::text AS ts, deleted
       FROM tandem.row_versions WHERE relname = $1 AND pk = $2`,
    [tableKey(t), pk],
  );
  return rows[0];
}

const nowUs = () => BigInt(Date.now()) * 1000n;

before(async () => {
  cluster = await startCluster(1);
  const s = cluster.servers[0]!;
  db = await client(s);
  user = await client(s);
  racer = await client(s);
  await user.query(`CREATE TABLE items (id int PRIMARY KEY, name text, qty int)`);
  await user.query(`CREATE SCHEMA "Mixed Case"`);
  await user.query(`CREATE TABLE "Mixed Case"."we""ird tbl" ("the key" text, "k 2" int, "we""ird col" text, PRIMARY KEY ("the key", "k 2"))`);
  await user.query(`CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`);
  await user.query(`ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL`);
  await user.query(`CREATE TABLE prio (id int PRIMARY KEY, v text)`);
  await user.query(`CREATE TABLE counters (id int PRIMARY KEY, n int, label text)`);
  await user.query(`CREATE TABLE tickets (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text)`);
  await installRegion(user, { region: 'b', tables: ALL });
  await ensureOrigin(user, 'a');
});

after(async () => {
  await db?.end().catch(() => {});
  await user?.end().catch(() => {});
  await racer?.end().catch(() => {});
  await cluster?.stop();
});

describe('Applier', () => {
  test('applies inserts, updates and deletes, records versions and commits origin progress atomically', async () => {
    const a = makeApplier();
    const start = await a.init();
    const rel = await relation(T1);
    const t0 = nowUs();
    const b1 = batch([ins(rel, ['1', 'one', '5'], V(t0)), ins(rel, ['2', 'two', '6'], V(t0 + 1n)), upd(rel, ['1', 'uno', '7'], V(t0 + 2n))], 2);
    const st = await a.apply(b1);
    assert.equal(st.rows, 2, 'insert+update of key 1 squash into one write, plus key 2');
    const { rows } = await user.query('SELECT id, name, qty FROM items ORDER BY id');
    assert.deepEqual(rows, [
      { id: 1, name: 'uno', qty: 7 },
      { id: 2, name: 'two', qty: 6 },
    ]);
    assert.deepEqual(await entry(T1, ['1']), { region: 'a', ts: String(t0 + 2n), deleted: false });
    const { rows: prog } = await user.query(`SELECT pg_replication_origin_progress('tandem_from_a', true)::text AS lsn`);
    assert.notEqual(prog[0].lsn, null);
    assert.ok(BigInt(`0x${prog[0].lsn.split('/')[1]}`) + (BigInt(`0x${prog[0].lsn.split('/')[0]}`) << 32n) === b1.progress.lsn);
    assert.ok(start <= b1.progress.lsn);
    const { rows: status } = await user.query(`SELECT peer, applied_txns::int, applied_rows::int, source_commit_ts = $1::timestamptz AS ts_ok FROM tandem.replication_status`, [usToTimestamp(t0 + 2n)]);
    assert.deepEqual(status, [{ peer: 'a', applied_txns: 2, applied_rows: 2, ts_ok: true }]);

    await a.apply(batch([del(rel, ['2', null, null], V(t0 + 3n))]));
    assert.equal((await user.query('SELECT count(*)::int AS n FROM items WHERE id = 2')).rows[0].n, 0);
    assert.deepEqual(await entry(T1, ['2']), { region: 'a', ts: String(t0 + 3n), deleted: true });
    // The apply session does not fire the capture trigger: the tombstone carries the remote version, not a local one.
    assert.equal((await conflicts()).length, 0, 'no conflicts in a conflict-free stream');
  });

  test('last writer wins against local writes, both ways, and records update_origin_differs', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(T1);
    await user.query(`INSERT INTO items VALUES (10, 'local', 1)`);
    const lv = await localVersion(T1, '10');
    // Older remote update loses.
    await a.apply(batch([upd(rel, ['10', 'remote-old', '2'], V(lv - 1000n))]));
    assert.equal((await user.query('SELECT name FROM items WHERE id = 10')).rows[0].name, 'local');
    // Newer remote update wins.
    await a.apply(batch([upd(rel, ['10', 'remote-new', '3'], V(lv + 1000n))]));
    assert.equal((await user.query('SELECT name FROM items WHERE id = 10')).rows[0].name, 'remote-new');
    const c = await conflicts('update_origin_differs');
    const mine = c.filter((r) => (r.pk as string[])[0] === '10');
    assert.deepEqual(
      mine.map((r) => [r.decision, r.local_region, r.remote_region]),
      [
        ['skip', 'b', 'a'],
        ['apply', 'b', 'a'],
      ],
    );
    assert.equal((mine[0]!.local_row as { name: string }).name, 'local');
    assert.equal((mine[0]!.remote_row as { name: string }).name, 'remote-old');
    // A local update after the apply makes the row local again: its version comes from xmin, not from the entry.
    await user.query(`UPDATE items SET name = 'local-again' WHERE id = 10`);
    const lv2 = await localVersion(T1, '10');
    await a.apply(batch([upd(rel, ['10', 'remote-between', '4'], V(lv + 2000n))]));
    assert.ok(lv2 > lv + 2000n, 'the local update is later than the remote one');
    assert.equal((await user.query('SELECT name FROM items WHERE id = 10')).rows[0].name, 'local-again');
  });

  test('equal timestamps are broken by region name, bytewise', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(T1);
    await user.query(`INSERT INTO items VALUES (20, 'b-local', 1)`);
    const lv = await localVersion(T1, '20');
    // Same µs: region "a" < "b", so the local row ("b") stays.
    await a.apply(batch([upd(rel, ['20', 'a-remote', '2'], V(lv, 'a'))]));
    assert.equal((await user.query('SELECT name FROM items WHERE id = 20')).rows[0].name, 'b-local');
    // A third region "c" with the same timestamp beats "b".
    const a3 = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set(ALL.map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    void a3;
    await a.apply(batch([upd(rel, ['20', 'c-remote', '3'], V(lv, 'c'))]));
    assert.equal((await user.query('SELECT name FROM items WHERE id = 20')).rows[0].name, 'c-remote');
  });

  test('local deletes leave tombstones: older updates lose, newer updates resurrect, re-inserts are not conflicts', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(T1);
    await user.query(`INSERT INTO items VALUES (30, 'x', 1), (31, 'y', 1)`);
    await user.query(`DELETE FROM items WHERE id IN (30, 31)`);
    const e = await entry(T1, ['30']);
    assert.equal(e?.deleted, true);
    assert.equal(e?.region, 'b');
    const dv = BigInt(e!.ts);
    await a.apply(batch([upd(rel, ['30', 'old', '2'], V(dv - 1n)), upd(rel, ['31', 'new', '2'], V(dv + 1n))]));
    const { rows } = await user.query('SELECT id, name FROM items WHERE id IN (30, 31) ORDER BY id');
    assert.deepEqual(rows, [{ id: 31, name: 'new' }]);
    const c = (await conflicts('update_deleted')).filter((r) => ['30', '31'].includes((r.pk as string[])[0]!));
    assert.deepEqual(c.map((r) => r.decision).sort(), ['apply', 'skip']);
    // An older insert than a delete elsewhere is discarded and recorded.
    await a.apply(batch([ins(rel, ['30', 'late-insert', '9'], V(dv - 5n))]));
    assert.equal((await user.query('SELECT count(*)::int AS n FROM items WHERE id = 30')).rows[0].n, 0);
    assert.equal((await conflicts('insert_deleted')).length, 1);
  });

  test('remote delete of a missing row leaves a tombstone that beats a late older insert', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(T1);
    const t0 = nowUs();
    await a.apply(batch([del(rel, ['40', null, null], V(t0))]));
    assert.equal((await conflicts('delete_missing')).length, 1);
    await a.apply(batch([ins(rel, ['40', 'late', '1'], V(t0 - 10n, 'c'))]));
    assert.equal((await user.query('SELECT count(*)::int AS n FROM items WHERE id = 40')).rows[0].n, 0);
    // update_missing (no tombstone, no row) applies the full row as an insert.
    await a.apply(batch([upd(rel, ['41', 'from-update', '1'], V(t0))]));
    assert.equal((await user.query('SELECT name FROM items WHERE id = 41')).rows[0].name, 'from-update');
    assert.ok((await conflicts('update_missing')).some((r) => (r.pk as string[])[0] === '41' && r.decision === 'apply'));
  });

  test('remote delete vs newer local row: delete_origin_differs, row kept', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(T1);
    await user.query(`INSERT INTO items VALUES (50, 'keep', 1)`);
    const lv = await localVersion(T1, '50');
    await a.apply(batch([del(rel, ['50', null, null], V(lv - 1n))]));
    assert.equal((await user.query('SELECT name FROM items WHERE id = 50')).rows[0].name, 'keep');
    await a.apply(batch([del(rel, ['50', null, null], V(lv + 1n))]));
    assert.equal((await user.query('SELECT count(*)::int AS n FROM items WHERE id = 50')).rows[0].n, 0);
    assert.deepEqual(
      (await conflicts('delete_origin_differs')).filter((r) => (r.pk as string[])[0] === '50').map((r) => r.decision),
      ['skip', 'apply'],
    );
  });

  /**
   * A local transaction that has written but not committed when the apply statement starts, and commits
   * while the statement waits for its row lock: the statement's reads cannot see the write (it was not
   * committed at the snapshot), its guarded write re-checks the newest row version (READ COMMITTED) and
   * must notice. The same injection hits the TypeScript path between its reads and its write.
   */
  async function racingWrite(...writes: Array<[sql: string, params: unknown[]]>): Promise<void> {
    await racer.query('BEGIN');
    for (const [sql, params] of writes) await racer.query(sql, params);
    setTimeout(() => void racer.query('COMMIT').catch(() => {}), 150);
  }

  /** An applier raced by `writes` (see racingWrite) whenever it is about to write T1 in a first attempt. */
  function racedApplier(sqlDecisions: boolean, ...writes: Array<[sql: string, params: unknown[]]>): { a: Applier; races: () => number } {
    let races = 0;
    const a = makeApplier({
      sqlDecisions,
      beforeWrite: async (table, attempt) => {
        if (table === tableKey(T1) && attempt === 1) {
          races++;
          await racingWrite(...writes);
        }
      },
    });
    return { a, races: () => races };
  }

  for (const sqlDecisions of [true, false]) {
    const path = sqlDecisions ? 'SQL path' : 'TypeScript path';
    test(`a concurrent local INSERT during the apply is detected and the batch retried (${path})`, async () => {
      const id = sqlDecisions ? 60 : 63;
      const { a, races } = racedApplier(sqlDecisions, [`INSERT INTO items VALUES ($1, 'local-racer', 1)`, [id]]);
      await a.init();
      const rel = await relation(T1);
      // Remote insert older than the racing local insert: the local row must survive (not be blindly overwritten).
      const st = await a.apply(batch([ins(rel, [String(id), 'remote', '2'], V(nowUs() - 1_000_000n))]));
      assert.equal(races(), 1);
      assert.equal(st.attempts, 2, 'the first attempt saw the key inserted first and retried');
      assert.equal((await user.query('SELECT name FROM items WHERE id = $1', [id])).rows[0].name, 'local-racer');
      assert.ok((await conflicts('insert_exists')).some((r) => (r.pk as string[])[0] === String(id) && r.decision === 'skip'));
    });

    test(`a concurrent local tombstone of a key the batch inserts is detected (version entry, ${path})`, async () => {
      const id = sqlDecisions ? 64 : 65;
      // Inserted and deleted in one local transaction: no row, but a tombstone entry, committed while apply waits on it.
      const { a, races } = racedApplier(sqlDecisions, [`INSERT INTO items VALUES ($1, 'short-lived', 1)`, [id]], [`DELETE FROM items WHERE id = $1`, [id]]);
      await a.init();
      const rel = await relation(T1);
      // The remote insert is older than the local delete: the delete wins, the row stays absent.
      const st = await a.apply(batch([ins(rel, [String(id), 'remote', '2'], V(nowUs() - 1_000_000n))]));
      assert.equal(races(), 1);
      assert.equal(st.attempts, 2, 'the first attempt failed on the entry the racer made first, and retried');
      assert.deepEqual((await user.query('SELECT name FROM items WHERE id = $1', [id])).rows, []);
      assert.equal((await entry(T1, [String(id)]))?.deleted, true);
    });

    for (const race of ['UPDATE', 'DELETE'] as const) {
      test(`a concurrent local ${race} of a row during the apply is detected (xmin guard, ${path})`, async () => {
        const id = (race === 'UPDATE' ? 61 : 62) + (sqlDecisions ? 0 : 10);
        await user.query(`INSERT INTO items VALUES ($1, 'base', 1)`, [id]);
        const t0 = await localVersion(T1, String(id));
        const { a, races } = racedApplier(sqlDecisions, [race === 'UPDATE' ? `UPDATE items SET name = 'local-later' WHERE id = $1` : `DELETE FROM items WHERE id = $1`, [id]]);
        await a.init();
        const rel = await relation(T1);
        // A remote update newer than the row as read, but older than the racing local write.
        const st = await a.apply(batch([upd(rel, [String(id), 'remote', '2'], V(t0 + 1n))]));
        assert.equal(races(), 1);
        assert.equal(st.attempts, 2, 'the guarded write saw the row change and the batch was retried');
        const { rows } = await user.query('SELECT name FROM items WHERE id = $1', [id]);
        assert.deepEqual(rows, race === 'UPDATE' ? [{ name: 'local-later' }] : []);
      });
    }
  }

  test('two key texts of one primary key value in a batch are an internal error, and nothing is written', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(T1);
    // '66' and '066' are different texts (squash keeps both) but one int: the types would have to differ between regions.
    await assert.rejects(
      a.apply(batch([ins(rel, ['66', 'one', '1'], V(nowUs())), ins(rel, ['066', 'two', '1'], V(nowUs()))])),
      (err: Error & { code?: string }) => err.code === 'TANDEM_ERR_INTERNAL' && /same primary key in "public"."items": 1$/.test(err.message),
    );
    assert.deepEqual((await user.query('SELECT * FROM items WHERE id = 66')).rows, []);
    assert.equal(await entry(T1, ['66']), undefined);
  });

  test('GENERATED ALWAYS identity columns take the source value, in both apply paths', async () => {
    const rel = await relation(IDS);
    for (const [sqlDecisions, id] of [[true, '101'], [false, '202']] as const) {
      const a = makeApplier({ sqlDecisions });
      await a.init();
      const t0 = nowUs();
      await a.apply(batch([ins(rel, [id, 'remote'], V(t0))]));
      await a.apply(batch([upd(rel, [id, 'remote 2'], V(t0 + 1n))]));
      assert.deepEqual((await user.query('SELECT v FROM tickets WHERE id = $1', [id])).rows, [{ v: 'remote 2' }], `sqlDecisions=${sqlDecisions}`);
    }
  });

  test('odd identifiers: mixed case, spaces and quotes in schema, table and column names', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(ODD);
    const t0 = nowUs();
    await a.apply(batch([ins(rel, ['K "1"', '7', "it's"], V(t0)), ins(rel, ['k,2', '8', 'x'], V(t0))]));
    await a.apply(batch([upd(rel, ['K "1"', '7', 'changed'], V(t0 + 1n)), del(rel, ['k,2', '8', null], V(t0 + 1n))]));
    const { rows } = await user.query(`SELECT "the key" AS k, "k 2" AS k2, "we""ird col" AS v FROM "Mixed Case"."we""ird tbl"`);
    assert.deepEqual(rows, [{ k: 'K "1"', k2: 7, v: 'changed' }]);
    assert.deepEqual(await entry(ODD, ['k,2', '8']), { region: 'a', ts: String(t0 + 1n), deleted: true });
    // The capture trigger writes the same key text for a local delete.
    await user.query(`DELETE FROM "Mixed Case"."we""ird tbl" WHERE "the key" = 'K "1"'`);
    assert.equal((await entry(ODD, ['K "1"', '7']))?.region, 'b');
  });

  test('keys are identified by their canonical text: timestamptz with other offsets, padded char', async () => {
    await user.query(`CREATE TABLE tzk (at timestamptz, code char(4), flags bit(3), v text, PRIMARY KEY (at, code))`);
    const Z = parseTableName('public.tzk');
    await installRegion(user, { region: 'b', tables: [...ALL, Z] });
    const a = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([...ALL, Z].map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await a.init();
    const rel = await relation(Z);
    const t0 = nowUs();
    await a.apply(batch([ins(rel, ['2024-01-01 12:00:00+05:30', 'ab  ', '101', 'one'], V(t0))]));
    // The same key written by a source in another time zone.
    await a.apply(batch([upd(rel, ['2024-01-01 06:30:00+00', 'ab  ', '011', 'two'], V(t0 + 1n))]));
    assert.deepEqual((await user.query(`SELECT code, flags, v FROM tzk`)).rows, [{ code: 'ab  ', flags: '011', v: 'two' }]);
    assert.deepEqual(await entry(Z, ['2024-01-01 06:30:00+00', 'ab']), { region: 'a', ts: String(t0 + 1n), deleted: false });
    // A local delete (the trigger's canonical key) beats an older remote update sent in yet another form.
    await user.query(`SET timezone = 'America/New_York'`);
    await user.query(`DELETE FROM tzk`);
    await user.query(`RESET timezone`);
    await a.apply(batch([upd(rel, ['2024-01-01 01:30:00-05', 'ab  ', '111', 'late'], V(t0 + 2n))]));
    assert.equal((await user.query(`SELECT count(*)::int AS n FROM tzk`)).rows[0].n, 0);
    assert.ok((await conflicts('update_deleted')).some((c) => c.relname === tableKey(Z) && c.decision === 'skip'));
  });

  test('unchanged TOAST values: kept on update, merged within a batch, never invented for a missing row', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(TOAST);
    const big = 'x'.repeat(5000) + 'END';
    const t0 = nowUs();
    await a.apply(batch([ins(rel, ['1', 't1', big], V(t0))]));
    // Update sent with the body unchanged ('u'): keep the stored value.
    await a.apply(batch([upd(rel, ['1', 't1-new', UNCHANGED_TOAST], V(t0 + 1n))]));
    let r = (await user.query('SELECT title, body FROM docs WHERE id = 1')).rows[0];
    assert.equal(r.title, 't1-new');
    assert.equal(r.body, big);
    // Insert and update of key 2 in one batch: the 'u' is filled from the insert.
    await a.apply(batch([ins(rel, ['2', 't2', big + '2'], V(t0)), upd(rel, ['2', 't2-new', UNCHANGED_TOAST], V(t0 + 1n))]));
    r = (await user.query('SELECT title, body FROM docs WHERE id = 2')).rows[0];
    assert.deepEqual(r, { title: 't2-new', body: big + '2' });
    // Update of a row that does not exist here, with 'u': cannot be rebuilt, recorded as skipped.
    const st = await a.apply(batch([upd(rel, ['3', 't3', UNCHANGED_TOAST], V(t0 + 1n))]));
    assert.equal(st.unapplicable, 1);
    assert.equal((await user.query('SELECT count(*)::int AS n FROM docs WHERE id = 3')).rows[0].n, 0);
    const c = (await conflicts('update_missing')).find((x) => (x.pk as string[])[0] === '3' && x.relname === tableKey(TOAST));
    assert.equal(c?.decision, 'skip');
    assert.match(String(c?.reason), /TOAST/);
    // REPLICA IDENTITY FULL: the old tuple carries the value, so the row can be rebuilt.
    await a.apply(batch([upd(rel, ['4', 't4', UNCHANGED_TOAST], V(t0 + 1n), { kind: 'O', tuple: ['4', 'old', big + '4'] })]));
    r = (await user.query('SELECT title, body FROM docs WHERE id = 4')).rows[0];
    assert.deepEqual(r, { title: 't4', body: big + '4' });
    // A key-changing update with the body unchanged takes the body from the old key's row.
    await a.apply(batch([upd(rel, ['5', 't1-moved', UNCHANGED_TOAST], V(t0 + 2n), { kind: 'K', tuple: ['1', null, null] })]));
    const moved = (await user.query('SELECT id, title, body = $1 AS same FROM docs WHERE id IN (1, 5) ORDER BY id', [big])).rows;
    assert.deepEqual(moved, [{ id: 5, title: 't1-moved', same: true }]);
    assert.equal((await entry(TOAST, ['1']))?.deleted, true);
  });

  test('region-priority: the named region wins regardless of time', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(PRIO);
    await user.query(`INSERT INTO prio VALUES (1, 'local-b')`);
    const lv = await localVersion(PRIO, '1');
    await a.apply(batch([upd(rel, ['1', 'from-a-older'], V(lv - 1_000_000n, 'a'))]));
    assert.equal((await user.query('SELECT v FROM prio WHERE id = 1')).rows[0].v, 'from-a-older');
  });

  test('custom resolver: both rows merged, result gets the higher version', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(CUSTOM);
    await user.query(`INSERT INTO counters VALUES (1, 10, 'b')`);
    const lv = await localVersion(CUSTOM, '1');
    await a.apply(batch([upd(rel, ['1', '7', 'a'], V(lv + 5n))]));
    assert.deepEqual((await user.query('SELECT n, label FROM counters WHERE id = 1')).rows[0], { n: 10, label: 'a+b' });
    assert.deepEqual(await entry(CUSTOM, ['1']), { region: 'a', ts: String(lv + 5n), deleted: false });
    assert.equal((await conflicts('update_origin_differs')).filter((c) => c.relname === tableKey(CUSTOM))[0]?.decision, 'custom');
  });

  test('schema drift parks the table, other tables flow, and the parked changes replay once fixed', async () => {
    await user.query(`CREATE TABLE drifty (id int PRIMARY KEY, a text)`);
    const D = parseTableName('public.drifty');
    await installRegion(user, { region: 'b', tables: [...ALL, D] });
    const paused: string[] = [];
    const a = new Applier({
      db,
      localRegion: 'b',
      peer: 'a',
      tables: new Set([...ALL, D].map(tableKey)),
      policyFor: () => ({ kind: 'lww' }),
      logger: silentLogger(),
      events: { onPause: (p) => paused.push(p.reason) },
    });
    await a.init();
    // The source has an extra column "b" the target lacks.
    const src = await relation(D, 77);
    src.columns = [...src.columns, { flags: 0, isKey: false, name: 'b', typeOid: 23, typeMod: -1 }];
    const items = await relation(T1);
    const t0 = nowUs();
    const st = await a.apply(batch([ins(src, ['1', 'x', '10'], V(t0)), ins(items, ['70', 'flows', '1'], V(t0)), upd(src, ['1', 'y', '11'], V(t0 + 1n))], 2));
    assert.equal(st.parked, 2);
    assert.match(paused[0]!, /column "b" exists in the source but not in this region/);
    assert.equal((await user.query('SELECT count(*)::int AS n FROM items WHERE id = 70')).rows[0].n, 1, 'other tables keep flowing');
    assert.equal((await user.query('SELECT count(*)::int AS n FROM tandem.parked')).rows[0].n, 2);
    assert.deepEqual(a.paused.map((p) => [p.table, p.kind, p.parked]), [[tableKey(D), 'drift', 2]]);
    // Still drifting: resume does nothing; later changes are parked behind the earlier ones.
    assert.equal(await a.resumePaused(), 0);
    await a.apply(batch([ins(src, ['2', 'z', '12'], V(t0 + 2n))]));
    // Fix the schema; the parked changes replay in order through normal resolution.
    await user.query(`ALTER TABLE drifty ADD COLUMN b int`);
    assert.equal(await a.resumePaused(), 3);
    assert.deepEqual((await user.query('SELECT id, a, b FROM drifty ORDER BY id')).rows, [
      { id: 1, a: 'y', b: 11 },
      { id: 2, a: 'z', b: 12 },
    ]);
    assert.equal((await user.query('SELECT count(*)::int AS n FROM tandem.parked')).rows[0].n, 0);
    assert.deepEqual(a.paused, []);
    // Flowing again.
    await a.apply(batch([upd(src, ['2', 'zz', '13'], V(t0 + 3n))]));
    assert.equal((await user.query('SELECT a FROM drifty WHERE id = 2')).rows[0].a, 'zz');
  });

  test('a column only this region has (a migration that got here first) takes its default, and updates keep it', async () => {
    await user.query(`CREATE TABLE wider (id int PRIMARY KEY, a text)`);
    const W = parseTableName('public.wider');
    const a = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([...ALL, W].map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await a.init();
    const src = await relation(W, 99); // the source's shape, before the migration
    await user.query(`ALTER TABLE wider ADD COLUMN added text NOT NULL DEFAULT 'dflt'`);
    await a.refreshTargets();
    const t0 = nowUs();
    const st = await a.apply(batch([ins(src, ['1', 'x'], V(t0))]));
    assert.equal(st.parked, 0, 'not drift: nothing the source sent is lost');
    await user.query(`UPDATE wider SET added = 'local' WHERE id = 1`);
    await a.apply(batch([upd(src, ['1', 'y'], V(nowUs() + 1_000_000n))]));
    assert.deepEqual((await user.query('SELECT * FROM wider')).rows, [{ id: 1, a: 'y', added: 'local' }]);
    // A NOT NULL column without a default cannot be filled: that is drift.
    await user.query(`ALTER TABLE wider ADD COLUMN strict int NOT NULL DEFAULT 0`);
    await user.query(`ALTER TABLE wider ALTER COLUMN strict DROP DEFAULT`);
    await a.refreshTargets();
    const st2 = await a.apply(batch([ins(src, ['2', 'z'], V(nowUs()))]));
    assert.equal(st2.parked, 1);
    assert.match(a.paused[0]!.reason, /"strict" exists in this region \(NOT NULL, no default\)/);
    await user.query(`DELETE FROM tandem.parked WHERE relname = $1`, [tableKey(W)]);
  });

  test('parked state survives a restart of the applier', async () => {
    await user.query(`CREATE TABLE later (id int PRIMARY KEY)`);
    const L = parseTableName('public.later');
    const a = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([...ALL, L].map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await a.init();
    const src = await relation(L, 88);
    src.columns = [...src.columns, { flags: 0, isKey: false, name: 'extra', typeOid: 25, typeMod: -1 }];
    await a.apply(batch([ins(src, ['1', 'e'], V(nowUs()))]));
    // A fresh applier on a fresh session (a restarted agent) knows the table is paused.
    await db.query(`SELECT pg_replication_origin_session_reset()`);
    const b = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([...ALL, L].map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await b.init();
    assert.deepEqual(b.paused.map((p) => p.table), [tableKey(L)]);
    await user.query(`ALTER TABLE later ADD COLUMN extra text`);
    assert.equal(await b.resumePaused(), 1);
    assert.deepEqual((await user.query('SELECT * FROM later')).rows, [{ id: 1, extra: 'e' }]);
  });

  test('truncate applies to the target table', async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(PRIO);
    await a.apply(batch([{ op: 'truncate', rels: [rel], cascade: false, restartIdentity: false, version: V(nowUs()), lsn: (lsn += 0x100n) }]));
    assert.equal((await user.query('SELECT count(*)::int AS n FROM prio')).rows[0].n, 0);
  });

  test("a newer version of a live row rewrites the row's version entry in place (HOT updates, no new index entries)", async () => {
    const a = makeApplier();
    await a.init();
    const rel = await relation(T1);
    const t0 = nowUs();
    await a.apply(batch([ins(rel, ['900', 'v0', '0'], V(t0))]));
    const counters = async () => {
      // Every session's pending counts, also those of earlier tests' sessions (flushed at most once a second otherwise).
      for (const c of [db, user, racer]) await c.query('SELECT pg_stat_force_next_flush()');
      await new Promise((r) => setTimeout(r, 50));
      await user.query('SELECT pg_stat_clear_snapshot()');
      const { rows } = await user.query(`SELECT n_tup_upd::int AS upd, n_tup_hot_upd::int AS hot FROM pg_stat_user_tables WHERE relid = 'tandem.row_versions'::regclass`);
      return rows[0] as { upd: number; hot: number };
    };
    const before = await counters();
    for (let i = 1; i <= 20; i++) await a.apply(batch([upd(rel, ['900', `v${i}`, String(i)], V(t0 + BigInt(i)))]));
    let after = await counters();
    for (let i = 0; i < 40 && after.upd - before.upd < 20; i++) after = await counters();
    assert.equal(after.upd - before.upd, 20, 'one version update per applied change');
    // Pruning makes room on the page; an update that finds none is not HOT, so allow a few.
    assert.ok(after.hot - before.hot >= 15, `only ${after.hot - before.hot} of 20 version updates were HOT`);
  });

  test('statements are built again from the new table definitions after a change of the target table', async () => {
    await user.query(`CREATE TABLE widen (id int PRIMARY KEY, a int)`);
    const W = parseTableName('public.widen');
    const a = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([...ALL, W].map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await a.init();
    await a.apply(batch([ins(await relation(W), ['1', '7'], V(nowUs()))]));
    // Every region widens the column; the source's relation says bigint from now on.
    await user.query(`ALTER TABLE widen ALTER COLUMN a TYPE bigint`);
    await a.refreshTargets();
    const st = await a.apply(batch([ins(await relation(W, 2), ['2', '5000000000'], V(nowUs()))]));
    assert.equal(st.parked, 0, 'nothing parked: the statement casts to the new type');
    assert.deepEqual((await user.query('SELECT id, a::text FROM widen ORDER BY id')).rows, [{ id: 1, a: '7' }, { id: 2, a: '5000000000' }]);
    assert.deepEqual(a.paused, []);
  });

  test('a big batch probes each key once, even when the version table statistics lag behind a bulk load', async () => {
    // auto_explain sends every plan of the applier's session back as a notice (JSON, with row counts).
    await user.query(`CREATE TABLE bulk (id int PRIMARY KEY, v text)`);
    const B = parseTableName('public.bulk');
    await user.query(`ALTER TABLE tandem.row_versions SET (autovacuum_enabled = false)`);
    await user.query('ANALYZE tandem.row_versions'); // statistics from before any entry of bulk existed
    const loops: Array<{ node: string; loops: number }> = [];
    const walk = (n: Record<string, unknown>) => {
      if (n['Node Type'] === 'CTE Scan' || n['Node Type'] === 'Function Scan') loops.push({ node: `${n['Node Type']} ${n['CTE Name'] ?? n['Function Name']}`, loops: n['Actual Loops'] as number });
      for (const c of (n.Plans as Array<Record<string, unknown>>) ?? []) walk(c);
    };
    const onNotice = (m: { message?: string }) => {
      const at = m.message?.indexOf('{') ?? -1;
      if (at >= 0 && m.message!.includes('plan:')) walk((JSON.parse(m.message!.slice(at)) as { Plan: Record<string, unknown> }).Plan);
    };
    db.on('notice', onNotice);
    try {
      const rel = await relation(B);
      const n = 2_000;
      for (const sqlDecisions of [true, false]) {
        const a = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([...ALL, B].map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger(), sqlDecisions });
        await a.init();
        await db.query(`LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0; SET auto_explain.log_analyze = on; SET auto_explain.log_timing = off;
                        SET auto_explain.log_format = 'json'; SET auto_explain.log_level = 'notice'; SET client_min_messages = 'notice'`);
        const base = sqlDecisions ? 0 : 10 * n;
        const t0 = nowUs();
        // New keys, then updates of all of them (their entries exist now; the statistics still say none do) and more new keys.
        await a.apply(batch(Array.from({ length: n }, (_, i) => ins(rel, [String(base + i), 'new'], V(t0))), n));
        loops.length = 0;
        const second = [...Array.from({ length: n }, (_, i) => upd(rel, [String(base + i), 'updated'], V(t0 + 1n))), ...Array.from({ length: n / 4 }, (_, i) => ins(rel, [String(base + n + i), 'new'], V(t0 + 1n)))];
        const st = await a.apply(batch(second, second.length));
        await db.query(`SET auto_explain.log_min_duration = -1`);
        assert.equal(st.rows, n + n / 4);
        assert.ok(loops.length > 0, 'plans were seen');
        const rescanned = loops.filter((l) => l.loops > 1);
        assert.deepEqual(rescanned, [], `sqlDecisions=${sqlDecisions}: a node ran once per key instead of once per batch`);
      }
      assert.equal((await user.query(`SELECT count(*)::int AS n FROM bulk WHERE v = 'updated'`)).rows[0].n, 2 * n);
    } finally {
      db.off('notice', onNotice);
      await user.query(`ALTER TABLE tandem.row_versions RESET (autovacuum_enabled)`);
    }
  });

  test('a table with a data error the target refuses is paused with that error, not retried forever', async () => {
    await user.query(`CREATE TABLE strict (id int PRIMARY KEY, v int CHECK (v > 0))`);
    const S = parseTableName('public.strict');
    const a = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([...ALL, S].map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await a.init();
    const rel = await relation(S);
    const items = await relation(T1);
    const st = await a.apply(batch([ins(rel, ['1', '-5'], V(nowUs())), ins(items, ['80', 'ok', '1'], V(nowUs()))]));
    assert.equal(st.parked, 1);
    assert.equal(a.paused.find((p) => p.table === tableKey(S))?.kind, 'error');
    assert.match(a.paused.find((p) => p.table === tableKey(S))!.reason, /check constraint/);
    assert.equal((await user.query('SELECT count(*)::int AS n FROM items WHERE id = 80')).rows[0].n, 1);
    await user.query(`ALTER TABLE strict DROP CONSTRAINT strict_v_check`);
    assert.equal(await a.resumePaused(), 1);
    assert.equal((await user.query('SELECT v FROM strict')).rows[0].v, -5);
  });

  test('a statement past the client deadline ends the session: nothing more is sent behind it (no retry, no ROLLBACK)', async () => {
    // Its own session with a short deadline, applying from peer "c" (an origin is active in one session at a time).
    await ensureOrigin(user, 'c');
    const slow = new pg.Client({ ...cluster.servers[0]!.clientConfig('tandem'), query_timeout: 400 } as pg.ClientConfig);
    slow.on('error', () => {});
    await slow.connect();
    const a = new Applier({ db: slow, localRegion: 'b', peer: 'c', tables: new Set(ALL.map(tableKey)), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await a.init();
    const rel = await relation(T1);
    await user.query(`INSERT INTO items VALUES (9001, 'local', 1)`);
    // A local transaction holds the row: the apply statement waits for it past the deadline.
    await racer.query('BEGIN');
    await racer.query('UPDATE items SET qty = 2 WHERE id = 9001');
    const sent: string[] = [];
    const query = slow.query.bind(slow) as (...args: unknown[]) => unknown;
    (slow as unknown as { query: (...args: unknown[]) => unknown }).query = (q: unknown, ...rest: unknown[]) => {
      sent.push(typeof q === 'string' ? q : (q as { text: string }).text);
      return query(q, ...rest);
    };
    try {
      await assert.rejects(a.apply(batch([upd(rel, ['9001', 'remote', '3'], V(nowUs() + 1_000_000n))])), /Query read timeout/);
      assert.equal(sent.length, 1, `only the apply statement was sent, got: ${sent.map((q) => q.slice(0, 40)).join(' | ')}`);
    } finally {
      await racer.query('ROLLBACK');
      await slow.end().catch(() => {});
    }
  });
});
