/**
 * `npm run bench:apply`: the CPU cost of tandem's batch apply alone, on one
 * PostgreSQL, without the network, the source's decoding or other load: the
 * part of the replication benchmark's "apply" and "agent" figures that the
 * apply statement decides. The anchor, in the same run and on the same
 * server, writes the same changes as plainly as SQL allows: one
 * `INSERT ... ON CONFLICT DO UPDATE` per batch, no versions, no conflict
 * detection. The ratio is the price of the decisions and the exact versions.
 *
 * Changes are built in memory as the stream would deliver them (1 INSERT of a
 * new key + 0–2 UPDATEs of existing keys per transaction, like the
 * replication bench's pgbench script) and applied in batches of a few
 * transactions (as at 1,000 tx/s) and of a few hundred (as when saturated or
 * draining a backlog). CPU is the backend's utime+stime from /proc and the
 * Node process's own (the agent's share: grouping, the statement's
 * parameters, the driver).
 *
 * A second part measures the agent's receiving side alone: a backlog of the
 * same transactions in a slot, streamed and decoded by `ReplicationStream`
 * and grouped into transactions, with nothing applied. Its anchor is the
 * walsender's CPU for decoding the same WAL (pgoutput, in C, in the same
 * run).
 */
import type pg from 'pg';
import { client, startCluster } from '../test/helpers/pg.ts';
import { sourceRelationOf } from '../test/helpers/relation.ts';
import { silentLogger } from '../src/core/log.ts';
import { parseTableName, tableKey } from '../src/core/sql.ts';
import { Applier, type Batch, type RowChange } from '../src/replication/apply.ts';
import type { SourceRelation } from '../src/replication/catalog.ts';
import { ensureOrigin, installRegion } from '../src/replication/setup.ts';
import { pgConnection } from '../src/core/config/common.ts';
import { createLogicalSlot } from '../src/replication/slot.ts';
import { ReplicationStream } from '../src/replication/stream.ts';
import { TEST_PG_PASSWORD } from '../test/helpers/pg.ts';
import { cpuSeconds } from './lib/procstat.ts';
import { fmt, median, table } from './lib/stats.ts';
import { benchArgs } from './lib/args.ts';

const argv = benchArgs('bench:apply', {
  rounds: { type: 'string', default: '3' },
  seconds: { type: 'string', default: '3' },
  keys: { type: 'string', default: '20000' },
  batches: { type: 'string', default: '5,250' },
  'stream-txns': { type: 'string', default: '30000' },
});
const ROUNDS = Number(argv.rounds);
const SECONDS = Number(argv.seconds);
const KEYS = Number(argv.keys);
const SIZES = argv.batches!.split(',').map(Number);
const STREAM_TXNS = Number(argv['stream-txns']);
if (SIZES.some((n) => !Number.isInteger(n) || n < 1)) {
  console.error(`bench:apply: --batches must list positive integers (transactions per batch), got ${JSON.stringify(argv.batches)}`);
  process.exit(2);
}
for (const [name, v] of [['--rounds', ROUNDS], ['--seconds', SECONDS], ['--keys', KEYS], ['--stream-txns', STREAM_TXNS]] as const) {
  if (!Number.isInteger(v) || v < 1) {
    console.error(`bench:apply: ${name} must be a positive integer, got ${JSON.stringify(String(v))}`);
    process.exit(2);
  }
}

const ITEMS = parseTableName('public.items');
const PLAIN = parseTableName('public.items_plain');
const COLUMNS = '(id bigint PRIMARY KEY, region smallint, nrows smallint, n int, payload text, updated_at timestamptz)';

let lsn = 0x1_0000_0000n;
let clockUs = BigInt(Date.now()) * 1000n;
let nextId = 1;

/** One source transaction: a new key and 0–2 updates of keys that exist. */
function transaction(rel: SourceRelation, updates = Math.floor(Math.random() * 3)): RowChange[] {
  const version = { tsUs: (clockUs += 7n), region: 'a' };
  const at = new Date(Number(clockUs / 1000n)).toISOString();
  const txLsn = (lsn += 0x200n);
  const id = nextId++;
  const out: RowChange[] = [{ op: 'insert', rel, newTuple: [String(id), '1', String(1 + updates), '0', `p${id}`, at], version, lsn: txLsn }];
  for (let u = 0; u < updates; u++) {
    const k = 1 + Math.floor(Math.random() * (nextId - 1));
    out.push({ op: 'update', rel, newTuple: [String(k), '1', '1', String(u), `u${k}-${clockUs}`, at], version, lsn: txLsn });
  }
  return out;
}

/** A batch of these changes, its progress that of the last one. */
function asBatch(changes: RowChange[], txns: number): Batch {
  const last = changes[changes.length - 1]!;
  return { changes, txns, progress: { lsn: last.lsn, tsUs: last.version.tsUs }, sourceTsUs: last.version.tsUs };
}

function batchOf(rel: SourceRelation, txns: number): Batch {
  const changes: RowChange[] = [];
  for (let i = 0; i < txns; i++) changes.push(...transaction(rel));
  return asBatch(changes, txns);
}

/** The anchor: the batch's last value per key, written in one upsert statement. */
async function applyPlain(db: pg.Client, batch: Batch): Promise<void> {
  const last = new Map<string, (string | null)[]>();
  for (const c of batch.changes as RowChange[]) last.set(c.newTuple![0] as string, c.newTuple as (string | null)[]);
  await db.query({
    name: 'plain',
    text: `INSERT INTO ${tableKey(PLAIN)} AS t (id, region, nrows, n, payload, updated_at)
             SELECT (r->>0)::bigint, (r->>1)::smallint, (r->>2)::smallint, (r->>3)::int, r->>4, (r->>5)::timestamptz
               FROM jsonb_array_elements($1::jsonb) AS x(r)
           ON CONFLICT (id) DO UPDATE SET region = EXCLUDED.region, nrows = EXCLUDED.nrows, n = EXCLUDED.n, payload = EXCLUDED.payload, updated_at = EXCLUDED.updated_at`,
    values: [JSON.stringify([...last.values()])],
  });
}

interface Measure {
  rows: number;
  backendMs: number;
  nodeMs: number;
  wallMs: number;
}

async function measure(backendPid: number, apply: (b: Batch) => Promise<unknown>, rel: SourceRelation, txns: number): Promise<Measure> {
  // Batches are built before the clock starts: building them is the stream's work, not apply's.
  const batches: Batch[] = [];
  const estimate = Math.max(20, Math.round((SECONDS * 6_000) / txns));
  for (let i = 0; i < estimate; i++) batches.push(batchOf(rel, txns));
  const b0 = cpuSeconds(backendPid)!;
  const n0 = process.cpuUsage();
  const t0 = performance.now();
  let rows = 0;
  for (const b of batches) {
    await apply(b);
    rows += b.changes.length;
    if (performance.now() - t0 > SECONDS * 1000) break;
  }
  const wallMs = performance.now() - t0;
  const n1 = process.cpuUsage(n0);
  const b1 = cpuSeconds(backendPid)!;
  return { rows, backendMs: (b1.user + b1.system - b0.user - b0.system) * 1000, nodeMs: (n1.user + n1.system) / 1000, wallMs };
}

/**
 * Stream a backlog of `txns` transactions (1 INSERT + 0–2 UPDATEs each) from a fresh slot and decode it
 * as the agent's reader does, applying nothing: Node's CPU against the walsender's.
 */
async function measureStream(admin: pg.Client, host: string, port: number, round: number, txns: number): Promise<{ rows: number; nodeMs: number; walsenderMs: number; wallMs: number }> {
  const slot = `bench_stream_${round}`;
  await createLogicalSlot(admin, slot);
  await admin.query(`CALL bench_load($1)`, [txns]);
  const end = BigInt((await admin.query(`SELECT (pg_current_wal_lsn() - '0/0')::text AS l`)).rows[0].l);
  process.env.TANDEM_BENCH_APPLY_PW = TEST_PG_PASSWORD;
  const stream = new ReplicationStream({
    connection: pgConnection.parse({ host, port, user: 'postgres', database: 'tandem', password: { env: 'TANDEM_BENCH_APPLY_PW' } }),
    slot,
    publication: 'bench_pub',
    startLsn: 0n,
  });
  const n0 = process.cpuUsage();
  const t0 = performance.now();
  await stream.start();
  const walsender = Number((await admin.query(`SELECT pid FROM pg_stat_replication WHERE application_name = 'tandem-replication'`)).rows[0].pid);
  const w0 = cpuSeconds(walsender)!;
  let rows = 0;
  let changes: unknown[] = [];
  const it = stream.messages()[Symbol.asyncIterator]();
  for (;;) {
    const { value: item, done } = await it.next();
    if (done) throw new Error('bench:apply: the stream ended before the end of the backlog');
    if (item.keepalive) {
      if (item.walEnd >= end) break;
      continue;
    }
    const m = item.message;
    if (m.tag === 'insert' || m.tag === 'update' || m.tag === 'delete') {
      changes.push({ op: m.tag, tuple: m.tag === 'delete' ? m.oldTuple : m.newTuple, lsn: item.lsn });
      rows++;
    } else if (m.tag === 'commit') {
      changes = [];
      if (m.endLsn >= end) break;
    }
  }
  // Before stopping: the walsender exits with the stream.
  const w1 = cpuSeconds(walsender)!;
  const wallMs = performance.now() - t0;
  const n1 = process.cpuUsage(n0);
  await stream.stop();
  await admin.query(`SELECT pg_drop_replication_slot($1)`, [slot]);
  return { rows, nodeMs: (n1.user + n1.system) / 1000, walsenderMs: (w1.user + w1.system - w0.user - w0.system) * 1000, wallMs };
}

async function main(): Promise<void> {
  console.log(`bench:apply: ${ROUNDS} round(s) of ${SECONDS} s per case; ${KEYS.toLocaleString('en-US')} preloaded keys; starting PostgreSQL`);
  const cluster = await startCluster(1);
  const stop = () => void cluster.stop().finally(() => process.exit(130));
  process.once('SIGINT', stop);
  try {
    const s = cluster.servers[0]!;
    const admin = await client(s);
    const db = await client(s);
    const plain = await client(s);
    await admin.query(`CREATE TABLE ${tableKey(ITEMS)} ${COLUMNS}`);
    await admin.query(`CREATE TABLE ${tableKey(PLAIN)} ${COLUMNS}`);
    await installRegion(admin, { region: 'b', tables: [ITEMS] });
    await admin.query(`CREATE TABLE public.items_src ${COLUMNS}`);
    await admin.query(`CREATE PUBLICATION bench_pub FOR TABLE public.items_src`);
    // The replication bench's transaction, committed one by one: a new row and 0–2 updates of existing ones.
    await admin.query(`CREATE PROCEDURE bench_load(txns int) LANGUAGE plpgsql AS $$
      DECLARE base bigint := COALESCE((SELECT max(id) FROM public.items_src), 0);
      BEGIN
        FOR i IN 1..txns LOOP
          INSERT INTO public.items_src VALUES (base + i, 1, 2, 0, md5(i::text), now());
          FOR u IN 1..(i % 3) LOOP
            UPDATE public.items_src SET n = n + 1, payload = md5(random()::text), updated_at = now() WHERE id = 1 + ((base + i) * 7919 + u) % (base + i);
          END LOOP;
          COMMIT;
        END LOOP;
      END $$`);
    await ensureOrigin(admin, 'a');
    const applier = new Applier({ db, localRegion: 'b', peer: 'a', tables: new Set([tableKey(ITEMS)]), policyFor: () => ({ kind: 'lww' }), logger: silentLogger() });
    await applier.init();
    const rel = await sourceRelationOf(admin, ITEMS);
    // Preload through apply, so every key has its version entry, as after replication.
    while (nextId <= KEYS) {
      const changes: RowChange[] = [];
      for (let i = 0; i < 500 && nextId <= KEYS; i++) changes.push(...transaction(rel, 0));
      await applier.apply(asBatch(changes, changes.length));
    }
    await admin.query(`INSERT INTO ${tableKey(PLAIN)} SELECT * FROM ${tableKey(ITEMS)}`);
    for (const t of [tableKey(ITEMS), tableKey(PLAIN), 'tandem.row_versions']) await admin.query(`VACUUM ANALYZE ${t}`);
    const pidOf = async (c: pg.Client) => Number((await c.query('SELECT pg_backend_pid() AS p')).rows[0].p);
    const tandemPid = await pidOf(db);
    const plainPid = await pidOf(plain);
    console.log(`backend PIDs (for perf): tandem ${tandemPid}, plain ${plainPid}`);

    const cases = SIZES.map((txns) => ({ label: `${txns} tx per batch${txns <= 10 ? ' (as at 1,000 tx/s)' : txns >= 100 ? ' (saturated, backlog)' : ''}`, txns }));
    const results = new Map<string, { tandem: Measure[]; plain: Measure[] }>();
    for (let round = 1; round <= ROUNDS; round++) {
      for (const c of cases) {
        const r = results.get(c.label) ?? { tandem: [], plain: [] };
        results.set(c.label, r);
        // Alternate which goes first, so neither always runs on a warmer cache.
        const order = round % 2 === 1 ? (['tandem', 'plain'] as const) : (['plain', 'tandem'] as const);
        for (const who of order) {
          const m = who === 'tandem' ? await measure(tandemPid, (b) => applier.apply(b), rel, c.txns) : await measure(plainPid, (b) => applyPlain(plain, b), rel, c.txns);
          r[who].push(m);
          const per = (v: number) => fmt((v / m.rows) * 1000, 1);
          console.log(`[round ${round}] ${c.label}, ${who}: ${m.rows.toLocaleString('en-US')} rows, per 1,000 rows: backend ${per(m.backendMs)} ms, node ${per(m.nodeMs)} ms, wall ${per(m.wallMs)} ms`);
        }
      }
    }
    const streamRuns: Array<{ rows: number; nodeMs: number; walsenderMs: number; wallMs: number }> = [];
    for (let round = 1; round <= ROUNDS; round++) {
      const m = await measureStream(admin, s.options.host, s.options.port, round, STREAM_TXNS);
      streamRuns.push(m);
      const per = (v: number) => fmt((v / m.rows) * 1000, 1);
      console.log(`[round ${round}] stream and decode ${m.rows.toLocaleString('en-US')} rows: per 1,000 rows: node ${per(m.nodeMs)} ms, walsender ${per(m.walsenderMs)} ms, wall ${per(m.wallMs)} ms`);
    }
    const rows: string[][] = [['per 1,000 rows (median of rounds)', 'tandem', 'plain upsert', 'tandem/plain']];
    for (const [label, r] of results) {
      for (const [what, f] of [
        ['backend CPU ms', (m: Measure) => m.backendMs],
        ['node CPU ms', (m: Measure) => m.nodeMs],
        ['wall ms', (m: Measure) => m.wallMs],
      ] as const) {
        const t = median(r.tandem.map((m) => (f(m) / m.rows) * 1000));
        const p = median(r.plain.map((m) => (f(m) / m.rows) * 1000));
        rows.push([`${label}: ${what}`, fmt(t, 1), fmt(p, 1), `${fmt(t / p, 2)}×`]);
      }
    }
    const node = median(streamRuns.map((m) => (m.nodeMs / m.rows) * 1000));
    const wal = median(streamRuns.map((m) => (m.walsenderMs / m.rows) * 1000));
    rows.push([`stream + decode, ${STREAM_TXNS.toLocaleString('en-US')} tx backlog: CPU ms`, fmt(node, 1), `walsender ${fmt(wal, 1)}`, `${fmt(node / wal, 2)}×`]);
    console.log(`\n${table(rows)}`);
    await Promise.all([admin.end(), db.end(), plain.end()]);
  } finally {
    await cluster.stop();
  }
}

await main();
