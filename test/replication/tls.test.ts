/**
 * Replication over TLS: two PostgreSQL servers with a self-signed certificate
 * (made with openssl here); setup, the stream and apply connect with
 * sslmode `require`, then `verify-full` against the certificate. The
 * walsender's connection is shown encrypted in `pg_stat_ssl`.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { PostgresServer } from '../../src/lab/postgres.ts';
import { parseConfig, type Config } from '../../src/core/config/index.ts';
import { silentLogger } from '../../src/core/log.ts';
import { ReplicationAgent } from '../../src/replication/agent.ts';
import { setupReplication } from '../../src/replication/setup.ts';
import { TEST_PG_PASSWORD } from '../helpers/pg.ts';
import { freePort } from '../helpers/ports.ts';
import { waitFor } from './harness.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'tandem-tls-'));
const servers: PostgresServer[] = [];
const clients: pg.Client[] = [];
const agents: ReplicationAgent[] = [];
process.env.TANDEM_TLS_TEST_PW = TEST_PG_PASSWORD;

before(async () => {
  chmodSync(dir, 0o755);
  const cert = path.join(dir, 'server.crt');
  const key = path.join(dir, 'server.key');
  execFileSync('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '1', '-keyout', key, '-out', cert,
    '-subj', '/CN=tandem-test', '-addext', 'subjectAltName=IP:127.0.1.1,IP:127.0.2.1',
  ], { stdio: 'ignore' });
  chmodSync(key, 0o600);
  if (process.getuid?.() === 0) {
    // PostgreSQL runs as "postgres" when we are root, and insists on owning its key.
    const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
    const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
    chownSync(key, uid, gid);
  }
  for (const i of [1, 2]) {
    const host = `127.0.${i}.1`;
    const s = new PostgresServer({ dataDir: path.join(dir, `r${i}`), host, port: await freePort(host), password: TEST_PG_PASSWORD, database: 'tandem', fsync: false, ssl: { certFile: cert, keyFile: key } });
    await s.start();
    servers.push(s);
    const c = await s.connect('tandem');
    await c.query(`CREATE TABLE t (id int PRIMARY KEY, v text)`);
    clients.push(c);
  }
});

after(async () => {
  await Promise.all(agents.map((a) => a.stop().catch(() => {})));
  await Promise.all(clients.map((c) => c.end().catch(() => {})));
  await Promise.all(servers.map((s) => s.stop().catch(() => s.kill())));
  rmSync(dir, { recursive: true, force: true });
});

function config(ssl: Record<string, string>): Config {
  return parseConfig({
    regions: servers.map((s, i) => ({
      name: ['tls-one', 'tls-two'][i]!,
      addresses: [s.options.host],
      healthUrl: `http://${s.options.host}/healthz`,
      bindAddress: s.options.host,
      database: { host: s.options.host, port: s.options.port, database: 'tandem', user: 'postgres', password: { env: 'TANDEM_TLS_TEST_PW' }, ssl },
    })),
    replication: { tables: ['public.t'], heartbeatIntervalMs: 200 },
  });
}

test('setup, streaming and apply work over TLS (sslmode require, then verify-full)', { timeout: 60_000 }, async () => {
  const required = config({ mode: 'require' });
  await setupReplication(required);
  agents.push(new ReplicationAgent({ config: required, region: 'tls-two', logger: silentLogger(), backoff: { minMs: 100, maxMs: 1000 } }));
  await agents[0]!.start();
  await clients[0]!.query(`INSERT INTO t VALUES (1, 'over tls')`);
  await waitFor('row over TLS', async () => (await clients[1]!.query(`SELECT v FROM t WHERE id = 1`)).rows[0]?.v === 'over tls');
  const { rows } = await clients[0]!.query(
    `SELECT s.ssl, s.version FROM pg_stat_replication r JOIN pg_stat_ssl s ON s.pid = r.pid WHERE r.application_name = 'tandem-tls-two'`,
  );
  assert.equal(rows.length, 1, 'the walsender of the tls-two agent');
  assert.equal(rows[0].ssl, true);
  await agents[0]!.stop();

  // verify-full: the certificate is its own CA and names both addresses.
  const verified = config({ mode: 'verify-full', ca: path.join(dir, 'server.crt') });
  const a = new ReplicationAgent({ config: verified, region: 'tls-two', logger: silentLogger(), backoff: { minMs: 100, maxMs: 1000 } });
  agents.push(a);
  await a.start();
  await clients[0]!.query(`INSERT INTO t VALUES (2, 'verified')`);
  await waitFor('row over verified TLS', async () => (await clients[1]!.query(`SELECT v FROM t WHERE id = 2`)).rows[0]?.v === 'verified');
  assert.equal(a.status().peers[0]!.lastError, null);
});
