/**
 * `app`: settings of the app kit and the reference service.
 */
import { z } from 'zod';
import { secretRef, sec } from './common.ts';

export const app = z
  .object({
    /** How long an idempotency key and its stored response are kept (IETF draft: advertise it). */
    idempotencyTtlSec: sec.default(86_400),
    maxBodyBytes: z.number().int().positive().default(1_048_576),
    /** Grace period for in-flight requests after SIGTERM. */
    shutdownGraceMs: z.number().int().positive().default(10_000),
    /** Session signing keys: the first signs, all verify (rotation). Each is a secret reference. */
    sessionKeys: z.array(secretRef).default([]),
    sessionTtlSec: sec.default(43_200),
  })
  .strict();
export type AppConfig = z.output<typeof app>;
