/**
 * A seeded, Jepsen-style convergence scenario (register and set-full
 * workloads on overlapping keys) for the replication engine:
 *
 * - three regions, each with its own PostgreSQL, WAN-emulated links and an
 *   agent running as a real child process (`tandem replicate run`);
 * - clients in every region upsert and delete random keys of a small key
 *   space, concurrently;
 * - a nemesis partitions links, SIGKILLs agents and SIGKILLs databases;
 * - then everything heals, and the checker demands that every region holds
 *   the same rows and that they are exactly what the resolution rule makes of
 *   the committed writes: per key, the write with the highest (commit time,
 *   region). No committed write lost or resurrected, none duplicated, and
 *   every acknowledged write committed.
 *
 * Every workload transaction also records `(its xid, rows it changed)` in a
 * local, unreplicated `op_log` table, in the same transaction. So even for a
 * client that never saw its COMMIT answer (its server was killed), the
 * database says afterwards whether the write committed, whether it changed a
 * row, and when (`pg_xact_commit_timestamp`) — the model is exact.
 */
import type pg from 'pg';
import { sleep } from '../../src/core/lifecycle.ts';
import { compareVersions, type Version } from '../../src/replication/resolve.ts';
import { killChild, snapshot, spawnAgent, startBed, waitFor, type Bed } from './harness.ts';
import { freePort } from '../helpers/ports.ts';
import { callApi } from '../../src/core/http.ts';
import type { ChildProcess } from 'node:child_process';
import { prng as rng } from '../../src/core/random.ts';

export interface ScenarioOptions {
  seed: number;
  /** How long clients write while the nemesis acts. */
  durationSec: number;
  keys?: number;
  clientsPerRegion?: number;
  /** Progress lines. */
  log?: (line: string) => void;
}

export interface ScenarioReport {
  seed: number;
  ops: number;
  acknowledged: number;
  unknown: number;
  committedWrites: number;
  faults: string[];
  keys: number;
  finalRows: number;
  conflicts: number;
  /** Empty when the run passed. */
  problems: string[];
}

interface Op {
  region: number;
  key: string;
  kind: 'upsert' | 'delete';
  value: string | null;
  xid: string | undefined;
  outcome: 'ok' | 'unknown' | 'failed';
}

const DDL = [
  `CREATE TABLE reg (k text PRIMARY KEY, v text NOT NULL, writer text NOT NULL)`,
  // Local bookkeeping of the workload itself; not replicated.
  `CREATE TABLE op_log (xid xid8 PRIMARY KEY, n int NOT NULL)`,
];

/** Run one seeded scenario; resolves with a report (problems empty = pass). Cleans everything up. */
export async function runScenario(o: ScenarioOptions): Promise<ScenarioReport> {
  const rand = rng(o.seed);
  const log = o.log ?? (() => {});
  const keys = o.keys ?? 16;
  const perRegion = o.clientsPerRegion ?? 2;
  const agentPorts = [await freePort('127.0.1.1'), await freePort('127.0.2.1'), await freePort('127.0.3.1')];
  const bed = await startBed({
    regions: 3,
    agentPorts,
    wan: { latencyMs: 2 },
    ddl: DDL,
    tables: ['public.reg'],
    replication: { heartbeatIntervalMs: 250, reconnect: { minMs: 100, maxMs: 1_000 }, batch: { maxTransactions: 100, maxRows: 2_000 } },
  });
  const agents: (ChildProcess | undefined)[] = [];
  const faults: string[] = [];
  const ops: Op[] = [];
  let stop = false;
  const problems: string[] = [];
  try {
    for (let i = 0; i < 3; i++) agents[i] = spawnAgent(bed, i);
    const serverDown = [false, false, false];

    // Clients: each runs its own connection and reconnects after faults.
    const client = async (region: number, id: number) => {
      const r = rng(o.seed * 1000 + region * 10 + id);
      let db: pg.Client | undefined;
      let seq = 0;
      while (!stop) {
        if (!db) {
          if (serverDown[region]) {
            await sleep(50);
            continue;
          }
          try {
            db = await bed.cluster.servers[region]!.connect('tandem');
          } catch {
            await sleep(100);
            continue;
          }
        }
        const key = `k${Math.floor(r() * keys)}`;
        const kind: Op['kind'] = r() < 0.25 ? 'delete' : 'upsert';
        const value = kind === 'upsert' ? `${bed.regions[region]}/${id}/${seq++}` : null;
        const op: Op = { region, key, kind, value, xid: undefined, outcome: 'unknown' };
        ops.push(op);
        try {
          await db.query('BEGIN');
          op.xid = (await db.query('SELECT pg_current_xact_id()::text AS x')).rows[0].x as string;
          if (kind === 'upsert') {
            await db.query(
              `WITH w AS (INSERT INTO reg VALUES ($1, $2, $3) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, writer = EXCLUDED.writer RETURNING 1)
               INSERT INTO op_log SELECT pg_current_xact_id(), count(*) FROM w`,
              [key, value, bed.regions[region]],
            );
          } else {
            await db.query(`WITH w AS (DELETE FROM reg WHERE k = $1 RETURNING 1) INSERT INTO op_log SELECT pg_current_xact_id(), count(*) FROM w`, [key]);
          }
          await db.query('COMMIT');
          op.outcome = 'ok';
        } catch (err) {
          const code = (err as { code?: string }).code;
          if (code && /^(23|40)/.test(code)) {
            op.outcome = 'failed'; // refused by the server: rolled back
            await db.query('ROLLBACK').catch(() => {});
          } else {
            // Connection lost: the outcome is unknown until the database says so.
            await db.end().catch(() => {});
            db = undefined;
          }
        }
        await sleep(r() * 15);
      }
      await db?.end().catch(() => {});
    };

    // The nemesis.
    const nemesis = async () => {
      const until = Date.now() + o.durationSec * 1000;
      while (Date.now() < until) {
        await sleep(800 + rand() * 1500);
        if (Date.now() >= until) break;
        const pick = rand();
        const i = Math.floor(rand() * 3);
        if (pick < 0.4) {
          const j = (i + 1 + Math.floor(rand() * 2)) % 3;
          const ms = 500 + Math.floor(rand() * 2000);
          faults.push(`partition ${bed.regions[i]}|${bed.regions[j]} ${ms}ms`);
          log(`  nemesis: ${faults.at(-1)}`);
          bed.partition(i, j);
          await sleep(ms);
          bed.heal();
        } else if (pick < 0.75) {
          const ms = 200 + Math.floor(rand() * 1500);
          faults.push(`kill -9 agent ${bed.regions[i]} for ${ms}ms`);
          log(`  nemesis: ${faults.at(-1)}`);
          await killChild(agents[i]!);
          await sleep(ms);
          agents[i] = spawnAgent(bed, i);
        } else {
          faults.push(`kill -9 postgres ${bed.regions[i]}`);
          log(`  nemesis: ${faults.at(-1)}`);
          serverDown[i] = true;
          bed.cluster.servers[i]!.kill();
          await bed.cluster.servers[i]!.exited();
          await sleep(300 + rand() * 700);
          await bed.cluster.restart(i);
          await bed.reconnect(i);
          serverDown[i] = false;
        }
      }
    };

    const clients: Promise<void>[] = [];
    for (let region = 0; region < 3; region++) for (let id = 0; id < perRegion; id++) clients.push(client(region, id));
    await nemesis();
    stop = true;
    await Promise.all(clients);
    bed.heal();
    log(`  workload done: ${ops.length} operations; healing and waiting for convergence`);

    // Everything up, then wait until every region has everything every other region committed.
    for (let i = 0; i < 3; i++) if (!agents[i] || agents[i]!.exitCode !== null) agents[i] = spawnAgent(bed, i);
    try {
      await waitForQuiescence(bed);
    } catch (err) {
      for (let i = 0; i < 3; i++) {
        const st = await callApi<{ peers: Array<Record<string, unknown>>; heartbeat?: unknown }>(`http://127.0.${i + 1}.1:${agentPorts[i]}/v1/status`, { token: 'test-token', timeoutMs: 2_000 }).catch((e: Error) => ({ error: e.message, peers: [] as Array<Record<string, unknown>>, heartbeat: undefined as unknown }));
        log(`  ${bed.regions[i]} heartbeat: ${JSON.stringify(st.heartbeat)} wal: ${JSON.stringify((await bed.db[i]!.query('SELECT pg_current_wal_insert_lsn()::text i, pg_current_wal_lsn()::text w, now() n')).rows[0])}`);
        log(`  ${bed.regions[i]} agent: ${JSON.stringify(st.peers.map((p) => ({ peer: p.peer, state: p.state, activity: p.activity, since: p.activitySince, applied: p.appliedLsn, walEnd: p.walEnd, backlog: p.backlogTxns, lastError: p.lastError })))}`);
        const act = await bed.db[i]!.query(`SELECT application_name, state, wait_event_type, wait_event, now() - xact_start AS xact_age, left(query, 60) AS q FROM pg_stat_activity WHERE application_name LIKE 'tandem%'`);
        log(`  ${bed.regions[i]} sessions: ${JSON.stringify(act.rows)}`);
        const slots = await bed.db[i]!.query(`SELECT slot_name, active, confirmed_flush_lsn::text, pg_current_wal_lsn()::text AS wal FROM pg_replication_slots`);
        log(`  ${bed.regions[i]} slots: ${JSON.stringify(slots.rows)}`);
        const rs = await bed.db[i]!.query(`SELECT peer, source_lsn::text, applied_at FROM tandem.replication_status`);
        log(`  ${bed.regions[i]} status: ${JSON.stringify(rs.rows)}`);
      }
      throw err;
    }

    // The facts: committed writes from each region's op_log.
    const writes: Array<{ key: string; value: string | null; version: Version }> = [];
    const committed = new Map<string, { n: number; tsUs: bigint }>(); // `${region}:${xid}`
    for (let i = 0; i < 3; i++) {
      const { rows } = await bed.db[i]!.query(`SELECT xid::text AS x, n, (extract(epoch from pg_xact_commit_timestamp(xid(xid))) * 1000000)::int8::text AS ts FROM op_log`);
      for (const r of rows) committed.set(`${i}:${r.x}`, { n: r.n as number, tsUs: BigInt(r.ts as string) });
    }
    let acknowledged = 0;
    let unknown = 0;
    for (const op of ops) {
      if (op.outcome === 'ok') acknowledged++;
      if (op.outcome === 'unknown') unknown++;
      const c = op.xid ? committed.get(`${op.region}:${op.xid}`) : undefined;
      if (op.outcome === 'ok' && !c) problems.push(`acknowledged write lost: ${JSON.stringify(op)}`);
      if (op.outcome === 'failed' && c) problems.push(`a write reported as failed committed: ${JSON.stringify(op)}`);
      if (c && c.n > 0) writes.push({ key: op.key, value: op.value, version: { tsUs: c.tsUs, region: bed.regions[op.region]! } });
    }
    // The model: per key, the highest version wins; a delete leaves nothing.
    const model = new Map<string, { value: string | null; version: Version }>();
    for (const w of writes) {
      const cur = model.get(w.key);
      if (!cur || compareVersions(w.version, cur.version) > 0) model.set(w.key, { value: w.value, version: w.version });
    }
    const expected = [...model.entries()]
      .filter(([, m]) => m.value !== null)
      .map(([k, m]) => ({ k, v: m.value!, writer: m.version.region }))
      .sort((a, b) => (a.k < b.k ? -1 : a.k > b.k ? 1 : 0));
    const expectedText = JSON.stringify(expected);
    const actual = await Promise.all(bed.db.map((c) => snapshot(c, 'reg', 'k')));
    for (let i = 0; i < 3; i++) {
      const got = JSON.stringify(JSON.parse(actual[i]!));
      if (got !== expectedText) problems.push(`${bed.regions[i]} differs from the model:\n    model: ${expectedText}\n    got:   ${got}`);
    }
    if (actual.some((a) => a !== actual[0])) problems.push('regions differ from each other');
    let conflicts = 0;
    for (const c of bed.db) conflicts += (await c.query(`SELECT count(*)::int AS n FROM tandem.conflicts`)).rows[0].n as number;
    return { seed: o.seed, ops: ops.length, acknowledged, unknown, committedWrites: writes.length, faults, keys, finalRows: expected.length, conflicts, problems };
  } finally {
    stop = true;
    bed.heal();
    await Promise.all(agents.map((a) => (a ? killChild(a, 'SIGTERM').catch(() => {}) : undefined)));
    await bed.close();
  }
}

/**
 * Wait until every region has applied everything each peer had written when
 * this was called (positions captured once; heartbeats carry progress past them).
 */
async function waitForQuiescence(bed: Bed): Promise<void> {
  const lsns = await Promise.all(bed.db.map(async (c) => (await c.query('SELECT pg_current_wal_lsn()::text AS l')).rows[0].l as string));
  await waitFor(
    'replication to quiesce',
    async () => {
      for (let s = 0; s < 3; s++) {
        for (let t = 0; t < 3; t++) {
          if (t === s) continue;
          const { rows } = await bed.db[t]!.query(`SELECT source_lsn >= $1::pg_lsn AS ok FROM tandem.replication_status WHERE peer = $2`, [lsns[s], bed.regions[s]]);
          if (!rows[0]?.ok) return false;
        }
      }
      return true;
    },
    Number(process.env.TANDEM_QUIESCE_MS ?? 120_000),
    250,
  );
}
