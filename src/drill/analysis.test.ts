import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bucketize, homeAgainAt, recoveryTimeMs, servingRegion, acknowledgedWrites, computeRpo, percentile, type RequestRecord } from './analysis.ts';

const T0 = 1_700_000_000_000;

/** 10 requests a second for `secs` seconds; `fail(t)` says which fail; `region(t)` who answers. */
function traffic(geo: string, secs: number, fail: (t: number) => boolean, region: (t: number) => string): RequestRecord[] {
  const out: RequestRecord[] = [];
  for (let i = 0; i < secs * 10; i++) {
    const t = T0 + i * 100 + 5;
    const ok = !fail(t);
    out.push({ t, geo, op: 'read', ok, latencyMs: 5, ...(ok ? { region: region(t), status: 200 } : { error: 'ECONNREFUSED' }) });
  }
  return out;
}

test('RTO is the end of the last bad second after the fault; an undisturbed geography has 0', () => {
  const fault = T0 + 10_000;
  const south = traffic('south', 60, (t) => t >= fault && t < fault + 17_300, (t) => (t < fault ? 'aws-south' : 'azure-west'));
  const west = traffic('west', 60, () => false, () => 'azure-west');
  const b = bucketize([...south, ...west], T0, T0 + 60_000);
  assert.equal(recoveryTimeMs(b.south!, fault, T0 + 60_000), 18_000);
  assert.equal(recoveryTimeMs(b.west!, fault, T0 + 60_000), 0);
  assert.equal(servingRegion(b.south!, fault + 20_000, T0 + 60_000), 'azure-west');
  assert.equal(servingRegion(b.south!, T0, fault), 'aws-south');
  // Not recovered by the end of the window: undefined, not a number.
  assert.equal(recoveryTimeMs(b.south!, fault, fault + 15_000), undefined);
});

test('traffic is home again from the first second after which only the home region answered', () => {
  const dnsBack = T0 + 20_000;
  // Cached answers keep some clients on azure-west until 26.3 s; one stray answer at 23.5 s in between.
  const south = traffic('south', 40, () => false, (t) => (t < dnsBack + 3_000 ? 'azure-west' : t >= dnsBack + 3_500 && t < dnsBack + 3_600 ? 'aws-south' : t < dnsBack + 6_300 ? 'azure-west' : 'aws-south'));
  const b = bucketize(south, T0, T0 + 40_000);
  assert.equal(homeAgainAt(b.south!, 'aws-south', dnsBack, T0 + 40_000), T0 + 27_000);
  // Still away at the end of the window: undefined.
  assert.equal(homeAgainAt(b.south!, 'aws-south', dnsBack, T0 + 25_000), undefined);
  // Never away after `from`: home from `from` on.
  assert.equal(homeAgainAt(b.south!, 'aws-south', T0 + 30_200, T0 + 40_000), T0 + 30_200);
});

test('one failed request in a second counts as below 99 %', () => {
  const fault = T0 + 5_000;
  const recs = traffic('g', 30, (t) => t === fault + 8_005, () => 'r');
  const b = bucketize(recs, T0, T0 + 30_000);
  assert.equal(recoveryTimeMs(b.g!, fault, T0 + 30_000), 9_000);
});

test('RPO counts acknowledged writes of the failed region missing in the survivor, and the oldest age', () => {
  const fault = T0 + 10_000;
  const recs: RequestRecord[] = [
    { t: T0 + 1_000, geo: 's', op: 'create', key: 'k1', orderId: 'o1', region: 'a', ok: true, acknowledged: true, latencyMs: 3 },
    { t: fault - 40, geo: 's', op: 'create', key: 'k2', orderId: 'o2', region: 'a', ok: true, acknowledged: true, latencyMs: 3 },
    { t: fault - 10, geo: 's', op: 'create', key: 'k3', orderId: 'o3', region: 'a', ok: true, acknowledged: true, latencyMs: 3 },
    { t: fault - 10, geo: 'w', op: 'create', key: 'k4', orderId: 'o4', region: 'b', ok: true, acknowledged: true, latencyMs: 3 },
    { t: fault + 2_000, geo: 's', op: 'create', key: 'k3', orderId: 'o3', region: 'b', ok: true, acknowledged: true, latencyMs: 3 },
    { t: fault - 5, geo: 's', op: 'create', key: 'k5', orderId: 'o5', region: 'a', ok: false, latencyMs: 3 },
  ];
  const writes = acknowledgedWrites(recs);
  assert.equal(writes.length, 4, 'the retried key counts once, the failed one not at all');
  const rpo = computeRpo(writes, 'a', fault, new Set(['o1', 'o4']));
  assert.equal(rpo.candidates, 3);
  assert.deepEqual(rpo.missing.map((m) => m.orderId), ['o2', 'o3']);
  assert.equal(rpo.rpoSec, 0.04);
  assert.equal(computeRpo(writes, 'a', fault, new Set(['o1', 'o2', 'o3'])).rpoSec, 0);
});

test('percentile by nearest rank', () => {
  assert.equal(percentile([5, 1, 3, 2, 4], 50), 3);
  assert.equal(percentile([5, 1, 3, 2, 4], 100), 5);
  assert.equal(percentile([], 99), undefined);
});
