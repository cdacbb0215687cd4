import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { DrillReport } from '../drill/report.ts';
import { summariseReport } from './collector.ts';

test('summariseReport reads the headline of a drill report (typed with the drill part’s own type)', () => {
  const report: Pick<DrillReport, 'id' | 'scenario' | 'failedRegion' | 'startedAt' | 'passed'> & { results: Pick<DrillReport['results'], 'rtoSec' | 'rpo'> } = {
    id: '2026-01-01T00-00-00-failover',
    scenario: 'failover',
    failedRegion: 'aws-south',
    startedAt: '2026-01-01T00:00:00.000Z',
    passed: false,
    results: { rtoSec: 21.46, rpo: { survivor: 'azure-west', candidates: 120, missing: [{ key: 'k1', orderId: 'o1', ackAt: '2026-01-01T00:00:09.000Z', ageMs: 1200 }], rpoSec: 1.2 } },
  };
  assert.deepEqual(summariseReport(report, report.id), {
    title: 'failover (aws-south)',
    at: '2026-01-01T00:00:00.000Z',
    outcome: 'fail',
    figures: { RTO: '21.5 s', RPO: '1.2 s', 'lost writes': '1' },
  });
  assert.deepEqual(summariseReport({ scenario: 'partition', partition: ['aws-south', 'azure-west'], passed: true, results: { rtoSec: null, rpo: null } }, 'x'), {
    title: 'partition (aws-south | azure-west)',
    outcome: 'pass',
    figures: {},
  });
  assert.deepEqual(summariseReport('garbage', 'some-id'), { title: 'some-id', figures: {} });
});
