/**
 * Exactly once under crashes: the agent of r-two runs as a real child process
 * (`tandem replicate run`) and is SIGKILLed while a batch is open in its
 * target transaction; r-two's and r-one's PostgreSQL are SIGKILLed too. In
 * the end r-two holds exactly what r-one committed, and the applied-
 * transaction counter (updated in the apply transaction itself) equals the
 * number of source transactions: nothing lost, nothing applied twice.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { ChildProcess } from 'node:child_process';
import { killChild, snapshot, spawnAgent, startBed, waitFor, type Bed } from './harness.ts';
import { sleep } from '../../src/core/lifecycle.ts';
import { callApi } from '../../src/core/http.ts';
import { freePort } from '../helpers/ports.ts';
import { readFileSync } from 'node:fs';
import path from 'node:path';

let bed: Bed;
let agent: ChildProcess | undefined;
let sourceTxns = 0;
let nextId = 1;

let statusUrl = '';
before(async () => {
  const port = await freePort('127.0.2.1');
  statusUrl = `http://127.0.2.1:${port}/v1/status`;
  bed = await startBed({
    agentPorts: [0, port],
    regions: 2,
    ddl: [`CREATE TABLE ledger (id int PRIMARY KEY, payload text NOT NULL)`, `CREATE TABLE counter (id int PRIMARY KEY, n int NOT NULL)`],
    tables: ['public.ledger', 'public.counter'],
    replication: { batch: { maxTransactions: 200, maxRows: 5_000 } },
  });
});
after(async () => {
  if (agent) await killChild(agent);
  await bed?.close();
});

/** Commit `n` source transactions in r-one: each inserts 10 ledger rows and bumps the counter. */
async function write(n: number): Promise<void> {
  const db = bed.db[0]!;
  for (let i = 0; i < n; i++) {
    const ids = Array.from({ length: 10 }, () => nextId++);
    await db.query('BEGIN');
    await db.query(`INSERT INTO ledger SELECT id, repeat(md5(id::text), 4) FROM unnest($1::int[]) AS id`, [ids]);
    await db.query(`UPDATE counter SET n = n + 1 WHERE id = 1`);
    await db.query('COMMIT');
    sourceTxns++;
  }
}

/** Wait until r-two's apply session is inside an open transaction, then SIGKILL the agent. */
async function killMidBatch(): Promise<boolean> {
  const deadline = Date.now() + 10_000;
  while (Date.now() < deadline) {
    const { rows } = await bed.db[1]!.query(
      `SELECT count(*)::int AS n FROM pg_stat_activity WHERE application_name = 'tandem-apply-r-one' AND xact_start IS NOT NULL AND backend_xid IS NOT NULL`,
    );
    if (rows[0].n > 0) {
      await killChild(agent!);
      agent = undefined;
      return true;
    }
    await sleep(2);
  }
  await killChild(agent!);
  agent = undefined;
  return false;
}

async function appliedTxns(): Promise<number> {
  const { rows } = await bed.db[1]!.query(`SELECT applied_txns::int AS n FROM tandem.replication_status WHERE peer = 'r-one'`);
  return rows[0]?.n ?? 0;
}

test('kill -9 of the agent mid-batch, and of either PostgreSQL, loses and duplicates nothing', { timeout: 150_000 }, async (t) => {
  try {
    await scenario(t);
  } catch (err) {
    try {
      t.diagnostic(`agent status: ${JSON.stringify(await callApi(statusUrl, { token: 'test-token', timeoutMs: 2000 }))}`);
      const act = await bed.db[1]!.query(`SELECT pid, application_name, state, wait_event_type, wait_event, xact_start, left(query, 80) AS q FROM pg_stat_activity WHERE application_name LIKE 'tandem%'`);
      t.diagnostic(`r-two sessions: ${JSON.stringify(act.rows)}`);
    } catch (e) {
      t.diagnostic(`no agent status: ${(e as Error).message}`);
    }
    // The agent's own log explains most failures; it lives in the bed's directory, which after() removes.
    try {
      const log = readFileSync(path.join(bed.dir, 'agent-r-two.log'), 'utf8').trim().split('\n');
      t.diagnostic(`agent log (last 30 lines):\n${log.slice(-30).join('\n')}`);
    } catch {
      // no log
    }
    throw err;
  }
});

async function scenario(t: { diagnostic(msg: string): void }): Promise<void> {
  agent = spawnAgent(bed, 1);
  await bed.db[0]!.query(`INSERT INTO counter VALUES (1, 0)`); // seeded through replication, so both regions share its version
  sourceTxns++;
  await write(100);
  await waitFor('first transactions applied', async () => (await appliedTxns()) === sourceTxns, 30_000);

  // A backlog, then SIGKILL of the agent while a batch is open in its target transaction, three times.
  await killChild(agent);
  await write(1500);
  let midBatch = 0;
  for (let k = 0; k < 3; k++) {
    agent = spawnAgent(bed, 1);
    if (await killMidBatch()) midBatch++;
  }
  t.diagnostic(`agent killed inside an open apply transaction ${midBatch} of 3 times`);
  assert.ok(midBatch >= 1, 'at least one kill landed inside an open apply transaction');

  // SIGKILL of the target PostgreSQL while the agent catches up.
  agent = spawnAgent(bed, 1);
  await sleep(300);
  bed.cluster.servers[1]!.kill();
  await bed.cluster.servers[1]!.exited();
  await bed.cluster.restart(1);
  await bed.reconnect(1);

  // SIGKILL of the source PostgreSQL while the agent streams from it (no write in flight).
  await waitFor('caught up before the source crash', async () => (await appliedTxns()) === sourceTxns, 60_000);
  await write(200);
  bed.cluster.servers[0]!.kill();
  await bed.cluster.servers[0]!.exited();
  await bed.cluster.restart(0);
  await bed.reconnect(0);
  await write(200);

  await waitFor('r-two caught up', async () => (await appliedTxns()) === sourceTxns, 90_000);
  assert.equal(await snapshot(bed.db[1]!, 'ledger', 'id'), await snapshot(bed.db[0]!, 'ledger', 'id'), 'r-two holds exactly the rows r-one committed');
  assert.equal(await snapshot(bed.db[1]!, 'counter', 'id'), await snapshot(bed.db[0]!, 'counter', 'id'));
  const rows = (await bed.db[1]!.query(`SELECT count(*)::int AS n FROM ledger`)).rows[0].n;
  assert.equal(rows, (sourceTxns - 1) * 10); // every transaction but the seed wrote 10 rows
  // Exactly once: a transaction applied twice would count twice and re-insert existing rows (insert_exists).
  await sleep(1_000);
  assert.equal(await appliedTxns(), sourceTxns);
  const cf = (await bed.db[1]!.query(`SELECT kind, decision, reason, relname, pk, local_region, remote_region, local_commit_ts, remote_commit_ts, source_lsn FROM tandem.conflicts`)).rows;
  assert.deepEqual(cf, []);
  t.diagnostic(`${sourceTxns} source transactions, ${rows} rows, applied exactly once`);
}
