import { test } from 'node:test';
import assert from 'node:assert/strict';
import { layoutLabels } from './report.ts';

const span = (l: { x: number; text: string; anchorEnd: boolean }): [number, number] => {
  const w = l.text.length * 6.2;
  return l.anchorEnd ? [l.x - 2 - w, l.x - 2] : [l.x + 2, l.x + 2 + w];
};

test('marker labels never overlap within a row and never run past the right edge', () => {
  const width = 1000;
  const x = (t: number) => 110 + (t / 40_000) * (width - 130);
  // The failback drill's ending: several markers within a few seconds, the last ones at the very end.
  const markers = [
    { at: 0, text: 'traffic started (+0.0 s)' },
    { at: 5_000, text: 'fault injected (+5.0 s)' },
    { at: 10_300, text: 'DNS switched (+10.3 s)' },
    { at: 11_200, text: 'detected (+11.2 s)' },
    { at: 11_200, text: 'drained (+11.2 s)' },
    { at: 34_300, text: 'failed back (+34.3 s)' },
    { at: 34_500, text: 'DNS back (+34.5 s)' },
    { at: 39_500, text: 'traffic stopping (+39.5 s)' },
    { at: 39_600, text: 'checking convergence (+39.6 s)' },
  ];
  const labels = layoutLabels(markers, x, width);
  assert.equal(labels.length, markers.length);
  for (const l of labels) {
    const [from, to] = span(l);
    assert.ok(from >= 0 && to <= width, `${l.text} stays inside the chart (${from.toFixed(0)}–${to.toFixed(0)})`);
  }
  for (const a of labels) {
    for (const b of labels) {
      if (a === b || a.row !== b.row) continue;
      const [a0, a1] = span(a);
      const [b0, b1] = span(b);
      assert.ok(a1 <= b0 || b1 <= a0, `"${a.text}" and "${b.text}" overlap in row ${a.row}`);
    }
  }
  assert.ok(labels.find((l) => l.text.startsWith('checking'))!.anchorEnd, 'the last label is drawn to the left of its line');
  assert.equal(labels[0]!.row, 0);
});
