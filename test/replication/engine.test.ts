/**
 * The replication engine end to end: real PostgreSQL servers, `setup`, and
 * agents running in this process.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { startBed, waitConverged, waitCaughtUp, waitFor, type Bed } from './harness.ts';
import { freePort } from '../helpers/ports.ts';
import { readLag } from '../../src/replication/status.ts';
import { setupReplication } from '../../src/replication/setup.ts';
import { callApi } from '../../src/core/http.ts';
import type { AgentStatusReport } from '../../src/replication/agent.ts';
import { ReplicationStream } from '../../src/replication/stream.ts';

describe('two regions', () => {
  let bed: Bed;
  let api: string[];
  before(async () => {
    const ports = [await freePort('127.0.1.1'), await freePort('127.0.2.1')];
    bed = await startBed({
      regions: 2,
      ddl: [`CREATE TABLE kv (k text PRIMARY KEY, v text, n int)`, `CREATE TABLE other (id int PRIMARY KEY, v text)`],
      tables: ['public.kv', 'public.other'],
      agentPorts: ports,
    });
    api = ports.map((p, i) => `http://127.0.${i + 1}.1:${p}`);
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
    await waitCaughtUp(bed);
    // No loops: each side applied exactly the two transactions the other wrote.
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

  test('a peer slot restarts close to where it stopped: the source logs a running-transactions snapshot every second', async () => {
    // PostgreSQL alone logs one every 15 s: the slot's restart point would move at most once in this window.
    const [a] = bed.db;
    const restartLsns = new Set<string>();
    const until = Date.now() + 4_500;
    for (let i = 0; Date.now() < until; i++) {
      await a!.query(`INSERT INTO kv VALUES ($1, 'restart point', $2) ON CONFLICT (k) DO UPDATE SET n = EXCLUDED.n`, [`restart-${i % 20}`, i]);
      const { rows } = await a!.query(`SELECT restart_lsn::text AS l FROM pg_replication_slots WHERE slot_name = 'tandem_r_two'`);
      restartLsns.add(rows[0]!.l);
      await new Promise((r) => setTimeout(r, 100));
    }
    assert.ok(restartLsns.size >= 3, `the slot's restart point moved ${restartLsns.size - 1} time(s) in 4.5 s`);
    await a!.query(`DELETE FROM kv WHERE k LIKE 'restart-%'`);
    await waitConverged(bed, 'kv', 'k');
  });

  test('status API needs the token; /metrics does not', async () => {
    await assert.rejects(callApi(`${api[0]}/v1/status`), /401/);
    const st = await callApi<AgentStatusReport>(`${api[0]}/v1/status`, { token: 'test-token' });
    assert.equal(st.region, bed.regions[0]);
    assert.equal(st.peers[0]!.peer, bed.regions[1]);
    assert.equal(st.peers[0]!.state, 'streaming');
    const metrics = await (await fetch(`${api[0]}/metrics`)).text();
    assert.match(metrics, /tandem_replication_lag_seconds\{[^}]*peer="r-two"[^}]*\} [\d.e-]+/);
    assert.match(metrics, /tandem_replication_applied_transactions_total\{[^}]*peer="r-two"/);
  });

  test('schema drift pauses one table (parked, visible in status and metrics), others flow, and it resumes without loss', async () => {
    const [a, b] = bed.db;
    await a!.query(`ALTER TABLE kv ADD COLUMN extra text`);
    await a!.query(`INSERT INTO kv VALUES ('d1', 'v', 1, 'e1')`);
    await a!.query(`INSERT INTO other VALUES (1, 'flows')`);
    await a!.query(`UPDATE kv SET extra = 'e2' WHERE k = 'd1'`);
    const paused = await waitFor('kv paused in r-two', async () => {
      const st = await callApi<AgentStatusReport>(`${api[1]}/v1/status`, { token: 'test-token' });
      return st.paused.find((p) => p.table === '"public"."kv"' && p.parked >= 2);
    });
    assert.equal(paused.peer, bed.regions[0]);
    assert.match(paused.reason, /column "extra" exists in the source but not in this region/);
    await waitFor('the other table flows', async () => (await b!.query(`SELECT v FROM other WHERE id = 1`)).rows[0]?.v === 'flows');
    const metrics = await (await fetch(`${api[1]}/metrics`)).text();
    assert.match(metrics, /tandem_replication_paused_tables\{[^}]*peer="r-one"[^}]*\} 1/);
    // Meanwhile r-one keeps applying r-two's writes: a column only r-one has is not drift.
    await b!.query(`INSERT INTO kv VALUES ('from-b', 'v', 2)`);
    await waitFor('r-one applies r-two', async () => (await a!.query(`SELECT extra FROM kv WHERE k = 'from-b'`)).rowCount === 1);
    // Fix the schema; the parked changes replay in order and the table resumes.
    await b!.query(`ALTER TABLE kv ADD COLUMN extra text`);
    const final = JSON.parse(await waitConverged(bed, 'kv', 'k'));
    assert.deepEqual(final.find((r: { k: string }) => r.k === 'd1'), { k: 'd1', v: 'v', n: 1, extra: 'e2' });
    await waitFor('resumed', async () => bed.agents[1]!.status().paused.length === 0);
    assert.equal((await b!.query(`SELECT count(*)::int AS n FROM tandem.parked`)).rows[0].n, 0);
  });

  test('a restart of the target PostgreSQL, then of the source, loses and repeats nothing', async () => {
    const before = (await bed.db[0]!.query(`SELECT count(*)::int AS n FROM other`)).rows[0].n as number;
    // Target r-two goes down while r-one keeps writing.
    const restart = bed.cluster.restart(1);
    for (let i = 0; i < 50; i++) await bed.db[0]!.query(`INSERT INTO other VALUES ($1, 'during-target-restart')`, [1000 + i]);
    await restart;
    await bed.reconnect(1);
    await waitFor('r-two caught up after its restart', async () => (await bed.db[1]!.query(`SELECT count(*)::int AS n FROM other`)).rows[0].n === before + 50, 60_000);
    // Source r-one goes down; r-two's stream from it breaks and resumes.
    await bed.cluster.restart(0);
    await bed.reconnect(0);
    for (let i = 0; i < 50; i++) await bed.db[0]!.query(`INSERT INTO other VALUES ($1, 'after-source-restart')`, [2000 + i]);
    await waitConverged(bed, 'other', 'id', 60_000);
    await waitCaughtUp(bed, 60_000);
    // Exactly once: inserts of rows that were already applied would show up as insert_exists conflicts.
    const dup = (await bed.db[1]!.query(`SELECT count(*)::int AS n FROM tandem.conflicts WHERE relname = '"public"."other"'`)).rows[0].n;
    assert.equal(dup, 0);
    assert.ok(bed.agents[1]!.status().peers[0]!.reconnects >= 1);
  });

  test('setup is idempotent on a running system', async () => {
    const report = await setupReplication(bed.config);
    for (const r of report.regions) {
      assert.ok(!r.actions.some((a) => /created/.test(a) && !/publication/.test(a)), `nothing new created: ${r.actions.join('; ')}`);
    }
    await bed.db[0]!.query(`INSERT INTO other VALUES (5000, 'after-second-setup')`);
    await waitConverged(bed, 'other', 'id');
  });
});

describe('tombstone expiry', () => {
  let bed: Bed;
  before(async () => {
    bed = await startBed({ regions: 2, ddl: [`CREATE TABLE t (id int PRIMARY KEY, v text)`], tables: ['public.t'], replication: { tombstoneRetentionSec: 2 } });
    await bed.startAgent(0, { purgeIntervalMs: 200 });
    await bed.startAgent(1, { purgeIntervalMs: 200 });
  });
  after(async () => bed?.close());

  test('tombstones are kept for the retention, then purged in every region', async () => {
    await bed.db[0]!.query(`INSERT INTO t VALUES (1, 'a'), (2, 'b')`);
    await waitConverged(bed, 't', 'id');
    await bed.db[0]!.query(`DELETE FROM t WHERE id = 1`);
    await waitConverged(bed, 't', 'id');
    const tomb = async (i: number) => (await bed.db[i]!.query(`SELECT count(*)::int AS n FROM tandem.row_versions WHERE deleted`)).rows[0].n as number;
    assert.equal(await tomb(0), 1, 'the local delete left a tombstone (capture trigger)');
    assert.equal(await tomb(1), 1, 'the applied delete left a tombstone');
    await waitFor('tombstones purged in both regions', async () => (await tomb(0)) === 0 && (await tomb(1)) === 0, 10_000);
    // Live versions stay.
    assert.equal((await bed.db[1]!.query(`SELECT count(*)::int AS n FROM tandem.row_versions WHERE NOT deleted`)).rows[0].n, 1);
  });

  test('heartbeats reach the peers of a completely idle region (they are flushed, not left in WAL buffers)', async () => {
    // Only r-one's agent runs; nothing else writes anywhere, so nothing else would flush r-one's WAL.
    await bed.stopAgent(1);
    const stream = new ReplicationStream({ connection: bed.config.regions[0]!.database, slot: 'tandem_r_two', publication: 'tandem', startLsn: 0n });
    await stream.start();
    let heartbeats = 0;
    const deadline = Date.now() + 2_500;
    try {
      for await (const item of stream.messages()) {
        if (!item.keepalive && item.message.tag === 'message' && item.message.prefix === 'tandem.heartbeat') heartbeats++;
        if (heartbeats >= 3 || Date.now() > deadline) break;
      }
    } finally {
      await stream.stop();
    }
    assert.ok(heartbeats >= 3, `only ${heartbeats} heartbeats arrived from an idle region in 2.5 s`);
  });
});
