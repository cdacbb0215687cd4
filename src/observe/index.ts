/**
 * `observe`: tandem's own alert evaluation, the collector that polls every
 * daemon, and the live dashboard (served by the lab and by `tandem dashboard`).
 */
export { Collector, fetchAlerts } from './collector.ts';
export type { CollectorOptions, LabLink } from './collector.ts';
export type { DashboardSnapshot, DashboardUpdate, DirectionView, RegionView, ReportView, SourceView, TimelineEntry } from './snapshot.ts';
export { scanReports, summariseReport } from './reports.ts';
export { createDashboard, dashboardRoutes } from './dashboard.ts';
export type { CreateDashboardOptions, DashboardRouteOptions } from './dashboard.ts';
export { AlertTracker, evaluateConditions, ALERT_KINDS } from './alerts.ts';
export type { AlertCondition, AlertInputs, AlertJson, AlertKind, AlertThresholds, Evaluation } from './alerts.ts';
export { parseExposition, sumSamples, sumBy } from './exposition.ts';
export type { Exposition, Sample, Family } from './exposition.ts';
