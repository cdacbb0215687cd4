/**
 * `replication`: which tables are kept in step, how conflicts resolve, lag
 * thresholds. Defaults are the blueprint's (warn 60 s, critical 300 s,
 * tombstones kept 24 h).
 */
import { z } from 'zod';
import { ms, sec } from './common.ts';

/** The group-commit wait's cap (ms): see `batch.maxWaitMs`. */
export const DEFAULT_BATCH_WAIT_MS = 20;

export const conflictPolicy = z.discriminatedUnion('policy', [
  z.object({ policy: z.literal('lww') }).strict(),
  z.object({ policy: z.literal('region-priority'), region: z.string() }).strict(),
  /** A module exporting `resolve(local, remote)`; it must be deterministic and symmetric. */
  z.object({ policy: z.literal('custom'), module: z.string(), export: z.string().default('resolve') }).strict(),
]);
export type ConflictPolicyConfig = z.output<typeof conflictPolicy>;

export const replication = z
  .object({
    /** Tables to replicate ("schema.table", quoted parts allowed). */
    tables: z.array(z.string().min(1)).default([]),
    /** Per-table conflict policy; the default is last-writer-wins. */
    conflicts: z.record(z.string(), conflictPolicy).default({}),
    heartbeatIntervalMs: ms.default(1_000),
    /** How long delete tombstones are kept before they are purged (at least 24 h by default). */
    tombstoneRetentionSec: sec.default(86_400),
    lagWarnSec: sec.default(60),
    lagCriticalSec: sec.default(300),
    /**
     * Group commit: several source transactions per target transaction. Before each batch the applier
     * waits for more transactions as long as the previous batch took to apply, at most `maxWaitMs`, unless
     * a whole batch is already queued: a busy target gets fewer, larger batches (less CPU per row); an idle
     * one, whose batches take a few ms, adds next to no lag. 0 turns the wait off.
     */
    batch: z
      .object({
        maxTransactions: z.number().int().positive().default(500),
        maxRows: z.number().int().positive().default(10_000),
        maxWaitMs: z.number().int().min(0).max(1_000).default(DEFAULT_BATCH_WAIT_MS),
      })
      .strict()
      .default({ maxTransactions: 500, maxRows: 10_000, maxWaitMs: DEFAULT_BATCH_WAIT_MS }),
    /** Give each region interleaved sequences (increment = number of regions). */
    interleaveSequences: z.boolean().default(false),
    /**
     * Client-side deadline of one apply statement. A session whose server died without the connection
     * closing would otherwise wait forever; after this the pipeline reconnects and retries.
     */
    applyTimeoutSec: sec.default(60),
    /**
     * Backoff between reconnects of a peer pipeline after an error: from minMs, doubling, capped at maxMs.
     * The cap is short on purpose: after a partition heals, catch-up starts within about maxMs (each
     * attempt also waits up to the region's connectTimeoutSec), and a failed attempt costs little.
     */
    reconnect: z
      .object({
        minMs: ms.default(500),
        maxMs: ms.default(2_000),
      })
      .strict()
      .refine((r) => r.minMs <= r.maxMs, { message: 'minMs must not exceed maxMs', path: ['minMs'] })
      .default({ minMs: 500, maxMs: 2_000 }),
  })
  .strict();
export type ReplicationConfig = z.output<typeof replication>;
