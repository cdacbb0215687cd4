/**
 * The kit's Prometheus series, registered on the service's registry
 * (`createRegistry` of src/core/metrics.ts). Route labels are route
 * patterns (`/v1/orders/:id`), never raw paths, so cardinality stays bounded.
 */
import { Counter, Histogram, type Registry } from 'prom-client';

/** Buckets from 2.5 ms to 10 s: fine enough around typical latencies for p95/p99 by histogram_quantile. */
export const DURATION_BUCKETS_SEC = [0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.4, 0.6, 1, 1.5, 2.5, 5, 10];

/** The kit's metrics. */
export class AppMetrics {
  readonly requests: Counter<'route' | 'method' | 'status'>;
  readonly duration: Histogram<'route' | 'method'>;
  readonly idempotencyReplays: Counter<'route'>;
  readonly idempotencyConflicts: Counter<'route' | 'kind'>;
  readonly fencedRejections: Counter<'route'>;
  readonly dbUnavailable: Counter<'route'>;

  constructor(registry: Registry) {
    const registers = [registry];
    this.requests = new Counter({
      name: 'tandem_http_requests_total',
      help: 'HTTP requests answered, by route pattern, method and status code.',
      labelNames: ['route', 'method', 'status'],
      registers,
    });
    this.duration = new Histogram({
      name: 'tandem_http_request_duration_seconds',
      help: 'Time from request start to the last byte of the response.',
      labelNames: ['route', 'method'],
      buckets: DURATION_BUCKETS_SEC,
      registers,
    });
    this.idempotencyReplays = new Counter({
      name: 'tandem_app_idempotency_replays_total',
      help: 'Retries answered from the stored response of their idempotency key.',
      labelNames: ['route'],
      registers,
    });
    this.idempotencyConflicts = new Counter({
      name: 'tandem_app_idempotency_conflicts_total',
      help: 'Idempotency conflicts: in_flight (409, same key still processing) and mismatch (422, key reused with another payload).',
      labelNames: ['route', 'kind'],
      registers,
    });
    this.fencedRejections = new Counter({
      name: 'tandem_app_fenced_rejections_total',
      help: 'Writes refused with 503 because the region is read-only (fenced).',
      labelNames: ['route'],
      registers,
    });
    this.dbUnavailable = new Counter({
      name: 'tandem_app_db_unavailable_total',
      help: 'Requests answered 503 because the region database was unreachable, timed out or read-only.',
      labelNames: ['route'],
      registers,
    });
  }
}
