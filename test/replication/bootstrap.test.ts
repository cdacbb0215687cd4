/**
 * Bootstrap of a third region into two live ones (issue 3): both existing
 * regions keep writing (inserts, updates, deletes on overlapping keys) while
 * the new region is copied (the source is cut off from the other region for
 * a while, so the bootstrap has to wait for it); a first attempt through the CLI is SIGKILLed in
 * the middle of the copy and the second one starts over; then the new
 * region's agent starts, the others restart with it as a peer, it writes
 * too, and all three end identical (`verifyTables`). Versions are checked
 * directly: every copied row's version in the new region equals the source's.
 *
 * Seeded; rerun with TANDEM_SEED=<n>.
 */
import { after, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { parse, stringify } from 'yaml';
import { startBed, waitFor, PASSWORD_ENV, killChild, type Bed } from './harness.ts';
import { TEST_PG_PASSWORD } from '../helpers/pg.ts';
import { freePort } from '../helpers/ports.ts';
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config/index.ts';
import { isTandemError } from '../../src/core/errors.ts';
import { sleep } from '../../src/core/lifecycle.ts';
import { prng } from '../../src/core/random.ts';
import { PostgresServer } from '../../src/lab/postgres.ts';
import { WanProxy } from '../../src/lab/wan.ts';
import { ReplicationAgent } from '../../src/replication/agent.ts';
import { bootstrapRegion, type BootstrapProgress } from '../../src/replication/bootstrap.ts';
import { parseLsn } from '../../src/replication/protocol.ts';
import { readLag } from '../../src/replication/status.ts';
import { verifyTables } from '../../src/replication/verify.ts';

const seed = process.env.TANDEM_SEED ? Number(process.env.TANDEM_SEED) : Math.floor(Math.random() * 1e9);
const N_HOST = '127.0.3.1';
const NEW = 'r-three';
/** Keys the writers touch; every key above is written only before the bootstrap (its version must be carried as is). */
const HOT_KEYS = 600;

const DDL = [
  `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL, n int NOT NULL DEFAULT 0, at timestamptz NOT NULL DEFAULT now(), blob bytea)`,
  `CREATE SCHEMA app`,
  `CREATE TABLE app."Line Items" (order_id uuid, line int, qty numeric(12,3), note text, PRIMARY KEY (order_id, line))`,
  `CREATE TABLE events (id bigserial PRIMARY KEY, body text)`,
];
const TABLES = ['public.kv', 'app."Line Items"', 'public.events'];

/** The version of every kv row by apply's rule (entry matching xmin, else the local commit), plus tombstones. */
const VERSIONS = `
  SELECT k::text AS k, COALESCE(CASE WHEN e.xid IS NOT NULL AND NOT e.deleted AND xid(e.xid) = t.xmin
                                    THEN COALESCE(e.commit_ts, pg_xact_commit_timestamp(xid(e.xid)))
                                    ELSE pg_xact_commit_timestamp(t.xmin) END, 'epoch')::text AS ts,
         CASE WHEN e.xid IS NOT NULL AND NOT e.deleted AND xid(e.xid) = t.xmin THEN e.region ELSE (SELECT region FROM tandem.node) END AS region
    FROM kv t LEFT JOIN tandem.row_versions e ON e.relname = '"public"."kv"' AND e.pk = ARRAY[t.k::text]
   WHERE t.k > ${HOT_KEYS}
  UNION ALL
  SELECT e.pk[1], COALESCE(e.commit_ts, pg_xact_commit_timestamp(xid(e.xid)), 'epoch')::text, e.region || ' (tombstone)'
    FROM tandem.row_versions e
   WHERE e.relname = '"public"."kv"' AND e.deleted AND e.pk[1]::int > ${HOT_KEYS} AND NOT EXISTS (SELECT 1 FROM kv WHERE k = e.pk[1]::int)
  ORDER BY 1`;

/** A writer in one region: upserts, updates, deletes and small multi-row transactions on shared keys. */
function writer(db: pg.Client, region: string, rand: () => number) {
  let stop = false;
  let txns = 0;
  let i = 0;
  const key = () => 1 + Math.floor(rand() * HOT_KEYS);
  const done = (async () => {
    while (!stop) {
      i++;
      const r = rand();
      let changed = 0;
      try {
        if (r < 0.45) {
          changed = (await db.query(`INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v, n = kv.n + 1, at = now()`, [key(), `${region}-${i}`])).rowCount ?? 0;
        } else if (r < 0.65) {
          changed = (await db.query(`UPDATE kv SET n = n + 1, blob = $2 WHERE k = $1`, [key(), Buffer.from(`${region}:${i}`)])).rowCount ?? 0;
        } else if (r < 0.8) {
          changed = (await db.query(`DELETE FROM kv WHERE k = $1`, [key()])).rowCount ?? 0;
        } else if (r < 0.92) {
          await db.query('BEGIN');
          for (let j = 0; j < 3; j++) changed += (await db.query(`INSERT INTO kv (k, v) VALUES ($1, $2) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v`, [key(), `${region}-${i}.${j}`])).rowCount ?? 0;
          await db.query('COMMIT');
        } else {
          changed = (await db.query(`UPDATE app."Line Items" SET qty = qty + 1, note = $2 WHERE line = $1`, [Math.floor(rand() * 20), `${region}-${i}`])).rowCount ?? 0;
        }
      } catch (err) {
        // A local transaction can deadlock with the agent's apply (the agent retries its side); it did not commit.
        if ((err as { code?: string }).code !== '40P01') throw err;
        await db.query('ROLLBACK').catch(() => {});
        continue;
      }
      if (changed > 0) txns++;
      await sleep(4);
    }
  })();
  return {
    async stop(): Promise<number> {
      stop = true;
      await done;
      return txns;
    },
  };
}

/** The new region: its own PostgreSQL behind a WAN link, the tables created and empty, and a config that lists it. */
interface NewRegion {
  server: PostgresServer;
  db: pg.Client;
  config: Config;
  configFile: string;
  agent?: ReplicationAgent;
  startAgent(): Promise<ReplicationAgent>;
  close(): Promise<void>;
}

async function addRegion(bed: Bed, ddl: readonly string[]): Promise<NewRegion> {
  const root = mkdtempSync(path.join(tmpdir(), 'tandem-pg-new-'));
  chmodSync(root, 0o755); // PostgreSQL runs as "postgres" when we are root
  const server = new PostgresServer({ dataDir: path.join(root, 'r3'), host: N_HOST, port: await freePort(N_HOST), password: TEST_PG_PASSWORD, database: 'tandem', fsync: false });
  let proxy: WanProxy | undefined;
  let db: pg.Client | undefined;
  const out: NewRegion = {
    server,
    db: undefined as unknown as pg.Client,
    config: undefined as unknown as Config,
    configFile: path.join(bed.dir, 'tandem3.yaml'),
    async startAgent() {
      out.agent = new ReplicationAgent({
        config: out.config,
        region: NEW,
        logger: bed.logger.child({ agent: NEW }),
        adminToken: 'test-token',
        backoff: { minMs: 100, maxMs: 1_000 },
        recheckIntervalMs: 300,
        stream: { statusIntervalMs: 1_000, receiveTimeoutMs: 10_000 },
      });
      await out.agent.start();
      return out.agent;
    },
    async close() {
      await out.agent?.stop().catch(() => {});
      await db?.end().catch(() => {});
      await proxy?.stop().catch(() => {});
      await server.stop().catch(() => server.kill());
      rmSync(root, { recursive: true, force: true });
    },
  };
  try {
    await server.start();
    db = await server.connect('tandem');
    db.on('error', () => {});
    out.db = db;
    for (const d of ddl) await db.query(d);
    let port = server.options.port;
    if (bed.wan) {
      const byAddress = new Map<string, string>([...bed.regions.map((r, i): [string, string] => [`127.0.${i + 1}.1`, r]), [N_HOST, NEW]]);
      port = await freePort(N_HOST);
      proxy = new WanProxy({ region: NEW, listen: { host: N_HOST, port }, upstream: { host: N_HOST, port: server.options.port }, state: bed.wan, regionOf: (a) => byAddress.get(a.replace(/^::ffff:/, '')) });
      await proxy.start();
    }
    const input = parse(readFileSync(bed.configFile, 'utf8')) as ConfigInput;
    input.regions.push({
      name: NEW,
      addresses: [N_HOST],
      healthUrl: `http://${N_HOST}:8080/healthz`,
      database: { host: N_HOST, port, database: 'tandem', user: 'postgres', password: { env: PASSWORD_ENV } },
      ...(bed.wan ? { localDatabase: { port: server.options.port } } : {}),
      bindAddress: N_HOST,
    });
    out.config = parseConfig(input);
    writeFileSync(out.configFile, stringify(input));
    return out;
  } catch (err) {
    await out.close();
    throw err;
  }
}

/** Wait until every agent has applied what each of its peers had written when called. */
async function caughtUp(dbs: pg.Client[], regions: string[], agents: ReplicationAgent[], timeoutMs = 30_000): Promise<void> {
  const lsns = await Promise.all(dbs.map(async (c) => parseLsn((await c.query<{ l: string }>('SELECT pg_current_wal_lsn()::text AS l')).rows[0]!.l)));
  await waitFor(
    'every pipeline to catch up',
    async () => agents.every((a) => a.status().peers.every((p) => parseLsn(p.appliedLsn) >= lsns[regions.indexOf(p.peer)]!)),
    timeoutMs,
    100,
  );
}

describe('bootstrap of a new region into a live mesh', () => {
  let bed: Bed | undefined;
  let added: NewRegion | undefined;
  let cli: ChildProcess | undefined;
  const writers: Array<ReturnType<typeof writer>> = [];
  after(async () => {
    await Promise.all(writers.map((w) => w.stop().catch(() => 0)));
    if (cli) await killChild(cli);
    await added?.close();
    await bed?.close();
  });

  test(`a third region joins two writing ones and all three end identical (seed ${seed}; rerun with TANDEM_SEED=${seed})`, { timeout: 150_000 }, async (t) => {
    t.diagnostic(`seed ${seed}`);
    bed = await startBed({ regions: 2, ddl: DDL, tables: TABLES, wan: { latencyMs: 10 } });
    const [e1, e2] = bed.db as [pg.Client, pg.Client];
    await bed.startAgent(0);
    await bed.startAgent(1);

    // History before N exists: rows written in r-one, updated and deleted in r-two (version entries and tombstones in r-one).
    await e1.query(`INSERT INTO kv (k, v, blob) SELECT g, 'seed-' || g, decode(md5(g::text), 'hex') FROM generate_series(1, 20000) g`);
    await e1.query(`INSERT INTO events (body) SELECT 'event ' || g FROM generate_series(1, 100) g`);
    await e2.query(`INSERT INTO app."Line Items" SELECT md5(o::text)::uuid, l, o * 1.5, 'note' FROM generate_series(1, 100) o, generate_series(0, 19) l`);
    await waitFor('preload in r-two', async () => (await e2.query<{ n: number }>('SELECT count(*)::int AS n FROM kv')).rows[0]!.n === 20000, 30_000, 100);
    await e2.query(`UPDATE kv SET v = 'r-two was here', n = 7 WHERE k BETWEEN 1001 AND 1200`);
    await e2.query(`DELETE FROM kv WHERE k BETWEEN 19001 AND 19100`);
    await waitFor('r-two history in r-one', async () => (await e1.query<{ n: number }>(`SELECT count(*)::int AS n FROM kv WHERE v = 'r-two was here'`)).rows[0]!.n === 200, 30_000, 100);
    await waitFor('deletes in r-one', async () => (await e1.query<{ n: number }>('SELECT count(*)::int AS n FROM kv')).rows[0]!.n === 19900, 30_000, 100);
    await e1.query(`UPDATE kv SET n = 3 WHERE k BETWEEN 1101 AND 1150`); // r-one overwrites some of r-two's rows again
    await waitFor('r-one history in r-two', async () => (await e2.query<{ n: number }>(`SELECT count(*)::int AS n FROM kv WHERE n = 3`)).rows[0]!.n === 50, 30_000, 100);

    // The new region: its own server behind a WAN link, the tables created and empty, listed in the config.
    added = await addRegion(bed, DDL);
    const { db: nDb, config: config3, configFile: configFile3 } = added;

    // Refused while a table of the new region has rows, naming it, before changing anything anywhere.
    await nDb.query(`INSERT INTO kv (k, v) VALUES (-1, 'stray')`);
    await assert.rejects(bootstrapRegion({ config: config3, region: NEW }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_STATE') && /"public"\."kv" already has rows/.test((err as Error).message));
    for (const db of [e1, e2]) assert.equal((await db.query(`SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = 'tandem_r_three'`)).rows[0].n, 0, 'a refused bootstrap creates no slot');
    await nDb.query(`DELETE FROM kv`);

    for (const [i, db] of [e1, e2].entries()) writers.push(writer(db, bed.regions[i]!, prng(seed + i)));
    await sleep(300);

    // First attempt through the CLI, killed in the middle of the copy. Small batches make the copy take a few
    // progress reports (every 500 ms): with 200 rows per batch it finished in 0.5 s once, before any.
    cli = spawn(process.execPath, ['bin/tandem.js', 'replicate', 'bootstrap', '-c', configFile3, '--region', NEW, '--batch-rows', '40'], {
      cwd: path.resolve(import.meta.dirname, '../..'),
      env: { ...process.env, [PASSWORD_ENV]: TEST_PG_PASSWORD },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    cli.stderr!.on('data', (d: Buffer) => (stderr += d.toString()));
    await waitFor('the CLI to report copy progress', async () => /bootstrap: copy "public"\."kv": \d+ rows, [\d.]+ (B|KiB|MiB) \(\d+ rows\/s\)/.test(stderr) || cli!.exitCode !== null, 60_000, 20);
    assert.equal(cli.exitCode, null, `the CLI ended before the copy was under way:\n${stderr}`);
    await killChild(cli);
    cli = undefined;
    assert.match(stderr, /bootstrap: waiting for the source to apply r-two|bootstrap: creating slot tandem_r_three on r-one/);
    assert.equal((await nDb.query('SELECT count(*)::int AS n FROM kv')).rows[0].n, 0, 'the killed copy left no rows');
    assert.equal((await e2.query(`SELECT count(*)::int AS n FROM pg_replication_slots WHERE slot_name = 'tandem_r_three'`)).rows[0].n, 1, 'the killed attempt left its slot on r-two');

    // Second attempt, in process: it cleans up and starts over while both regions keep writing. r-two is
    // cut off from r-one for a while, so r-one (the source) lags behind r-two's new slot and the
    // bootstrap must wait for it: copying earlier would lose r-two's writes of the partition.
    bed.partition(0, 1);
    const heal = setTimeout(() => bed!.heal(), 2_000);
    const progress: BootstrapProgress[] = [];
    const report = await bootstrapRegion({ config: config3, region: NEW, batchRows: 2000, onProgress: (p) => progress.push(p) }).finally(() => clearTimeout(heal));
    bed.heal();
    assert.ok(progress.some((p) => p.kind === 'wait' && p.peer === 'r-two'), 'the bootstrap waited for r-one to apply r-two up to its new slot');
    t.diagnostic(`bootstrap: ${report.elapsedMs} ms, ${report.tables.map((x) => `${x.table} ${x.rows} rows ${x.tombstones} tombstones`).join(', ')}`);
    assert.equal(report.restarted, true, 'the interrupted attempt was recognised');
    assert.equal(report.source, 'r-one');
    assert.deepEqual(Object.keys(report.startPoints).sort(), ['r-one', 'r-two']);
    assert.ok(progress.some((p) => p.kind === 'copy' && p.done && p.table === '"public"."kv"' && p.rows > 19_000));
    const kvReport = report.tables.find((x) => x.table === '"public"."kv"')!;
    assert.ok(kvReport.tombstones >= 1, 'tombstones were copied');

    // Versions were carried: every row written only before the bootstrap has exactly the version r-one and r-two give it.
    const [v1, v2, v3] = await Promise.all([e1, e2, nDb].map(async (db) => (await db.query<{ k: string; ts: string; region: string }>(VERSIONS)).rows));
    assert.ok(v1!.length > 19_000);
    assert.ok(v3!.some((r) => r.region === 'r-two' && r.k === '1001') && v3!.some((r) => r.region === 'r-two (tombstone)'), 'r-two versions and tombstones are present');
    assert.deepEqual(v3, v1, 'the new region holds the versions of the source');
    assert.deepEqual(v3, v2, 'and those of the other region');
    // The copy is marked with origin r-one in the new region, so it never streams out of its slots.
    const origin = await nDb.query<{ roname: string; lsn: string }>(`SELECT external_id AS roname, remote_lsn::text AS lsn FROM pg_replication_origin_status ORDER BY 1`);
    assert.deepEqual(origin.rows.map((r) => [r.roname, r.lsn]), [['tandem_from_r_one', report.startPoints['r-one']], ['tandem_from_r_two', report.startPoints['r-two']]]);
    // Without interleaving, the new region's serial continues after the copied ids.
    assert.equal((await nDb.query(`SELECT nextval('events_id_seq')::int AS v`)).rows[0].v, 101);

    // Lag from the new region counts from the bootstrap in the existing regions (their agents do not know it yet).
    const lagNew = (await readLag(e1)).find((l) => l.peer === NEW);
    assert.ok(lagNew && lagNew.lagSec < 30, `lag of ${NEW} in r-one: ${JSON.stringify(lagNew)}`);

    // The new region's agent starts; the others restart with it as a peer; it writes too.
    const nAgent = await added.startAgent();
    for (const i of [0, 1]) {
      await bed.stopAgent(i);
      await bed.startAgent(i, { config: config3 });
    }
    const nWriter = writer(nDb, NEW, prng(seed + 7));
    writers.push(nWriter);
    await sleep(3_000);
    const counts = await Promise.all(writers.map((w) => w.stop()));
    writers.length = 0;
    const nTxns = counts[2]!;
    t.diagnostic(`transactions that changed rows: ${bed.regions.map((r, i) => `${r} ${counts[i]}`).join(', ')}, ${NEW} ${nTxns}`);
    assert.ok(counts.every((c) => c > 0), 'every region wrote');

    const agents = [bed.agents[0]!, bed.agents[1]!, nAgent];
    await caughtUp([e1, e2, nDb], [...bed.regions, NEW], agents, 60_000);
    for (const pair of [['r-one', 'r-two'], ['r-one', NEW]] as Array<[string, string]>) {
      const v = await verifyTables({ config: config3, regions: pair });
      assert.equal(v.identical, true, `${pair.join(' vs ')} differ: ${JSON.stringify(v.differences.slice(0, 5))}`);
      assert.ok(v.tables.find((x) => x.table === '"public"."kv"')!.rows[0] > 19_000);
    }
    // r-one and r-two applied exactly the new region's own transactions: the copy did not stream back out.
    for (const a of [bed.agents[0]!, bed.agents[1]!]) {
      const fromNew = a.status().peers.find((p) => p.peer === NEW)!;
      assert.equal(fromNew.appliedTxns, nTxns, `${a.status().region} applied ${fromNew.appliedTxns} transactions from ${NEW}, which committed ${nTxns}`);
    }

    // Running it again is harmless: it reports the finished bootstrap.
    const again = await bootstrapRegion({ config: config3, region: NEW });
    assert.equal(again.alreadyDone, true);
    assert.equal(again.consistentPoint, report.consistentPoint);

    // A damaged new region (changes that never streamed out) is bootstrapped again with reset.
    await added.agent!.stop();
    await nDb.query(`SELECT pg_replication_origin_session_setup('tandem_from_r_one')`);
    await nDb.query(`UPDATE kv SET v = 'damaged' WHERE k BETWEEN 5000 AND 5009; DELETE FROM kv WHERE k = 6000`);
    await nDb.query(`SELECT pg_replication_origin_session_reset()`);
    assert.equal((await verifyTables({ config: config3, regions: ['r-one', NEW] })).differences.length, 11);
    const redo = await bootstrapRegion({ config: config3, region: NEW, reset: true, from: 'r-two' });
    assert.equal(redo.source, 'r-two');
    await added.startAgent();
    await caughtUp([e1, e2, nDb], [...bed.regions, NEW], [bed.agents[0]!, bed.agents[1]!, added.agent!], 60_000);
    const healed = await verifyTables({ config: config3, regions: ['r-one', NEW] });
    assert.equal(healed.identical, true, JSON.stringify(healed.differences.slice(0, 5)));
  });
});

describe('bootstrap with interleaved sequences', () => {
  let bed: Bed | undefined;
  let added: NewRegion | undefined;
  const inserters: Array<{ stop(): Promise<number> }> = [];
  after(async () => {
    await Promise.all(inserters.map((w) => w.stop().catch(() => 0)));
    await added?.close();
    await bed?.close();
  });

  test('every region moves to the new modulus above every value any region handed out; ids never collide', { timeout: 90_000 }, async () => {
    const ddl = [`CREATE TABLE ids (id bigserial PRIMARY KEY, region text NOT NULL)`, `CREATE TABLE ids2 (id int GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, region text NOT NULL)`];
    bed = await startBed({ regions: 2, ddl, tables: ['public.ids', 'public.ids2'], replication: { interleaveSequences: true } });
    const [e1, e2] = bed.db as [pg.Client, pg.Client];
    await bed.startAgent(0);
    await bed.startAgent(1);
    // Each region inserts with its sequences (ids ≡ 1 and ≡ 0 mod 2) during the whole bootstrap.
    const inserted = [0, 0, 0];
    const inserter = (db: pg.Client, i: number, region: string) => {
      let stop = false;
      const done = (async () => {
        while (!stop) {
          await db.query(`INSERT INTO ids (region) VALUES ($1)`, [region]);
          await db.query(`INSERT INTO ids2 (region) VALUES ($1)`, [region]);
          inserted[i]!++;
          await sleep(3);
        }
      })();
      return {
        async stop() {
          stop = true;
          await done;
          return inserted[i]!;
        },
      };
    };
    inserters.push(inserter(e1, 0, 'r-one'), inserter(e2, 1, 'r-two'));
    await sleep(500);
    added = await addRegion(bed, ddl);
    const report = await bootstrapRegion({ config: added.config, region: NEW });
    assert.ok(report.actions.some((a) => /INCREMENT BY 3/.test(a)), report.actions.join('\n'));
    // Every region's sequences now count in steps of 3 in the region's own class.
    for (const [i, db] of [e1, e2, added.db].entries()) {
      const { rows } = await db.query<{ seqrelid: string; inc: string }>(`SELECT seqrelid::regclass::text AS seqrelid, seqincrement::text AS inc FROM pg_sequence WHERE seqrelid::regclass::text LIKE 'ids%' ORDER BY 1`);
      assert.deepEqual(rows.map((r) => r.inc), ['3', '3'], `region ${i + 1}: ${JSON.stringify(rows)}`);
    }
    await added.startAgent();
    for (const i of [0, 1]) {
      await bed.stopAgent(i);
      await bed.startAgent(i, { config: added.config });
    }
    inserters.push(inserter(added.db, 2, NEW));
    await sleep(1_500);
    await Promise.all(inserters.map((w) => w.stop()));
    inserters.length = 0;
    const total = inserted.reduce((a, b) => a + b, 0);
    const dbs = [e1, e2, added.db];
    await waitFor(
      'every inserted row in every region',
      async () => (await Promise.all(dbs.map(async (db) => (await db.query<{ n: number }>('SELECT (SELECT count(*) FROM ids) + (SELECT count(*) FROM ids2) AS n')).rows[0]!.n))).every((n) => Number(n) === 2 * total),
      30_000,
      100,
    );
    // No id was handed out twice: no insert met an existing row anywhere.
    for (const db of dbs) assert.equal((await db.query(`SELECT count(*)::int AS n FROM tandem.conflicts`)).rows[0].n, 0);
    const { rows } = await added.db.query<{ id: string; region: string }>(`SELECT id::text, region FROM ids WHERE region = $1`, [NEW]);
    assert.ok(rows.length > 0 && rows.every((r) => BigInt(r.id) % 3n === 0n), `the new region (third in the config) hands out ids ≡ 0 mod 3: ${rows.slice(0, 5).map((r) => r.id)}`);
  });
});
