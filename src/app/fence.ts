/**
 * The write fence: `tandem_app.region_state` in each region's own database
 * says whether the region is read-only. The controller and operators write
 * it; every instance reads it (cached for `fenceCacheMs`, so a fence takes
 * effect everywhere within about a second) and answers writes with 503 while
 * it is set. The table is region-local: it is never replicated.
 */
import type { Queryable } from './db.ts';

/** The fence of one region as last read. */
export interface FenceState {
  readOnly: boolean;
  reason: string | undefined;
  updatedAt: Date | undefined;
}

const OPEN: FenceState = { readOnly: false, reason: undefined, updatedAt: undefined };

/** Reads the region's fence, at most once per `cacheMs`, sharing one query between concurrent callers. */
export class FenceReader {
  readonly #db: Queryable;
  readonly #region: string;
  readonly #cacheMs: number;
  #value: FenceState | undefined;
  #fetchedAt = 0;
  #pending: Promise<FenceState> | undefined;

  constructor(db: Queryable, region: string, cacheMs: number) {
    this.#db = db;
    this.#region = region;
    this.#cacheMs = cacheMs;
  }

  /** The last value read, without asking the database (undefined before the first read). */
  get cached(): FenceState | undefined {
    return this.#value;
  }

  /** The fence; throws the database error when it cannot be read and no fresh copy is cached. */
  async get(): Promise<FenceState> {
    if (this.#value && performance.now() - this.#fetchedAt < this.#cacheMs) return this.#value;
    this.#pending ??= readFence(this.#db, this.#region)
      .then((v) => {
        this.#value = v;
        this.#fetchedAt = performance.now();
        return v;
      })
      .finally(() => {
        this.#pending = undefined;
      });
    return this.#pending;
  }

  /** Forget the cached value (tests, and right after this instance changed the fence). */
  invalidate(): void {
    this.#fetchedAt = 0;
  }
}

/**
 * Read the fence of `region` (no row means open). With `share`, inside a write's transaction: the row stays
 * share-locked until it ends, so `setFence` waits for that write (the row must exist: `ensureFenceRow`).
 */
export async function readFence(db: Queryable, region: string, opts: { share?: boolean } = {}): Promise<FenceState> {
  const { rows } = await db.query<{ read_only: boolean; reason: string | null; updated_at: Date }>(
    `SELECT read_only, reason, updated_at FROM tandem_app.region_state WHERE region = $1${opts.share ? ' FOR SHARE' : ''}`,
    [region],
  );
  const row = rows[0];
  if (!row) return OPEN;
  return { readOnly: row.read_only, reason: row.reason ?? undefined, updatedAt: row.updated_at };
}

/** Create `region`'s fence row, open, if it has none (a share lock needs a row to lock). */
export async function ensureFenceRow(db: Queryable, region: string): Promise<void> {
  await db.query(`INSERT INTO tandem_app.region_state (region, read_only) VALUES ($1, false) ON CONFLICT (region) DO NOTHING`, [region]);
}

/** Set or clear the fence of `region` (what `tandem app fence` and operators' scripts do). */
export async function setFence(db: Queryable, region: string, readOnly: boolean, reason?: string): Promise<FenceState> {
  const { rows } = await db.query<{ read_only: boolean; reason: string | null; updated_at: Date }>(
    `INSERT INTO tandem_app.region_state (region, read_only, reason, updated_at) VALUES ($1, $2, $3, now())
     ON CONFLICT (region) DO UPDATE SET read_only = EXCLUDED.read_only, reason = EXCLUDED.reason, updated_at = EXCLUDED.updated_at
     RETURNING read_only, reason, updated_at`,
    [region, readOnly, reason ?? null],
  );
  const row = rows[0]!;
  return { readOnly: row.read_only, reason: row.reason ?? undefined, updatedAt: row.updated_at };
}
