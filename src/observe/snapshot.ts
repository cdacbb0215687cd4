/**
 * What the collector shows: the snapshot the page renders (regions, replication
 * directions, geographies, alerts, timeline, audit log, conflicts, reports,
 * sources) and the update sent after every poll. Plain data, JSON as is.
 */
import type { AuditEntry } from '../control/audit.ts';
import type { AlertJson } from './alerts.ts';
import type { GeographyView, TileView } from './geography.ts';
import type { SeriesMeta, SeriesPoint } from './series.ts';
import type { AppHealth, ConflictRow, HealthState } from './sources.ts';

/** Kinds of source the collector polls. */
export type SourceKind = 'controller' | 'audit' | 'dns' | 'dns-metrics' | 'agent' | 'agent-conflicts' | 'app-metrics' | 'app-health' | 'lab' | 'database';

/** How one source answered lately. */
export interface SourceView {
  id: string;
  kind: SourceKind;
  region?: string;
  url: string;
  up: boolean | undefined;
  lastOkAt?: string;
  error?: string;
  latencyMs?: number;
}

/** One region on the page. */
export interface RegionView {
  name: string;
  cloud: string;
  location?: string;
  address: string;
  /** Lab process state when run by the lab. */
  lab?: { state: string; failedAt?: string; recoveredAt?: string };
  /** How every DNS server (vantage point) sees it; `unreachable` when that server did not answer. */
  vantages: { vantage: string; state: HealthState | 'unreachable'; since?: string }[];
  /** Summary: healthy from every reachable vantage point, unhealthy from all, partial, or unknown. */
  health: 'healthy' | 'unhealthy' | 'partial' | 'unknown';
  /** Drained in DNS (any reachable server); undefined when no DNS server answers. */
  drained: boolean | undefined;
  drainReason?: string;
  /** The controller's runbook phase. */
  phase?: string;
  phaseSince?: string;
  drainedBy?: string;
  inRotation?: boolean;
  failure?: Record<string, unknown>;
  app?: AppHealth;
  /** Requests and 5xx per second (last poll) and 5xx share over the alert window. */
  http?: { rps: number | null; errorsPerSec: number | null; clientErrorsPerSec: number | null; windowRequests: number; windowErrors5xx: number; errorShare: number | null };
  /** DNS answers per second naming this region (all servers). */
  dnsAnswersPerSec?: number | null;
  /** Whether each of its daemons answered the last poll. */
  up: Partial<Record<'controller' | 'dns' | 'agent' | 'app', boolean>>;
}

/** One replication direction (`source` → `target`, applied in `target`). */
export interface DirectionView {
  source: string;
  target: string;
  lagSec?: number;
  lagBytes?: number;
  txPerSec?: number;
  rowsPerSec?: number;
  conflicts?: number;
  state?: string;
  error?: string;
  /** Where the lag figure came from. */
  from?: 'agent' | 'controller' | 'app';
  paused: { table: string; reason?: string }[];
}

/** One line of the timeline. */
export interface TimelineEntry {
  at: string;
  source: 'controller' | 'lab' | 'alert' | 'dashboard';
  region?: string;
  kind: string;
  severity: 'info' | 'warning' | 'critical' | 'resolved';
  message: string;
  actor?: string;
}

/** A drill report found in the reports folder. */
export interface ReportView {
  id: string;
  title: string;
  at?: string;
  outcome?: string;
  figures: Record<string, string>;
  links: Record<string, string>;
}

/** Everything the page shows (the charts' history comes separately). */
export interface DashboardSnapshot {
  at: string;
  mode: 'lab' | 'standalone';
  zone?: string;
  service?: string;
  leader?: string;
  thresholds: { lagWarnSec: number; lagCriticalSec: number; errorRateThreshold: number; rpoSec: number; rtoSec: number };
  lab?: { state: string; api: string; partitions: [string, string][]; wan: Record<string, unknown> };
  regions: RegionView[];
  directions: DirectionView[];
  geographies: GeographyView[];
  tiles: TileView[];
  alerts: AlertJson[];
  timeline: TimelineEntry[];
  audit: AuditEntry[];
  conflicts: ConflictRow[];
  reports: ReportView[];
  sources: SourceView[];
  series: SeriesMeta[];
}

/** What subscribers get after every poll. */
export interface DashboardUpdate {
  snapshot: DashboardSnapshot;
  point: SeriesPoint;
}
