/**
 * A logical replication stream from one source slot: a `pg` connection in
 * `replication: 'database'` mode running `START_REPLICATION ... LOGICAL` with
 * pgoutput, its CopyData decoded into pgoutput messages and keepalives, and
 * StandbyStatusUpdates sent back only for what the caller says is durable.
 *
 * `pg` has no public API for CopyBoth mode. The plumbing it does have (the
 * connection's `copyData` / `replicationStart` events, `sendCopyFromChunk`,
 * `endCopyFrom`, and its socket for pause/resume) is undocumented, so it is
 * used only in this module, behind `PgCopyBoth`, and `stream.test.ts` covers it.
 *
 * https://www.postgresql.org/docs/17/protocol-replication.html
 * https://www.postgresql.org/docs/17/protocol-logical-replication.html
 */
import type { EventEmitter } from 'node:events';
import pg from 'pg';
import type { PgConnectionConfig } from '../core/config/common.ts';
import { TandemError, toError } from '../core/errors.ts';
import { BaseService } from '../core/lifecycle.ts';
import { silentLogger, type Logger } from '../core/log.ts';
import { pgClientConfig } from '../core/pg.ts';
import { quoteIdent } from '../core/sql.ts';
import { decodePgOutput, type PgOutputMessage } from './pgoutput.ts';
import { decodeCopyData, encodeStandbyStatusUpdate, formatLsn, type CopyDataMessage } from './protocol.ts';
import { assertSlotName } from './slot.ts';

/**
 * Session settings sent at connection start so that values pgoutput renders
 * as text are identical whichever region they come from.
 */
export const STREAM_STARTUP_OPTIONS = '-c datestyle=ISO -c intervalstyle=postgres -c extra_float_digits=3 -c client_encoding=UTF8';

/** Options of a `ReplicationStream`. */
export interface ReplicationStreamOptions {
  /** The SOURCE database. */
  connection: PgConnectionConfig;
  /** Source address for the connection (the lab's WAN emulator tells links apart by it). */
  bindAddress?: string;
  applicationName?: string;
  slot: string;
  publication: string | string[];
  /** Stream transactions that commit after this LSN; usually the target's replication origin progress. */
  startLsn: bigint;
  /** pgoutput protocol version; default: the highest the server supports (4 on PostgreSQL 16+). */
  protoVersion?: 2 | 3 | 4;
  /** `none` (default): skip changes that were themselves replicated (no loops). Needs PostgreSQL 16+. */
  origin?: 'none' | 'any';
  /** Decode `pg_logical_emit_message` messages (heartbeats); default true. */
  messages?: boolean;
  logger?: Logger;
  /** Called synchronously for each keepalive as it is read, even while the consumer is busy; it may call `sendStatus`. */
  onKeepalive?: (item: KeepaliveItem) => void;
  /**
   * Answer reply-requested keepalives at once by repeating the last status
   * (never an LSN the caller did not report); default true.
   */
  autoReply?: boolean;
  /**
   * Resend the last status this often, so `wal_sender_timeout` never fires
   * while the consumer is busy or the socket is paused; default 10 000 ms
   * (like `wal_receiver_status_interval`). When nothing was received for that
   * long, the status asks the server for a reply, which proves it alive.
   * 0 turns the periodic status off.
   */
  statusIntervalMs?: number;
  /** Fail the stream when nothing arrives for this long while reading (not paused); default 30 000 ms; 0 = never. */
  receiveTimeoutMs?: number;
  /** Stop reading from the socket when this many items are queued; default 10 000. */
  highWaterMark?: number;
  /** ...or when the queued CopyData payloads reach this many bytes; default 8 MiB. */
  highWaterMarkBytes?: number;
  /** How long `start()` retries while the slot is still held by a previous connection; default 5 000 ms. */
  slotBusyWaitMs?: number;
  /** Names the source in errors and logs (e.g. `region aws-south`); default `host:port`. */
  what?: string;
}

/** One decoded pgoutput message with the XLogData header it came in. */
export interface ChangeItem {
  keepalive?: false;
  /** XLogData walStart: the WAL position of this message. */
  lsn: bigint;
  /** The server's WAL end when it sent this. */
  walEnd: bigint;
  /** Server clock at send time (µs since 2000-01-01). */
  sendTime: bigint;
  message: PgOutputMessage;
}

/** A PrimaryKeepaliveMessage. */
export interface KeepaliveItem {
  keepalive: true;
  walEnd: bigint;
  sendTime: bigint;
  replyRequested: boolean;
}

/** What the iterator yields, in the order the server sent it. */
export type StreamItem = ChangeItem | KeepaliveItem;

/** The progress reported to the source. */
export interface StreamStatus {
  written: bigint;
  flushed: bigint;
  applied: bigint;
}

/** The undocumented CopyBoth surface of `pg`'s Connection, in one place. */
interface PgCopyBoth extends EventEmitter {
  stream: NodeJS.ReadableStream & { pause(): unknown; resume(): unknown; writable?: boolean };
  sendCopyFromChunk(chunk: Buffer): void;
  endCopyFrom(): void;
}

function copyBoth(client: pg.Client): PgCopyBoth {
  const conn = (client as unknown as { connection?: PgCopyBoth }).connection;
  if (!conn || typeof conn.sendCopyFromChunk !== 'function' || typeof conn.endCopyFrom !== 'function' || !conn.stream) {
    throw new TandemError('TANDEM_ERR_INTERNAL', 'this version of pg has no CopyBoth plumbing (connection.sendCopyFromChunk / endCopyFrom / stream)');
  }
  return conn;
}

/** Highest pgoutput protocol version a server supports (14 → 2, 15 → 3, 16+ → 4). */
export function maxProtoVersion(serverVersion: number): 2 | 3 | 4 {
  if (serverVersion >= 160000) return 4;
  if (serverVersion >= 150000) return 3;
  return 2;
}

/** A single-quoted literal for the replication command grammar. */
function literal(value: string): string {
  return `'${value.replaceAll("'", "''")}'`;
}

/** The START_REPLICATION command for these options (exported for tests and logs). */
export function startReplicationCommand(o: { slot: string; startLsn: bigint; protoVersion: number; publications: string[]; origin?: 'none' | 'any'; messages: boolean }): string {
  const options = [
    `proto_version ${literal(String(o.protoVersion))}`,
    `publication_names ${literal(o.publications.map(quoteIdent).join(','))}`,
    `messages ${literal(o.messages ? 'true' : 'false')}`,
  ];
  if (o.origin) options.push(`origin ${literal(o.origin)}`);
  return `START_REPLICATION SLOT ${quoteIdent(o.slot)} LOGICAL ${formatLsn(o.startLsn)} (${options.join(', ')})`;
}

/**
 * Streams one slot. `messages()` yields decoded messages and keepalives in
 * order; `sendStatus()` acknowledges progress at any time. Reading pauses
 * when the consumer falls behind (see `highWaterMark`).
 */
export class ReplicationStream extends BaseService {
  readonly name: string;
  readonly options: ReplicationStreamOptions;
  #log: Logger;
  #client: pg.Client | undefined;
  #conn: PgCopyBoth | undefined;
  #query: Promise<unknown> | undefined;
  #serverVersion = 0;
  #protoVersion: 2 | 3 | 4 = 2;
  #status: StreamStatus;
  #statusTimer: NodeJS.Timeout | undefined;
  #lastReceiveAt = Date.now();
  #streaming = false;
  #stopping = false;
  #stopRequested = false;
  // The queue between the socket and the consumer.
  #queue: Array<{ item: StreamItem; bytes: number }> = [];
  #head = 0;
  #queuedBytes = 0;
  #paused = false;
  #waiter: { resolve: (r: IteratorResult<StreamItem>) => void; reject: (err: unknown) => void } | undefined;
  #ended = false;
  #endError: Error | undefined;
  #iterating = false;
  #stats = { items: 0, bytes: 0, keepalives: 0, pauses: 0, statusSent: 0 };

  constructor(opts: ReplicationStreamOptions) {
    super();
    this.options = opts;
    this.#log = (opts.logger ?? silentLogger()).child({ component: 'replication-stream', slot: opts.slot });
    this.#status = { written: opts.startLsn, flushed: opts.startLsn, applied: opts.startLsn };
    this.name = `replication-stream ${opts.slot}@${opts.connection.host}:${opts.connection.port}`;
  }

  /** `server_version_num` of the source, e.g. 170010 (0 before start). */
  get serverVersion(): number {
    return this.#serverVersion;
  }

  /** The pgoutput protocol version in use. */
  get protoVersion(): number {
    return this.#protoVersion;
  }

  /** The last status reported with `sendStatus` (or the start LSN). */
  get lastStatus(): Readonly<StreamStatus> {
    return { ...this.#status };
  }

  /** True while reading is paused because the consumer is behind. */
  get paused(): boolean {
    return this.#paused;
  }

  /** Counters: items and CopyData bytes received, keepalives, pauses, status updates sent. */
  get stats(): Readonly<{ items: number; bytes: number; keepalives: number; pauses: number; statusSent: number; queued: number; queuedBytes: number }> {
    return { ...this.#stats, queued: this.#queue.length - this.#head, queuedBytes: this.#queuedBytes };
  }

  get #what(): string {
    return this.options.what ?? `${this.options.connection.host}:${this.options.connection.port}`;
  }

  protected async onStart(signal?: AbortSignal): Promise<void> {
    const o = this.options;
    assertSlotName(o.slot);
    const publications = Array.isArray(o.publication) ? o.publication : [o.publication];
    if (publications.length === 0) throw new TandemError('TANDEM_ERR_USAGE', `${this.name}: at least one publication is needed`);
    if (o.startLsn < 0n || o.startLsn >= 1n << 64n) throw new TandemError('TANDEM_ERR_USAGE', `${this.name}: startLsn out of range: ${o.startLsn}`);

    const config = pgClientConfig(o.connection, { replication: 'database', bindAddress: o.bindAddress, applicationName: o.applicationName ?? 'tandem-replication' }, this.#what);
    const client = new pg.Client({ ...config, options: STREAM_STARTUP_OPTIONS } as pg.ClientConfig);
    this.#client = client;
    client.on('error', (err) => this.#onConnectionLost(err));
    client.on('end', () => this.#onConnectionLost(new Error('connection closed')));
    const onAbort = () => void client.end().catch(() => {});
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      try {
        await client.connect();
      } catch (cause) {
        throw new TandemError('TANDEM_ERR_REPLICATION', `cannot open a replication connection to ${this.#what}: ${(cause as Error).message}`, { cause });
      }
      signal?.throwIfAborted();
      this.#frameCopyData(copyBoth(client));
      const { rows } = await client.query<{ server_version_num: string }>('SHOW server_version_num');
      this.#serverVersion = Number(rows[0]!.server_version_num);
      const max = maxProtoVersion(this.#serverVersion);
      if (this.#serverVersion < 140000) {
        throw new TandemError('TANDEM_ERR_PG_PREREQ', `${this.#what} runs PostgreSQL ${this.#serverVersion}; tandem needs 14 or later (16+ for origin filtering)`);
      }
      this.#protoVersion = o.protoVersion ?? max;
      if (this.#protoVersion > max) {
        throw new TandemError('TANDEM_ERR_PG_PREREQ', `${this.#what} (PostgreSQL ${this.#serverVersion}) supports pgoutput protocol up to ${max}, ${this.#protoVersion} was asked for`);
      }
      const origin = o.origin ?? 'none';
      if (origin === 'none' && this.#serverVersion < 160000) {
        throw new TandemError(
          'TANDEM_ERR_PG_PREREQ',
          `${this.#what} runs PostgreSQL ${this.#serverVersion}; filtering replicated changes (origin 'none', no loops) needs PostgreSQL 16 or later`,
        );
      }
      const conn = copyBoth(client);
      this.#conn = conn;
      conn.on('copyData', (msg: { chunk: Buffer }) => this.#onCopyData(msg.chunk));
      const command = startReplicationCommand({
        slot: o.slot,
        startLsn: o.startLsn,
        protoVersion: this.#protoVersion,
        publications,
        origin: this.#serverVersion >= 160000 ? origin : undefined,
        messages: o.messages ?? true,
      });
      await this.#startReplication(client, conn, command, signal);
      this.#log.info({ host: o.connection.host, port: o.connection.port, startLsn: formatLsn(o.startLsn), protoVersion: this.#protoVersion, serverVersion: this.#serverVersion }, 'replication stream started');
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    this.#lastReceiveAt = Date.now();
    const interval = o.statusIntervalMs ?? 10_000;
    const timeout = o.receiveTimeoutMs ?? 30_000;
    if (interval > 0 || timeout > 0) {
      this.#statusTimer = setInterval(() => this.#tick(), Math.max(50, Math.min(interval || 1_000, timeout || 1_000, 1_000)));
      this.#statusTimer.unref();
    }
  }

  /** Issue START_REPLICATION; retry while a previous walsender still holds the slot (SQLSTATE 55006). */
  async #startReplication(client: pg.Client, conn: PgCopyBoth, command: string, signal?: AbortSignal): Promise<void> {
    const deadline = Date.now() + (this.options.slotBusyWaitMs ?? 5_000);
    for (;;) {
      let onStarted!: () => void;
      const started = new Promise<void>((resolve) => {
        // CopyBothResponse. CopyData may follow in the same socket read, synchronously after this
        // event, so the stream must count as started right here, not after an await.
        onStarted = () => {
          this.#streaming = true;
          resolve();
        };
        conn.once('replicationStart', onStarted);
      });
      const query = client.query(command);
      query.catch(() => {}); // observed below and in #onQueryEnd
      try {
        await Promise.race([started, query.then(() => Promise.reject(new Error('START_REPLICATION ended before streaming began')))]);
        this.#query = query;
        query.then(
          () => this.#onQueryEnd(undefined),
          (err: unknown) => this.#onQueryEnd(err),
        );
        return;
      } catch (err) {
        conn.removeListener('replicationStart', onStarted);
        this.#streaming = false;
        const code = (err as { code?: string }).code;
        if (code === '55006' && Date.now() < deadline && !signal?.aborted) {
          await new Promise((r) => setTimeout(r, 200));
          continue;
        }
        const hint = code === '42704' ? ' (create the slot first: tandem replicate setup)' : code === '55006' ? ' (another consumer is streaming from this slot)' : '';
        throw new TandemError('TANDEM_ERR_REPLICATION', `START_REPLICATION on ${this.#what} failed: ${(err as Error).message}${hint}`, {
          cause: err,
          details: { sqlState: code, slot: this.options.slot },
        });
      }
    }
  }

  /**
   * Read the socket's message frames ourselves (the connection is between messages once connected): a
   * CopyData frame received while streaming is decoded where it lies in the socket's chunk, every other
   * frame goes to pg's own parser, whole and in order. pg's parser would copy each chunk into its buffer
   * and wrap each message in objects first, a large share of the agent's CPU per row. When the socket's
   * listeners are not as expected, pg keeps the socket and its `copyData` events feed the stream.
   */
  #frameCopyData(conn: PgCopyBoth): void {
    const socket = conn.stream as unknown as EventEmitter;
    const listeners = socket.listeners('data') as Array<(chunk: Buffer) => void>;
    if (listeners.length !== 1) return;
    const pgParse = listeners[0]!;
    socket.removeListener('data', pgParse);
    let pending: Buffer[] = [];
    let pendingBytes = 0;
    let pendingNeed = 0;
    socket.on('data', (data: Buffer) => {
      let chunk = data;
      if (pendingBytes > 0) {
        pending.push(data);
        pendingBytes += data.length;
        if (pendingBytes < pendingNeed) return;
        chunk = Buffer.concat(pending, pendingBytes);
        pending = [];
        pendingBytes = 0;
      }
      let off = 0;
      let forwardFrom = -1;
      while (off + 5 <= chunk.length) {
        const length = chunk.readUInt32BE(off + 1);
        if (length < 4) {
          // Not a frame: let pg's parser report it.
          if (forwardFrom < 0) forwardFrom = off;
          off = chunk.length;
          break;
        }
        const end = off + 1 + length;
        if (end > chunk.length) break;
        if (chunk[off] === 0x64 && this.#streaming && !this.#ended) {
          if (forwardFrom >= 0) {
            pgParse(chunk.subarray(forwardFrom, off));
            forwardFrom = -1;
          }
          this.#onCopyData(chunk.subarray(off + 5, end));
        } else if (forwardFrom < 0) {
          forwardFrom = off;
        }
        off = end;
      }
      if (forwardFrom >= 0) pgParse(chunk.subarray(forwardFrom, off));
      if (off < chunk.length) {
        const rest = chunk.subarray(off);
        pending = [rest];
        pendingBytes = rest.length;
        pendingNeed = rest.length >= 5 ? 1 + rest.readUInt32BE(1) : 5;
      }
    });
  }

  /** Decode one CopyData message (its payload); runs synchronously in the socket's data handler. */
  #onCopyData(chunk: Buffer): void {
    if (!this.#streaming || this.#ended) return;
    this.#lastReceiveAt = Date.now();
    let item: StreamItem;
    let message: CopyDataMessage;
    try {
      // pg hands out a view into its parse buffer, which it reuses. The decoders keep no view of it (text
      // becomes strings, bytes are copied), so the chunk is decoded in place.
      message = decodeCopyData(chunk);
      if (message.kind === 'XLogData') {
        item = { lsn: message.walStart, walEnd: message.walEnd, sendTime: message.sendTime, message: decodePgOutput(message.data) };
      } else {
        item = { keepalive: true, walEnd: message.walEnd, sendTime: message.sendTime, replyRequested: message.replyRequested };
      }
    } catch (err) {
      this.#log.error({ err }, 'undecodable replication data; closing the stream');
      this.#finish(err instanceof TandemError ? err : new TandemError('TANDEM_ERR_PROTOCOL', `${this.#what}: ${(err as Error).message}`, { cause: err }));
      void this.#closeConnection();
      this.fail(this.#endError);
      return;
    }
    this.#stats.items++;
    this.#stats.bytes += chunk.length;
    if (item.keepalive) {
      this.#stats.keepalives++;
      if (item.replyRequested && (this.options.autoReply ?? true)) this.#writeStatus(false);
      if (this.options.onKeepalive) {
        try {
          this.options.onKeepalive(item);
        } catch (err) {
          this.#log.warn({ err }, 'onKeepalive callback threw');
        }
      }
    }
    this.#push(item, chunk.length);
  }

  #push(item: StreamItem, bytes: number): void {
    if (this.#waiter) {
      const w = this.#waiter;
      this.#waiter = undefined;
      w.resolve({ value: item, done: false });
      return;
    }
    this.#queue.push({ item, bytes });
    this.#queuedBytes += bytes;
    const queued = this.#queue.length - this.#head;
    if (!this.#paused && (queued >= (this.options.highWaterMark ?? 10_000) || this.#queuedBytes >= (this.options.highWaterMarkBytes ?? 8 << 20))) {
      this.#paused = true;
      this.#stats.pauses++;
      this.#conn?.stream.pause();
      this.#log.debug({ queued, queuedBytes: this.#queuedBytes }, 'consumer behind: paused reading');
    }
  }

  #shift(): StreamItem | undefined {
    if (this.#head >= this.#queue.length) return undefined;
    const entry = this.#queue[this.#head]!;
    this.#queue[this.#head] = undefined as never;
    this.#head++;
    this.#queuedBytes -= entry.bytes;
    if (this.#head > 1024 && this.#head * 2 > this.#queue.length) {
      this.#queue = this.#queue.slice(this.#head);
      this.#head = 0;
    }
    const queued = this.#queue.length - this.#head;
    if (this.#paused && queued <= (this.options.highWaterMark ?? 10_000) / 2 && this.#queuedBytes <= (this.options.highWaterMarkBytes ?? 8 << 20) / 2) {
      this.#paused = false;
      this.#lastReceiveAt = Date.now();
      this.#conn?.stream.resume();
      this.#log.debug({ queued }, 'consumer caught up: resumed reading');
    }
    return entry.item;
  }

  /**
   * The decoded messages and keepalives in order. One consumer only. Ends
   * when the stream is stopped (items still queued are dropped: they were not
   * acknowledged, so a restart streams them again); after a connection loss
   * it yields what was already received, then throws.
   */
  messages(): AsyncIterable<StreamItem> {
    if (this.#iterating) throw new TandemError('TANDEM_ERR_STATE', `${this.name}: messages() can be consumed only once`);
    this.#iterating = true;
    const iterator: AsyncIterator<StreamItem> = {
      next: () => {
        if (this.#stopRequested) return Promise.resolve({ value: undefined, done: true });
        const item = this.#shift();
        if (item) return Promise.resolve({ value: item, done: false });
        if (this.#ended) {
          if (this.#endError) return Promise.reject(this.#endError);
          return Promise.resolve({ value: undefined, done: true });
        }
        return new Promise<IteratorResult<StreamItem>>((resolve, reject) => {
          this.#waiter = { resolve, reject };
        });
      },
      return: async () => {
        await this.stop();
        return { value: undefined, done: true };
      },
    };
    return { [Symbol.asyncIterator]: () => iterator };
  }

  /**
   * Report progress to the source. `flushed` must only ever be an LSN whose
   * effects are durably committed on the target (a commit's `endLsn`, or a
   * keepalive's `walEnd` when nothing is pending); it becomes the slot's
   * `confirmed_flush_lsn` exactly. Safe to call at any time from any async
   * context; the value is also what later automatic replies repeat.
   * Returns false when there is no connection to send it on.
   */
  sendStatus(p: { written: bigint; flushed: bigint; applied?: bigint; replyRequested?: boolean }): boolean {
    this.#status = { written: p.written, flushed: p.flushed, applied: p.applied ?? p.flushed };
    return this.#writeStatus(p.replyRequested ?? false);
  }

  #writeStatus(replyRequested: boolean): boolean {
    const conn = this.#conn;
    if (!this.#streaming || this.#ended || !conn) return false;
    try {
      conn.sendCopyFromChunk(encodeStandbyStatusUpdate({ ...this.#status, replyRequested }));
      this.#stats.statusSent++;
      return true;
    } catch (err) {
      this.#log.debug({ err }, 'could not send status update');
      return false;
    }
  }

  #lastTickStatusAt = Date.now();

  /** Periodic: resend the status when due; detect a silent source. */
  #tick(): void {
    if (!this.#streaming || this.#ended) return;
    const now = Date.now();
    const interval = this.options.statusIntervalMs ?? 10_000;
    const timeout = this.options.receiveTimeoutMs ?? 30_000;
    if (!this.#paused && timeout > 0 && now - this.#lastReceiveAt > timeout) {
      const err = new TandemError('TANDEM_ERR_REPLICATION', `${this.#what}: nothing received for ${now - this.#lastReceiveAt} ms (receiveTimeoutMs ${timeout}); closing the stream`);
      this.#log.warn({ timeoutMs: timeout }, 'source silent; closing the stream');
      this.#finish(err);
      void this.#closeConnection();
      this.fail(err);
      return;
    }
    if (interval > 0 && now - this.#lastTickStatusAt >= interval) {
      this.#lastTickStatusAt = now;
      // Quiet for a whole interval (and reading): ask for a keepalive back, which proves the source alive.
      this.#writeStatus(!this.#paused && now - this.#lastReceiveAt >= interval);
    }
  }

  #onQueryEnd(err: unknown): void {
    if (this.#stopping || this.#ended) return;
    const cause = err ?? new Error('the server ended the replication stream');
    this.#onConnectionLost(cause);
  }

  #onConnectionLost(cause: unknown): void {
    if (this.#stopping || this.#ended || !this.#streaming) return;
    const err = new TandemError('TANDEM_ERR_REPLICATION', `replication stream from ${this.#what} lost: ${toError(cause).message}`, {
      cause,
      details: { sqlState: (cause as { code?: string }).code, slot: this.options.slot },
    });
    this.#log.warn({ err: toError(cause).message }, 'replication stream lost');
    this.#finish(err);
    void this.#closeConnection();
    this.fail(err);
  }

  /** End the iterator: done when `err` is undefined, otherwise rejected after the queue drains. */
  #finish(err: Error | undefined): void {
    if (this.#ended) return;
    this.#ended = true;
    this.#endError = err;
    if (this.#statusTimer) clearInterval(this.#statusTimer);
    this.#statusTimer = undefined;
    const w = this.#waiter;
    this.#waiter = undefined;
    if (w) {
      if (err && !this.#stopRequested) w.reject(err);
      else w.resolve({ value: undefined, done: true });
    }
  }

  async #closeConnection(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    if (!client) return;
    // A paused socket never sees the server's goodbye.
    this.#conn?.stream.resume();
    await client.end().catch(() => {});
  }

  /** Stop streaming: the iterator ends, the slot is released; idempotent. */
  override stop(): Promise<void> {
    this.#stopRequested = true;
    return super.stop();
  }

  protected async onStop(): Promise<void> {
    this.#stopping = true;
    const conn = this.#conn;
    const query = this.#query;
    const wasStreaming = this.#streaming && !this.#ended;
    this.#finish(undefined);
    if (wasStreaming && conn && query) {
      // CopyDone: the walsender leaves COPY mode, releases the slot and completes the command, so a
      // new stream can take the slot right away. Give it a moment, then close regardless.
      try {
        conn.stream.resume();
        conn.endCopyFrom();
        let timer: NodeJS.Timeout | undefined;
        await Promise.race([query.catch(() => {}), new Promise((r) => (timer = setTimeout(r, 2_000)))]);
        clearTimeout(timer);
      } catch {
        // The socket is gone already.
      }
    }
    await this.#closeConnection();
    this.#streaming = false;
  }
}
