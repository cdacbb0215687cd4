import { test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseConfig, loadConfig, formatPath, localDatabase, type ConfigInput } from './index.ts';
import { isTandemError } from '../errors.ts';

const minimal = (): ConfigInput => ({
  regions: [
    { name: 'aws-south', addresses: ['127.0.1.1'], healthUrl: 'http://127.0.1.1:8080/healthz', database: { host: '127.0.1.1' } },
    { name: 'azure-west', addresses: ['127.0.2.1'], healthUrl: 'http://127.0.2.1:8080/healthz', database: { host: '127.0.2.1' } },
  ],
});

test('defaults are the blueprint numbers', () => {
  const c = parseConfig(minimal());
  assert.equal(c.health.intervalMs, 10_000);
  assert.equal(c.health.failThreshold, 3);
  assert.equal(c.replication.lagWarnSec, 60);
  assert.equal(c.replication.lagCriticalSec, 300);
  assert.ok(c.replication.tombstoneRetentionSec >= 86_400);
  assert.equal(c.control.rpoSec, 300);
  assert.equal(c.regions[0]!.database.port, 5432);
  assert.deepEqual(c.replication.batch, { maxTransactions: 500, maxRows: 10_000, maxWaitMs: 20 });
});

test('every bad field is reported with its path, expectation and what was found', () => {
  const bad = minimal() as Record<string, unknown> & ConfigInput;
  (bad.regions[0] as Record<string, unknown>).addresses = ['not-an-ip'];
  (bad.regions[1] as Record<string, unknown>).name = 'aws-south';
  bad.health = { intervalMs: -5 };
  bad.replication = { conflicts: { 'public.t': { policy: 'region-priority', region: 'gcp-east' } }, batch: { maxWaitMs: -1 } };
  try {
    parseConfig(bad, 'x.yaml');
    assert.fail('expected a config error');
  } catch (err) {
    assert.ok(isTandemError(err, 'TANDEM_ERR_CONFIG'));
    const msg = err.message;
    assert.match(msg, /regions\[0\]\.addresses\[0\]: expected an IPv4 or IPv6 address \(found "not-an-ip"\)/);
    assert.match(msg, /regions\[1\]\.name: duplicate region name "aws-south"/);
    assert.match(msg, /health\.intervalMs: .*\(found -5\)/);
    assert.match(msg, /replication\.conflicts\["public\.t"\]\.region: unknown region "gcp-east"/);
    assert.match(msg, /replication\.batch\.maxWaitMs: .*\(found -1\)/);
  }
});

test('unknown keys are errors, not silently ignored', () => {
  const c = minimal() as Record<string, unknown>;
  c.helth = {};
  assert.throws(() => parseConfig(c), /helth/);
});

test('YAML syntax errors name the line', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-cfg-'));
  const file = path.join(dir, 'tandem.yaml');
  writeFileSync(file, 'regions:\n  - name: a\n   bad: [\n');
  assert.throws(() => loadConfig(file), (err: unknown) => isTandemError(err, 'TANDEM_ERR_CONFIG') && /line \d+/.test(err.message));
  assert.throws(() => loadConfig(path.join(dir, 'missing.yaml')), /cannot read config file/);
});

test('formatPath quotes keys that are not identifiers', () => {
  assert.equal(formatPath(['a', 0, 'b c', 'd']), 'a[0]["b c"].d');
});

test('localDatabase overrides only what it names', () => {
  const c = minimal();
  c.regions[0]!.database = { host: '127.0.1.1', port: 15433, user: 'postgres', database: 'shop' };
  (c.regions[0] as Record<string, unknown>).localDatabase = { port: 15432 };
  const cfg = parseConfig(c);
  const local = localDatabase(cfg.regions[0]!);
  assert.equal(local.port, 15432);
  assert.equal(local.user, 'postgres');
  assert.equal(local.database, 'shop');
});

test('a control quorum above the number of vantage points (DNS servers) is refused', () => {
  const c = minimal();
  c.regions = c.regions.map((r, i) => ({ ...r, dns: { listen: [`127.0.${i + 1}.1:5353`], admin: `127.0.${i + 1}.1:8053` } }));
  assert.equal(parseConfig({ ...c, control: { quorum: 2 } }).control.quorum, 2);
  assert.throws(() => parseConfig({ ...c, control: { quorum: 3 } }), /control\.quorum: 3 is more than the 2 vantage point\(s\)/);
});
