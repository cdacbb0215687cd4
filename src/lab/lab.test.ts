import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, chmodSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { Lab } from './lab.ts';
import { silentLogger } from '../core/log.ts';
import { callApi } from '../core/http.ts';
import { freePort } from '../../test/helpers/ports.ts';
import { LAB_PORTS } from './topology.ts';

// The lab's skeleton alone (PostgreSQL, WAN emulator, API, faults); the
// end-to-end test in test/lab starts every part.
test('lab skeleton: regions up, fail kills PostgreSQL, recover restarts it on its data, partition via the API', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-lab-test-'));
  chmodSync(dir, 0o755);
  const port = await freePort();
  const lab = new Lab({
    dir,
    regions: 2,
    parts: { app: false, dns: false, replication: false, control: false, traffic: false, dashboard: false },
    api: { host: '127.0.0.1', port },
    logger: silentLogger(),
    replicatedTables: [],
  });
  after(async () => {
    await lab.stop();
    rmSync(dir, { recursive: true, force: true });
  });
  await lab.start();
  const api = `http://127.0.0.1:${port}`;
  const status = await callApi<{ state: string; regions: { name: string; address: string; postgres: { pid: number } }[] }>(`${api}/v1/lab/status`);
  assert.equal(status.state, 'running');
  assert.deepEqual(status.regions.map((r) => [r.name, r.address]), [['aws-south', '127.0.1.1'], ['azure-west', '127.0.2.1']]);

  const password = lab.config.regions[0]!.database.password;
  assert.ok(password?.file, 'the lab config references the password by file');
  const connect = async (host: string, portNo: number) => {
    const c = new pg.Client({ host, port: portNo, user: 'postgres', password: (await import('node:fs')).readFileSync(password.file!, 'utf8').trim(), database: 'tandem' });
    c.on('error', () => {});
    await c.connect();
    return c;
  };
  // Through the WAN emulator, from the other region's address, a write lands.
  const viaWan = await connect('127.0.1.1', LAB_PORTS.postgresWan);
  await viaWan.query('CREATE TABLE t (id int primary key)');
  await viaWan.query('INSERT INTO t VALUES (1)');
  await viaWan.end();

  // Faults need the token.
  await assert.rejects(callApi(`${api}/v1/lab/regions/aws-south/fail`, { method: 'POST' }), /401/);
  const killed = await callApi<{ killed: number[] }>(`${api}/v1/lab/regions/aws-south/fail`, { method: 'POST', token: lab.token });
  assert.equal(killed.killed.length, 1);
  await assert.rejects(connect('127.0.1.1', LAB_PORTS.postgres));
  await callApi(`${api}/v1/lab/regions/aws-south/recover`, { method: 'POST', token: lab.token, timeoutMs: 60_000 });
  const again = await connect('127.0.1.1', LAB_PORTS.postgres);
  assert.equal((await again.query('SELECT count(*)::int AS n FROM t')).rows[0].n, 1);
  await again.end();

  await callApi(`${api}/v1/lab/partition`, { method: 'POST', token: lab.token, body: { a: 'aws-south', b: 'azure-west' } });
  assert.ok(lab.wan.isPartitioned('azure-west', 'aws-south'));
  await assert.rejects(callApi(`${api}/v1/lab/partition`, { method: 'POST', token: lab.token, body: { a: 'aws-south', b: 'mars' } }), /unknown lab region "mars"/);
  await callApi(`${api}/v1/lab/heal`, { method: 'POST', token: lab.token, body: {} });
  assert.equal(lab.wan.partitions.length, 0);
  await assert.rejects(callApi(`${api}/v1/lab/wan`, { method: 'PUT', token: lab.token, body: { latencyMs: -1 } }), /latencyMs must be a number/);
});
