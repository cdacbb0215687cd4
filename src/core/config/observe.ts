/**
 * `alerts`: what tandem itself evaluates and where it sends notifications,
 * and how the collector behind the dashboard polls. The lag thresholds live
 * in `replication` (`lagWarnSec`, `lagCriticalSec`) because the agent and the
 * app kit use them too.
 */
import { z } from 'zod';
import { ms, sec } from './common.ts';

/** Defaults of the `alerts` section, in one table. */
export const ALERTS_DEFAULTS = {
  repeatIntervalSec: 3_600,
  errorRateThreshold: 0.05,
  errorRateWindowSec: 60,
  errorRateMinRequests: 20,
  pollIntervalMs: 1_000,
  historySec: 900,
} as const;

export const alerts = z
  .object({
    /** Re-send a still-firing alert after this long. */
    repeatIntervalSec: sec.default(ALERTS_DEFAULTS.repeatIntervalSec),
    /** HTTP 5xx share over the last `errorRateWindowSec` that counts as an error-rate spike. */
    errorRateThreshold: z.number().min(0).max(1).default(ALERTS_DEFAULTS.errorRateThreshold),
    /** The window the 5xx share is computed over. */
    errorRateWindowSec: sec.default(ALERTS_DEFAULTS.errorRateWindowSec),
    /** Fewer requests than this in the window never count as a spike (1 error in 2 requests is noise). */
    errorRateMinRequests: z.number().int().min(1).default(ALERTS_DEFAULTS.errorRateMinRequests),
    /** How often the collector (dashboard, alert evaluation) polls every daemon. */
    pollIntervalMs: ms.min(200).default(ALERTS_DEFAULTS.pollIntervalMs),
    /** How much history the dashboard keeps for its charts. */
    historySec: sec.max(86_400).default(ALERTS_DEFAULTS.historySec),
    webhooks: z.array(z.object({ url: z.url() }).strict()).default([]),
  })
  .strict();
export type AlertsConfig = z.output<typeof alerts>;
