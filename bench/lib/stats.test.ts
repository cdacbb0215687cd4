import { test } from 'node:test';
import assert from 'node:assert/strict';
import { distribution, fmt, markdownTable, median, percentile, ratio, table } from './stats.ts';

test('percentile uses the nearest rank', () => {
  const xs = Array.from({ length: 100 }, (_, i) => 100 - i); // 100..1, unsorted on purpose
  assert.equal(percentile(xs, 50), 50);
  assert.equal(percentile(xs, 99), 99);
  assert.equal(percentile(xs, 100), 100);
  assert.equal(percentile(xs, 0), 1);
  assert.equal(percentile([7], 99), 7);
  assert.ok(Number.isNaN(percentile([], 50)));
});

test('distribution and median', () => {
  const d = distribution([3, 1, 2, 10]);
  assert.deepEqual(d, { p50: 2, p99: 10, max: 10, count: 4 });
  assert.equal(median([5, NaN, 1, 3]), 3);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  // A run that never caught up (Infinity) still counts towards the median.
  assert.equal(median([1, Infinity, Infinity]), Infinity);
  assert.ok(Number.isNaN(median([NaN])));
});

test('formatting of figures and ratios', () => {
  assert.equal(fmt(1234.5, 0), '1,235');
  assert.equal(fmt(12.345), '12.3');
  assert.equal(fmt(NaN), '—');
  assert.equal(fmt(Infinity), '∞');
  assert.equal(ratio(2, 4), '0.50×');
  assert.equal(ratio(1, 0), '—');
  assert.equal(ratio(Infinity, 3), '—');
});

test('tables line up and Markdown has a separator row', () => {
  const t = table([
    ['a', 'bb'],
    ['ccc', '1'],
  ]).split('\n');
  assert.equal(t.length, 3);
  assert.equal(t[0]!.length, t[2]!.length);
  assert.match(t[2]!, /^ccc\s+1$/);
  const md = markdownTable([
    ['x', 'y'],
    ['1', '2'],
  ]).split('\n');
  assert.deepEqual(md, ['| x | y |', '| --- | ---: |', '| 1 | 2 |']);
});
