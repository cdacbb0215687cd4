/**
 * What a drill measured, computed from the synthetic clients' request records
 * and the timeline markers: per-geography RTO, success-rate series, the
 * regions that served each geography, and the RPO from acknowledged writes
 * missing in the survivors. Pure functions, so every figure is testable.
 */

/** One request of a synthetic client (the load client's record). */
export interface RequestRecord {
  /** When the request finished (ms since the epoch). */
  t: number;
  geo: string;
  op: string;
  key?: string;
  orderId?: string;
  /** The region that answered (X-Tandem-Region), if any answered. */
  region?: string;
  status?: number;
  ok: boolean;
  /** A write the service acknowledged (2xx). */
  acknowledged?: boolean;
  latencyMs: number;
  error?: string;
}

/** A named instant of the drill (fault injected, detection, DNS switch, ...). */
export interface Marker {
  name: string;
  at: number;
  detail?: string;
}

/** One second of one geography. */
export interface SecondBucket {
  /** Start of the second (ms). */
  t: number;
  total: number;
  ok: number;
  /** Requests answered per region. */
  byRegion: Record<string, number>;
}

/** Per-second buckets of each geography between `from` and `to`. */
export function bucketize(records: readonly RequestRecord[], from: number, to: number): Record<string, SecondBucket[]> {
  const start = Math.floor(from / 1000) * 1000;
  const n = Math.max(0, Math.ceil((to - start) / 1000));
  const out: Record<string, SecondBucket[]> = {};
  for (const r of records) {
    if (r.t < start || r.t >= start + n * 1000) continue;
    const series = (out[r.geo] ??= Array.from({ length: n }, (_, i) => ({ t: start + i * 1000, total: 0, ok: 0, byRegion: {} })));
    const b = series[Math.floor((r.t - start) / 1000)]!;
    b.total++;
    if (r.ok) b.ok++;
    if (r.region) b.byRegion[r.region] = (b.byRegion[r.region] ?? 0) + 1;
  }
  return out;
}

/**
 * Recovery time of one geography: from the fault until its success rate is
 * back above `threshold` for good (until `until`): the end of the last second
 * after the fault whose success rate is below the threshold. 0 when the
 * geography never dipped; undefined when it had not recovered by `until`.
 */
export function recoveryTimeMs(buckets: readonly SecondBucket[], faultAt: number, until: number, threshold = 0.99, settleSec = 3): number | undefined {
  const relevant = buckets.filter((b) => b.t + 1000 > faultAt && b.t < until && b.total > 0);
  let lastBad: SecondBucket | undefined;
  for (const b of relevant) if (b.ok / b.total < threshold) lastBad = b;
  if (!lastBad) return 0;
  // Recovered only if some good seconds follow the last bad one before `until`.
  const after = relevant.filter((b) => b.t > lastBad!.t);
  if (after.length < settleSec) return undefined;
  return lastBad.t + 1000 - faultAt;
}

/** The region that answered most requests of a geography in a time range. */
export function servingRegion(buckets: readonly SecondBucket[], from: number, to: number): string | undefined {
  const counts: Record<string, number> = {};
  for (const b of buckets) if (b.t >= from && b.t < to) for (const [r, n] of Object.entries(b.byRegion)) counts[r] = (counts[r] ?? 0) + n;
  return Object.entries(counts).sort((a, b) => b[1] - a[1])[0]?.[0];
}

/**
 * When a geography's traffic was home again after a failback: the start of the first second from which
 * on every answered request of the geography (until `until`) came from `region`. Undefined when it was
 * not home by then (or no request came after `from`).
 */
export function homeAgainAt(buckets: readonly SecondBucket[], region: string, from: number, until: number): number | undefined {
  const relevant = buckets.filter((b) => b.t + 1000 > from && b.t < until && Object.keys(b.byRegion).length > 0);
  let at: number | undefined;
  for (const b of relevant) {
    const home = Object.entries(b.byRegion).every(([r, n]) => r === region || n === 0);
    if (!home) at = undefined;
    else at ??= Math.max(b.t, from);
  }
  return at;
}

/** An acknowledged write: which entity, where, when. */
export interface AckedWrite {
  key: string;
  orderId: string;
  region: string;
  ackAt: number;
}

/** The acknowledged writes (creates) among the records. */
export function acknowledgedWrites(records: readonly RequestRecord[]): AckedWrite[] {
  const byKey = new Map<string, AckedWrite>();
  for (const r of records) {
    if (!r.acknowledged || !r.orderId || !r.key || !r.region) continue;
    // A retried key may be acknowledged twice (once per region); the first acknowledgement counts.
    if (!byKey.has(r.key)) byKey.set(r.key, { key: r.key, orderId: r.orderId, region: r.region, ackAt: r.t });
  }
  return [...byKey.values()];
}

/** RPO of a failure: acknowledged writes of the failed region that a survivor did not have at the failure. */
export interface RpoResult {
  /** Acknowledged writes served by the failed region before the fault. */
  candidates: number;
  missing: { key: string; orderId: string; ackAt: string; ageMs: number }[];
  /** Seconds between the oldest missing write's acknowledgement and the fault (0 when none is missing). */
  rpoSec: number;
}

/** Given which candidate order ids the survivor had, compute the RPO. */
export function computeRpo(writes: readonly AckedWrite[], failedRegion: string, faultAt: number, presentInSurvivor: ReadonlySet<string>): RpoResult {
  const candidates = writes.filter((w) => w.region === failedRegion && w.ackAt <= faultAt);
  const missing = candidates
    .filter((w) => !presentInSurvivor.has(w.orderId))
    .map((w) => ({ key: w.key, orderId: w.orderId, ackAt: new Date(w.ackAt).toISOString(), ageMs: faultAt - w.ackAt }))
    .sort((a, b) => b.ageMs - a.ageMs);
  return { candidates: candidates.length, missing, rpoSec: missing.length ? missing[0]!.ageMs / 1000 : 0 };
}

/** Percentile (nearest rank) of a list of numbers; undefined for an empty list. */
export function percentile(values: readonly number[], p: number): number | undefined {
  if (values.length === 0) return undefined;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))];
}
