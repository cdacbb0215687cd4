import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Runbook, quorumSince, type RegionObservation, type RunbookConfig } from './runbook.ts';
import { isTandemError } from '../core/errors.ts';

const cfg: RunbookConfig = { autoDrain: true, autoFailback: true, readinessLagSec: 2, waitPeriodSec: 10, rpoSec: 5, rpoBreach: 'proceed', quorum: 2 };
const T0 = 1_000_000;

/** Observation helper: every region healthy with small lag unless overridden. */
function observe(now: number, over: Partial<Record<string, Partial<RegionObservation>>> = {}, names = ['a', 'b']) {
  return {
    now,
    regions: names.map((name) => ({
      name,
      votesUnhealthy: 0,
      votesHealthy: names.length,
      lagFrom: Object.fromEntries(names.filter((n) => n !== name).map((p) => [p, { lagSec: 0.3, sourceCommitAt: now - 300 }])),
      ...over[name],
    })),
  };
}

const down = (since: number, votes = 2): Partial<RegionObservation> => ({ votesUnhealthy: votes, votesHealthy: 0, unhealthySince: since });

test('detect → confirm → drain, then recover → ready → failback', () => {
  const rb = new Runbook(['a', 'b'], cfg, 'controller:b', T0);
  assert.deepEqual(rb.step(observe(T0)), []);
  let ev = rb.step(observe(T0 + 1000, { a: { votesUnhealthy: 1, votesHealthy: 1, unhealthySince: T0 + 900 } }));
  assert.deepEqual(ev.map((e) => e.kind), ['suspect']);
  ev = rb.step(observe(T0 + 2000, { a: down(T0 + 900) }));
  assert.deepEqual(ev.map((e) => e.kind), ['confirmed', 'drained']);
  assert.deepEqual([...rb.drainedSet()], ['a']);
  const f = rb.regions.get('a')!.failure!;
  assert.equal(f.detectedAt, T0 + 900);
  // b's last applied commit from a was 300 ms before the tick; exposure counts to the failure time.
  assert.ok(f.rpoExposureSec!.b! >= 0 && f.rpoExposureSec!.b! < 1);

  // Healthy again but far behind: stays drained.
  ev = rb.step(observe(T0 + 20_000, { a: { lagFrom: { b: { lagSec: 30, sourceCommitAt: T0 } } } }));
  assert.deepEqual(ev.map((e) => e.kind), ['recovering']);
  assert.deepEqual([...rb.drainedSet()], ['a']);
  ev = rb.step(observe(T0 + 21_000, { a: { lagFrom: { b: { lagSec: 9, sourceCommitAt: T0 } } } }));
  assert.deepEqual(ev, []);
  ev = rb.step(observe(T0 + 22_000));
  assert.deepEqual(ev.map((e) => e.kind), ['ready', 'failed-back']);
  assert.equal(rb.drainedSet().size, 0);
});

test('a single vantage point does not confirm; a cleared suspect returns to serving', () => {
  const rb = new Runbook(['a', 'b'], cfg, 'c', T0);
  for (let i = 1; i <= 5; i++) rb.step(observe(T0 + i * 1000, { a: { votesUnhealthy: 1, votesHealthy: 1 } }));
  assert.equal(rb.regions.get('a')!.phase, 'suspect');
  assert.deepEqual(rb.step(observe(T0 + 9000)).map((e) => e.kind), ['cleared']);
  assert.equal(rb.drainedSet().size, 0);
});

test('the last serving region is never drained, and the refusal is said once', () => {
  const rb = new Runbook(['a', 'b'], cfg, 'c', T0);
  // Both down at once: neither is drained (DNS fails open), each refusal said once.
  const ev1 = rb.step(observe(T0 + 1000, { a: down(T0), b: down(T0) }));
  assert.deepEqual(ev1.map((e) => `${e.region}:${e.kind}`), ['a:confirmed', 'a:drain-refused', 'b:confirmed', 'b:drain-refused']);
  const ev2 = rb.step(observe(T0 + 2000, { a: down(T0), b: down(T0) }));
  assert.deepEqual(ev2, []);
  assert.equal(rb.drainedSet().size, 0);
  // b comes back: now a can go.
  const ev3 = rb.step(observe(T0 + 3000, { a: down(T0) }));
  assert.deepEqual(ev3.map((e) => `${e.region}:${e.kind}`), ['a:drained', 'b:cleared']);
  assert.deepEqual([...rb.drainedSet()], ['a']);
});

test('a flapping region is not drained twice within the wait period', () => {
  const rb = new Runbook(['a', 'b'], { ...cfg, waitPeriodSec: 60 }, 'c', T0);
  rb.step(observe(T0 + 1000, { a: down(T0) }));
  assert.equal(rb.regions.get('a')!.phase, 'drained');
  // Recovers and catches up, but failback waits for the wait period.
  rb.step(observe(T0 + 5000));
  assert.equal(rb.regions.get('a')!.phase, 'recovering');
  rb.step(observe(T0 + 6000, { a: down(T0 + 5500) }));
  assert.equal(rb.regions.get('a')!.phase, 'drained', 'relapse while recovering keeps it drained');
  const drains = [];
  for (let t = 7000; t < 40_000; t += 1000) {
    const flapping = (t / 1000) % 2 === 0 ? {} : { a: down(t - 100) };
    drains.push(...rb.step(observe(T0 + t, flapping)).filter((e) => e.kind === 'drained' || e.kind === 'failed-back'));
  }
  assert.deepEqual(drains, [], 'no second drain and no failback while flapping inside the wait period');
  const back = rb.step(observe(T0 + 61_000));
  const back2 = rb.step(observe(T0 + 62_000));
  assert.ok([...back, ...back2].some((e) => e.kind === 'failed-back'));
});

test('cutover check: exposure above the RPO is reported; policy hold waits for an operator', () => {
  const rb = new Runbook(['a', 'b'], { ...cfg, rpoBreach: 'hold' }, 'c', T0);
  const obs = observe(T0 + 40_000, { a: down(T0 + 30_000), b: { lagFrom: { a: { lagSec: 40, sourceCommitAt: T0 } } } });
  const ev = rb.step(obs);
  assert.deepEqual(ev.map((e) => e.kind), ['confirmed', 'rpo-breach', 'awaiting-operator']);
  assert.equal(rb.regions.get('a')!.failure!.rpoExposureSec!.b, 30);
  assert.equal(rb.drainedSet().size, 0);
  // The operator is refused without --force (b is 30 s behind a at the failure), accepted with it.
  assert.throws(() => rb.manualDrain('a', obs, { actor: 'alice' }), (e: unknown) => isTandemError(e, 'TANDEM_ERR_RPO') && /30\.0 s behind/.test(e.message));
  const d = rb.manualDrain('a', obs, { actor: 'alice', force: true, reason: 'accepting loss' });
  assert.equal(d.actor, 'alice');
  assert.deepEqual([...rb.drainedSet()], ['a']);
});

test('manual failover and failback follow the safety rules', () => {
  const rb = new Runbook(['a', 'b', 'c'], cfg, 'ctl', T0);
  const names = ['a', 'b', 'c'];
  rb.manualDrain('a', observe(T0, {}, names), { actor: 'op' });
  rb.manualDrain('b', observe(T0, {}, names), { actor: 'op' });
  assert.throws(() => rb.manualDrain('c', observe(T0, {}, names), { actor: 'op' }), (e: unknown) => isTandemError(e, 'TANDEM_ERR_SAFETY'));
  // Operator-drained regions do not come back by themselves.
  rb.step(observe(T0 + 100_000, {}, names));
  assert.deepEqual([...rb.drainedSet()].sort(), ['a', 'b']);
  assert.throws(
    () => rb.manualFailback('a', observe(T0 + 1, { a: { lagFrom: { b: { lagSec: 50, sourceCommitAt: 0 }, c: { lagSec: 0, sourceCommitAt: 0 } } } }, names), { actor: 'op' }),
    (e: unknown) => isTandemError(e, 'TANDEM_ERR_RPO') && /from b \(50\.0 s\)/.test(e.message),
  );
  rb.manualFailback('a', observe(T0 + 2, {}, names), { actor: 'op' });
  assert.deepEqual([...rb.drainedSet()], ['b']);
  assert.throws(() => rb.manualFailback('a', observe(T0 + 3, {}, names), { actor: 'op' }), /not drained/);
});

test('cutover check uses the lag just before the failure, not the lag that grows after it', () => {
  const rb = new Runbook(['a', 'b'], cfg, 'c', T0);
  // a died 8 s ago: b's current lag from a has grown to 8 s, but it was 0.4 s behind when a was last alive.
  const ev = rb.step(observe(T0 + 10_000, { a: down(T0 + 6_000), b: { lagFrom: { a: { lagSec: 8, sourceCommitAt: T0 + 2_000, lagBeforeFailureSec: 0.4 } } } }));
  assert.deepEqual(ev.map((e) => e.kind), ['confirmed', 'drained']);
  assert.equal(rb.regions.get('a')!.failure!.rpoExposureSec!.b, 0.4);
  // Without the history, the failure time minus the last applied commit is the (conservative) estimate.
  const rb2 = new Runbook(['a', 'b'], cfg, 'c', T0);
  const ev2 = rb2.step(observe(T0 + 10_000, { a: down(T0 + 9_000), b: { lagFrom: { a: { lagSec: 8, sourceCommitAt: T0 + 2_000 } } } }));
  assert.deepEqual(ev2.map((e) => e.kind), ['confirmed', 'rpo-breach', 'drained']);
  assert.equal(rb2.regions.get('a')!.failure!.rpoExposureSec!.b, 7);
});

test('cutover check waits for survivors: no check while none is serving, then it runs (hold waits for an operator)', () => {
  const rb = new Runbook(['a', 'b'], { ...cfg, rpoBreach: 'hold' }, 'c', T0);
  // a confirmed failed while b has one unhealthy vote: no survivor, nothing drained, no cutover check yet.
  const ev1 = rb.step(observe(T0 + 1000, { a: down(T0), b: { votesUnhealthy: 1, votesHealthy: 1 } }));
  assert.deepEqual(ev1.map((e) => `${e.region}:${e.kind}`), ['a:confirmed', 'a:drain-refused', 'b:suspect']);
  assert.equal(rb.regions.get('a')!.failure!.rpoExposureSec, undefined);
  // b healthy again but an hour behind a: the check runs now, and hold keeps a in DNS for the operator.
  const ev2 = rb.step(observe(T0 + 2000, { a: down(T0), b: { lagFrom: { a: { lagSec: 3600, sourceCommitAt: T0 - 3_600_000 } } } }));
  assert.deepEqual(ev2.map((e) => `${e.region}:${e.kind}`), ['a:rpo-breach', 'a:awaiting-operator', 'b:cleared']);
  assert.equal(rb.drainedSet().size, 0);
  assert.deepEqual(rb.step(observe(T0 + 3000, { a: down(T0), b: { lagFrom: { a: { lagSec: 3600, sourceCommitAt: T0 - 3_600_000 } } } })), [], 'said once');
});

test('a survivor whose lag cannot be read is a breach until it can: hold waits, the operator needs --force', () => {
  const rb = new Runbook(['a', 'b'], { ...cfg, rpoBreach: 'hold' }, 'c', T0);
  const blind = observe(T0 + 1000, { a: down(T0), b: { lagFrom: undefined } });
  const ev = rb.step(blind);
  assert.deepEqual(ev.map((e) => e.kind), ['confirmed', 'rpo-breach', 'awaiting-operator']);
  assert.match(ev[1]!.message, /cannot read how far b is behind a/);
  assert.equal(rb.drainedSet().size, 0);
  assert.deepEqual(rb.step({ ...blind, now: T0 + 2000 }), [], 'the unknown is said once');
  assert.throws(() => rb.manualDrain('a', blind, { actor: 'alice' }), (e: unknown) => isTandemError(e, 'TANDEM_ERR_RPO') && /how far b is behind it cannot be read/.test(e.message));
  // Once b's lag is known and small, the check passes and a is drained.
  const ev3 = rb.step(observe(T0 + 3000, { a: down(T0), b: { lagFrom: { a: { lagSec: 0.5, sourceCommitAt: T0 - 500 } } } }));
  assert.deepEqual(ev3.map((e) => e.kind), ['drained']);
  assert.deepEqual(rb.regions.get('a')!.failure!.rpoExposureSec, { b: 0.5 });
});

test('automatic failback needs every vantage point to see the region healthy', () => {
  const rb = new Runbook(['a', 'b'], cfg, 'c', T0);
  rb.step(observe(T0 + 1000, { a: down(T0) }));
  rb.step(observe(T0 + 20_000));
  assert.equal(rb.regions.get('a')!.phase, 'recovering');
  // Caught up, wait period over, but one vantage point still sees it unhealthy: stays drained.
  for (let t = 21_000; t < 30_000; t += 1000) rb.step(observe(T0 + t, { a: { votesUnhealthy: 1, votesHealthy: 1 } }));
  assert.deepEqual([...rb.drainedSet()], ['a']);
  const ev = rb.step(observe(T0 + 31_000));
  assert.deepEqual(ev.map((e) => e.kind), ['ready', 'failed-back']);
});

test('a failure is dated when the quorum of vantage points agreed, not by the earliest report', () => {
  const day = 86_400_000;
  // One vantage point has reported the region unhealthy for a day; the second report (the quorum of 2) is today's.
  assert.equal(quorumSince([T0 + day + 500, T0, T0 + day + 900], 2), T0 + day + 500);
  assert.equal(quorumSince([T0 + 5, T0 + 1], 1), T0 + 1);
  // Fewer dated reports than the quorum: the latest of them.
  assert.equal(quorumSince([T0 + 7], 2), T0 + 7);
  assert.equal(quorumSince([], 2), undefined);
  // With the quorum-th date, b's hour of lag shows in the cutover check.
  const rb = new Runbook(['a', 'b', 'c'], { ...cfg, rpoBreach: 'hold' }, 'ctl', T0);
  const at = T0 + day + 500;
  const ev = rb.step(observe(at + 1000, { a: down(quorumSince([T0, at], 2)!), b: { lagFrom: { a: { lagSec: 3600, sourceCommitAt: at - 3_600_000 } } } }, ['a', 'b', 'c']));
  assert.ok(ev.some((e) => e.kind === 'rpo-breach'), ev.map((e) => e.kind).join());
});

test("an operator's forced drain of the last serving region is marked, so DNS is told to force it too; failback clears it", () => {
  const rb = new Runbook(['a', 'b'], cfg, 'ctl', T0);
  rb.manualDrain('a', observe(T0), { actor: 'op' });
  assert.equal(rb.regions.get('a')!.drainForced, false, 'b still serves: no force needed');
  assert.throws(() => rb.manualDrain('b', observe(T0 + 1), { actor: 'op' }), (e: unknown) => isTandemError(e, 'TANDEM_ERR_SAFETY'));
  rb.manualDrain('b', observe(T0 + 2), { actor: 'op', force: true });
  assert.equal(rb.regions.get('b')!.drainForced, true);
  rb.manualFailback('b', observe(T0 + 3), { actor: 'op' });
  assert.equal(rb.regions.get('b')!.drainForced, undefined);
});
