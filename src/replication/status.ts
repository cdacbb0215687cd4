/**
 * Replication lag as any part of tandem can read it through SQL, from the
 * region's own database: `tandem.replication_status` is updated in every
 * apply transaction and for every heartbeat, so lag keeps growing while a
 * peer is unreachable. The app's /healthz and the controller use `readLag`.
 */
import type { Queryable } from './slot.ts';

/** Lag of one peer → this region. */
export interface PeerLag {
  peer: string;
  /**
   * Seconds behind the peer (see `replicationLagSec`). Before anything was
   * applied it is measured from setup time, so it grows too.
   */
  lagSec: number;
  /** Source commit time of the last applied change or heartbeat; null before the first. */
  sourceCommitAt: Date | null;
  appliedAt: Date | null;
}

/**
 * Replication lag from the last change (or heartbeat) applied from a peer:
 * how late it was applied, plus how long the next heartbeat is overdue. A
 * healthy idle link reads its transport delay rather than a heartbeat-interval
 * sawtooth; a link that stopped delivering grows by one second per second.
 * With `heartbeatIntervalMs` 0 this is simply now − source commit time.
 */
export function replicationLagSec(sourceMs: number, appliedMs: number, nowMs: number, heartbeatIntervalMs: number): number {
  const delay = Math.max(0, appliedMs - sourceMs);
  const overdue = Math.max(0, nowMs - Math.max(appliedMs, sourceMs) - heartbeatIntervalMs);
  return (delay + overdue) / 1000;
}

/**
 * Read per-peer lag from this region's database. Returns [] when tandem is not
 * set up there (no `tandem` schema), so callers can treat "no replication" alike.
 * Pass the configured `replication.heartbeatIntervalMs` to read lag without the
 * heartbeat sawtooth (`replicationLagSec`).
 */
export async function readLag(client: Queryable, opts: { heartbeatIntervalMs?: number } = {}): Promise<PeerLag[]> {
  const { rows: exists } = await client.query<{ ok: boolean }>(`SELECT to_regclass('tandem.replication_status') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return [];
  // Every time is read on the database's clock, so the client's clock does not matter.
  const { rows } = await client.query<{ peer: string; source_ms: number; applied_ms: number | null; now_ms: number; source_commit_ts: Date | null; applied_at: Date | null }>(
    `SELECT peer,
            (extract(epoch from COALESCE(source_commit_ts, (SELECT created_at FROM tandem.node), clock_timestamp())) * 1000)::float8 AS source_ms,
            (extract(epoch from applied_at) * 1000)::float8 AS applied_ms,
            (extract(epoch from clock_timestamp()) * 1000)::float8 AS now_ms,
            source_commit_ts, applied_at
       FROM tandem.replication_status ORDER BY peer`,
  );
  const hb = opts.heartbeatIntervalMs ?? 0;
  return rows.map((r) => ({
    peer: r.peer,
    lagSec: r.applied_ms === null || r.source_commit_ts === null ? Math.max(0, (r.now_ms - r.source_ms) / 1000) : replicationLagSec(r.source_ms, r.applied_ms, r.now_ms, hb),
    sourceCommitAt: r.source_commit_ts,
    appliedAt: r.applied_at,
  }));
}

/** The worst lag over all peers (null when there are none). */
export function maxLagSec(lags: readonly PeerLag[]): number | null {
  if (lags.length === 0) return null;
  return Math.max(...lags.map((l) => l.lagSec));
}
