/**
 * `tandem replicate status`: what an operator wants to see, read straight
 * from every region's database (works whether or not the agents run): lag per
 * peer, the slots this region serves and how much WAL they hold back,
 * conflicts by kind, paused tables with parked changes.
 */
import type { Config } from '../core/config/index.ts';
import { connectClient } from '../core/pg.ts';
import { formatLsn } from './protocol.ts';
import { slotName } from './schema.ts';
import { currentWalLsn, readSlot } from './slot.ts';
import { readLag, type PeerLag } from './status.ts';

/** One region's replication state. */
export interface RegionReplicationStatus {
  region: string;
  error?: string;
  lag: PeerLag[];
  /** Slots in this region that peers stream from. */
  slots: Array<{ peer: string; slot: string; exists: boolean; active: boolean; confirmedFlushLsn: string | null; retainedBytes: number | null; walStatus: string | null }>;
  conflicts: Record<string, number>;
  paused: Array<{ peer: string; table: string; parked: number; reason: string; since: string }>;
}

export interface ReplicationStatus {
  at: string;
  regions: RegionReplicationStatus[];
  thresholds: { lagWarnSec: number; lagCriticalSec: number };
}

/** Read the status of every region (a region that cannot be reached reports its error). */
export async function replicationStatus(config: Config): Promise<ReplicationStatus> {
  const regions = await Promise.all(
    config.regions.map(async (r, i): Promise<RegionReplicationStatus> => {
      const out: RegionReplicationStatus = { region: r.name, lag: [], slots: [], conflicts: {}, paused: [] };
      let db;
      try {
        db = await connectClient(r.database, { applicationName: 'tandem-status' }, `regions[${i}].database (${r.name})`);
        db.on('error', () => {});
        out.lag = await readLag(db, { heartbeatIntervalMs: config.replication.heartbeatIntervalMs });
        const wal = await currentWalLsn(db);
        for (const peer of config.regions) {
          if (peer.name === r.name) continue;
          const slot = slotName(peer.name);
          const s = await readSlot(db, slot);
          out.slots.push({
            peer: peer.name,
            slot,
            exists: Boolean(s),
            active: s?.active ?? false,
            confirmedFlushLsn: s?.confirmedFlushLsn == null ? null : formatLsn(s.confirmedFlushLsn),
            retainedBytes: s?.restartLsn == null ? null : Number(wal - s.restartLsn),
            walStatus: s?.walStatus ?? null,
          });
        }
        const { rows: ok } = await db.query<{ ok: boolean }>(`SELECT to_regclass('tandem.conflicts') IS NOT NULL AS ok`);
        if (ok[0]?.ok) {
          const { rows: c } = await db.query<{ kind: string; n: number }>('SELECT kind, count(*)::int AS n FROM tandem.conflicts GROUP BY kind ORDER BY kind');
          for (const x of c) out.conflicts[x.kind] = x.n;
          const { rows: p } = await db.query<{ peer: string; relname: string; n: number; reason: string; since: Date }>(
            `SELECT peer, relname, count(*)::int AS n, (array_agg(reason ORDER BY id DESC))[1] AS reason, min(parked_at) AS since
               FROM tandem.parked GROUP BY peer, relname ORDER BY peer, relname`,
          );
          out.paused = p.map((x) => ({ peer: x.peer, table: x.relname, parked: x.n, reason: x.reason, since: x.since.toISOString() }));
        }
      } catch (err) {
        out.error = (err as Error).message;
      } finally {
        await db?.end().catch(() => {});
      }
      return out;
    }),
  );
  return { at: new Date().toISOString(), regions, thresholds: { lagWarnSec: config.replication.lagWarnSec, lagCriticalSec: config.replication.lagCriticalSec } };
}

/** The status as text for people. */
export function formatStatus(st: ReplicationStatus): string {
  const lines: string[] = [];
  for (const r of st.regions) {
    lines.push(`${r.region}${r.error ? `: UNREACHABLE (${r.error})` : ''}`);
    if (r.error) continue;
    for (const l of r.lag) {
      const level = l.lagSec > st.thresholds.lagCriticalSec ? ' CRITICAL' : l.lagSec > st.thresholds.lagWarnSec ? ' WARNING' : '';
      lines.push(`  from ${l.peer}: lag ${l.lagSec.toFixed(1)} s${level}${l.sourceCommitAt ? ` (source time ${l.sourceCommitAt.toISOString()})` : ' (nothing applied yet)'}`);
    }
    for (const s of r.slots) {
      lines.push(
        s.exists
          ? `  slot ${s.slot} (for ${s.peer}): ${s.active ? 'streaming' : 'idle'}, confirmed ${s.confirmedFlushLsn}, holds ${s.retainedBytes ?? '?'} bytes of WAL${s.walStatus && s.walStatus !== 'reserved' ? ` [${s.walStatus}]` : ''}`
          : `  slot ${s.slot} (for ${s.peer}): MISSING — run tandem replicate setup`,
      );
    }
    const conflicts = Object.entries(r.conflicts);
    if (conflicts.length) lines.push(`  conflicts: ${conflicts.map(([k, n]) => `${k} ${n}`).join(', ')}`);
    for (const p of r.paused) lines.push(`  PAUSED ${p.table} from ${p.peer}: ${p.parked} change(s) parked since ${p.since}: ${p.reason}`);
  }
  return lines.join('\n');
}
