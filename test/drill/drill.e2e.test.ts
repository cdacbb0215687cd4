/**
 * A short failback drill in the lab, through the real CLI: outage of
 * aws-south, then recovery. The JSON report must show RTO and RPO within the
 * lab's bounds, no acknowledged write lost, and identical regions afterwards.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { startLab } from '../helpers/lab.ts';
import type { DrillReport } from '../../src/drill/report.ts';

test('failback drill: RTO and RPO within the lab bounds, nothing acknowledged lost, regions identical', { timeout: 420_000 }, async () => {
  const lab = await startLab({ regions: 2, traffic: false });
  try {
    const json = path.join(lab.dir, 'drill.json');
    const run = await lab.cli(['drill', 'failback', '--region', 'aws-south', '--lab-dir', lab.dir, '--json', json, '--rate', '5', '--warmup', '4', '--hold', '2', '--settle', '3'], 360_000);
    assert.ok(existsSync(json), `no report written; exit ${run.code}\n${run.stderr}`);
    const report = JSON.parse(readFileSync(json, 'utf8')) as DrillReport;
    console.log(`# drill: RTO ${report.results.rtoSec} s, RPO ${report.results.rpo?.rpoSec} s (${report.results.rpo?.missing.length} of ${report.results.rpo?.candidates}), detection ${report.results.detectionSec} s, DNS switch ${report.results.dnsSwitchSec} s, failback ${report.results.failbackSec} s`);
    const c = report.settings;
    assert.equal(report.failedRegion, 'aws-south');
    assert.ok(report.results.rtoSec !== null && report.results.rtoSec <= c.rtoBoundSec, `RTO ${report.results.rtoSec} s within ${c.rtoBoundSec} s`);
    assert.ok(report.results.rpo !== null && report.results.rpo.rpoSec <= c.rpoBoundSec, `RPO ${report.results.rpo?.rpoSec} s within ${c.rpoBoundSec} s`);
    assert.ok(report.results.rpo!.candidates > 0, 'the failed region acknowledged writes before the fault');
    assert.equal(report.results.convergence.acknowledgedMissing.length, 0, 'no acknowledged write lost after failback');
    assert.equal(report.results.convergence.duplicates, 0);
    assert.equal(report.results.convergence.identical, true, report.results.convergence.detail);
    assert.ok(report.results.failbackSec !== null, 'the region failed back');
    // The southern clients moved to azure-west during the outage and back afterwards.
    assert.equal(report.results.rtoByGeo.south?.servedBefore, 'aws-south');
    assert.equal(report.results.rtoByGeo.south?.servedDuring, 'azure-west');
    assert.equal(report.results.rtoByGeo.west?.sec, 0, 'the western clients never noticed');
    const home = report.results.trafficHomeSec;
    assert.ok(home !== null && home !== undefined && home >= report.results.failbackSec!, `the southern clients came home after the failback (traffic home ${home} s)`);
    assert.ok(report.markers.some((m) => m.name === 'traffic home'));
    assert.equal(report.passed, true);
    assert.equal(run.code, 0, run.stderr);
    const dir = path.dirname(readdirReport(lab.dir));
    for (const f of ['report.md', 'report.html']) assert.ok(existsSync(path.join(dir, f)), f);
    assert.match(readFileSync(path.join(dir, 'report.html'), 'utf8'), /<svg[\s\S]*aws-south[\s\S]*<\/svg>/);
  } finally {
    await lab.down();
  }
});

/** The one report.json under <lab>/reports. */
function readdirReport(labDir: string): string {
  const root = path.join(labDir, 'reports');
  const [id] = readdirSync(root);
  assert.ok(id, 'a report folder exists');
  return path.join(root, id, 'report.json');
}
