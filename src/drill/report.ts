/**
 * Drill reports: JSON for machines, Markdown for people, and a self-contained
 * HTML page whose timeline chart is inline SVG (no scripts, no network), fit
 * to hand to an auditor.
 */
import type { Marker, RpoResult, SecondBucket } from './analysis.ts';

/** A bound from config and whether the drill met it. */
export interface BoundCheck {
  name: string;
  bound: number | string;
  value: number | string | null;
  ok: boolean;
}

/** The drill report (the JSON file's shape). */
export interface DrillReport {
  id: string;
  scenario: string;
  target: 'lab' | 'external';
  startedAt: string;
  finishedAt: string;
  regions: string[];
  failedRegion?: string;
  partition?: [string, string];
  settings: {
    ttlSec: number;
    probeIntervalMs: number;
    failThreshold: number;
    rtoBoundSec: number;
    rpoBoundSec: number;
    ratePerSecPerGeo: number;
    geos: { name: string; ecs: string; homeRegion?: string }[];
  };
  markers: (Marker & { iso: string; offsetSec: number })[];
  results: {
    detectionSec: number | null;
    dnsSwitchSec: number | null;
    rtoSec: number | null;
    rtoByGeo: Record<string, { sec: number | null; servedBefore?: string; servedDuring?: string; servedAfter?: string }>;
    rpo: (RpoResult & { survivor: string }) | null;
    failbackSec: number | null;
    dnsBackSec: number | null;
    /** Failback: recovery started → the failed region's home geography served by it again (null: not within the drill). */
    trafficHomeSec?: number | null;
    requests: { total: number; ok: number; failed: number; acknowledgedWrites: number; byGeo: Record<string, { total: number; ok: number; p50Ms?: number; p99Ms?: number }> };
    convergence: {
      identical: boolean | null;
      differences: number;
      acknowledgedMissing: { region: string; orderId: string; key: string }[];
      duplicates: number;
      detail?: string;
    };
    conflicts: { total: number; byKind: Record<string, number> };
    maxLagSec: number | null;
  };
  bounds: BoundCheck[];
  passed: boolean;
  series: Record<string, SecondBucket[]>;
  notes: string[];
}

const esc = (s: unknown) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const fmt = (v: number | null | undefined, unit = 's', digits = 1) => (v === null || v === undefined ? 'n/a' : `${v.toFixed(digits)} ${unit}`);

/** A Markdown summary of the report. */
export function toMarkdown(r: DrillReport): string {
  const res = r.results;
  const lines = [
    `# tandem drill: ${r.scenario}${r.failedRegion ? ` (${r.failedRegion})` : ''}${r.partition ? ` (${r.partition.join(' | ')})` : ''}`,
    '',
    `${r.passed ? '**PASSED**' : '**FAILED**'} — ${r.startedAt} → ${r.finishedAt}, ${r.target}, regions ${r.regions.join(', ')}.`,
    `Settings: DNS TTL ${r.settings.ttlSec} s, probes every ${r.settings.probeIntervalMs / 1000} s × ${r.settings.failThreshold}, ${r.settings.ratePerSecPerGeo} req/s per geography.`,
    '',
    '| measure | value | bound | ok |',
    '|---|---|---|---|',
    ...r.bounds.map((b) => `| ${b.name} | ${typeof b.value === 'number' ? b.value.toFixed(2) : (b.value ?? 'n/a')} | ${b.bound} | ${b.ok ? 'yes' : '**no**'} |`),
    '',
    '| timeline | seconds after the fault |',
    '|---|---|',
    `| detection (controller confirmed) | ${fmt(res.detectionSec)} |`,
    `| DNS switched (survivors answer without the failed region) | ${fmt(res.dnsSwitchSec)} |`,
    ...Object.entries(res.rtoByGeo).map(([g, v]) => `| RTO ${g} (success ≥ 99 % again; served by ${v.servedBefore ?? '?'} → ${v.servedDuring ?? '?'}) | ${fmt(v.sec)} |`),
    `| failback (recovery → back in DNS) | ${fmt(res.failbackSec)} |`,
    ...(res.trafficHomeSec !== undefined ? [`| traffic home (recovery → its geography served by it again) | ${fmt(res.trafficHomeSec)} |`] : []),
    '',
    `RPO: ${res.rpo ? `${res.rpo.missing.length} of ${res.rpo.candidates} acknowledged writes of ${r.failedRegion} were not in ${res.rpo.survivor} at the failure; oldest ${fmt(res.rpo.rpoSec, 's', 3)}` : 'n/a'}.`,
    `Requests: ${res.requests.total} (${res.requests.failed} failed), ${res.requests.acknowledgedWrites} acknowledged writes.`,
    `Convergence: ${res.convergence.identical === null ? 'not checked' : res.convergence.identical ? 'regions identical' : `${res.convergence.differences} differences`}; acknowledged writes missing afterwards: ${res.convergence.acknowledgedMissing.length}; duplicates: ${res.convergence.duplicates}.`,
    `Conflicts recorded during the drill: ${res.conflicts.total}${Object.keys(res.conflicts.byKind).length ? ` (${Object.entries(res.conflicts.byKind).map(([k, n]) => `${k} ${n}`).join(', ')})` : ''}.`,
    ...(r.notes.length ? ['', ...r.notes.map((n) => `- ${n}`)] : []),
    '',
  ];
  return lines.join('\n');
}

const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#9467bd', '#8c564b'];

/** The timeline chart: per geography, which region served each second (colour), failures (red) and success rate (line). */
export function timelineSvg(r: DrillReport, width = 1000): string {
  const geos = Object.keys(r.series);
  const all = geos.flatMap((g) => r.series[g]!);
  if (all.length === 0) return '<p>No requests were recorded.</p>';
  const t0 = Math.min(...all.map((b) => b.t));
  const t1 = Math.max(...all.map((b) => b.t)) + 1000;
  const left = 110;
  const right = 20;
  const laneH = 70;
  const top = 30;
  const yEnd = top + geos.length * (laneH + 20) - 10;
  const x = (t: number) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const labels = layoutLabels(r.markers.map((m) => ({ at: m.at, text: `${m.name} (+${m.offsetSec.toFixed(1)} s)` })), x, width);
  const rowsOfLabels = labels.reduce((n, l) => Math.max(n, l.row + 1), 0);
  const height = yEnd + 8 + rowsOfLabels * 11 + 8;
  const color = Object.fromEntries(r.regions.map((name, i) => [name, PALETTE[i % PALETTE.length]!]));
  const parts: string[] = [`<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${width} ${height}" width="100%" font-family="system-ui,sans-serif" font-size="11">`];
  geos.forEach((g, i) => {
    const y0 = top + i * (laneH + 20);
    parts.push(`<text x="4" y="${y0 + laneH / 2}" font-weight="bold">${esc(g)}</text>`);
    parts.push(`<rect x="${left}" y="${y0}" width="${width - left - right}" height="${laneH}" fill="#f6f6f6"/>`);
    const pts: string[] = [];
    for (const b of r.series[g]!) {
      const bx = x(b.t);
      const bw = Math.max(1, x(b.t + 1000) - bx - 0.5);
      if (b.total === 0) continue;
      let yy = y0 + laneH;
      for (const [region, n] of Object.entries(b.byRegion)) {
        const h = ((n / b.total) * laneH) / 2;
        yy -= h;
        parts.push(`<rect x="${bx.toFixed(1)}" y="${yy.toFixed(1)}" width="${bw.toFixed(1)}" height="${h.toFixed(1)}" fill="${color[region] ?? '#999'}"><title>${esc(region)}: ${n}</title></rect>`);
      }
      const failed = b.total - b.ok;
      if (failed > 0) {
        const h = ((failed / b.total) * laneH) / 2;
        parts.push(`<rect x="${bx.toFixed(1)}" y="${(yy - h).toFixed(1)}" width="${bw.toFixed(1)}" height="${h.toFixed(1)}" fill="#d62728"><title>failed: ${failed} of ${b.total}</title></rect>`);
      }
      pts.push(`${(bx + bw / 2).toFixed(1)},${(y0 + (1 - b.ok / b.total) * laneH * 0.45 + 2).toFixed(1)}`);
    }
    if (pts.length) parts.push(`<polyline points="${pts.join(' ')}" fill="none" stroke="#222" stroke-width="1.2"><title>success rate</title></polyline>`);
  });
  for (const l of labels) {
    parts.push(`<line x1="${l.x.toFixed(1)}" x2="${l.x.toFixed(1)}" y1="${top - 5}" y2="${yEnd + l.row * 11 + 3}" stroke="#555" stroke-dasharray="3,3"/>`);
    const tx = l.anchorEnd ? l.x - 2 : l.x + 2;
    parts.push(`<text x="${tx.toFixed(1)}" y="${yEnd + 12 + l.row * 11}" fill="#333"${l.anchorEnd ? ' text-anchor="end"' : ''}>${esc(l.text)}</text>`);
  }
  const legend = r.regions.map((n, i) => `<rect x="${left + i * 140}" y="8" width="12" height="12" fill="${color[n]}"/><text x="${left + i * 140 + 16}" y="18">${esc(n)}</text>`).join('');
  parts.push(legend, `<rect x="${left + r.regions.length * 140}" y="8" width="12" height="12" fill="#d62728"/><text x="${left + r.regions.length * 140 + 16}" y="18">failed</text>`);
  parts.push('</svg>');
  return parts.join('\n');
}

/** Approximate width of a label at font-size 11 (the SVG is laid out without measuring text). */
const LABEL_CHAR_PX = 6.2;

/**
 * Marker labels in rows under the lanes: each goes into the first row where it does not overlap the
 * label before it, to the right of its line, or to the left when it would run past the right edge.
 */
export function layoutLabels(markers: Array<{ at: number; text: string }>, x: (t: number) => number, width: number): Array<{ x: number; text: string; row: number; anchorEnd: boolean }> {
  const rowEnds: number[] = [];
  return [...markers]
    .sort((a, b) => a.at - b.at)
    .map((m) => {
      const mx = x(m.at);
      const w = m.text.length * LABEL_CHAR_PX;
      const anchorEnd = mx + 2 + w > width - 2;
      const [from, to] = anchorEnd ? [mx - 2 - w, mx - 2] : [mx + 2, mx + 2 + w];
      let row = rowEnds.findIndex((end) => end + 6 <= from);
      if (row < 0) row = rowEnds.push(to) - 1;
      else rowEnds[row] = to;
      return { x: mx, text: m.text, row, anchorEnd };
    });
}

/** A self-contained HTML report. */
export function toHtml(r: DrillReport): string {
  const md = toMarkdown(r);
  const rows = r.bounds.map((b) => `<tr class="${b.ok ? 'ok' : 'bad'}"><td>${esc(b.name)}</td><td>${esc(typeof b.value === 'number' ? b.value.toFixed(2) : (b.value ?? 'n/a'))}</td><td>${esc(b.bound)}</td><td>${b.ok ? 'yes' : 'NO'}</td></tr>`).join('\n');
  const markers = r.markers.map((m) => `<tr><td>${esc(m.name)}</td><td>+${m.offsetSec.toFixed(2)} s</td><td>${esc(m.iso)}</td><td>${esc(m.detail ?? '')}</td></tr>`).join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>tandem drill ${esc(r.scenario)} ${esc(r.id)}</title>
<style>body{font:14px system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}table{border-collapse:collapse;margin:1em 0}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
tr.ok td:last-child{color:#1a7f37}tr.bad td{color:#c00;font-weight:bold}.verdict{font-size:1.4em;font-weight:bold}.pass{color:#1a7f37}.fail{color:#c00}pre{background:#f6f6f6;padding:1em;white-space:pre-wrap}</style></head><body>
<h1>tandem drill: ${esc(r.scenario)}${r.failedRegion ? ` — ${esc(r.failedRegion)}` : ''}</h1>
<p class="verdict ${r.passed ? 'pass' : 'fail'}">${r.passed ? 'PASSED' : 'FAILED'}</p>
<p>${esc(r.startedAt)} → ${esc(r.finishedAt)} · ${esc(r.target)} · regions ${esc(r.regions.join(', '))} · TTL ${r.settings.ttlSec} s · probes every ${r.settings.probeIntervalMs / 1000} s × ${r.settings.failThreshold} · ${r.settings.ratePerSecPerGeo} req/s per geography</p>
<h2>Bounds</h2><table><tr><th>measure</th><th>value</th><th>bound</th><th>ok</th></tr>${rows}</table>
<h2>Timeline</h2>${timelineSvg(r)}
<p>Each lane is one geography's synthetic clients; the colour shows which region answered each second, red shows failed requests, the line the failure share.</p>
<table><tr><th>marker</th><th>after start</th><th>time</th><th>detail</th></tr>${markers}</table>
<h2>Summary</h2><pre>${esc(md)}</pre></body></html>`;
}
