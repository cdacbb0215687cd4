import { test } from 'node:test';
import assert from 'node:assert/strict';
import { replicationLagSec } from './status.ts';

test('lag is the apply delay plus how long the next heartbeat is overdue', () => {
  // A heartbeat sent at t=0 applied 20 ms later; 300 ms later, with heartbeats every 500 ms: on time.
  assert.equal(replicationLagSec(0, 20, 320, 500), 0.02);
  // 2 s after it, the next heartbeats are 1.48 s overdue: the link stopped delivering.
  assert.equal(replicationLagSec(0, 20, 2_000, 500), 0.02 + 1.48);
  // Without a heartbeat interval it is simply now − source time.
  assert.equal(replicationLagSec(0, 20, 320, 0), 0.32);
  // A source clock ahead of ours never makes lag negative.
  assert.equal(replicationLagSec(100, 20, 120, 500), 0);
});
