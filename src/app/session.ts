/**
 * Sessions that survive the loss of a region.
 *
 * A session token is signed with an HMAC keyring (`app.sessionKeys`: the first
 * key signs, every key verifies, so keys rotate without logging anybody out),
 * and it carries the session id, the user and the expiry. Any region can
 * verify it without asking anyone. The replicated `tandem_app.sessions` table
 * holds the session's data and its revocation: a logout in one region is
 * honoured in another once the row has replicated. A token whose row has not
 * replicated yet (the region that issued it failed first) is still accepted on
 * the strength of its signature.
 *
 * Token: `ts1.<session uuid>.<base64url user>.<expiry epoch s>.<key id>.<base64url HMAC-SHA256>`
 */
import { createHash, createHmac, randomUUID, timingSafeEqual } from 'node:crypto';
import { TandemError } from '../core/errors.ts';
import { HttpProblem } from './problem.ts';
import type { Queryable } from './db.ts';

const PREFIX = 'ts1';
/** Signing keys shorter than this are refused: an HMAC key is only as strong as its entropy. */
export const MIN_SESSION_KEY_LENGTH = 16;
/** Longest user id a session may name. */
export const MAX_USER_ID_LENGTH = 200;

interface Key {
  id: string;
  secret: Buffer;
}

/** The id of a key: a short hash, so tokens say which key signed them without revealing it. */
export function keyId(secret: string): string {
  return createHash('sha256').update(`tandem-session-key-id\0${secret}`).digest('base64url').slice(0, 8);
}

/** The claims a valid token carries. */
export interface SessionClaims {
  sessionId: string;
  userId: string;
  expiresAt: Date;
  /** Which key signed it (tells operators when old keys can be dropped). */
  keyId: string;
}

/** A keyring of HMAC secrets: `secrets[0]` signs, all verify. */
export class SessionKeyring {
  readonly #keys: Key[];

  /** `secrets` in rotation order; `what` names them in errors (e.g. "app.sessionKeys"). */
  constructor(secrets: readonly string[], what = 'app.sessionKeys') {
    if (secrets.length === 0) throw new TandemError('TANDEM_ERR_CONFIG', `${what}: at least one session key is needed to sign sessions`);
    this.#keys = secrets.map((s, i) => {
      if (s.length < MIN_SESSION_KEY_LENGTH) {
        throw new TandemError('TANDEM_ERR_CONFIG', `${what}[${i}]: a session key must be at least ${MIN_SESSION_KEY_LENGTH} characters (found ${s.length})`);
      }
      return { id: keyId(s), secret: Buffer.from(s, 'utf8') };
    });
  }

  /** The id of the signing key. */
  get currentKeyId(): string {
    return this.#keys[0]!.id;
  }

  /** Sign claims into a token with the current key. */
  sign(claims: Omit<SessionClaims, 'keyId'>): string {
    const key = this.#keys[0]!;
    const payload = [PREFIX, claims.sessionId, Buffer.from(claims.userId, 'utf8').toString('base64url'), String(Math.floor(claims.expiresAt.getTime() / 1000)), key.id].join('.');
    return `${payload}.${mac(key.secret, payload)}`;
  }

  /** Verify a token's signature and expiry; throws a 401 problem naming what is wrong. */
  verify(token: string, now = Date.now()): SessionClaims {
    const parts = token.split('.');
    if (parts.length !== 6 || parts[0] !== PREFIX) throw unauthorized('the session token is malformed');
    const [, sessionId, userB64, expText, kid, sig] = parts as [string, string, string, string, string, string];
    const key = this.#keys.find((k) => k.id === kid);
    if (!key) throw unauthorized('the session token was not signed by any current key');
    const expected = Buffer.from(mac(key.secret, parts.slice(0, 5).join('.')), 'utf8');
    const presented = Buffer.from(sig, 'utf8');
    if (expected.length !== presented.length || !timingSafeEqual(expected, presented)) throw unauthorized('the session token signature is invalid');
    if (!/^\d{1,12}$/.test(expText) || !/^[0-9a-f-]{36}$/.test(sessionId)) throw unauthorized('the session token is malformed');
    const expiresAt = new Date(Number(expText) * 1000);
    if (expiresAt.getTime() <= now) throw unauthorized('the session has expired');
    return { sessionId, userId: Buffer.from(userB64, 'base64url').toString('utf8'), expiresAt, keyId: kid };
  }
}

function mac(secret: Buffer, payload: string): string {
  return createHmac('sha256', secret).update(payload).digest('base64url');
}

function unauthorized(detail: string): HttpProblem {
  return new HttpProblem('unauthorized', detail, { headers: { 'www-authenticate': 'Bearer realm="tandem", error="invalid_token"' } });
}

/** A session as a handler sees it. */
export interface Session extends SessionClaims {
  data: Record<string, unknown>;
  /** `table`: the row was found; `token`: only the signature vouches for it (row not replicated here yet). */
  source: 'table' | 'token';
}

/** Options of the session store. */
export interface SessionStoreOptions {
  keyring: SessionKeyring;
  ttlSec: number;
  region: string;
}

/** Issue, resolve and revoke sessions against `tandem_app.sessions`. */
export class SessionStore {
  readonly #opts: SessionStoreOptions;

  constructor(opts: SessionStoreOptions) {
    this.#opts = opts;
  }

  get keyring(): SessionKeyring {
    return this.#opts.keyring;
  }

  /** Create a session for `userId` and return it with its token. */
  async create(db: Queryable, userId: string, data: Record<string, unknown>, correlationId: string): Promise<{ token: string; session: Session }> {
    if (userId.length === 0 || userId.length > MAX_USER_ID_LENGTH) {
      throw new HttpProblem('validation', `user must be 1-${MAX_USER_ID_LENGTH} characters`);
    }
    const sessionId = randomUUID();
    const { rows } = await db.query<{ expires_at: Date }>(
      `INSERT INTO tandem_app.sessions (id, user_id, data, region, correlation_id, created_at, expires_at)
       VALUES ($1, $2, $3, $4, $5, now(), now() + make_interval(secs => $6)) RETURNING expires_at`,
      [sessionId, userId, JSON.stringify(data), this.#opts.region, correlationId, this.#opts.ttlSec],
    );
    const expiresAt = rows[0]!.expires_at;
    const token = this.#opts.keyring.sign({ sessionId, userId, expiresAt });
    return { token, session: { sessionId, userId, expiresAt, keyId: this.#opts.keyring.currentKeyId, data, source: 'table' } };
  }

  /** Resolve a bearer token: signature, expiry, then the table for revocation and data. Throws 401. */
  async resolve(db: Queryable, token: string): Promise<Session> {
    const claims = this.#opts.keyring.verify(token);
    const { rows } = await db.query<{ user_id: string; data: Record<string, unknown>; revoked_at: Date | null; expires_at: Date }>(
      'SELECT user_id, data, revoked_at, expires_at FROM tandem_app.sessions WHERE id = $1',
      [claims.sessionId],
    );
    const row = rows[0];
    if (!row) return { ...claims, data: {}, source: 'token' };
    if (row.revoked_at) throw unauthorized('the session was revoked (logged out)');
    if (row.user_id !== claims.userId) throw unauthorized('the session token does not match its session');
    if (row.expires_at.getTime() <= Date.now()) throw unauthorized('the session has expired');
    return { ...claims, data: row.data, source: 'table' };
  }

  /**
   * Revoke a session. Upsert, so that a logout in a region the session's row
   * has not reached yet still wins once both rows meet (the later write).
   */
  async revoke(db: Queryable, session: SessionClaims, correlationId: string): Promise<void> {
    await db.query(
      `INSERT INTO tandem_app.sessions (id, user_id, data, region, correlation_id, created_at, expires_at, revoked_at)
       VALUES ($1, $2, '{}'::jsonb, $3, $4, now(), $5, now())
       ON CONFLICT (id) DO UPDATE SET revoked_at = now(), correlation_id = EXCLUDED.correlation_id
       WHERE sessions.revoked_at IS NULL`,
      [session.sessionId, session.userId, this.#opts.region, correlationId, session.expiresAt],
    );
  }

  /** Delete up to `limit` sessions that expired; returns how many. */
  async purgeExpired(db: Queryable, limit = 1_000): Promise<number> {
    const { rowCount } = await db.query(
      'DELETE FROM tandem_app.sessions WHERE id IN (SELECT id FROM tandem_app.sessions WHERE expires_at <= now() LIMIT $1) AND expires_at <= now()',
      [limit],
    );
    return rowCount ?? 0;
  }
}
