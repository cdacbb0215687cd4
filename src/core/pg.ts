/**
 * Turning a `database:` block of tandem.yaml into node-postgres options:
 * the password from env or file, TLS as libpq's sslmode names it, and an
 * optional source address for the lab's WAN emulator.
 */
import { readFileSync } from 'node:fs';
import net from 'node:net';
import type { ConnectionOptions } from 'node:tls';
import pg from 'pg';
import type { PgConnectionConfig } from './config/common.ts';
import { TandemError } from './errors.ts';
import { readSecret } from './secrets.ts';

/** Extra knobs that are not part of the config file. */
export interface PgClientExtras {
  /** Bind outgoing connections to this local address. */
  bindAddress?: string | undefined;
  /** Shown in pg_stat_activity. */
  applicationName?: string;
  /** `database` opens a logical replication connection (walsender). */
  replication?: 'database';
  /** Override the database name (e.g. `postgres` for admin work). */
  database?: string;
  /** Client-side deadline of each query (ms): the promise rejects and the session must be dropped. */
  queryTimeoutMs?: number;
}

function readPem(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (cause) {
    throw new TandemError('TANDEM_ERR_CONFIG', `cannot read ${what} file ${path}`, { cause });
  }
}

/** node tls options for a libpq-style sslmode; `false` when TLS is off. */
export function tlsOptions(conn: PgConnectionConfig): false | ConnectionOptions {
  const ssl = conn.ssl;
  if (ssl.mode === 'disable') return false;
  const opts: ConnectionOptions = {};
  if (ssl.ca) opts.ca = readPem(ssl.ca, 'ssl.ca');
  if (ssl.cert) opts.cert = readPem(ssl.cert, 'ssl.cert');
  if (ssl.key) opts.key = readPem(ssl.key, 'ssl.key');
  switch (ssl.mode) {
    case 'prefer':
    case 'require':
      // libpq's `require` encrypts without verifying the server (unless a CA is given, like libpq).
      opts.rejectUnauthorized = Boolean(ssl.ca);
      if (ssl.ca) opts.checkServerIdentity = () => undefined;
      break;
    case 'verify-ca':
      opts.rejectUnauthorized = true;
      opts.checkServerIdentity = () => undefined;
      break;
    case 'verify-full':
      opts.rejectUnauthorized = true;
      break;
  }
  return opts;
}

/** A socket factory that binds to `localAddress` before connecting (pg calls `connect(port, host)`). */
function boundSocketFactory(localAddress: string): () => net.Socket {
  return () => {
    const socket = new net.Socket();
    const connect = socket.connect.bind(socket) as (opts: net.TcpSocketConnectOpts) => net.Socket;
    (socket as unknown as { connect: (port: number, host: string) => net.Socket }).connect = (port: number, host: string) =>
      connect({ port, host, localAddress });
    return socket;
  };
}

/** node-postgres client options for a configured connection. */
export function pgClientConfig(conn: PgConnectionConfig, extras: PgClientExtras = {}, what = 'database'): pg.ClientConfig {
  const password = readSecret(conn.password, `${what}.password`);
  const config: pg.ClientConfig & { replication?: string } = {
    host: conn.host,
    port: conn.port,
    database: extras.database ?? conn.database,
    user: conn.user,
    ssl: tlsOptions(conn),
    connectionTimeoutMillis: conn.connectTimeoutSec * 1000,
    application_name: extras.applicationName ?? 'tandem',
    keepAlive: true,
  };
  if (password !== undefined) config.password = password;
  if (extras.replication) config.replication = extras.replication;
  if (extras.queryTimeoutMs) config.query_timeout = extras.queryTimeoutMs;
  if (extras.bindAddress) config.stream = boundSocketFactory(extras.bindAddress) as never;
  return config;
}

/** Connect a client; the error names the host and port (never the password). */
export async function connectClient(conn: PgConnectionConfig, extras: PgClientExtras = {}, what = 'database'): Promise<pg.Client> {
  const client = new pg.Client(pgClientConfig(conn, extras, what));
  try {
    await client.connect();
  } catch (cause) {
    await client.end().catch(() => {});
    throw new TandemError('TANDEM_ERR_REPLICATION', `cannot connect to ${what} at ${conn.host}:${conn.port}/${extras.database ?? conn.database}: ${(cause as Error).message}`, {
      cause,
    });
  }
  return client;
}

/** Drop a client's connection at once (a statement in flight fails on the client; the server finishes or aborts it). */
export function destroySocket(db: pg.Client): void {
  (db as unknown as { connection?: { stream?: { destroy(): void } } }).connection?.stream?.destroy();
}

/** End a client without waiting forever on a connection that is stuck: destroy its socket after `graceMs`. */
export async function closeClient(db: pg.Client, graceMs = 2_000): Promise<void> {
  let timer: NodeJS.Timeout | undefined;
  const ended = db.end().catch(() => {});
  const timedOut = new Promise<'timeout'>((resolve) => (timer = setTimeout(() => resolve('timeout'), graceMs)));
  if ((await Promise.race([ended, timedOut])) === 'timeout') destroySocket(db);
  clearTimeout(timer);
}

/** A pool for request-serving code (the app kit). */
export function createPool(conn: PgConnectionConfig, extras: PgClientExtras & { max?: number } = {}, what = 'database'): pg.Pool {
  const pool = new pg.Pool({ ...pgClientConfig(conn, extras, what), max: extras.max ?? 10 });
  // An idle client that errors (server restart) must not crash the process; the pool drops it.
  pool.on('error', () => {});
  return pool;
}
