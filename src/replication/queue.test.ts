import { test } from 'node:test';
import assert from 'node:assert/strict';
import { UnitQueue, type Unit } from './queue.ts';

const txn = (rows: number, endLsn: bigint): Unit => ({ kind: 'txn', changes: [], rows, endLsn, commitUs: endLsn, spilled: false });

/** How long `fill` took, in ms. */
async function timed(p: Promise<void>): Promise<number> {
  const t0 = performance.now();
  await p;
  return performance.now() - t0;
}

test('take hands out every queued unit up to the batch bounds, in order', async () => {
  const q = new UnitQueue(100, 100);
  for (let i = 1; i <= 5; i++) q.push(txn(2, BigInt(i)));
  const first = await q.take(3, 1_000);
  assert.deepEqual(first!.map((u) => (u as { endLsn: bigint }).endLsn), [1n, 2n, 3n]);
  assert.equal(q.idle, false, 'taken units are in flight until done()');
  q.done();
  const second = await q.take(10, 3);
  assert.deepEqual(second!.map((u) => (u as { endLsn: bigint }).endLsn), [4n], 'the row bound stops the batch (at least one unit)');
  q.done();
  q.close();
  assert.deepEqual(await q.take(10, 10), [{ kind: 'txn', changes: [], rows: 2, endLsn: 5n, commitUs: 5n, spilled: false }]);
  q.done();
  assert.equal(await q.take(10, 10), undefined, 'closed and empty');
});

test('fill waits for a whole batch, and no longer than its time', async () => {
  const q = new UnitQueue(1_000, 1_000);
  // Nothing arrives: it returns after its time.
  const alone = await timed(q.fill(10, 1_000, 60));
  assert.ok(alone >= 55 && alone < 1_000, `an empty queue waits the whole 60 ms, waited ${alone.toFixed(1)}`);

  // A whole batch by transactions arrives after 20 ms: it returns then, well before its 2 s.
  setTimeout(() => {
    for (let i = 0; i < 10; i++) q.push(txn(1, BigInt(i + 1)));
  }, 20);
  const byTxns = await timed(q.fill(10, 1_000, 2_000));
  assert.equal(q.txns, 10);
  assert.ok(byTxns < 1_000, `returns once 10 transactions are queued, waited ${byTxns.toFixed(1)} ms`);

  // Already a whole batch by rows: it does not wait at all.
  const q2 = new UnitQueue(1_000, 1_000);
  q2.push(txn(600, 1n));
  const byRows = await timed(q2.fill(10, 500, 2_000));
  assert.ok(byRows < 50, `600 rows queued against a bound of 500: no wait, waited ${byRows.toFixed(1)} ms`);

  // Fewer than a batch: it keeps waiting through pushes until its time is up.
  const q3 = new UnitQueue(1_000, 1_000);
  const pushes = setInterval(() => q3.push(txn(1, 1n)), 5);
  const partial = await timed(q3.fill(1_000, 1_000, 80));
  clearInterval(pushes);
  assert.ok(q3.txns > 0 && q3.txns < 1_000);
  assert.ok(partial >= 75, `a few transactions do not end the wait early, waited ${partial.toFixed(1)} ms`);
});

test('a queue closed with an error hands out nothing more, also what is still queued', async () => {
  const q = new UnitQueue(100, 100);
  q.push(txn(1, 1n));
  q.close(new Error('agent stopping'));
  await assert.rejects(q.take(10, 100), /agent stopping/);
});

test('fill returns when the queue is closed, and then take reports the failure', async () => {
  const q = new UnitQueue(100, 100);
  setTimeout(() => q.close(new Error('stream lost')), 20);
  const waited = await timed(q.fill(10, 100, 5_000));
  assert.ok(waited < 2_000, `a closed queue ends the wait, waited ${waited.toFixed(1)} ms`);
  await assert.rejects(q.take(10, 100), /stream lost/);
});

test('the reader waits for room while the queue is full', async () => {
  const q = new UnitQueue(10, 3);
  for (let i = 1; i <= 3; i++) q.push(txn(1, BigInt(i)));
  assert.equal(q.full, true, 'three transactions reach the transaction bound');
  let roomed = false;
  const room = q.room().then(() => (roomed = true));
  await new Promise((r) => setTimeout(r, 20));
  assert.equal(roomed, false, 'no room while full');
  await q.take(2, 10);
  await room;
  assert.equal(q.full, false);
});
