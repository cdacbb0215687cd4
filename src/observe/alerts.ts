/**
 * Alerts evaluated by tandem itself, so the lab (and a small deployment)
 * needs no Prometheus. Pure: no I/O, no clock. `evaluateConditions` turns
 * what the collector saw into the conditions firing right now; `AlertTracker`
 * remembers what fired before and decides which notifications to send:
 * once when an alert starts, again every `repeatIntervalSec` while it fires,
 * at once when its severity changes, and a resolved message when it stops.
 *
 * Missing data is not good news: when the collector could not read the data
 * an alert is about (a failed region's agent, say), the alert keeps its state
 * (marked stale) instead of resolving.
 */
import type { Notification, Severity } from '../core/notify.ts';

/** The kinds of alert tandem raises. */
export const ALERT_KINDS = ['replication-lag', 'table-paused', 'error-rate', 'probe-failure', 'region-drained'] as const;
export type AlertKind = (typeof ALERT_KINDS)[number];

/** Severities an alert can fire with (resolved is a notification, not a state). */
export type AlertSeverity = Extract<Severity, 'warning' | 'critical'>;

/** One condition that holds right now. */
export interface AlertCondition {
  /** Stable identity: kind plus its subject, e.g. `replication-lag/aws-south/azure-west`. */
  key: string;
  kind: AlertKind;
  severity: AlertSeverity;
  title: string;
  text: string;
  labels: Record<string, string>;
  /** The measured figure (seconds of lag, error share, vantage points). */
  value?: number;
}

/** What the collector saw; `undefined` means "could not be read". */
export interface AlertInputs {
  /** Lag per direction: `source` → `target`, measured where the changes are applied (the target). */
  lag: { source: string; target: string; lagSec: number | undefined }[];
  /** Tables whose apply is paused, per applying region; `tables` undefined when its agent is unreadable. */
  paused: { region: string; tables: { table: string; peer?: string; reason?: string }[] | undefined }[];
  /** HTTP requests and 5xx answers per region over the error-rate window. */
  http: { region: string; requests: number | undefined; errors5xx: number | undefined }[];
  /** How each reachable DNS server (vantage point) sees each region; `vantages` empty when none is reachable. */
  health: { target: string; vantages: { vantage: string; state: 'unknown' | 'healthy' | 'unhealthy' }[] }[];
  /** Drain state per region as the reachable DNS servers report it; undefined when none is reachable. */
  drains: { region: string; drained: boolean | undefined; reason?: string }[];
}

/** The thresholds (from `replication` and `alerts`). */
export interface AlertThresholds {
  lagWarnSec: number;
  lagCriticalSec: number;
  errorRateThreshold: number;
  errorRateMinRequests: number;
  errorRateWindowSec: number;
}

/** What holds now, and which alert keys cannot be judged for lack of data. */
export interface Evaluation {
  firing: AlertCondition[];
  unknown: Set<string>;
}

const fmtSec = (s: number) => (s >= 120 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`);

/** The conditions that hold for these inputs. */
export function evaluateConditions(inputs: AlertInputs, t: AlertThresholds): Evaluation {
  const firing: AlertCondition[] = [];
  const unknown = new Set<string>();

  for (const l of inputs.lag) {
    const key = `replication-lag/${l.source}/${l.target}`;
    if (l.lagSec === undefined || !Number.isFinite(l.lagSec)) {
      unknown.add(key);
      continue;
    }
    if (l.lagSec <= t.lagWarnSec) continue;
    const critical = l.lagSec > t.lagCriticalSec;
    firing.push({
      key,
      kind: 'replication-lag',
      severity: critical ? 'critical' : 'warning',
      title: `replication ${l.source} → ${l.target} lags ${fmtSec(l.lagSec)}`,
      text: `${l.target} has applied ${l.source}'s changes only up to ${fmtSec(l.lagSec)} ago (${critical ? 'critical' : 'warning'} above ${critical ? t.lagCriticalSec : t.lagWarnSec} s). Writes made in ${l.source} since then would be lost if it failed now.`,
      labels: { source: l.source, target: l.target },
      value: l.lagSec,
    });
  }

  for (const p of inputs.paused) {
    const prefix = `table-paused/${p.region}/`;
    if (p.tables === undefined) {
      unknown.add(prefix);
      continue;
    }
    for (const tb of p.tables) {
      const from = tb.peer ? ` from ${tb.peer}` : '';
      firing.push({
        key: `${prefix}${tb.peer ?? '*'}/${tb.table}`,
        kind: 'table-paused',
        severity: 'critical',
        title: `${p.region}: apply of ${tb.table}${from} is paused`,
        text: `${p.region} stopped applying ${tb.table}${from}${tb.reason ? `: ${tb.reason}` : ''}. Its changes are kept and apply resumes once the table definitions match.`,
        labels: { region: p.region, table: tb.table, ...(tb.peer ? { peer: tb.peer } : {}) },
      });
    }
  }

  for (const h of inputs.http) {
    const key = `error-rate/${h.region}`;
    if (h.requests === undefined || h.errors5xx === undefined) {
      unknown.add(key);
      continue;
    }
    if (h.requests < t.errorRateMinRequests) continue;
    const share = h.errors5xx / h.requests;
    if (share <= t.errorRateThreshold) continue;
    firing.push({
      key,
      kind: 'error-rate',
      severity: 'critical',
      title: `${h.region}: ${(share * 100).toFixed(1)} % of requests fail with 5xx`,
      text: `${h.errors5xx} of ${h.requests} requests in the last ${t.errorRateWindowSec} s answered 5xx (threshold ${(t.errorRateThreshold * 100).toFixed(1)} %).`,
      labels: { region: h.region },
      value: share,
    });
  }

  for (const h of inputs.health) {
    const key = `probe-failure/${h.target}`;
    if (h.vantages.length === 0) {
      unknown.add(key);
      continue;
    }
    const bad = h.vantages.filter((v) => v.state === 'unhealthy').map((v) => v.vantage);
    if (bad.length === 0) continue;
    const all = bad.length === h.vantages.length;
    firing.push({
      key,
      kind: 'probe-failure',
      severity: all ? 'critical' : 'warning',
      title: `${h.target} is unhealthy from ${all ? 'every vantage point' : `${bad.length} of ${h.vantages.length} vantage points`}`,
      text: `Health probes of ${h.target} fail as seen from ${bad.join(', ')}.`,
      labels: { target: h.target },
      value: bad.length,
    });
  }

  for (const d of inputs.drains) {
    const key = `region-drained/${d.region}`;
    if (d.drained === undefined) {
      unknown.add(key);
      continue;
    }
    if (!d.drained) continue;
    firing.push({
      key,
      kind: 'region-drained',
      severity: 'warning',
      title: `${d.region} is drained from DNS`,
      text: `${d.region} gets no DNS answers${d.reason ? ` (${d.reason})` : ''}; its clients are served by other regions.`,
      labels: { region: d.region },
    });
  }
  return { firing, unknown };
}

/** An alert that fires now (or could not be judged since it last fired). */
export interface ActiveAlert extends AlertCondition {
  /** When it started firing (ms). */
  since: number;
  /** When its last notification went out (ms). */
  notifiedAt: number;
  /** True while the data it is about cannot be read. */
  stale: boolean;
}

/** The JSON form of an active alert (`GET /v1/alerts`). */
export interface AlertJson {
  key: string;
  kind: AlertKind;
  severity: AlertSeverity;
  title: string;
  text: string;
  labels: Record<string, string>;
  value?: number;
  since: string;
  notifiedAt: string;
  stale: boolean;
}

/** Remembers firing alerts and decides what to notify. */
export class AlertTracker {
  readonly #repeatMs: number;
  readonly #active = new Map<string, ActiveAlert>();

  constructor(opts: { repeatIntervalSec: number }) {
    this.#repeatMs = opts.repeatIntervalSec * 1000;
  }

  /** Fold one evaluation in; returns the notifications to send now. */
  update(now: number, evaluation: Evaluation): Notification[] {
    const out: Notification[] = [];
    const seen = new Set<string>();
    for (const c of evaluation.firing) {
      if (seen.has(c.key)) continue; // the first condition for a key wins
      seen.add(c.key);
      const prev = this.#active.get(c.key);
      if (!prev) {
        const a: ActiveAlert = { ...c, since: now, notifiedAt: now, stale: false };
        this.#active.set(c.key, a);
        out.push(notification(a, now, 'firing'));
        continue;
      }
      const escalated = prev.severity !== c.severity;
      const next: ActiveAlert = { ...c, since: prev.since, notifiedAt: prev.notifiedAt, stale: false };
      if (escalated) {
        next.notifiedAt = now;
        out.push(notification(next, now, c.severity === 'critical' ? 'escalated' : 'eased'));
      } else if (now - prev.notifiedAt >= this.#repeatMs) {
        next.notifiedAt = now;
        out.push(notification(next, now, 'repeat'));
      }
      this.#active.set(c.key, next);
    }
    for (const [key, a] of this.#active) {
      if (seen.has(key)) continue;
      if (isUnknown(key, evaluation.unknown)) {
        a.stale = true;
        continue;
      }
      this.#active.delete(key);
      out.push(notification(a, now, 'resolved'));
    }
    return out;
  }

  /** The alerts firing now, most severe first, then oldest first. */
  active(): ActiveAlert[] {
    return [...this.#active.values()].sort((a, b) => rank(b.severity) - rank(a.severity) || a.since - b.since || a.key.localeCompare(b.key));
  }

  /** `active()` as JSON. */
  toJSON(): AlertJson[] {
    return this.active().map(alertJson);
  }
}

/** An active alert as JSON (ISO times). */
export function alertJson(a: ActiveAlert): AlertJson {
  return {
    key: a.key,
    kind: a.kind,
    severity: a.severity,
    title: a.title,
    text: a.text,
    labels: a.labels,
    ...(a.value !== undefined ? { value: a.value } : {}),
    since: new Date(a.since).toISOString(),
    notifiedAt: new Date(a.notifiedAt).toISOString(),
    stale: a.stale,
  };
}

const rank = (s: AlertSeverity) => (s === 'critical' ? 2 : 1);

/** A key is unknown when listed, or when a listed prefix (ending in "/") covers it. */
function isUnknown(key: string, unknown: Set<string>): boolean {
  if (unknown.has(key)) return true;
  for (const u of unknown) if (u.endsWith('/') && key.startsWith(u)) return true;
  return false;
}

function notification(a: ActiveAlert, now: number, why: 'firing' | 'repeat' | 'escalated' | 'eased' | 'resolved'): Notification {
  const forSec = Math.round((now - a.since) / 1000);
  const fields: Record<string, string | number> = { alert: a.kind, ...a.labels, since: new Date(a.since).toISOString() };
  if (why === 'resolved') {
    return {
      key: `${a.key}@${a.since}`,
      severity: 'resolved',
      title: `RESOLVED: ${a.title}`,
      text: `No longer firing after ${forSec} s. ${a.text}`,
      fields: { ...fields, firedForSec: forSec },
      at: new Date(now),
    };
  }
  const prefix = why === 'repeat' ? 'still firing: ' : why === 'escalated' ? 'now critical: ' : why === 'eased' ? 'now warning: ' : '';
  return {
    key: `${a.key}@${a.since}`,
    severity: a.severity,
    title: `${prefix}${a.title}`,
    text: a.text,
    fields: why === 'firing' ? fields : { ...fields, firingForSec: forSec },
    at: new Date(now),
  };
}
