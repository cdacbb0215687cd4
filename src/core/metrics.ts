/**
 * Prometheus metrics (prom-client). Each daemon owns one registry labelled
 * with its component and region, exposed at `/metrics` by its API server.
 */
import { Registry, collectDefaultMetrics } from 'prom-client';

/** A registry for one daemon with `component` and `region` on every series. */
export function createRegistry(component: string, region?: string, withProcessMetrics = true): Registry {
  const registry = new Registry();
  registry.setDefaultLabels(region ? { component, region } : { component });
  if (withProcessMetrics) collectDefaultMetrics({ register: registry, prefix: 'tandem_' });
  return registry;
}
