/**
 * Setup's refusals and checks against real PostgreSQL: missing
 * prerequisites (with the exact fix), tables without a primary key, types
 * without a stable text form; idempotent setup and teardown.
 *
 * Two "regions" share one server here (two databases), which is enough for
 * everything setup does and saves starting servers.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import type pg from 'pg';
import { startCluster, client, TEST_PG_PASSWORD, type TestCluster } from '../../test/helpers/pg.ts';
import { parseConfig, type Config } from '../core/config/index.ts';
import { isTandemError } from '../core/errors.ts';
import { checkPrerequisites, fixFor, formatProblems } from './prereq.ts';
import { installRegion, setupReplication, teardownReplication } from './setup.ts';
import { parseTableName } from '../core/sql.ts';

process.env.TANDEM_SETUP_TEST_PW = TEST_PG_PASSWORD;

function configFor(server: { options: { host: string; port: number } }, tables: string[], extra: { interleaveSequences?: boolean } = {}): Config {
  const db = (database: string) => ({ host: server.options.host, port: server.options.port, database, user: 'postgres', password: { env: 'TANDEM_SETUP_TEST_PW' } });
  return parseConfig({
    regions: [
      { name: 'aws-south', addresses: ['127.0.1.1'], healthUrl: 'http://127.0.1.1/healthz', database: db('tandem') },
      { name: 'azure-west', addresses: ['127.0.2.1'], healthUrl: 'http://127.0.2.1/healthz', database: db('second') },
    ],
    replication: { tables, ...extra },
  });
}

test('fixes name the managed services\' knobs', () => {
  assert.match(fixFor.setting('rds', 'wal_level', 'logical', true), /rds\.logical_replication = 1.*reboot/);
  assert.match(fixFor.setting('rds', 'track_commit_timestamp', 'on', true), /parameter group set track_commit_timestamp = 1, then reboot/);
  assert.match(fixFor.setting('azure', 'wal_level', 'logical', true), /server parameter wal_level = logical .*az postgres flexible-server parameter set --name wal_level --value logical.*restart/);
  assert.match(fixFor.replication('rds', 'app'), /GRANT rds_replication TO "app"/);
  assert.match(fixFor.replication('azure', 'app'), /ALTER ROLE "app" WITH REPLICATION \(as a member of azure_pg_admin\)/);
});

describe('setup on a server that is not ready', () => {
  let cluster: TestCluster;
  let db: pg.Client;
  before(async () => {
    cluster = await startCluster(1, { settings: { wal_level: 'replica', track_commit_timestamp: 'off', max_replication_slots: 1 } });
    db = await client(cluster.servers[0]!);
    await db.query('CREATE DATABASE second');
  });
  after(async () => {
    await db?.end();
    await cluster?.stop();
  });

  test('every unmet prerequisite is listed with the exact fix, before anything changes', async () => {
    const rep = await checkPrerequisites(db, { slots: 2, senders: 2, role: 'setup' });
    assert.equal(rep.platform, 'postgres');
    const what = rep.problems.map((p) => p.what);
    assert.deepEqual(what.sort(), ['max_replication_slots', 'track_commit_timestamp', 'wal_level'].sort());
    assert.match(rep.problems.find((p) => p.what === 'wal_level')!.fix, /ALTER SYSTEM SET wal_level = 'logical'; then restart PostgreSQL/);
    await assert.rejects(
      setupReplication(configFor(cluster.servers[0]!, [])),
      (err: unknown) => isTandemError(err, 'TANDEM_ERR_PG_PREREQ') && /aws-south: wal_level is replica, needs logical/.test(err.message) && /track_commit_timestamp/.test(err.message),
    );
    const { rows } = await db.query(`SELECT count(*)::int AS n FROM pg_namespace WHERE nspname = 'tandem'`);
    assert.equal(rows[0].n, 0, 'nothing was created');
  });

  test('a role without privileges is told what to grant', async () => {
    await db.query(`CREATE ROLE weak LOGIN PASSWORD 'weak-pw'`);
    const weak = await client(cluster.servers[0]!);
    try {
      await weak.query('SET ROLE weak');
      const rep = await checkPrerequisites(weak, { slots: 1, senders: 1, role: 'agent' });
      const fixes = rep.problems.map((p) => p.fix).join('\n');
      assert.match(fixes, /ALTER ROLE "weak" WITH REPLICATION/);
      assert.match(fixes, /GRANT EXECUTE ON FUNCTION pg_replication_origin_session_setup\(text\) TO "weak"/);
      assert.match(fixes, /GRANT SET ON PARAMETER session_replication_role TO "weak"/);
      assert.deepEqual(
        formatProblems('aws-south', rep, 'advice'),
        [`aws-south: role "weak" has no EXECUTE on pg_log_standby_snapshot() (${rep.advice[0]?.want}) — fix: GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() TO "weak";`],
        'the optional grant is advice, not a problem',
      );
      assert.ok(!rep.problems.some((p) => /standby_snapshot/.test(p.what)));
    } finally {
      await weak.end();
    }
  });
});

describe('setup on ready servers', () => {
  let cluster: TestCluster;
  let db: pg.Client;
  let second: pg.Client;
  before(async () => {
    cluster = await startCluster(1);
    db = await client(cluster.servers[0]!);
    await db.query('CREATE DATABASE second');
    second = await client(cluster.servers[0]!, 'second');
    for (const c of [db, second]) {
      await c.query(`CREATE TABLE ok (id uuid PRIMARY KEY, v numeric, t timestamptz)`);
      await c.query(`CREATE TABLE nopk (a int, b text)`);
      await c.query(`CREATE TABLE money_t (id int PRIMARY KEY, price money)`);
      await c.query(`CREATE TABLE numkey (id numeric PRIMARY KEY, v text)`);
      await c.query(`CREATE DOMAIN positive_money AS money CHECK (VALUE > 0::money)`);
      await c.query(`CREATE TABLE dom (id int PRIMARY KEY, p positive_money[])`);
      await c.query(`CREATE TABLE seqt (id bigserial PRIMARY KEY, v text)`);
    }
  });
  after(async () => {
    await db?.end();
    await second?.end();
    await cluster?.stop();
  });

  test('a table without a primary key is refused, naming it', async () => {
    await assert.rejects(
      setupReplication(configFor(cluster.servers[0]!, ['public.ok', 'public.nopk'])),
      (err: unknown) => isTandemError(err, 'TANDEM_ERR_NO_PRIMARY_KEY') && /"public"\."nopk" has no primary key/.test(err.message),
    );
  });

  test('types without a stable text form are refused, also behind domains and arrays; unstable key types too', async () => {
    await assert.rejects(setupReplication(configFor(cluster.servers[0]!, ['public.money_t'])), (err: unknown) => isTandemError(err, 'TANDEM_ERR_UNSUPPORTED_TYPE') && /"price" \(money\)/.test(err.message));
    await assert.rejects(setupReplication(configFor(cluster.servers[0]!, ['public.dom'])), (err: unknown) => isTandemError(err, 'TANDEM_ERR_UNSUPPORTED_TYPE') && /money: its text form depends on lc_monetary/.test(err.message));
    await assert.rejects(setupReplication(configFor(cluster.servers[0]!, ['public.numkey'])), (err: unknown) => isTandemError(err, 'TANDEM_ERR_UNSUPPORTED_TYPE') && /numeric in the primary key/.test(err.message));
  });

  test('a missing table is named', async () => {
    await assert.rejects(setupReplication(configFor(cluster.servers[0]!, ['public.nope'])), (err: unknown) => isTandemError(err, 'TANDEM_ERR_NOT_FOUND') && /"public"\."nope"/.test(err.message));
  });

  test('with interleaveSequences, setup gives each region its own residue class', async () => {
    const config = configFor(cluster.servers[0]!, ['public.seqt'], { interleaveSequences: true });
    const report = await setupReplication(config);
    for (const r of report.regions) assert.match(r.actions.join('; '), /1 sequence\(s\) interleaved \(values ≡ \d mod 2\)/);
    assert.deepEqual(report.regions.map((r) => r.advice), [[], []], 'a superuser needs no optional grant');
    const ids = await Promise.all([db, second].map(async (c) => (await c.query(`INSERT INTO seqt (v) VALUES ('a'), ('b') RETURNING id`)).rows.map((r) => Number(r.id))));
    const classes = ids.map((list) => new Set(list.map((id) => id % 2)));
    assert.ok(classes.every((c) => c.size === 1), `each region stays in one residue class: ${JSON.stringify(ids)}`);
    assert.notDeepEqual([...classes[0]!], [...classes[1]!], `the regions use different classes: ${JSON.stringify(ids)}`);
    await teardownReplication(config);
  });

  test('setup and teardown are idempotent and undo each other', async () => {
    const config = configFor(cluster.servers[0]!, ['public.ok']);
    const first = await setupReplication(config);
    assert.ok(first.regions[0]!.actions.some((a) => a === 'slot tandem_azure_west created'));
    assert.ok(first.regions[1]!.actions.some((a) => a === 'origin tandem_from_aws_south created'));
    const again = await setupReplication(config);
    assert.ok(!again.regions.some((r) => r.actions.some((a) => /^(slot|origin) .* created$/.test(a))));
    const { rows: trig } = await db.query(`SELECT count(*)::int AS n FROM pg_trigger WHERE tgname LIKE 'tandem_capture%' AND tgrelid = 'public.ok'::regclass`);
    assert.equal(trig[0].n, 2);
    // row_versions grows with every applied row: it is analyzed and vacuumed long before the default 10 % / 20 %.
    const { rows: opts } = await db.query(`SELECT reloptions FROM pg_class WHERE oid = 'tandem.row_versions'::regclass`);
    assert.ok(opts[0].reloptions.includes('autovacuum_analyze_scale_factor=0.005'), String(opts[0].reloptions));
    assert.ok(opts[0].reloptions.includes('autovacuum_vacuum_scale_factor=0.01'), String(opts[0].reloptions));
    // The schema belongs to one region only.
    await assert.rejects(installRegion(db, { region: 'azure-west', tables: [parseTableName('public.ok')] }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_STATE') && /belongs to region "aws-south"/.test(err.message));
    const down = await teardownReplication(config);
    assert.ok(down.regions[0]!.actions.includes('slot tandem_azure_west dropped'));
    const { rows } = await db.query(
      `SELECT (SELECT count(*) FROM pg_replication_slots)::int AS slots, (SELECT count(*) FROM pg_replication_origin)::int AS origins,
              (SELECT count(*) FROM pg_publication)::int AS pubs, (SELECT count(*) FROM pg_namespace WHERE nspname = 'tandem')::int AS schemas,
              (SELECT count(*) FROM pg_trigger WHERE tgname LIKE 'tandem_capture%')::int AS triggers`,
    );
    assert.deepEqual(rows[0], { slots: 0, origins: 0, pubs: 0, schemas: 0, triggers: 0 });
    const twice = await teardownReplication(config);
    assert.deepEqual(twice.regions.map((r) => r.actions), [[], []]);
  });
});
