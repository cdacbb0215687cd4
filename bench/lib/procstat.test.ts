import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpuDelta, cpuSeconds, parseStatTicks } from './procstat.ts';

test('parseStatTicks reads utime and stime after a command name with spaces and parentheses', () => {
  // Fields: pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime ...
  const line = '4242 (postgres: a (b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 1 0 99 0 0';
  assert.deepEqual(parseStatTicks(line), { user: 1234, system: 567 });
  assert.throws(() => parseStatTicks('garbage'), /unexpected \/proc stat line/);
});

test('cpuSeconds of this process grows as it burns CPU; a missing PID is undefined', () => {
  const before = cpuSeconds(process.pid)!;
  const until = Date.now() + 150;
  let x = 0;
  while (Date.now() < until) x += Math.sqrt(x + 1);
  const after = cpuSeconds(process.pid)!;
  assert.ok(after.user + after.system > before.user + before.system, `no CPU time counted (${JSON.stringify({ before, after, x })})`);
  assert.equal(cpuSeconds(2 ** 22 + 12345), undefined); // above pid_max's usual 2^22
});

test('cpuDelta sums per group, counts new PIDs from zero and reports vanished ones', () => {
  const before = new Map([
    [1, { user: 1, system: 1 }],
    [2, { user: 5, system: 0 }],
  ]);
  const after = new Map([
    [1, { user: 2, system: 1.5 }],
    [3, { user: 0.25, system: 0.25 }],
  ]);
  const d = cpuDelta({ a: [1, 2], b: [3] }, before, after);
  assert.deepEqual(d.seconds, { a: 1.5, b: 0.5 });
  assert.deepEqual(d.systemSeconds, { a: 0.5, b: 0.25 });
  assert.deepEqual(d.vanished, [2]);
});
