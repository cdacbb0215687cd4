/**
 * `control`: the failover controller's runbook settings and safety rules.
 * Defaults are the blueprint's RPO and RTO of 5 minutes.
 */
import { z } from 'zod';
import { sec } from './common.ts';

export const webhook = z
  .object({
    url: z.url(),
    /** Events to send; default all. */
    events: z.array(z.string()).optional(),
  })
  .strict();

export const control = z
  .object({
    rpoSec: sec.default(300),
    rtoSec: sec.default(300),
    /** Drain a failed region without waiting for an operator. */
    autoDrain: z.boolean().default(true),
    /** Return a recovered region to DNS once it is ready, without waiting for an operator. */
    autoFailback: z.boolean().default(true),
    /** A region returns only when its replication lag from every peer is below this. */
    readinessLagSec: sec.default(5),
    /** Minimum time between two automatic actions on one region (against flapping). */
    waitPeriodSec: z.number().int().min(0).default(60),
    /** Confirm a failure from at least this many vantage points (DNS servers that probe). */
    quorum: z.number().int().min(1).optional(),
    /** What to do when the survivor lags more than the RPO at failover: proceed (and alert) or hold for an operator. */
    rpoBreach: z.enum(['proceed', 'hold']).default('proceed'),
    webhooks: z.array(webhook).default([]),
    /** Append-only audit log (JSON lines); default under the data dir. */
    auditLog: z.string().optional(),
  })
  .strict();
export type ControlConfig = z.output<typeof control>;
