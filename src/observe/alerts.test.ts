import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AlertTracker, evaluateConditions, type AlertInputs, type AlertThresholds } from './alerts.ts';

const T: AlertThresholds = { lagWarnSec: 60, lagCriticalSec: 300, errorRateThreshold: 0.05, errorRateMinRequests: 20, errorRateWindowSec: 60 };

function inputs(over: Partial<AlertInputs> = {}): AlertInputs {
  return {
    lag: [
      { source: 'aws-south', target: 'azure-west', lagSec: 0.4 },
      { source: 'azure-west', target: 'aws-south', lagSec: 0.6 },
    ],
    paused: [
      { region: 'aws-south', tables: [] },
      { region: 'azure-west', tables: [] },
    ],
    http: [
      { region: 'aws-south', requests: 500, errors5xx: 0 },
      { region: 'azure-west', requests: 400, errors5xx: 1 },
    ],
    health: [
      { target: 'aws-south', vantages: [{ vantage: 'aws-south', state: 'healthy' }, { vantage: 'azure-west', state: 'healthy' }] },
      { target: 'azure-west', vantages: [{ vantage: 'aws-south', state: 'healthy' }, { vantage: 'azure-west', state: 'unknown' }] },
    ],
    drains: [
      { region: 'aws-south', drained: false },
      { region: 'azure-west', drained: false },
    ],
    ...over,
  };
}

const lag = (a: number | undefined, b = 0.5) => [
  { source: 'aws-south', target: 'azure-west', lagSec: a },
  { source: 'azure-west', target: 'aws-south', lagSec: b },
];

test('a healthy system fires nothing', () => {
  const e = evaluateConditions(inputs(), T);
  assert.deepEqual(e.firing, []);
  assert.equal(e.unknown.size, 0);
});

test('lag thresholds: at the threshold is fine, above warns, above critical is critical', () => {
  const at = (s: number) => evaluateConditions(inputs({ lag: lag(s) }), T).firing;
  assert.deepEqual(at(60), []);
  const warn = at(60.5);
  assert.equal(warn.length, 1);
  assert.equal(warn[0]!.key, 'replication-lag/aws-south/azure-west');
  assert.equal(warn[0]!.severity, 'warning');
  assert.deepEqual(warn[0]!.labels, { source: 'aws-south', target: 'azure-west' });
  assert.equal(at(300)[0]!.severity, 'warning');
  assert.equal(at(301)[0]!.severity, 'critical');
  assert.match(at(301)[0]!.title, /aws-south → azure-west lags 5\.0 min/);
  // Per direction: the other direction lagging is a separate alert.
  const both = evaluateConditions(inputs({ lag: lag(100, 400) }), T).firing;
  assert.deepEqual(
    both.map((c) => [c.key, c.severity]),
    [
      ['replication-lag/aws-south/azure-west', 'warning'],
      ['replication-lag/azure-west/aws-south', 'critical'],
    ],
  );
});

test('error-rate: 5xx share above the threshold with enough requests', () => {
  const at = (requests: number, errors5xx: number) => evaluateConditions(inputs({ http: [{ region: 'aws-south', requests, errors5xx }] }), T).firing;
  assert.deepEqual(at(100, 5), []); // exactly 5 % is not above 5 %
  assert.equal(at(100, 6)[0]?.key, 'error-rate/aws-south');
  assert.equal(at(100, 6)[0]?.value, 0.06);
  assert.deepEqual(at(19, 19), [], 'fewer requests than errorRateMinRequests never fire');
  assert.equal(at(20, 19).length, 1);
});

test('probe failures: warning from some vantage points, critical from all; unknown is not unhealthy', () => {
  const h = (a: 'healthy' | 'unhealthy' | 'unknown', b: 'healthy' | 'unhealthy' | 'unknown') =>
    evaluateConditions(inputs({ health: [{ target: 'aws-south', vantages: [{ vantage: 'aws-south', state: a }, { vantage: 'azure-west', state: b }] }] }), T).firing;
  assert.deepEqual(h('unknown', 'healthy'), []);
  assert.equal(h('healthy', 'unhealthy')[0]!.severity, 'warning');
  assert.match(h('healthy', 'unhealthy')[0]!.title, /1 of 2 vantage points/);
  assert.equal(h('unhealthy', 'unhealthy')[0]!.severity, 'critical');
  // Only the surviving vantage point answers (the failed region's DNS server is down): all of them see it.
  const one = evaluateConditions(inputs({ health: [{ target: 'aws-south', vantages: [{ vantage: 'azure-west', state: 'unhealthy' }] }] }), T).firing;
  assert.equal(one[0]!.severity, 'critical');
});

test('drained regions and paused tables fire', () => {
  const e = evaluateConditions(
    inputs({
      drains: [{ region: 'aws-south', drained: true, reason: 'operator drain' }],
      paused: [{ region: 'azure-west', tables: [{ table: 'public.orders', peer: 'aws-south', reason: 'column "note" missing' }] }],
    }),
    T,
  ).firing;
  assert.deepEqual(
    e.map((c) => [c.key, c.severity]),
    [
      ['table-paused/azure-west/aws-south/public.orders', 'critical'],
      ['region-drained/aws-south', 'warning'],
    ],
  );
  assert.match(e[1]!.text, /operator drain/);
});

test('tracker: notifies once, repeats after the interval, escalates at once, resolves once', () => {
  const tr = new AlertTracker({ repeatIntervalSec: 60 });
  const at = (s: number | undefined, t: number) => tr.update(t, evaluateConditions(inputs({ lag: lag(s) }), T));
  const t0 = 1_700_000_000_000;
  assert.deepEqual(at(1, t0), []);
  const first = at(90, t0 + 1000);
  assert.equal(first.length, 1);
  assert.equal(first[0]!.severity, 'warning');
  assert.equal(first[0]!.key, `replication-lag/aws-south/azure-west@${t0 + 1000}`);
  // De-duplication: still firing, within the repeat interval.
  for (let i = 2; i < 60; i++) assert.deepEqual(at(90 + i, t0 + i * 1000), [], `tick ${i}`);
  const repeat = at(150, t0 + 61_000);
  assert.equal(repeat.length, 1);
  assert.match(repeat[0]!.title, /^still firing: /);
  assert.deepEqual(at(160, t0 + 62_000), []);
  // Escalation to critical is sent at once and restarts the repeat clock.
  const esc = at(400, t0 + 63_000);
  assert.equal(esc.length, 1);
  assert.equal(esc[0]!.severity, 'critical');
  assert.match(esc[0]!.title, /^now critical: /);
  assert.equal(tr.active().length, 1);
  assert.equal(tr.active()[0]!.since, t0 + 1000, 'an escalation keeps the start time');
  assert.deepEqual(at(420, t0 + 100_000), []);
  // Resolved: one message, then nothing.
  const res = at(2, t0 + 130_000);
  assert.equal(res.length, 1);
  assert.equal(res[0]!.severity, 'resolved');
  assert.match(res[0]!.title, /^RESOLVED: /);
  assert.equal(res[0]!.key, `replication-lag/aws-south/azure-west@${t0 + 1000}`);
  assert.equal(res[0]!.fields?.firedForSec, 129);
  assert.deepEqual(at(2, t0 + 131_000), []);
  assert.deepEqual(tr.active(), []);
  // A new episode is a new notification with a new key.
  const again = at(70, t0 + 140_000);
  assert.equal(again.length, 1);
  assert.equal(again[0]!.key, `replication-lag/aws-south/azure-west@${t0 + 140_000}`);
});

test('tracker: unreadable data keeps an alert (stale) instead of resolving it', () => {
  const tr = new AlertTracker({ repeatIntervalSec: 3600 });
  const t0 = 1_000_000;
  assert.equal(tr.update(t0, evaluateConditions(inputs({ lag: lag(500) }), T)).length, 1);
  // The target's agent and database are gone: lag unknown.
  assert.deepEqual(tr.update(t0 + 1000, evaluateConditions(inputs({ lag: lag(undefined) }), T)), []);
  assert.equal(tr.active()[0]?.stale, true);
  assert.equal(tr.toJSON()[0]?.stale, true);
  // Readable again and above the threshold: not stale, no new notification.
  assert.deepEqual(tr.update(t0 + 2000, evaluateConditions(inputs({ lag: lag(510) }), T)), []);
  assert.equal(tr.active()[0]?.stale, false);
  // Paused tables: an unreadable agent keeps every paused-table alert of that region.
  const paused = (tables: { table: string }[] | undefined) => evaluateConditions(inputs({ paused: [{ region: 'azure-west', tables }] }), T);
  const tr2 = new AlertTracker({ repeatIntervalSec: 3600 });
  assert.equal(tr2.update(t0, paused([{ table: 'a' }, { table: 'b' }])).length, 2);
  assert.deepEqual(tr2.update(t0 + 1, paused(undefined)), []);
  assert.equal(tr2.active().length, 2);
  const resolved = tr2.update(t0 + 2, paused([{ table: 'b' }]));
  assert.deepEqual(
    resolved.map((n) => [n.severity, n.fields?.table]),
    [['resolved', 'a']],
  );
});

test('tracker: active alerts sort by severity then age; JSON has ISO times', () => {
  const tr = new AlertTracker({ repeatIntervalSec: 3600 });
  tr.update(1000, evaluateConditions(inputs({ drains: [{ region: 'azure-west', drained: true }] }), T));
  tr.update(2000, evaluateConditions(inputs({ drains: [{ region: 'azure-west', drained: true }], lag: lag(1000) }), T));
  const j = tr.toJSON();
  assert.deepEqual(
    j.map((a) => [a.key, a.severity]),
    [
      ['replication-lag/aws-south/azure-west', 'critical'],
      ['region-drained/azure-west', 'warning'],
    ],
  );
  assert.equal(j[1]!.since, new Date(1000).toISOString());
});
