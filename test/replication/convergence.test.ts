/**
 * Seeded convergence under partitions and kill -9 (see jepsen.ts). CI runs two
 * short seeds; rerun one with `TANDEM_SEED=<n>`, or run many longer ones with
 * `npm run soak:replication`.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { runScenario } from './jepsen.ts';

const seeds = process.env.TANDEM_SEED ? [Number(process.env.TANDEM_SEED)] : [11, 23];
const durationSec = Number(process.env.TANDEM_CONVERGENCE_SEC ?? 10);

for (const seed of seeds) {
  test(`regions converge to the model of the committed writes (seed ${seed}; rerun with TANDEM_SEED=${seed})`, { timeout: 240_000 }, async (t) => {
    const report = await runScenario({ seed, durationSec, log: (l) => t.diagnostic(l) });
    t.diagnostic(
      `seed ${seed}: ${report.ops} ops (${report.acknowledged} acknowledged, ${report.unknown} unknown), ${report.committedWrites} committed writes, ` +
        `${report.finalRows}/${report.keys} keys live, ${report.conflicts} conflicts resolved, faults: ${report.faults.join('; ') || 'none'}`,
    );
    assert.deepEqual(report.problems, []);
    assert.ok(report.faults.length >= 2, 'the nemesis acted');
    assert.ok(report.committedWrites > 50, 'the workload wrote');
  });
}
