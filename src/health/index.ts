/**
 * `tandem/health`: the health engine and the `HealthSource` interface that
 * DNS, the controller and the dashboard share.
 */
export { HealthChecker, isServing } from './checker.ts';
export type { HealthSource, HealthState, RegionHealth, HealthTransition, HealthTarget, HealthCheckerOptions } from './checker.ts';
export { probe, bodySaysUnhealthy, UNHEALTHY_STATUS } from './probe.ts';
export type { ProbeResult, ProbeOptions } from './probe.ts';
