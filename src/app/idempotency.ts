/**
 * Idempotency keys, as the IETF httpapi draft "The Idempotency-Key HTTP Header
 * Field" (draft-ietf-httpapi-idempotency-key-header) describes them:
 *
 * - §2.1: the header is a Structured Field Item whose value is a String;
 * - §2.4: a fingerprint of the request tells a retry from a reuse;
 * - §2.3: keys expire, and the policy is advertised;
 * - §2.7: missing → 400, still in flight → 409, reused with another payload → 422.
 *
 * The store is `tandem_app.idempotency_keys` in the region's database, which
 * tandem replicates; entity ids are UUIDv5 of (scope, key) so a retry that
 * lands in another region converges on the same row even before the key
 * itself has replicated.
 */
import { createHash, randomUUID } from 'node:crypto';
import { parseItem } from 'structured-headers';
import { v5 as uuidv5 } from 'uuid';
import type pg from 'pg';
import { HttpProblem } from './problem.ts';
import type { Queryable } from './db.ts';

/** The UUIDv5 namespace of every id tandem derives from an idempotency key (fixed forever). */
export const TANDEM_ID_NAMESPACE = '5b0e9f0c-6a8e-4c43-9d0e-2f1f8d6a7c31';

/**
 * Parse the `Idempotency-Key` header: a structured-field String (RFC 9651
 * §3.3.3) of 1..`maxLength` characters. Returns `undefined` when absent;
 * throws a 400 problem when present but invalid.
 */
export function parseIdempotencyKey(header: string | string[] | undefined, maxLength: number): string | undefined {
  if (header === undefined) return undefined;
  if (Array.isArray(header)) throw invalidKey('the header must appear once');
  if (header.length > maxLength + 64) throw invalidKey(`longer than ${maxLength} characters`);
  let value: unknown;
  try {
    [value] = parseItem(header);
  } catch (err) {
    throw invalidKey(`not a structured-field item: ${(err as Error).message}; send it as a quoted string, e.g. Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`);
  }
  if (typeof value !== 'string') throw invalidKey('the value must be a structured-field String (in double quotes)');
  if (value.length === 0) throw invalidKey('the key is empty');
  if (value.length > maxLength) throw invalidKey(`longer than ${maxLength} characters`);
  return value;
}

function invalidKey(why: string): HttpProblem {
  return new HttpProblem('idempotency-key-invalid', `Idempotency-Key: ${why}`);
}

/** JSON with object keys sorted, so that the fingerprint ignores key order and whitespace. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null';
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.keys(value as Record<string, unknown>)
    .sort()
    .filter((k) => (value as Record<string, unknown>)[k] !== undefined)
    .map((k) => `${JSON.stringify(k)}:${canonicalJson((value as Record<string, unknown>)[k])}`);
  return `{${entries.join(',')}}`;
}

/** The request fingerprint (§2.4): method, path with query, and the canonical body. */
export function fingerprint(method: string, pathWithQuery: string, body: unknown): string {
  return createHash('sha256').update(`${method.toUpperCase()} ${pathWithQuery}\n${canonicalJson(body ?? null)}`).digest('base64url');
}

/**
 * A deterministic id for an entity created under (scope, key): the same in
 * every region. `kind` separates several entities made by one request.
 */
export function entityId(scope: string, key: string, kind = 'entity'): string {
  // JSON keeps the parts apart whatever characters they hold (a user name may contain a newline).
  return uuidv5(JSON.stringify([kind, scope, key]), TANDEM_ID_NAMESPACE);
}

/** A stored response, replayed to retries. */
export interface StoredResponse {
  status: number;
  headers: Record<string, string>;
  body: string;
}

/** What `claim` found. */
export type ClaimResult =
  | { kind: 'claimed'; claimId: string }
  | { kind: 'replay'; response: StoredResponse; region: string; createdAt: Date }
  | { kind: 'in-flight'; region: string }
  | { kind: 'mismatch' };

/** Identifies one use of a key. */
export interface KeyRef {
  scope: string;
  key: string;
}

/** Options of the store. */
export interface IdempotencyStoreOptions {
  region: string;
  ttlSec: number;
  lockSec: number;
}

interface KeyRow {
  fingerprint: string;
  state: 'processing' | 'completed';
  region: string;
  response_status: number | null;
  response_headers: Record<string, string> | null;
  response_body: string | null;
  created_at: Date;
  claimed: boolean;
}

/** The idempotency-key table: claim a key, store the outcome, release it on failure, purge expired keys. */
export class IdempotencyStore {
  readonly #opts: IdempotencyStoreOptions;

  constructor(opts: IdempotencyStoreOptions) {
    this.#opts = opts;
  }

  get ttlSec(): number {
    return this.#opts.ttlSec;
  }

  /**
   * Claim `ref` for a request with `fp`. A new key, an expired one, or a
   * claim left behind (its lock ran out, or it was made in another region —
   * that request's outcome converges through the derived entity ids) is
   * taken; otherwise the existing row decides: replay, in flight, or mismatch.
   */
  async claim(db: Queryable, ref: KeyRef, fp: string, meta: { method: string; path: string; correlationId: string }, attempt = 0): Promise<ClaimResult> {
    const claimId = randomUUID();
    const { ttlSec, lockSec, region } = this.#opts;
    // One statement so two concurrent claims cannot both win: the loser waits on the row lock and then sees the winner's row.
    const { rows } = await db.query<KeyRow>(
      `WITH ins AS (
         INSERT INTO tandem_app.idempotency_keys AS k
           (scope, key, fingerprint, state, claim_id, method, path, region, correlation_id, created_at, locked_until, expires_at)
         VALUES ($1, $2, $3, 'processing', $4, $5, $6, $7, $8, now(), now() + make_interval(secs => $9), now() + make_interval(secs => $10))
         ON CONFLICT (scope, key) DO UPDATE SET
           fingerprint = EXCLUDED.fingerprint, state = 'processing', claim_id = EXCLUDED.claim_id,
           method = EXCLUDED.method, path = EXCLUDED.path, region = EXCLUDED.region,
           correlation_id = EXCLUDED.correlation_id, created_at = EXCLUDED.created_at,
           locked_until = EXCLUDED.locked_until, expires_at = EXCLUDED.expires_at,
           response_status = NULL, response_headers = NULL, response_body = NULL
         WHERE k.expires_at <= now()
            OR (k.state = 'processing' AND k.fingerprint = EXCLUDED.fingerprint
                AND (k.locked_until <= now() OR k.region <> EXCLUDED.region))
         RETURNING fingerprint
       )
       SELECT fingerprint, 'processing' AS state, $7 AS region, NULL::int AS response_status, NULL::jsonb AS response_headers,
              NULL::text AS response_body, now() AS created_at, true AS claimed
         FROM ins
       UNION ALL
       SELECT fingerprint, state, region, response_status, response_headers, response_body, created_at, false AS claimed
         FROM tandem_app.idempotency_keys
        WHERE scope = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM ins)`,
      [ref.scope, ref.key, fp, claimId, meta.method, meta.path, region, meta.correlationId, lockSec, ttlSec],
    );
    const row = rows[0];
    if (!row) {
      // The conflicting row was inserted by a transaction that committed after this statement's snapshot
      // (or deleted since): look again. A row that appears and vanishes forever is somebody's bug.
      if (attempt >= 3) return { kind: 'in-flight', region: this.#opts.region };
      return this.claim(db, ref, fp, meta, attempt + 1);
    }
    if (row.claimed) return { kind: 'claimed', claimId };
    if (row.fingerprint !== fp) return { kind: 'mismatch' };
    if (row.state === 'processing') return { kind: 'in-flight', region: row.region };
    return {
      kind: 'replay',
      region: row.region,
      createdAt: row.created_at,
      response: { status: row.response_status ?? 200, headers: row.response_headers ?? {}, body: row.response_body ?? '' },
    };
  }

  /** Store the outcome of a claimed key (call inside the request's transaction so outcome and effects commit together). */
  async complete(db: Queryable, ref: KeyRef, claimId: string, response: StoredResponse): Promise<boolean> {
    const { rowCount } = await db.query(
      `UPDATE tandem_app.idempotency_keys
          SET state = 'completed', response_status = $4, response_headers = $5, response_body = $6
        WHERE scope = $1 AND key = $2 AND claim_id = $3`,
      [ref.scope, ref.key, claimId, response.status, JSON.stringify(response.headers), response.body],
    );
    return rowCount === 1;
  }

  /** Give a claimed key back (the request failed without effects) so a retry can run it again. */
  async release(db: Queryable, ref: KeyRef, claimId: string): Promise<void> {
    await db.query(`DELETE FROM tandem_app.idempotency_keys WHERE scope = $1 AND key = $2 AND claim_id = $3 AND state = 'processing'`, [
      ref.scope,
      ref.key,
      claimId,
    ]);
  }

  /**
   * Delete up to `limit` expired keys; returns how many. The outer condition repeats the expiry: a key
   * re-claimed (new expiry) after the subquery read it must not be deleted under its new request.
   */
  async purgeExpired(db: Queryable, limit = 1_000): Promise<number> {
    const { rowCount } = await db.query(
      `DELETE FROM tandem_app.idempotency_keys
        WHERE (scope, key) IN (SELECT scope, key FROM tandem_app.idempotency_keys WHERE expires_at <= now() LIMIT $1)
          AND expires_at <= now()`,
      [limit],
    );
    return rowCount ?? 0;
  }
}

/** True when `db` is a pool rather than a client (release needs autocommit). */
export function isPool(db: Queryable): db is pg.Pool {
  return typeof (db as pg.Pool).connect === 'function' && 'totalCount' in (db as object);
}
