import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { Registry } from 'prom-client';
import { HealthChecker, type HealthTransition } from './checker.ts';
import { probe, bodySaysUnhealthy } from './probe.ts';
import { startHealthTarget } from '../../test/dns/health-target.ts';

const intervalMs = 150;
const failThreshold = 3;
const recoverThreshold = 2;
// Timer jitter allowance on a shared 2-core machine; the bound itself is the spec's.
const slackMs = 120;

test('probe: 2xx passes, 503, body "fail", hang (timeout cancels) and closed fail', async () => {
  const target = await startHealthTarget('127.0.0.1');
  after(() => target.close());
  assert.equal((await probe(target.url, { timeoutMs: 500 })).ok, true);
  target.mode = '503';
  const r503 = await probe(target.url, { timeoutMs: 500 });
  assert.deepEqual([r503.ok, r503.status, r503.error], [false, 503, 'HTTP 503']);
  target.mode = 'body-fail';
  const rBody = await probe(target.url, { timeoutMs: 500 });
  assert.equal(rBody.ok, false);
  assert.match(rBody.error ?? '', /body status "fail"/);
  target.mode = 'hang';
  const t0 = Date.now();
  const rHang = await probe(target.url, { timeoutMs: 200 });
  assert.equal(rHang.ok, false);
  assert.match(rHang.error ?? '', /timeout after 200 ms/);
  assert.ok(Date.now() - t0 < 1000, 'the timeout bounds the probe');
  target.mode = 'closed';
  assert.equal((await probe(target.url, { timeoutMs: 500 })).ok, false);
  const refused = await probe('http://127.0.0.1:1/healthz', { timeoutMs: 500 });
  assert.equal(refused.ok, false);
  assert.match(refused.error ?? '', /ECONNREFUSED/);
});

test('probe: bindAddress sets the source address', async () => {
  const target = await startHealthTarget('127.0.0.1');
  after(() => target.close());
  const r = await probe(target.url, { timeoutMs: 500, bindAddress: '127.0.9.9' });
  assert.equal(r.ok, true);
  assert.equal(target.hits.at(-1)?.remote, '127.0.9.9');
});

test('bodySaysUnhealthy reads only a JSON status', () => {
  assert.equal(bodySaysUnhealthy('{"status":"ok"}', 'application/json'), undefined);
  assert.match(bodySaysUnhealthy('{"status":"DOWN"}', undefined) ?? '', /DOWN/);
  assert.equal(bodySaysUnhealthy('down', 'text/plain'), undefined);
  assert.equal(bodySaysUnhealthy('{not json', 'application/json'), undefined);
});

test('thresholds: unknown -> healthy on the first success; N failures to unhealthy; M successes back', () => {
  const hc = new HealthChecker({ targets: [{ region: 'a', url: 'http://127.0.0.1:1/' }], config: { intervalMs: 100, timeoutMs: 50, failThreshold: 3, recoverThreshold: 2 } });
  const seen: HealthTransition[] = [];
  hc.on('transition', (t) => seen.push(t));
  const ok = { ok: true, latencyMs: 1, status: 200 };
  const bad = { ok: false, latencyMs: 1, error: 'HTTP 503', status: 503 };
  assert.equal(hc.get('a')?.state, 'unknown');
  hc.record('a', ok);
  assert.equal(hc.get('a')?.state, 'healthy');
  hc.record('a', bad);
  hc.record('a', bad);
  assert.equal(hc.get('a')?.state, 'healthy', 'two failures are below the threshold');
  hc.record('a', ok); // resets the failure count
  hc.record('a', bad);
  hc.record('a', bad);
  assert.equal(hc.get('a')?.state, 'healthy');
  hc.record('a', bad);
  assert.equal(hc.get('a')?.state, 'unhealthy');
  assert.equal(hc.get('a')?.consecutiveFailures, 3);
  hc.record('a', ok);
  assert.equal(hc.get('a')?.state, 'unhealthy', 'one success is below the recover threshold');
  hc.record('a', ok);
  assert.equal(hc.get('a')?.state, 'healthy');
  assert.deepEqual(
    seen.map((t) => `${t.from}->${t.to}`),
    ['unknown->healthy', 'healthy->unhealthy', 'unhealthy->healthy'],
  );
  assert.match(seen[1]!.reason, /3 consecutive failed probe\(s\), last: HTTP 503/);
  void hc.stop();
});

for (const failMode of ['503', 'hang'] as const) {
  test(`live: failover on ${failMode} within interval x threshold + interval, recovery within interval x M + interval`, async () => {
    const target = await startHealthTarget('127.0.0.1');
    const registry = new Registry();
    const hc = new HealthChecker({
      targets: [{ region: 'r1', url: target.url }],
      config: { intervalMs, timeoutMs: 100, failThreshold, recoverThreshold },
      registry,
    });
    after(async () => {
      await hc.stop();
      await target.close();
    });
    const next = (to: string) =>
      new Promise<HealthTransition>((resolve) => {
        const fn = (t: HealthTransition) => {
          if (t.to === to) {
            hc.off('transition', fn);
            resolve(t);
          }
        };
        hc.on('transition', fn);
      });
    const healthy = next('healthy');
    await hc.start();
    await healthy;
    target.mode = failMode;
    const failedAt = Date.now();
    const down = await next('unhealthy');
    const detectMs = Date.now() - failedAt;
    console.log(`# ${failMode}: unhealthy after ${detectMs} ms (bound ${intervalMs * failThreshold + intervalMs} ms)`);
    assert.ok(detectMs <= intervalMs * failThreshold + intervalMs + slackMs, `detected in ${detectMs} ms`);
    target.mode = 'ok';
    const recoveredAt = Date.now();
    await next('healthy');
    const recoverMs = Date.now() - recoveredAt;
    console.log(`# ${failMode}: healthy again after ${recoverMs} ms (bound ${intervalMs * recoverThreshold + intervalMs} ms)`);
    assert.ok(recoverMs <= intervalMs * recoverThreshold + intervalMs + slackMs, `recovered in ${recoverMs} ms`);
    assert.equal(down.region, 'r1');
    const text = await registry.metrics();
    assert.match(text, /tandem_health_transitions_total\{target="r1",to="unhealthy"\} 1/);
    assert.match(text, /tandem_health_probes_total\{target="r1",result="fail"\} \d+/);
    assert.match(text, /tandem_health_state\{target="r1",state="healthy"\} 1/);
  });
}
