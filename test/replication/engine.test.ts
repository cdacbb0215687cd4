/**
 * The replication engine end to end: real PostgreSQL servers, `setup`, and
 * agents running in this process. Conflicts are provoked by writing in
 * several regions while the agents are stopped (a partition), then healing.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startBed, waitConverged, waitFor, type Bed } from './harness.ts';
import { readLag } from '../../src/replication/status.ts';

describe('two regions', () => {
  let bed: Bed;
  before(async () => {
    bed = await startBed({
      regions: 2,
      ddl: [
        `CREATE TABLE kv (k text PRIMARY KEY, v text, n int)`,
        `CREATE SCHEMA "Mixed Case"`,
        `CREATE TABLE "Mixed Case"."we""ird tbl" ("the key" text, "k 2" int, "we""ird col" text, PRIMARY KEY ("the key", "k 2"))`,
        `CREATE TABLE docs (id int PRIMARY KEY, title text, body text)`,
      ],
      tables: ['public.kv', '"Mixed Case"."we""ird tbl"', 'public.docs'],
    });
    await bed.startAgent(0);
    await bed.startAgent(1);
  });
  after(async () => bed?.close());

  test('changes flow both ways, and applied changes do not loop back', async () => {
    const [a, b] = bed.db;
    await a!.query(`INSERT INTO kv VALUES ('x', 'from-a', 1)`);
    await b!.query(`INSERT INTO kv VALUES ('y', 'from-b', 2)`);
    await waitConverged(bed, 'kv', 'k');
    await a!.query(`UPDATE kv SET v = 'a2' WHERE k = 'y'`);
    await b!.query(`DELETE FROM kv WHERE k = 'x'`);
    const final = await waitConverged(bed, 'kv', 'k');
    assert.deepEqual(JSON.parse(final), [{ k: 'y', v: 'a2', n: 2 }]);
    // No loops: each side applied exactly what the other wrote (3 + 2 transactions incl. the first insert each).
    await new Promise((r) => setTimeout(r, 500));
    const st = bed.agents.map((ag) => ag!.status().peers[0]!);
    assert.equal(st[0]!.appliedTxns, 2, `${bed.regions[0]} applied ${st[0]!.appliedTxns} transactions from ${bed.regions[1]}`);
    assert.equal(st[1]!.appliedTxns, 2, `${bed.regions[1]} applied ${st[1]!.appliedTxns} transactions from ${bed.regions[0]}`);
  });

  test('lag is known through SQL and heartbeats keep it fresh while idle', async () => {
    const lag = await waitFor('fresh lag', async () => {
      const l = await readLag(bed.db[0]!);
      return l.length === 1 && l[0]!.sourceCommitAt && l[0]!.lagSec < 2 ? l : undefined;
    });
    assert.equal(lag[0]!.peer, bed.regions[1]);
    const t1 = lag[0]!.sourceCommitAt!.getTime();
    await new Promise((r) => setTimeout(r, 600));
    const again = await readLag(bed.db[0]!);
    assert.ok(again[0]!.sourceCommitAt!.getTime() > t1, 'heartbeats advanced the source time without any writes');
  });
});
