/**
 * `tandem replicate setup|status|teardown` through the real CLI
 * (`node bin/tandem.js`): output, JSON, and exit codes.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import { readFileSync } from 'node:fs';
import { PASSWORD_ENV, startBed, type Bed } from './harness.ts';
import { TEST_PG_PASSWORD } from '../helpers/pg.ts';

let bed: Bed;
const root = path.resolve(import.meta.dirname, '../..');
const tandem = (args: string[], env: Record<string, string> = {}) =>
  spawnSync(process.execPath, ['bin/tandem.js', ...args], { cwd: root, encoding: 'utf8', env: { ...process.env, [PASSWORD_ENV]: TEST_PG_PASSWORD, ...env }, timeout: 60_000 });

before(async () => {
  bed = await startBed({ regions: 2, ddl: [`CREATE TABLE t (id int PRIMARY KEY, v text)`, `CREATE TABLE bad (v text)`], tables: ['public.t'] });
});
after(async () => bed?.close());

test('setup, status and teardown through the CLI, with exit codes', { timeout: 120_000 }, async () => {
  const again = tandem(['replicate', 'setup', '-c', bed.configFile]);
  assert.equal(again.status, 0, again.stderr);
  assert.match(again.stdout, /r-one \(postgres, PostgreSQL 17\d+\):/);

  const st = tandem(['replicate', 'status', '-c', bed.configFile, '--json']);
  assert.equal(st.status, 0, st.stderr);
  const json = JSON.parse(st.stdout) as { regions: Array<{ region: string; slots: Array<{ slot: string; exists: boolean }>; lag: Array<{ peer: string }> }> };
  assert.deepEqual(json.regions.map((r) => [r.region, r.slots.map((s) => [s.slot, s.exists]), r.lag.map((l) => l.peer)]), [
    ['r-one', [['tandem_r_two', true]], ['r-two']],
    ['r-two', [['tandem_r_one', true]], ['r-one']],
  ]);
  const text = tandem(['replicate', 'status', '-c', bed.configFile]);
  assert.match(text.stdout, /slot tandem_r_two \(for r-two\): idle/);

  // A table without a primary key: a clear error and exit code 1 (runtime), nothing changed.
  const cfg = parse(readFileSync(bed.configFile, 'utf8')) as { replication: { tables: string[] } };
  cfg.replication.tables.push('public.bad');
  const badFile = path.join(bed.dir, 'bad.yaml');
  writeFileSync(badFile, stringify(cfg));
  const bad = tandem(['replicate', 'setup', '-c', badFile]);
  assert.equal(bad.status, 1);
  assert.match(bad.stderr, /table "public"\."bad" has no primary key.*\[TANDEM_ERR_NO_PRIMARY_KEY\]/);

  // A config error exits 78; a missing password env is a secret error (1).
  writeFileSync(path.join(bed.dir, 'broken.yaml'), 'regions: []\n');
  assert.equal(tandem(['replicate', 'status', '-c', path.join(bed.dir, 'broken.yaml')]).status, 78);
  const noSecret = tandem(['replicate', 'status', '-c', bed.configFile], { [PASSWORD_ENV]: '' });
  assert.equal(noSecret.status, 1);
  assert.match(noSecret.stdout + noSecret.stderr, /TANDEM_TEST_PG_PASSWORD is not set/);

  const down = tandem(['replicate', 'teardown', '-c', bed.configFile, '--json']);
  assert.equal(down.status, 0, down.stderr);
  assert.ok((JSON.parse(down.stdout) as { regions: Array<{ actions: string[] }> }).regions[0]!.actions.includes('slot tandem_r_two dropped'));
});
