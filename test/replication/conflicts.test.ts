/**
 * Every conflict kind, end to end, in three regions whose links go through
 * the lab's WAN emulator: partition, write concurrently, heal, and check that
 * every region converges to the same, expected state and recorded the
 * conflict. PostgreSQL 17's own bidirectional replication diverges or stalls
 * on each of these (see docs/replication.md).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startBed, waitCaughtUp, waitConverged, waitFor, type Bed } from './harness.ts';

const BIG = 'x'.repeat(6000);

describe('conflicts across three regions (WAN links, partitions)', () => {
  let bed: Bed;
  before(async () => {
    bed = await startBed({
      regions: 3,
      wan: { latencyMs: 2 },
      ddl: [
        `CREATE TABLE kv (k text PRIMARY KEY, v text)`,
        `CREATE TABLE prio (k int PRIMARY KEY, v text)`,
        `CREATE TABLE counters (k int PRIMARY KEY, n int NOT NULL, tags text NOT NULL DEFAULT '')`,
        `CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`,
        `ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL`,
        `CREATE SCHEMA "Odd Schema"`,
        `CREATE TABLE "Odd Schema"."tab ""q""" ("Key Col" text, "n" int, "va""l" text, PRIMARY KEY ("Key Col", "n"))`,
      ],
      tables: ['public.kv', 'public.prio', 'public.counters', 'public.docs', '"Odd Schema"."tab ""q"""'],
      replication: {
        conflicts: {
          'public.prio': { policy: 'region-priority', region: 'r-two' },
          'public.counters': { policy: 'custom', module: 'resolver.ts' },
        },
      },
      files: {
        // A join: the larger counter, the union of tags. Deterministic, commutative, associative, idempotent.
        'resolver.ts': `export function resolve({ local, remote }) {
           const tags = new Set([...(local.row.tags ?? '').split(','), ...(remote.row.tags ?? '').split(',')].filter(Boolean));
           return { n: String(Math.max(Number(local.row.n), Number(remote.row.n))), tags: [...tags].sort().join(',') };
         }\n`,
      },
    });
    for (let i = 0; i < 3; i++) await bed.startAgent(i);
  });
  after(async () => bed?.close());

  const q = (i: number, sql: string, params: unknown[] = []) => bed.db[i]!.query(sql, params);
  /** Conflicts recorded in region i, once every pipeline applied all that was written (tables can converge before a losing change arrives). */
  const conflicts = async (i: number, table: string, kind: string) => {
    await waitCaughtUp(bed);
    return (await q(i, `SELECT decision, local_region, remote_region FROM tandem.conflicts WHERE relname = $1 AND kind = $2 ORDER BY id`, [table, kind])).rows;
  };
  /** Seed rows everywhere and wait until all regions have them. */
  async function seed(sql: string, table: string, order: string) {
    await q(0, sql);
    return waitConverged(bed, table, order);
  }

  test('insert/insert: the later insert wins everywhere', async () => {
    bed.isolate(0);
    bed.isolate(1);
    bed.isolate(2);
    await q(0, `INSERT INTO kv VALUES ('ii', 'from-one')`);
    await q(1, `INSERT INTO kv VALUES ('ii', 'from-two')`);
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'kv', 'k'));
    assert.deepEqual(final.find((r: { k: string }) => r.k === 'ii'), { k: 'ii', v: 'from-two' });
    assert.deepEqual(await conflicts(0, '"public"."kv"', 'insert_exists'), [{ decision: 'apply', local_region: 'r-one', remote_region: 'r-two' }]);
    assert.deepEqual(await conflicts(1, '"public"."kv"', 'insert_exists'), [{ decision: 'skip', local_region: 'r-two', remote_region: 'r-one' }]);
  });

  test('update/update: the later update wins everywhere (PostgreSQL 17 swaps them and diverges)', async () => {
    await seed(`INSERT INTO kv VALUES ('uu', 'base')`, 'kv', 'k');
    bed.isolate(0);
    bed.isolate(1);
    await q(0, `UPDATE kv SET v = 'one' WHERE k = 'uu'`);
    await q(1, `UPDATE kv SET v = 'two' WHERE k = 'uu'`);
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'kv', 'k'));
    assert.equal(final.find((r: { k: string }) => r.k === 'uu').v, 'two');
    assert.ok((await conflicts(0, '"public"."kv"', 'update_origin_differs')).some((c) => c.decision === 'apply'));
    assert.ok((await conflicts(1, '"public"."kv"', 'update_origin_differs')).some((c) => c.decision === 'skip'));
  });

  test('update then a later delete elsewhere: the delete wins (tombstone), the update is discarded everywhere', async () => {
    await seed(`INSERT INTO kv VALUES ('ud', 'base')`, 'kv', 'k');
    bed.isolate(0);
    bed.isolate(1);
    await q(0, `UPDATE kv SET v = 'updated' WHERE k = 'ud'`);
    await q(1, `DELETE FROM kv WHERE k = 'ud'`);
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'kv', 'k'));
    assert.equal(final.find((r: { k: string }) => r.k === 'ud'), undefined);
    assert.ok((await conflicts(1, '"public"."kv"', 'update_deleted')).some((c) => c.decision === 'skip'));
    assert.ok((await conflicts(0, '"public"."kv"', 'delete_origin_differs')).some((c) => c.decision === 'apply'));
  });

  test('delete then a later update elsewhere: the update wins (PostgreSQL 17 loses it silently)', async () => {
    await seed(`INSERT INTO kv VALUES ('du', 'base')`, 'kv', 'k');
    bed.isolate(0);
    bed.isolate(1);
    await q(0, `DELETE FROM kv WHERE k = 'du'`);
    await q(1, `UPDATE kv SET v = 'survives' WHERE k = 'du'`);
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'kv', 'k'));
    assert.deepEqual(final.find((r: { k: string }) => r.k === 'du'), { k: 'du', v: 'survives' });
    assert.ok((await conflicts(0, '"public"."kv"', 'update_deleted')).some((c) => c.decision === 'apply'));
  });

  test('update_missing: an update that overtakes the insert it depends on is applied as the full row', async () => {
    // r-one → r-three is cut: r-three sees r-two's update before r-one's insert.
    bed.partition(0, 2);
    await q(0, `INSERT INTO kv VALUES ('um', 'inserted')`);
    await waitFor('the insert at r-two', async () => (await q(1, `SELECT 1 FROM kv WHERE k = 'um'`)).rowCount === 1);
    await q(1, `UPDATE kv SET v = 'updated-at-two' WHERE k = 'um'`);
    await waitFor('the update at r-three', async () => (await q(2, `SELECT v FROM kv WHERE k = 'um'`)).rows[0]?.v === 'updated-at-two');
    const um = (await q(2, `SELECT kind, decision, remote_region, pk FROM tandem.conflicts WHERE pk = '{um}'`)).rows;
    assert.ok(um.some((c) => c.kind === 'update_missing' && c.decision === 'apply'), JSON.stringify(um));
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'kv', 'k'));
    assert.deepEqual(final.find((r: { k: string }) => r.k === 'um'), { k: 'um', v: 'updated-at-two' });
    // The late insert lost against the newer row it arrived at.
    const late = await waitFor('the late insert recorded at r-three', async () => {
      const rows = (await q(2, `SELECT kind, decision, remote_region FROM tandem.conflicts WHERE pk = '{um}' ORDER BY id`)).rows;
      return rows.length >= 2 ? rows : undefined;
    });
    assert.deepEqual(late, [
      { kind: 'update_missing', decision: 'apply', remote_region: 'r-two' },
      { kind: 'insert_exists', decision: 'skip', remote_region: 'r-one' },
    ]);
  });

  test('three regions update one key during a full partition: the last one wins everywhere', async () => {
    await seed(`INSERT INTO kv VALUES ('three', 'base')`, 'kv', 'k');
    for (let i = 0; i < 3; i++) bed.isolate(i);
    await q(2, `UPDATE kv SET v = 'three-first' WHERE k = 'three'`);
    await q(0, `UPDATE kv SET v = 'one-second' WHERE k = 'three'`);
    await q(1, `UPDATE kv SET v = 'two-last' WHERE k = 'three'`);
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'kv', 'k'));
    assert.equal(final.find((r: { k: string }) => r.k === 'three').v, 'two-last');
  });

  test('region-priority: the priority region wins a concurrent conflict even when older', async () => {
    bed.isolate(0);
    bed.isolate(1);
    await q(1, `INSERT INTO prio VALUES (1, 'two-earlier')`);
    await q(0, `INSERT INTO prio VALUES (1, 'one-later')`);
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'prio', 'k'));
    assert.deepEqual(final, [{ k: 1, v: 'two-earlier' }]);
  });

  test('region-priority: a later write over the priority region\'s row inherits its rank, so it wins everywhere', async () => {
    // r-two (priority) writes; r-one updates afterwards, having seen it; r-three deletes a row r-one then changes.
    await q(1, `INSERT INTO prio VALUES (2, 'two'), (3, 'two')`);
    await waitConverged(bed, 'prio', 'k');
    await waitCaughtUp(bed);
    await q(0, `UPDATE prio SET v = 'one-after-two' WHERE k = 2`);
    await q(2, `DELETE FROM prio WHERE k = 3`);
    await waitCaughtUp(bed);
    const final = JSON.parse(await waitConverged(bed, 'prio', 'k'));
    assert.deepEqual(final, [
      { k: 1, v: 'two-earlier' },
      { k: 2, v: 'one-after-two' },
    ]);
    // A concurrent write of a non-priority region that had not seen the inherited one still loses to it.
    bed.isolate(2);
    await q(2, `UPDATE prio SET v = 'three-concurrent' WHERE k = 1`);
    await q(0, `UPDATE prio SET v = 'one-inherits' WHERE k = 1`);
    bed.heal();
    await waitCaughtUp(bed);
    const after = JSON.parse(await waitConverged(bed, 'prio', 'k'));
    assert.equal(after.find((r: { k: number }) => r.k === 1).v, 'one-inherits');
  });

  test('custom resolver: both sides merged by the module, identically everywhere', async () => {
    await seed(`INSERT INTO counters VALUES (1, 1, 'base')`, 'counters', 'k');
    bed.isolate(0);
    bed.isolate(1);
    await q(0, `UPDATE counters SET n = 7, tags = 'base,one' WHERE k = 1`);
    await q(1, `UPDATE counters SET n = 5, tags = 'base,two' WHERE k = 1`);
    bed.heal();
    const final = JSON.parse(await waitConverged(bed, 'counters', 'k'));
    assert.deepEqual(final, [{ k: 1, n: 7, tags: 'base,one,two' }]);
    assert.ok((await conflicts(0, '"public"."counters"', 'update_origin_differs')).some((c) => c.decision === 'custom'));
  });

  test('TOAST: a large value left unchanged by an update stays intact everywhere', async () => {
    await seed(`INSERT INTO docs VALUES (1, 'v1', '${BIG}')`, 'docs', 'id');
    await q(1, `UPDATE docs SET title = 'v2' WHERE id = 1`);
    const final = JSON.parse(await waitConverged(bed, 'docs', 'id'));
    assert.equal(final[0].title, 'v2');
    assert.equal(final[0].body, BIG);
  });

  test('odd identifiers: quotes, spaces and mixed case in schema, table and columns', async () => {
    const t = `"Odd Schema"."tab ""q"""`;
    await q(2, `INSERT INTO ${t} VALUES ('it''s "x"', 1, 'a'), ('two words', 2, 'b')`);
    await waitConverged(bed, t, `"Key Col", n`);
    await q(0, `UPDATE ${t} SET "va""l" = 'changed' WHERE n = 1`);
    await q(1, `DELETE FROM ${t} WHERE n = 2`);
    const final = JSON.parse(await waitConverged(bed, t, `"Key Col", n`));
    assert.deepEqual(final, [{ 'Key Col': `it's "x"`, n: 1, 'va"l': 'changed' }]);
  });
});
