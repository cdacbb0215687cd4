/**
 * `observe`: tandem's own alert evaluation, the collector that polls every
 * daemon, and the live dashboard (served by the lab and by `tandem dashboard`).
 */
export { Collector, fetchAlerts, summariseReport } from './collector.ts';
export type {
  CollectorOptions,
  DashboardSnapshot,
  DashboardUpdate,
  DirectionView,
  LabLink,
  RegionView,
  ReportView,
  SourceView,
  TimelineEntry,
} from './collector.ts';
export { createDashboard, dashboardRoutes } from './dashboard.ts';
export type { CreateDashboardOptions, DashboardRouteOptions } from './dashboard.ts';
export { AlertTracker, evaluateConditions, ALERT_KINDS } from './alerts.ts';
export type { AlertCondition, AlertInputs, AlertJson, AlertKind, AlertThresholds, Evaluation } from './alerts.ts';
export { parseExposition, sumSamples, sumBy } from './exposition.ts';
export type { Exposition, Sample, Family } from './exposition.ts';
