/**
 * `health`: how regions are probed. Defaults are the blueprint's: every 10 s,
 * 3 failures to go unhealthy.
 */
import { z } from 'zod';
import { ipAddress, ms } from './common.ts';

export const health = z
  .object({
    intervalMs: ms.default(10_000),
    timeoutMs: ms.default(2_000),
    /** Consecutive failed probes before a region is unhealthy. */
    failThreshold: z.number().int().min(1).default(3),
    /** Consecutive good probes before an unhealthy region is healthy again. */
    recoverThreshold: z.number().int().min(1).default(2),
    /** Source address of probes (the lab tells vantage points apart by it); default: the OS picks. */
    bindAddress: ipAddress.optional(),
    /** Largest probe response body read (a body that says unhealthy fails the probe). */
    maxBodyBytes: z.number().int().positive().default(65_536),
  })
  .strict()
  .refine((h) => h.timeoutMs <= h.intervalMs, { message: 'timeoutMs must not exceed intervalMs', path: ['timeoutMs'] });
export type HealthConfig = z.output<typeof health>;
