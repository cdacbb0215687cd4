/**
 * `/healthz`: what the DNS health probes and the controller read. It checks
 * the region's own database (reachable, writable, latency), reports the
 * replication lag per peer, the write fence and whether this instance is
 * draining.
 *
 * Status and HTTP code: `fail` (503) when the database is unreachable or not
 * writable; `degraded` (200) when fenced, draining, or a peer lags beyond the
 * warning threshold; `ok` (200) otherwise. Lag never makes it 503: during a
 * partition every region lags, and taking every region out of DNS would be
 * worse than serving slightly stale data.
 */
import type pg from 'pg';
import type { Queryable } from './db.ts';

/** One peer's lag as `/healthz` reports it. */
export interface PeerLag {
  peer: string;
  /** Seconds since the last applied source commit; `null` when unknown. */
  lagSec: number | null;
}

/** Reads the lag per peer from the region's database (the replication part's `readLag` fits). */
export type LagSource = (db: Queryable) => Promise<PeerLag[]>;

/** The `/healthz` body. */
export interface HealthReport {
  status: 'ok' | 'degraded' | 'fail';
  region: string;
  version: string;
  checks: {
    database: { ok: boolean; writable: boolean; latencyMs: number; error?: string };
    replication: { peers: PeerLag[]; error?: string };
    fenced: { readOnly: boolean; reason?: string };
    draining: boolean;
  };
}

/** Options of the health checker. */
export interface HealthCheckerOptions {
  /** A small pool of its own, so a saturated request pool does not make the region look dead. */
  pool: pg.Pool;
  region: string;
  version: string;
  timeoutMs: number;
  /** Lag above this makes the status `degraded`. */
  lagWarnSec: number;
  lagSource?: LagSource;
  /** Whether this instance is draining (read at every check). */
  draining: () => boolean;
}

/**
 * The lag source used until the replication part provides one: reads
 * `tandem.replication_status` directly when the table exists (lag = now() −
 * the last applied source commit time of each peer) and reports nothing when
 * it does not.
 */
export const tableLagSource: LagSource = async (db) => {
  const { rows: exists } = await db.query<{ t: string | null }>(`SELECT to_regclass('tandem.replication_status')::text AS t`);
  if (!exists[0]?.t) return [];
  const { rows } = await db.query<{ r: Record<string, unknown>; now: Date }>('SELECT to_jsonb(s) AS r, now() AS now FROM tandem.replication_status s');
  const out: PeerLag[] = [];
  for (const { r, now } of rows) {
    const peer = pick(r, ['peer', 'peer_region', 'source_region', 'source', 'region']);
    const ts = pick(r, ['source_commit_ts', 'last_source_commit_ts', 'last_commit_ts', 'source_commit_time']);
    if (typeof peer !== 'string') continue;
    const t = typeof ts === 'string' ? Date.parse(ts) : NaN;
    out.push({ peer, lagSec: Number.isFinite(t) ? Math.round(Math.max(0, now.getTime() - t)) / 1000 : null });
  }
  return out.sort((a, b) => a.peer.localeCompare(b.peer));
};

function pick(r: Record<string, unknown>, names: string[]): unknown {
  for (const n of names) if (r[n] !== undefined && r[n] !== null) return r[n];
  return undefined;
}

/** Runs the checks; concurrent callers share one run. */
export class HealthChecker {
  readonly #opts: HealthCheckerOptions;
  #pending: Promise<HealthReport> | undefined;

  constructor(opts: HealthCheckerOptions) {
    this.#opts = opts;
  }

  /** Run the checks (or join the run in progress). */
  check(): Promise<HealthReport> {
    this.#pending ??= this.#run().finally(() => {
      this.#pending = undefined;
    });
    return this.#pending;
  }

  async #run(): Promise<HealthReport> {
    const o = this.#opts;
    const started = performance.now();
    const database: HealthReport['checks']['database'] = { ok: false, writable: false, latencyMs: 0 };
    const replication: HealthReport['checks']['replication'] = { peers: [] };
    const fenced: HealthReport['checks']['fenced'] = { readOnly: false };
    let client: pg.PoolClient | undefined;
    let broken: Error | undefined;
    // The deadline really cancels: the connection is destroyed, which ends the server's work too.
    const timer = setTimeout(() => {
      broken = new Error(`health check timed out after ${o.timeoutMs} ms`);
      (client as unknown as { connection?: { stream?: { destroy(): void } } } | undefined)?.connection?.stream?.destroy();
    }, o.timeoutMs);
    try {
      client = await o.pool.connect();
      if (broken) throw broken;
      await client.query('SELECT 1');
      database.ok = true;
      database.latencyMs = round(performance.now() - started);
      await client.query('BEGIN');
      await client.query('INSERT INTO tandem_app.health_probe (region, checked_at) VALUES ($1, now()) ON CONFLICT (region) DO UPDATE SET checked_at = now()', [o.region]);
      const { rows } = await client.query<{ read_only: boolean; reason: string | null }>('SELECT read_only, reason FROM tandem_app.region_state WHERE region = $1', [o.region]);
      await client.query('COMMIT');
      database.writable = true;
      if (rows[0]?.read_only) {
        fenced.readOnly = true;
        if (rows[0].reason) fenced.reason = rows[0].reason;
      }
      try {
        replication.peers = await (o.lagSource ?? tableLagSource)(client);
      } catch (err) {
        replication.error = (err as Error).message;
      }
    } catch (err) {
      database.error = broken?.message ?? (err as Error).message;
      if (!database.ok) database.latencyMs = round(performance.now() - started);
      broken ??= err as Error;
    } finally {
      clearTimeout(timer);
      client?.release(broken ?? false);
    }
    const draining = o.draining();
    // Lag that cannot be read is not "no lag": degraded until it can be.
    const lagging = replication.error !== undefined || replication.peers.some((p) => p.lagSec === null || p.lagSec > o.lagWarnSec);
    const status = !database.ok || !database.writable ? 'fail' : fenced.readOnly || draining || lagging ? 'degraded' : 'ok';
    return { status, region: o.region, version: o.version, checks: { database, replication, fenced, draining } };
  }
}

const round = (ms: number): number => Math.round(ms * 10) / 10;
