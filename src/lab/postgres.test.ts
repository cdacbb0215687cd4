import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { startCluster, client } from '../../test/helpers/pg.ts';

test('a real PostgreSQL starts with logical decoding, survives SIGKILL and restarts on its data', async () => {
  const cluster = await startCluster(1);
  after(() => cluster.stop());
  let c = await client(cluster.servers[0]!);
  const settings = await c.query(`SELECT name, setting FROM pg_settings WHERE name IN ('wal_level','track_commit_timestamp') ORDER BY name`);
  assert.deepEqual(settings.rows, [
    { name: 'track_commit_timestamp', setting: 'on' },
    { name: 'wal_level', setting: 'logical' },
  ]);
  await c.query('CREATE TABLE t (id int primary key)');
  await c.query('INSERT INTO t VALUES (1), (2)');
  await c.end();
  const s = cluster.servers[0]!;
  s.kill();
  await s.exited();
  await assert.rejects(client(s));
  const restarted = await cluster.restart(0);
  c = await client(restarted);
  const { rows } = await c.query('SELECT count(*)::int AS n FROM t');
  assert.equal(rows[0].n, 2);
  await c.end();
});
