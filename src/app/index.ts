/**
 * `tandem/app`: the app kit for stateless regional services — correlation
 * ids, idempotency keys, granular health, the write fence, cross-region
 * sessions — as a `node:http` handler, Express middleware or Fastify plugin.
 */
export { Kit, compilePath, type KitOptions, type KitRequest, type KitReply, type KitRoute, type Method, type FastifyLike } from './kit.ts';
export { AppServer, type AppServerOptions } from './server.ts';
export {
  contextFromHeaders,
  currentContext,
  currentLogger,
  formatTraceparent,
  kitFetch,
  newSpanId,
  newTraceId,
  outgoingHeaders,
  parseTraceparent,
  runWithContext,
  CORRELATION_ID,
  HEADER,
  type RequestContext,
  type TraceParent,
} from './correlation.ts';
export { HttpProblem, isProblem, problemType, PROBLEMS, type ProblemSlug } from './problem.ts';
export { createAppPool, inTransaction, isDbUnavailable, type AppPoolOptions, type Queryable } from './db.ts';
export {
  IdempotencyStore,
  canonicalJson,
  entityId,
  fingerprint,
  parseIdempotencyKey,
  TANDEM_ID_NAMESPACE,
  type ClaimResult,
  type KeyRef,
  type StoredResponse,
} from './idempotency.ts';
export { FenceReader, readFence, setFence, type FenceState } from './fence.ts';
export { SessionKeyring, SessionStore, keyId, MIN_SESSION_KEY_LENGTH, type Session, type SessionClaims } from './session.ts';
export { HealthChecker, tableLagSource, type HealthReport, type LagSource, type PeerLag } from './health.ts';
export { AppMetrics, DURATION_BUCKETS_SEC } from './metrics.ts';
export { KIT_MIGRATIONS, migrate, type Migration, type MigrationResult } from './migrations.ts';
export { runPrimary, runWorker, shareRegistry, clusterMetricsText, isWorker, type PrimaryOptions } from './cluster.ts';
