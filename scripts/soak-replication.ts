/**
 * `npm run soak:replication`: run the seeded convergence scenario of
 * test/replication/jepsen.ts for many seeds, longer than CI does, with
 * progress. Stops at the first failing seed and prints how to rerun it.
 *
 *   TANDEM_SEED=100            first seed (default: time-based)
 *   TANDEM_SOAK_RUNS=20        how many seeds
 *   TANDEM_CONVERGENCE_SEC=30  workload + fault duration per seed
 */
import { runScenario } from '../test/replication/jepsen.ts';

const first = Number(process.env.TANDEM_SEED ?? Math.floor(Date.now() / 1000) % 100_000);
const runs = Number(process.env.TANDEM_SOAK_RUNS ?? 20);
const durationSec = Number(process.env.TANDEM_CONVERGENCE_SEC ?? 30);
const out = (line: string) => process.stdout.write(`${line}\n`);

out(`soak: ${runs} seeds from ${first}, ${durationSec} s of writes and faults each`);
let ops = 0;
let writes = 0;
let faults = 0;
const started = Date.now();
for (let i = 0; i < runs; i++) {
  const seed = first + i;
  const t0 = Date.now();
  out(`[${i + 1}/${runs}] seed ${seed} ...`);
  const report = await runScenario({ seed, durationSec, log: process.env.TANDEM_SOAK_VERBOSE ? out : undefined });
  ops += report.ops;
  writes += report.committedWrites;
  faults += report.faults.length;
  const secs = ((Date.now() - t0) / 1000).toFixed(0);
  if (report.problems.length > 0) {
    out(`[${i + 1}/${runs}] seed ${seed} FAILED after ${secs} s:`);
    for (const p of report.problems) out(`  - ${p}`);
    out(`  faults: ${report.faults.join('; ')}`);
    out(`rerun: TANDEM_SEED=${seed} TANDEM_CONVERGENCE_SEC=${durationSec} node --import tsx --test test/replication/convergence.test.ts`);
    process.exitCode = 1;
    break;
  }
  out(
    `[${i + 1}/${runs}] seed ${seed} ok in ${secs} s: ${report.ops} ops (${report.unknown} with unknown outcome), ${report.committedWrites} committed writes, ` +
      `${report.conflicts} conflicts, ${report.faults.length} faults`,
  );
}
if (!process.exitCode) out(`soak: all ${runs} seeds converged: ${ops} ops, ${writes} committed writes, ${faults} faults in ${((Date.now() - started) / 60_000).toFixed(1)} min`);
