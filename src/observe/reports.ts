/**
 * Drill reports for the dashboard: the drills write
 * `<reports>/<id>/report.json` (+ `report.html`, `report.md`); this lists them
 * with their headline figures and the links the dashboard serves them under.
 */
import { existsSync, readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { ReportView } from './snapshot.ts';

/** The reports in `dir`, newest first (at most 30). */
export function scanReports(dir: string): ReportView[] {
  if (!existsSync(dir)) return [];
  const found: (ReportView & { mtime: number })[] = [];
  for (const id of readdirSync(dir)) {
    if (!/^[\w.-]+$/.test(id)) continue;
    const folder = path.join(dir, id);
    let st;
    try {
      st = statSync(folder);
    } catch {
      continue;
    }
    if (!st.isDirectory()) continue;
    const links: Record<string, string> = {};
    for (const f of ['report.html', 'report.md', 'report.json']) {
      if (existsSync(path.join(folder, f))) links[f.split('.')[1]!] = `/reports/${encodeURIComponent(id)}/${f}`;
    }
    if (!Object.keys(links).length) continue;
    const view: ReportView & { mtime: number } = { id, title: id, figures: {}, links, mtime: st.mtimeMs };
    if (links.json) {
      try {
        Object.assign(view, summariseReport(JSON.parse(readFileSync(path.join(folder, 'report.json'), 'utf8')), id));
      } catch {
        // A report being written: list it with its id only.
      }
    }
    found.push(view);
  }
  return found
    .sort((a, b) => (b.at ?? '').localeCompare(a.at ?? '') || b.mtime - a.mtime)
    .slice(0, 30)
    .map(({ mtime: _m, ...r }) => r);
}

/**
 * The headline of a drill report (src/drill/report.ts `DrillReport`: scenario,
 * failedRegion, startedAt, passed, results.rtoSec, results.rpo.rpoSec and
 * .missing), read defensively so a report of another version still lists.
 */
export function summariseReport(doc: unknown, id: string): Pick<ReportView, 'title' | 'at' | 'outcome' | 'figures'> {
  const o = (doc ?? {}) as Record<string, unknown>;
  const s = (v: unknown) => (typeof v === 'string' && v ? v : undefined);
  const get = (p: string): unknown => p.split('.').reduce<unknown>((cur, k) => (cur && typeof cur === 'object' ? (cur as Record<string, unknown>)[k] : undefined), o);
  const first = (...paths: string[]) => paths.map(get).find((v) => v !== undefined && v !== null);
  const scenario = s(first('scenario', 'title', 'name', 'drill'));
  const target = s(first('failedRegion')) ?? (Array.isArray(o.partition) ? o.partition.join(' | ') : undefined);
  const title = scenario ? `${scenario}${target ? ` (${target})` : ''}` : id;
  const at = s(first('startedAt', 'at', 'started', 'finishedAt'));
  const verdict = first('passed', 'outcome', 'verdict', 'result', 'ok');
  const outcome = typeof verdict === 'boolean' ? (verdict ? 'pass' : 'fail') : s(verdict);
  const figures: Record<string, string> = {};
  const fig = (label: string, unit: string, ...paths: string[]) => {
    const v = first(...paths);
    if (typeof v === 'number' && Number.isFinite(v)) figures[label] = `${Math.round(v * 10) / 10}${unit ? ` ${unit}` : ''}`;
  };
  fig('RTO', 's', 'results.rtoSec', 'rtoSec', 'rto.measuredSec', 'rto.sec');
  fig('RPO', 's', 'results.rpo.rpoSec', 'rpoSec', 'rpo.measuredSec', 'rpo.sec');
  const missing = first('results.rpo.missing');
  if (Array.isArray(missing)) figures['lost writes'] = String(missing.length);
  return { title, ...(at ? { at } : {}), ...(outcome ? { outcome } : {}), figures };
}
