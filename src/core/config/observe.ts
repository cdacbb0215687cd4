/**
 * `alerts`: what tandem itself evaluates and where it sends notifications.
 */
import { z } from 'zod';
import { sec } from './common.ts';

export const alerts = z
  .object({
    /** Re-send a still-firing alert after this long. */
    repeatIntervalSec: sec.default(3_600),
    /** HTTP 5xx share over the last minute that counts as an error-rate spike. */
    errorRateThreshold: z.number().min(0).max(1).default(0.05),
    webhooks: z.array(z.object({ url: z.url() }).strict()).default([]),
  })
  .strict();
export type AlertsConfig = z.output<typeof alerts>;
