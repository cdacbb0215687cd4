/**
 * `app`: settings of the app kit and the reference service. Defaults live in
 * this one table; the blueprint's numbers where it has them (keys kept 24 h).
 */
import { z } from 'zod';
import { secretRef, sec, ms } from './common.ts';

/** How the kit talks to the region's own database. */
export const appDb = z
  .object({
    /** Connections per worker process. */
    poolSize: z.number().int().min(1).max(200).default(10),
    /** Waiting for a connection (new or from the pool) longer than this answers 503. */
    connectTimeoutMs: ms.default(2_000),
    /** Server-side statement_timeout: the database cancels statements that run longer. */
    statementTimeoutMs: ms.default(5_000),
  })
  .strict();

export const APP_DB_DEFAULTS = appDb.parse({});

export const app = z
  .object({
    /** How long an idempotency key and its stored response are kept (IETF draft: advertise it). */
    idempotencyTtlSec: sec.default(86_400),
    /**
     * A key claimed by a request that never finished (its process died) is
     * given to a retry after this long; until then retries get 409.
     */
    idempotencyLockSec: sec.default(30),
    /** Longest accepted Idempotency-Key (characters inside the structured-field string). */
    idempotencyKeyMaxLength: z.number().int().min(8).max(1024).default(255),
    maxBodyBytes: z.number().int().positive().default(1_048_576),
    /** Grace period for in-flight requests after SIGTERM. */
    shutdownGraceMs: z.number().int().positive().default(10_000),
    /** Session signing keys: the first signs, all verify (rotation). Each is a secret reference. */
    sessionKeys: z.array(secretRef).default([]),
    sessionTtlSec: sec.default(43_200),
    /** How long an instance trusts its cached copy of `tandem_app.region_state` (the write fence). */
    fenceCacheMs: ms.default(1_000),
    /** `Retry-After` sent with 503 answers (fenced region, database down, draining). */
    retryAfterSec: sec.default(5),
    /** Deadline of the database check in /healthz. */
    healthTimeoutMs: ms.default(2_000),
    db: appDb.default(APP_DB_DEFAULTS),
  })
  .strict();
export type AppConfig = z.output<typeof app>;
