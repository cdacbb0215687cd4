import { test } from 'node:test';
import assert from 'node:assert/strict';
import { KEYS, WORKLOAD_SCRIPT, parsePgbenchSummary } from './pgbench.ts';

const REPORT = `transaction type: /tmp/x/workload.sql
scaling factor: 1
query mode: prepared
number of clients: 8
number of threads: 1
maximum number of tries: 10
duration: 20 s
number of transactions actually processed: 57312
number of failed transactions: 3 (0.005%)
number of transactions retried: 12 (0.021%)
total number of retries: 12
latency average = 2.785 ms
initial connection time = 30.611 ms
tps = 2872.390457 (without initial connection time)
`;

test('parsePgbenchSummary reads pgbench 15 output', () => {
  assert.deepEqual(parsePgbenchSummary(REPORT), { transactions: 57312, failed: 3, tps: 2872.390457, latencyAvgMs: 2.785 });
  assert.throws(() => parsePgbenchSummary('pgbench: error: connection refused'), /cannot read pgbench's report/);
});

test('the key ranges of the regions never overlap', () => {
  for (const i of [0, 1]) {
    assert.ok(KEYS.ownBase(i) > KEYS.shared);
    assert.ok(KEYS.ownBase(i) + KEYS.own < KEYS.insertBase(i));
    assert.ok(KEYS.insertBase(i) < KEYS.insertEnd(i));
    assert.ok(KEYS.insertEnd(i) <= KEYS.ownBase(i + 1));
  }
});

test('the workload script writes 1 + k rows and records k + 1 in nrows', () => {
  assert.match(WORKLOAD_SCRIPT, /\\set k random\(0, 2\)/);
  assert.match(WORKLOAD_SCRIPT, /\\set nrows :k \+ 1/);
  assert.equal((WORKLOAD_SCRIPT.match(/^INSERT /gm) ?? []).length, 1);
  assert.equal((WORKLOAD_SCRIPT.match(/^UPDATE /gm) ?? []).length, 2);
  assert.equal((WORKLOAD_SCRIPT.match(/^\\if :k >= [12]$/gm) ?? []).length, 2);
});
