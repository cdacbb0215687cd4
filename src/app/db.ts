/**
 * The kit's access to the region's own PostgreSQL: a pool whose every wait is
 * bounded (connect, pool checkout, statement) so that a database outage turns
 * into a quick 503 instead of a hanging request, and a transaction helper that
 * throws away connections that broke.
 */
import pg from 'pg';
import type { PgConnectionConfig } from '../core/config/common.ts';
import type { AppConfig } from '../core/config/app.ts';
import { pgClientConfig } from '../core/pg.ts';
import { HttpProblem } from './problem.ts';

/** Something that runs SQL: the pool, or a client inside a transaction. */
export interface Queryable {
  query<R extends pg.QueryResultRow = pg.QueryResultRow>(text: string, values?: unknown[]): Promise<pg.QueryResult<R>>;
}

/** Options of `createAppPool`. */
export interface AppPoolOptions {
  db: AppConfig['db'];
  /** Shown in pg_stat_activity. */
  applicationName?: string;
  /** Override the pool size (the health pool is small). */
  max?: number;
  /** Override the statement timeout. */
  statementTimeoutMs?: number;
}

/**
 * A pool for request-serving code. The server cancels statements after
 * `statementTimeoutMs` (statement_timeout) and abandons idle transactions;
 * the client gives up on a silent server shortly after (query_timeout) and on
 * connecting or waiting for a pooled connection after `connectTimeoutMs`.
 */
export function createAppPool(conn: PgConnectionConfig, opts: AppPoolOptions, what = 'database'): pg.Pool {
  const statementMs = opts.statementTimeoutMs ?? opts.db.statementTimeoutMs;
  const base = pgClientConfig(conn, { applicationName: opts.applicationName ?? 'tandem-app' }, what);
  const pool = new pg.Pool({
    ...base,
    max: opts.max ?? opts.db.poolSize,
    connectionTimeoutMillis: opts.db.connectTimeoutMs,
    statement_timeout: statementMs,
    lock_timeout: statementMs,
    idle_in_transaction_session_timeout: statementMs * 2,
    // A server that stops answering (partition, SIGSTOP) never sends the cancel; stop waiting a bit later.
    query_timeout: statementMs + 1_000,
    idleTimeoutMillis: 10_000,
  });
  // An idle client that errors (server killed) must not crash the process; the pool drops it.
  pool.on('error', () => {});
  return pool;
}

/** SQLSTATE classes and codes that mean "the database cannot serve right now", not "your request is wrong". */
const UNAVAILABLE_SQLSTATE = /^(08|53|57P|58)/;
const RETRYABLE_SQLSTATE = new Set([
  '40001', // serialization_failure
  '40P01', // deadlock_detected
  '55P03', // lock_not_available (lock_timeout)
  '57014', // query_canceled (statement_timeout)
  '25006', // read_only_sql_transaction (a standby, or default_transaction_read_only)
]);

/** True when `err` means the database is unreachable, overloaded, read-only or timed out. */
export function isDbUnavailable(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') {
    if (UNAVAILABLE_SQLSTATE.test(code) || RETRYABLE_SQLSTATE.has(code)) return true;
    // Socket errors: ECONNREFUSED, ECONNRESET, ETIMEDOUT, EHOSTUNREACH, EPIPE ...
    if (/^E[A-Z]+$/.test(code)) return true;
  }
  return /Connection terminated|timeout exceeded when trying to connect|Query read timeout|Client has encountered a connection error|connect ECONNREFUSED|not queryable/i.test(
    err.message,
  );
}

/**
 * True when the connection itself broke (socket error, client-side timeout,
 * server terminated the session), so it must be destroyed rather than rolled
 * back and reused.
 */
function isBrokenConnection(err: unknown): boolean {
  if (!(err instanceof Error)) return false;
  const code = (err as { code?: unknown }).code;
  if (typeof code === 'string') return /^E[A-Z]+$/.test(code) || code.startsWith('08') || code.startsWith('57P');
  return /Connection terminated|Query read timeout|Client has encountered a connection error|not queryable/i.test(err.message);
}

/** Turn a database error into a 503 problem when it is an outage; rethrow anything else unchanged. */
export function toUnavailable(err: unknown, retryAfterSec: number): never {
  if (isDbUnavailable(err)) {
    throw new HttpProblem('database-unavailable', `the region database cannot serve the request: ${(err as Error).message}`, {
      headers: { 'retry-after': String(retryAfterSec) },
      cause: err,
    });
  }
  throw err;
}

/**
 * Run `fn` in a transaction on a pooled client: COMMIT when it resolves,
 * ROLLBACK when it throws. A connection that broke is destroyed, not reused.
 */
export async function inTransaction<T>(pool: pg.Pool, fn: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  const client = await pool.connect();
  let destroy: Error | undefined;
  try {
    await client.query('BEGIN');
    let result: T;
    try {
      result = await fn(client);
    } catch (err) {
      if (isBrokenConnection(err)) destroy = err as Error;
      else await client.query('ROLLBACK').catch((e: unknown) => (destroy = e instanceof Error ? e : new Error(String(e))));
      throw err;
    }
    await client.query('COMMIT');
    return result;
  } catch (err) {
    if (!destroy && isBrokenConnection(err)) destroy = err as Error;
    throw err;
  } finally {
    client.release(destroy ?? false);
  }
}
