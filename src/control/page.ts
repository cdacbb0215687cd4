/**
 * The controller's status page (`GET /status`): a plain HTML view of the
 * runbook for people, refreshed every few seconds; no scripts, no assets.
 */
import type { ControllerStatus } from './controller.ts';

const esc = (s: unknown) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

/** Render the status as a self-contained page. */
export function statusPage(s: ControllerStatus): string {
  const rows = s.regions
    .map(
      (r) => `<tr class="${esc(r.phase)}"><td>${esc(r.name)}</td><td>${esc(r.phase)}${r.drainedBy ? ` (${esc(r.drainedBy)})` : ''}</td><td>${esc(r.since)}</td>
<td>${r.votesUnhealthy} / ${r.votesUnhealthy + r.votesHealthy}</td><td>${r.lagFrom ? Object.entries(r.lagFrom).map(([p, l]) => `${esc(p)}: ${l.toFixed(1)} s`).join(', ') : 'unknown'}</td></tr>`,
    )
    .join('\n');
  const events = s.events
    .slice()
    .reverse()
    .map((e) => `<li class="${esc(e.severity)}"><time>${esc(e.iso)}</time> <b>${esc(e.region)}</b> ${esc(e.kind)}: ${esc(e.message)} <i>(${esc(e.actor)})</i></li>`)
    .join('\n');
  return `<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>tandem status</title><style>
body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}td,th{padding:.3em .8em;border-bottom:1px solid #ddd;text-align:left}
tr.serving td:nth-child(2){color:#1a7f37}tr.drained td:nth-child(2),tr.failed td:nth-child(2){color:#c00}tr.recovering td:nth-child(2),tr.suspect td:nth-child(2){color:#b80}
li.critical{color:#c00}li.resolved{color:#1a7f37}time{color:#666}</style></head><body>
<h1>tandem status</h1><p>Controller ${esc(s.region)}; leader ${esc(s.leader ?? 'none')}; RPO ${s.rpoSec} s, RTO ${s.rtoSec} s. Updated ${esc(s.at)}.</p>
<table><tr><th>region</th><th>phase</th><th>since</th><th>unhealthy votes</th><th>replication lag from peers</th></tr>
${rows}</table><h2>Events</h2><ul>${events || '<li>none</li>'}</ul></body></html>`;
}
