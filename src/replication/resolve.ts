/**
 * The conflict-resolution rule, as pure functions: no I/O, no clock, no
 * randomness. Every region runs exactly this code on exactly the same inputs
 * (versions are data, not local state), which is why they all decide alike.
 *
 * A version is (source commit time in µs, region). Versions are totally
 * ordered: timestamps first, then region names bytewise; the higher wins and
 * an equal version is applied again (idempotent). Last-writer-wins on a total
 * order is a max-register: the final state does not depend on the order in
 * which changes arrive, so every region converges. `region-priority` changes
 * the order (the named region's versions above all others) but keeps it total.
 *
 * Conflict kinds are named as PostgreSQL 18 names them, plus `update_deleted`
 * (PostgreSQL 19) and `insert_deleted` (tandem: an insert older than a delete
 * of the same key in another region).
 */

/** The version of a row or tombstone: its writer's commit time (Unix µs) and region. */
export interface Version {
  tsUs: bigint;
  region: string;
  /**
   * region-priority only: the write overwrote a version of the priority
   * region (or one that had inherited its rank), so it ranks with the
   * priority region. Without this a later write that had seen the priority
   * region's row would lose everywhere but stay in its own region.
   */
  priority?: boolean;
}

/** The version of rows whose commit time is unknown (written before track_commit_timestamp was on). */
export const EPOCH_US = 0n;

/** Conflict kinds, as recorded in `tandem.conflicts.kind` and the metrics' `kind` label. */
export const CONFLICT_KINDS = [
  'insert_exists',
  'insert_deleted',
  'update_origin_differs',
  'update_missing',
  'update_deleted',
  'delete_origin_differs',
  'delete_missing',
] as const;
export type ConflictKind = (typeof CONFLICT_KINDS)[number];

/** Per-table policy after loading (a custom resolver is a loaded function). */
export type Policy =
  | { kind: 'lww' }
  | { kind: 'region-priority'; region: string }
  | { kind: 'custom'; resolve: CustomResolver; name: string };

/** A row as text values (canonical text form), column name → value (null = SQL NULL). */
export type TextRow = Record<string, string | null>;

/** One side of a custom resolution. */
export interface ResolverSide {
  row: TextRow;
  /** Commit time of the write that produced the row (Unix µs). */
  commitTsUs: bigint;
  region: string;
}

/**
 * A custom resolver: given both rows, return the row to keep (columns left
 * out keep the value of the row with the higher version). The result gets
 * the higher of the two versions. Regions converge only if it is a join:
 * deterministic, commutative (`resolve({local: a, remote: b})` equals
 * `resolve({local: b, remote: a})`), associative and idempotent, AND local
 * writes only grow a row in that order (counters that only increase, sets
 * that only gain members). tandem cannot tell a concurrent write from a later
 * one that had seen the row, so it calls the resolver whenever an incoming
 * insert/update meets an existing row; deletes stay last-writer-wins.
 */
export type CustomResolver = (input: { table: string; local: ResolverSide; remote: ResolverSide }) => TextRow;

/** Compare two strings bytewise (UTF-8), as `memcmp` would. */
export function compareBytes(a: string, b: string): number {
  if (a === b) return 0;
  return Buffer.compare(Buffer.from(a, 'utf8'), Buffer.from(b, 'utf8'));
}

/** Total order of versions under plain last-writer-wins: -1, 0 or 1. */
export function compareVersions(a: Version, b: Version): number {
  if (a.tsUs !== b.tsUs) return a.tsUs < b.tsUs ? -1 : 1;
  return Math.sign(compareBytes(a.region, b.region));
}

/** Total order of versions under a policy (region-priority ranks the named region first). */
export function compareUnderPolicy(a: Version, b: Version, policy: Policy): number {
  if (policy.kind === 'region-priority') {
    const ra = priorityRank(a, policy.region);
    const rb = priorityRank(b, policy.region);
    if (ra !== rb) return ra - rb;
  }
  return compareVersions(a, b);
}

/** 1 for versions of the priority region and writes that inherited its rank, else 0. */
export function priorityRank(v: Version, priorityRegion: string): number {
  return v.region === priorityRegion || v.priority === true ? 1 : 0;
}

/** The higher of two versions under a policy (either when equal). */
export function maxVersion(a: Version, b: Version, policy: Policy): Version {
  return compareUnderPolicy(a, b, policy) >= 0 ? a : b;
}

/** What the target holds for a key when a change arrives. */
export type LocalState =
  | { kind: 'row'; version: Version }
  | { kind: 'tombstone'; version: Version }
  | { kind: 'absent' };

/** An incoming change, reduced to what the decision needs. */
export interface IncomingChange {
  op: 'insert' | 'update' | 'delete';
  version: Version;
  /**
   * For insert/update: whether every column has a value. False when the
   * change carries unchanged-TOAST columns that nothing in the batch could
   * fill; such a change can update an existing row but cannot create one.
   */
  complete: boolean;
}

/** What apply does with a key. */
export type Action =
  /** Write the remote row (update the existing row or insert it), keep the remote version. */
  | 'upsert'
  /** Delete the local row, keep a tombstone with the remote version. */
  | 'delete'
  /** No row to delete: record (or raise) the tombstone with the remote version. */
  | 'tombstone'
  /** Leave the key as it is. */
  | 'skip'
  /** Both sides have rows and the policy is custom: merge, keep the higher version. */
  | 'merge';

/** The decision for one key. */
export interface Decision {
  action: Action;
  /** Set when the situation is a conflict worth recording. */
  conflict?: ConflictKind;
  /** Extra words for the conflict record. */
  reason?: string;
}

/** Reason recorded when a change cannot create a row because of unchanged TOAST columns. */
export const incompleteReason = 'the change has unchanged TOAST columns and there is no local row to take them from; not applied';

/** Decide what to do with one incoming change given the local state. Pure and total. */
export function decide(change: IncomingChange, local: LocalState, policy: Policy): Decision {
  const remote = change.version;
  const wins = (v: Version) => compareUnderPolicy(remote, v, policy) >= 0;

  if (change.op === 'delete') {
    switch (local.kind) {
      case 'absent':
        return { action: 'tombstone', conflict: 'delete_missing' };
      case 'tombstone':
        return wins(local.version) ? { action: 'tombstone', conflict: 'delete_missing' } : { action: 'skip', conflict: 'delete_missing' };
      case 'row': {
        const sameRegion = local.version.region === remote.region;
        if (wins(local.version)) return sameRegion ? { action: 'delete' } : { action: 'delete', conflict: 'delete_origin_differs' };
        return { action: 'skip', conflict: 'delete_origin_differs', ...(sameRegion ? { reason: sameRegionStale } : {}) };
      }
    }
  }

  // insert or update: the remote side is a row
  switch (local.kind) {
    case 'absent':
      if (change.op === 'insert') return change.complete ? { action: 'upsert' } : { action: 'skip', conflict: 'update_missing', reason: incompleteReason };
      return change.complete ? { action: 'upsert', conflict: 'update_missing' } : { action: 'skip', conflict: 'update_missing', reason: incompleteReason };
    case 'tombstone': {
      const w = wins(local.version);
      if (change.op === 'insert') {
        if (!w) return { action: 'skip', conflict: 'insert_deleted' };
        // Re-inserting a key after its delete is normal, not a conflict.
        return change.complete ? { action: 'upsert' } : { action: 'skip', conflict: 'insert_deleted', reason: incompleteReason };
      }
      if (!w) return { action: 'skip', conflict: 'update_deleted' };
      return change.complete ? { action: 'upsert', conflict: 'update_deleted' } : { action: 'skip', conflict: 'update_deleted', reason: incompleteReason };
    }
    case 'row': {
      const sameRegion = local.version.region === remote.region;
      const kind: ConflictKind = change.op === 'insert' ? 'insert_exists' : 'update_origin_differs';
      // A custom resolver is a join: it merges every meeting of two rows (for a write that had seen the
      // local row the merge is a no-op when local writes only grow the row); only cross-region ones are conflicts.
      if (policy.kind === 'custom') return change.op === 'update' && sameRegion ? { action: 'merge' } : { action: 'merge', conflict: kind };
      if (change.op === 'update' && sameRegion) {
        return wins(local.version) ? { action: 'upsert' } : { action: 'skip', conflict: kind, reason: sameRegionStale };
      }
      return wins(local.version) ? { action: 'upsert', conflict: kind } : { action: 'skip', conflict: kind };
    }
  }
}

/** Reason recorded when a change loses to a newer local version written by the same region. */
export const sameRegionStale = 'the local version from the same region is newer (its clock stepped back?)';

/**
 * Run a custom resolver and complete its result: columns it leaves out keep
 * the value of the row with the higher version. Throws when the resolver
 * throws or returns something that is not a row of text/null values.
 */
export function runCustomResolver(
  policy: Extract<Policy, { kind: 'custom' }>,
  table: string,
  local: ResolverSide,
  remote: ResolverSide,
  columns: readonly string[],
): { row: TextRow; version: Version } {
  const out = policy.resolve({ table, local: { ...local, row: { ...local.row } }, remote: { ...remote, row: { ...remote.row } } });
  if (out === null || typeof out !== 'object' || Array.isArray(out)) {
    throw new TypeError(`custom resolver ${policy.name} returned ${out === null ? 'null' : typeof out}, expected a row object`);
  }
  const lv: Version = { tsUs: local.commitTsUs, region: local.region };
  const rv: Version = { tsUs: remote.commitTsUs, region: remote.region };
  const version = maxVersion(rv, lv, policy);
  const base = version === rv ? remote.row : local.row;
  const row: TextRow = {};
  for (const c of columns) {
    if (Object.prototype.hasOwnProperty.call(out, c)) {
      const v = (out as Record<string, unknown>)[c];
      if (v !== null && typeof v !== 'string') {
        throw new TypeError(`custom resolver ${policy.name} returned a ${typeof v} for column "${c}"; values must be text (or null)`);
      }
      row[c] = v;
    } else {
      row[c] = base[c] ?? null;
    }
  }
  return { row, version };
}

/** A change in a batch, for squashing: several changes of one key collapse into one. */
export interface SquashInput<T> {
  version: Version;
  item: T;
}

/**
 * Pick the change that sequential application would leave standing: the
 * highest version, ties going to the later one (an equal version re-applies).
 * Returns its index. Inputs are in stream order.
 */
export function squashWinner<T>(changes: readonly SquashInput<T>[], policy: Policy): number {
  let best = 0;
  for (let i = 1; i < changes.length; i++) {
    if (compareUnderPolicy(changes[i]!.version, changes[best]!.version, policy) >= 0) best = i;
  }
  return best;
}
