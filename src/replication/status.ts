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
   * now − source commit (or heartbeat) time of the last applied change. Before
   * anything was applied it is measured from setup time, so it grows too.
   */
  lagSec: number;
  /** Source commit time of the last applied change or heartbeat; null before the first. */
  sourceCommitAt: Date | null;
  appliedAt: Date | null;
}

/**
 * Read per-peer lag from this region's database. Returns [] when tandem is not
 * set up there (no `tandem` schema), so callers can treat "no replication" alike.
 */
export async function readLag(client: Queryable): Promise<PeerLag[]> {
  const { rows: exists } = await client.query<{ ok: boolean }>(`SELECT to_regclass('tandem.replication_status') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return [];
  const { rows } = await client.query<{ peer: string; lag: string | null; source_commit_ts: Date | null; applied_at: Date | null }>(
    `SELECT peer, extract(epoch from clock_timestamp() - COALESCE(source_commit_ts, (SELECT created_at FROM tandem.node), clock_timestamp()))::float8::text AS lag,
            source_commit_ts, applied_at
       FROM tandem.replication_status ORDER BY peer`,
  );
  return rows.map((r) => ({
    peer: r.peer,
    lagSec: Math.max(0, Number(r.lag)),
    sourceCommitAt: r.source_commit_ts,
    appliedAt: r.applied_at,
  }));
}

/** The worst lag over all peers (null when there are none). */
export function maxLagSec(lags: readonly PeerLag[]): number | null {
  if (lags.length === 0) return null;
  return Math.max(...lags.map((l) => l.lagSec));
}
