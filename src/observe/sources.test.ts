import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AgentStatusReport } from '../replication/agent.ts';
import type { RegionStateView } from '../dns/daemon.ts';
import type { HealthReport } from '../app/health.ts';
import { parseAgentStatus, parseConflictRow, parseDnsState, parseHealthz } from './sources.ts';

// The fixtures are typed with the other parts' own response types, so a change
// of their shape breaks this file's type-check before it breaks the dashboard.

test('parseAgentStatus reads the agent report: lag, bytes, rates, conflicts by kind, paused tables once', () => {
  const paused = { table: 'public.orders', reason: 'column "note" is missing here', kind: 'drift' as const, since: new Date('2026-01-01T00:00:00Z'), parked: 3 };
  const report: AgentStatusReport = {
    region: 'azure-west',
    at: '2026-01-01T00:00:01.000Z',
    peers: [
      {
        peer: 'aws-south',
        state: 'streaming',
        activity: 'waiting for changes',
        activitySince: '2026-01-01T00:00:00.700Z',
        sourceCommitAt: '2026-01-01T00:00:00.600Z',
        appliedAt: '2026-01-01T00:00:00.700Z',
        lagSec: 0.4,
        lagBytes: 2048,
        appliedLsn: '0/16B3748',
        walEnd: '0/16B3F48',
        appliedTxns: 120,
        appliedRows: 300,
        conflicts: { update_update: 2, insert_insert: 1 },
        unapplicable: 0,
        paused: [paused],
        backlogTxns: 0,
        reconnects: 1,
        lastError: null,
        lastErrorAt: null,
        txPerSec: 12.5,
        rowsPerSec: 30,
      },
      {
        peer: 'gcp-north',
        state: 'backoff',
        activity: 'connecting',
        activitySince: '2026-01-01T00:00:00.000Z',
        sourceCommitAt: null,
        appliedAt: null,
        lagSec: null,
        lagBytes: null,
        appliedLsn: '0/0',
        walEnd: null,
        appliedTxns: 0,
        appliedRows: 0,
        conflicts: {},
        unapplicable: 0,
        paused: [],
        backlogTxns: 0,
        reconnects: 4,
        lastError: 'connect ECONNREFUSED 127.0.3.1:15433',
        lastErrorAt: '2026-01-01T00:00:00.000Z',
        txPerSec: 0,
        rowsPerSec: 0,
      },
    ],
    paused: [{ ...paused, peer: 'aws-south' }],
    heartbeat: { lastAt: '2026-01-01T00:00:00.900Z', lastError: null },
    thresholds: { lagWarnSec: 60, lagCriticalSec: 300 },
  };
  const s = parseAgentStatus(JSON.parse(JSON.stringify(report)));
  assert.equal(s.region, 'azure-west');
  assert.deepEqual(s.peers[0], { peer: 'aws-south', lagSec: 0.4, lagBytes: 2048, txPerSec: 12.5, rowsPerSec: 30, conflicts: 3, state: 'streaming' });
  assert.deepEqual(s.peers[1], { peer: 'gcp-north', txPerSec: 0, rowsPerSec: 0, conflicts: 0, state: 'backoff', error: 'connect ECONNREFUSED 127.0.3.1:15433' }, 'null lag is unknown, not 0');
  assert.deepEqual(s.paused, [{ table: 'public.orders', peer: 'aws-south', reason: 'column "note" is missing here' }]);
});

test('parseAgentStatus tolerates other spellings and garbage', () => {
  assert.deepEqual(parseAgentStatus(undefined), { region: undefined, peers: [], paused: [] });
  assert.deepEqual(parseAgentStatus('nope'), { region: undefined, peers: [], paused: [] });
  const s = parseAgentStatus({ region: 'a', sources: { b: { lag: { seconds: '2.5', bytes: 10 }, pausedTables: ['t1'] }, a: { lagSec: 1 } } });
  assert.deepEqual(s.peers, [{ peer: 'b', lagSec: 2.5, lagBytes: 10 }], 'keyed by peer; its own region is skipped');
  assert.deepEqual(s.paused, [{ table: 't1', peer: 'b' }]);
});

test('parseDnsState reads GET /v1/state of the DNS daemon', () => {
  const regions: RegionStateView[] = [
    {
      name: 'aws-south',
      health: { region: 'aws-south', state: 'unhealthy', since: new Date('2026-01-01T00:00:00Z'), consecutiveFailures: 3, consecutiveSuccesses: 0 },
      drained: true,
      drainedAt: '2026-01-01T00:00:02.000Z',
      drainReason: 'tandem-controller (azure-west): aws-south failed',
      serving: false,
    },
    { name: 'azure-west', health: { region: 'azure-west', state: 'healthy', since: new Date(0), consecutiveFailures: 0, consecutiveSuccesses: 9 }, drained: false, serving: true, weights: { '*': 10 } },
  ];
  const s = parseDnsState(JSON.parse(JSON.stringify({ region: 'azure-west', zone: 'tandem.test.', serial: 1, regions, services: [] })));
  assert.equal(s.region, 'azure-west');
  assert.deepEqual(s.regions[0], {
    name: 'aws-south',
    health: 'unhealthy',
    healthSince: '2026-01-01T00:00:00.000Z',
    drained: true,
    drainReason: 'tandem-controller (azure-west): aws-south failed',
    drainedAt: '2026-01-01T00:00:02.000Z',
    serving: false,
  });
  assert.deepEqual(s.regions[1], { name: 'azure-west', health: 'healthy', healthSince: '1970-01-01T00:00:00.000Z', drained: false, serving: true, weights: { '*': 10 } });
  // Without `serving`, it is derived: not drained and not unhealthy.
  assert.equal(parseDnsState({ regions: [{ name: 'x', health: { state: 'unknown' }, drained: false }] }).regions[0]!.serving, true);
});

test('parseHealthz reads the app kit report, also from a 503', () => {
  const report: HealthReport = {
    status: 'degraded',
    region: 'aws-south',
    version: '0.1.0',
    checks: {
      database: { ok: true, writable: true, latencyMs: 1.2 },
      replication: { peers: [{ peer: 'azure-west', lagSec: 0.5 }, { peer: 'gcp-north', lagSec: null }] },
      fenced: { readOnly: true, reason: 'failover drill' },
      draining: false,
    },
  };
  assert.deepEqual(parseHealthz(JSON.parse(JSON.stringify(report))), { status: 'degraded', fenced: true, fenceReason: 'failover drill', draining: false, databaseLatencyMs: 1.2, lagFrom: { 'azure-west': 0.5 } });
  assert.equal(parseHealthz('<html>').status, 'unknown');
});

test('parseConflictRow reads database rows and camelCase rows', () => {
  const row = parseConflictRow(
    { id: '7', at: new Date('2026-01-01T00:00:00Z'), peer: 'azure-west', relname: 'public.orders', pk: ['a', 'b'], kind: 'update_delete', decision: 'keep_local', local_region: 'aws-south', remote_region: 'azure-west', local_commit_ts: '2026-01-01T00:00:00Z', remote_commit_ts: null },
    'aws-south',
  );
  assert.deepEqual(row, {
    region: 'aws-south',
    id: '7',
    at: '2026-01-01T00:00:00.000Z',
    peer: 'azure-west',
    table: 'public.orders',
    key: 'a, b',
    kind: 'update_delete',
    decision: 'keep_local',
    localRegion: 'aws-south',
    remoteRegion: 'azure-west',
    localCommitAt: '2026-01-01T00:00:00Z',
  });
  assert.equal(parseConflictRow(null, 'x'), undefined);
});
