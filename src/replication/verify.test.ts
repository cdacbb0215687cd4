import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { PassThrough } from 'node:stream';
import type pg from 'pg';
import { stringify } from 'yaml';
import { parseConfig, type Config } from '../core/config/index.ts';
import { createLogger } from '../core/log.ts';
import { client, startCluster, TEST_PG_PASSWORD, type TestCluster } from '../../test/helpers/pg.ts';
import { formatVerifyReport, verifyTables, type VerifyDifference } from './verify.ts';

const PASSWORD_ENV = 'TANDEM_TEST_VERIFY_PG_PASSWORD';
const ROWS = 1_000_000;
const BIG = '"public"."big"';
const ITEMS = '"app"."Line Items"';

function sortDiffs(d: VerifyDifference[]): VerifyDifference[] {
  return [...d].sort((x, y) => JSON.stringify(x).localeCompare(JSON.stringify(y)));
}

/** Run the CLI; resolves with its exit code and output. */
function cli(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ['bin/tandem.js', ...args], { cwd: path.resolve(import.meta.dirname, '../..'), env: { ...process.env, TANDEM_LOG_LEVEL: 'warn' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 60_000);
    child.on('error', reject);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

describe('tandem verify against two PostgreSQL servers', () => {
  let cluster: TestCluster;
  let a: pg.Client;
  let b: pg.Client;
  let config: Config;
  let dir: string;
  let configFile: string;

  before(async () => {
    cluster = await startCluster(2);
    process.env[PASSWORD_ENV] = TEST_PG_PASSWORD;
    const regions = cluster.servers.map((s, i) => ({
      name: `r-${i + 1}`,
      addresses: [s.options.host],
      healthUrl: `http://${s.options.host}/healthz`,
      database: { host: s.options.host, port: s.options.port, user: 'postgres', password: { env: PASSWORD_ENV } },
    }));
    const raw = { regions, replication: { tables: ['public.big', 'app."Line Items"', 'tandem.row_versions'] } };
    config = parseConfig(raw);
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-verify-'));
    configFile = path.join(dir, 'tandem.yaml');
    writeFileSync(configFile, stringify(raw));
    a = await client(cluster.servers[0]!);
    b = await client(cluster.servers[1]!);
    const t0 = Date.now();
    // Identical content generated inside PostgreSQL in both regions; values of several types.
    const ddl = `
      CREATE TABLE big (id int8 PRIMARY KEY, payload text, amount numeric(12,2), at timestamptz, tags text[], doc jsonb);
      INSERT INTO big SELECT g, md5(g::text), g * 1.25, timestamptz '2024-01-01 00:00:00+00' + g * interval '1 second',
        ARRAY['t' || (g % 5)], jsonb_build_object('g', g)
        FROM generate_series(1, ${ROWS}) g;
      CREATE SCHEMA app;
      CREATE TABLE app."Line Items" (tenant text, id uuid, qty int, note text, PRIMARY KEY (tenant, id));
      INSERT INTO app."Line Items" SELECT 'tenant-' || (g % 7), md5(g::text)::uuid, g % 100, CASE WHEN g % 3 = 0 THEN NULL ELSE 'n' || g END
        FROM generate_series(1, 50000) g;
      CREATE SCHEMA tandem;
      CREATE TABLE tandem.row_versions (k text PRIMARY KEY);`;
    const load = async (c: pg.Client) => {
      await c.query(ddl);
      await c.query('VACUUM ANALYZE big');
      await c.query('VACUUM ANALYZE app."Line Items"');
    };
    await Promise.all([load(a), load(b)]);
    // Different physical column order in one region does not matter: columns are compared by name.
    await b.query(`CREATE TABLE onlyorder (id int PRIMARY KEY, x text, y int); INSERT INTO onlyorder VALUES (1, 'a', 1)`);
    await a.query(`CREATE TABLE onlyorder (y int, id int PRIMARY KEY, x text); INSERT INTO onlyorder VALUES (1, 1, 'a')`);
    // Only in region A.
    await a.query(`CREATE TABLE lonely (id int PRIMARY KEY)`);
    console.log(`# generated ${ROWS} + 50000 rows in each region in ${Date.now() - t0} ms`);
  });

  after(async () => {
    await a?.end();
    await b?.end();
    await cluster?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
    delete process.env[PASSWORD_ENV];
  });

  test('identical tables: identical report, tandem.* skipped', async () => {
    const report = await verifyTables({ config });
    console.log(`# verify identical: ${ROWS} + 50000 rows in ${report.elapsedMs} ms (${report.tables.map((t) => `${t.table} ${t.elapsedMs} ms`).join(', ')})`);
    assert.equal(report.identical, true, formatVerifyReport(report));
    assert.deepEqual(report.regions, ['r-1', 'r-2']);
    assert.deepEqual(report.skipped, ['"tandem"."row_versions"']);
    assert.deepEqual(
      report.tables.map((t) => [t.table, t.rows]),
      [
        [BIG, [ROWS, ROWS]],
        [ITEMS, [50_000, 50_000]],
      ],
    );
    assert.deepEqual(report.differences, []);
    const order = await verifyTables({ config, tables: ['onlyorder'] });
    assert.equal(order.identical, true, formatVerifyReport(order));
  });

  test('one changed, one missing and one extra row among 1,000,000 are each found and named', async () => {
    await b.query(`UPDATE big SET payload = 'tampered' WHERE id = 424242`);
    await b.query(`DELETE FROM big WHERE id = 777777`);
    await b.query(`INSERT INTO big (id, payload) VALUES (${ROWS + 1}, 'extra')`);
    // Composite text/uuid keys: a change, a row missing in A, and an extra row before every other key.
    const uuid = (g: number) => `md5('${g}')::uuid`;
    await a.query(`UPDATE app."Line Items" SET qty = -1 WHERE (tenant, id) = ('tenant-3', ${uuid(10)})`);
    await a.query(`DELETE FROM app."Line Items" WHERE (tenant, id) = ('tenant-0', ${uuid(49_000)})`);
    await a.query(`INSERT INTO app."Line Items" VALUES ('a-first', '00000000-0000-0000-0000-000000000000', 1, 'x')`);
    const { rows: ids } = await a.query<{ u10: string; u49: string }>(`SELECT ${uuid(10)}::text AS u10, ${uuid(49_000)}::text AS u49`);
    const u10 = ids[0]!.u10;
    const u49 = ids[0]!.u49;

    const report = await verifyTables({ config });
    console.log(`# verify with differences: ${ROWS} + 50000 rows in ${report.elapsedMs} ms; range queries ${report.tables.map((t) => t.rangeQueries).join('+')}`);
    console.log(formatVerifyReport(report).replace(/^/gm, '# '));
    assert.equal(report.identical, false);
    const big = report.tables.find((t) => t.table === BIG)!;
    assert.deepEqual(big.rows, [ROWS, ROWS]);
    assert.deepEqual(
      sortDiffs(big.differences),
      sortDiffs([
        { table: BIG, key: { id: '424242' }, kind: 'changed' },
        { table: BIG, key: { id: '777777' }, kind: 'missing-in-b', missingIn: 'r-2' },
        { table: BIG, key: { id: String(ROWS + 1) }, kind: 'missing-in-a', missingIn: 'r-1' },
      ]),
    );
    const items = report.tables.find((t) => t.table === ITEMS)!;
    assert.deepEqual(
      sortDiffs(items.differences),
      sortDiffs([
        { table: ITEMS, key: { tenant: 'tenant-3', id: u10 }, kind: 'changed' },
        { table: ITEMS, key: { tenant: 'tenant-0', id: u49 }, kind: 'missing-in-a', missingIn: 'r-1' },
        { table: ITEMS, key: { tenant: 'a-first', id: '00000000-0000-0000-0000-000000000000' }, kind: 'missing-in-b', missingIn: 'r-2' },
      ]),
    );
    assert.equal(report.differences.length, 6);
    assert.equal(report.rowHash, 'fast', 'both servers hash alike, so the fast hash is used');
    const md5 = await verifyTables({ config, tables: ['app."Line Items"'], rowHash: 'md5' });
    assert.equal(md5.rowHash, 'md5');
    assert.deepEqual(sortDiffs(md5.differences), sortDiffs(items.differences), 'md5 finds the same rows');
    assert.match(formatVerifyReport(report), /changed +key \(id\)=\(424242\)/);
    assert.match(formatVerifyReport(report), /missing in r-2 +key \(id\)=\(777777\)/);

    // maxDifferences caps the list and says so.
    const capped = await verifyTables({ config, tables: ['app."Line Items"'], maxDifferences: 1 });
    assert.equal(capped.tables[0]!.truncated, true);
    assert.equal(capped.differences.length, 1);
  });

  test('tables that cannot be compared are reported as schema differences', async () => {
    const report = await verifyTables({ config, tables: ['lonely', 'nowhere.t'] });
    assert.equal(report.identical, false);
    assert.deepEqual(
      report.differences.map((d) => [d.table, d.kind, d.detail]),
      [
        ['"public"."lonely"', 'schema', 'table "public"."lonely" is missing in r-2'],
        ['"nowhere"."t"', 'schema', 'table "nowhere"."t" exists in neither r-1 nor r-2'],
      ],
    );
    await assert.rejects(verifyTables({ config, regions: ['r-1', 'r-1'] }), /two different regions/);
    await assert.rejects(verifyTables({ config, regions: ['r-1', 'mars'] }), /unknown region "mars"/);
  });

  test('a recheck drops differences that replication settles meanwhile', async () => {
    await a.query(`CREATE TABLE settle (id int PRIMARY KEY, v text); INSERT INTO settle VALUES (1, 'x'), (2, 'y')`);
    await b.query(`CREATE TABLE settle (id int PRIMARY KEY, v text); INSERT INTO settle VALUES (1, 'x')`);
    const logs = new PassThrough();
    let logText = '';
    logs.on('data', (d: Buffer) => (logText += d.toString()));
    // "Replication" delivers row 2 to region B while verify waits before its recheck.
    const fix = setTimeout(() => void b.query(`INSERT INTO settle VALUES (2, 'y')`), 1_000);
    try {
      const report = await verifyTables({ config, tables: ['settle'], recheckDelayMs: 2_500, recheckAttempts: 1, logger: createLogger({ name: 'verify', level: 'debug', destination: logs }) });
      assert.equal(report.identical, true, formatVerifyReport(report));
    } finally {
      clearTimeout(fix);
    }
    assert.match(logText, /"attempt":1,"remaining":0/, 'the first pass had found the difference; the recheck cleared it');
  });

  test('the CLI exits 1 with the differing keys (JSON), then 0 once the regions agree', async () => {
    const table = 'app."Line Items"';
    const json = await cli(['verify', '-c', configFile, '--tables', table, '--json', '--regions', 'r-2,r-1']);
    assert.equal(json.code, 1, json.stderr);
    assert.match(json.stderr, /3 difference\(s\) between r-2 and r-1 \[TANDEM_ERR_VERIFY\]/);
    const parsed = JSON.parse(json.stdout) as { regions: string[]; identical: boolean; differences: VerifyDifference[] };
    assert.deepEqual(parsed.regions, ['r-2', 'r-1']);
    assert.equal(parsed.identical, false);
    assert.deepEqual(
      parsed.differences.find((d) => d.key.tenant === 'a-first'),
      { table: ITEMS, key: { tenant: 'a-first', id: '00000000-0000-0000-0000-000000000000' }, kind: 'missing-in-a', missingIn: 'r-2' },
      'A and B follow --regions order',
    );

    await a.query(`DELETE FROM app."Line Items" WHERE tenant = 'a-first'`);
    await a.query(`UPDATE app."Line Items" SET qty = 10 % 100 WHERE (tenant, id) = ('tenant-3', md5('10')::uuid)`);
    await b.query(`DELETE FROM app."Line Items" WHERE (tenant, id) = ('tenant-0', md5('49000')::uuid)`);
    const same = await cli(['verify', '-c', configFile, '--tables', table]);
    assert.equal(same.code, 0, same.stderr + same.stdout);
    assert.match(same.stdout, /verify r-1 vs r-2: identical/);
  });
});
