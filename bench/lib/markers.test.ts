import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startCluster, client, type TestCluster } from '../../test/helpers/pg.ts';
import { sleep } from '../../src/core/lifecycle.ts';
import { MarkerPoller, MarkerWriter, markerLagsMs } from './markers.ts';

let cluster: TestCluster;
const clients: pg.Client[] = [];

before(async () => {
  cluster = await startCluster(1, { settings: { track_commit_timestamp: 'on' } });
  for (let i = 0; i < 2; i++) clients.push(await client(cluster.servers[0]!));
  await clients[0]!.query(`CREATE SCHEMA bench;
    CREATE TABLE bench.marker (region smallint NOT NULL, seq bigint NOT NULL, written_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (region, seq))`);
});

after(async () => {
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
  await cluster?.stop();
});

test('markers written and polled on one server: every marker seen once, in order, with a small non-negative lag', async () => {
  // Source and target are the same server here, so the lag is only the poll interval and the query time.
  const writer = new MarkerWriter(clients[0]!, 1, 5);
  const poller = new MarkerPoller(clients[1]!, 1, 2);
  writer.start();
  poller.start();
  await sleep(400);
  await writer.stop();
  const last = writer.lastSeq;
  assert.ok(last >= 10, `only ${last} markers in 400 ms`);
  assert.ok((await poller.waitFor(last, 5_000)) !== undefined, 'the last marker was never seen');
  await poller.stop();
  assert.equal(await poller.waitFor(last + 1, 50), undefined, 'a marker that was never written was "seen"');
  const { lagsMs, missing } = await markerLagsMs(writer, poller, 1, last);
  assert.equal(missing, 0);
  assert.equal(lagsMs.length, last);
  for (const l of lagsMs) assert.ok(l >= 0 && l < 1_000, `lag ${l} ms`);
  for (let s = 2; s <= last; s++) assert.ok(poller.seenUs[s]! >= poller.seenUs[s - 1]!, 'seen times go backwards');
});
