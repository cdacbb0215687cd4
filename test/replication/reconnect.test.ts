/**
 * Reconnecting to a source behind a black-holed path (a partition: SYNs
 * answered, nothing else). Attempts start at most every backoff delay, so an
 * attempt that already waited out its connect timeout is followed at once:
 * once the path heals, the next attempt is at most one connect timeout away,
 * not a connect timeout plus a backoff sleep.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { pgConnection } from '../../src/core/config/common.ts';
import { silentLogger } from '../../src/core/log.ts';
import { PeerPipeline } from '../../src/replication/peer.ts';
import { ensureOrigin, installRegion } from '../../src/replication/setup.ts';
import { parseTableName, tableKey } from '../../src/core/sql.ts';
import { client, startCluster, TEST_PG_PASSWORD, type TestCluster } from '../helpers/pg.ts';
import { freePort } from '../helpers/ports.ts';

let cluster: TestCluster;
let blackHole: net.Server;
let blackHolePort = 0;
const sockets: net.Socket[] = [];
const arrivals: number[] = [];
process.env.TANDEM_RECONNECT_TEST_PW = TEST_PG_PASSWORD;

before(async () => {
  cluster = await startCluster(1);
  const db = await client(cluster.servers[0]!);
  await db.query(`CREATE TABLE t (id int PRIMARY KEY, v text)`);
  await installRegion(db, { region: 'two', tables: [parseTableName('public.t')] });
  await ensureOrigin(db, 'one');
  await db.end();
  // Accepts connections and never says a word: the client's connect timeout is what ends each attempt.
  blackHole = net.createServer((s) => {
    arrivals.push(Date.now());
    sockets.push(s);
    s.on('error', () => {});
  });
  blackHolePort = await freePort('127.0.3.1');
  await new Promise<void>((resolve) => blackHole.listen(blackHolePort, '127.0.3.1', resolve));
});

after(async () => {
  for (const s of sockets) s.destroy();
  blackHole?.close();
  await cluster?.stop();
  delete process.env.TANDEM_RECONNECT_TEST_PW;
});

test('after an attempt that timed out, the next one starts at once, not after another backoff', { timeout: 30_000 }, async () => {
  const s = cluster.servers[0]!;
  const conn = (host: string, port: number, extra: Record<string, unknown> = {}) =>
    pgConnection.parse({ host, port, database: 'tandem', user: 'postgres', password: { env: 'TANDEM_RECONNECT_TEST_PW' }, ...extra });
  const peer = new PeerPipeline({
    localRegion: 'two',
    peer: 'one',
    target: conn(s.options.host, s.options.port),
    source: conn('127.0.3.1', blackHolePort, { connectTimeoutSec: 2 }),
    tables: new Set([tableKey(parseTableName('public.t'))]),
    policyFor: () => ({ kind: 'lww' }),
    batch: { maxTransactions: 500, maxRows: 10_000 },
    logger: silentLogger(),
    backoff: { minMs: 1_000, maxMs: 1_000 },
  });
  await peer.start();
  try {
    const deadline = Date.now() + 20_000;
    while (arrivals.length < 4 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    assert.ok(arrivals.length >= 4, `only ${arrivals.length} attempts reached the source`);
    const gaps = arrivals.slice(1, 4).map((t, i) => t - arrivals[i]!);
    // A 2 s connect timeout and a 0.75–1.25 s backoff: 2 s apart, not 2.75–3.25 s.
    for (const g of gaps) assert.ok(g >= 1_900 && g < 2_600, `attempts ${gaps.join(', ')} ms apart`);
  } finally {
    await peer.stop();
  }
});
