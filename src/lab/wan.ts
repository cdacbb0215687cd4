/**
 * The lab's WAN link emulator: a TCP proxy in front of each region's
 * PostgreSQL that delays, throttles and partitions the bytes of cross-region
 * connections. Links are told apart by the client's source address (each lab
 * process binds its outgoing connections to its region's address).
 *
 * TCP never loses bytes inside a connection, so neither do we: "loss" adds a
 * retransmission delay to a chunk, and a partition holds the bytes (and new
 * connections) until it heals, as a real black-holed path does; the endpoints'
 * own timeouts decide whether the connection survives.
 */
import net from 'node:net';
import { BaseService } from '../core/lifecycle.ts';
import type { Logger } from '../core/log.ts';
import { silentLogger } from '../core/log.ts';

/** Impairments of one link (both directions). */
export interface LinkShape {
  /** One-way delay. */
  latencyMs: number;
  /** Uniform random extra delay in [0, jitterMs); order is preserved. */
  jitterMs: number;
  /** Probability (0..1) that a chunk needs a retransmission (adds `retransmitMs`). */
  loss: number;
  /** Bytes per second per direction; 0 means unlimited. */
  bandwidthBytesPerSec: number;
}

/** The lab's default: 15 ms one way, a little jitter, no loss, no cap. */
export const DEFAULT_LINK: LinkShape = { latencyMs: 15, jitterMs: 2, loss: 0, bandwidthBytesPerSec: 0 };
const RETRANSMIT_MS = 200;
/** Bytes held per direction before the sender is paused (backpressure). */
const HIGH_WATER = 4 * 1024 * 1024;

/** A pair key independent of order: "a|b" with a < b. */
export function linkKey(a: string, b: string): string {
  return a < b ? `${a}|${b}` : `${b}|${a}`;
}

/** Shared state of every link: shapes and partitions. One per lab. */
export class WanState {
  #default: LinkShape = { ...DEFAULT_LINK };
  #shapes = new Map<string, LinkShape>();
  #partitioned = new Set<string>();
  #listeners = new Set<() => void>();

  shape(a: string, b: string): LinkShape {
    return this.#shapes.get(linkKey(a, b)) ?? this.#default;
  }

  /** Set the shape of one link, or of every link when `pair` is omitted. */
  setShape(shape: Partial<LinkShape>, pair?: [string, string]): void {
    if (pair) {
      this.#shapes.set(linkKey(...pair), { ...this.shape(...pair), ...shape });
    } else {
      this.#default = { ...this.#default, ...shape };
      for (const [k, v] of this.#shapes) this.#shapes.set(k, { ...v, ...shape });
    }
    this.#notify();
  }

  get defaultShape(): LinkShape {
    return { ...this.#default };
  }

  isPartitioned(a: string, b: string): boolean {
    return this.#partitioned.has(linkKey(a, b));
  }

  partition(a: string, b: string): void {
    this.#partitioned.add(linkKey(a, b));
    this.#notify();
  }

  /** Heal one link, or all when no pair is given. */
  heal(a?: string, b?: string): void {
    if (a && b) this.#partitioned.delete(linkKey(a, b));
    else this.#partitioned.clear();
    this.#notify();
  }

  get partitions(): [string, string][] {
    return [...this.#partitioned].map((k) => k.split('|') as [string, string]);
  }

  onChange(fn: () => void): () => void {
    this.#listeners.add(fn);
    return () => this.#listeners.delete(fn);
  }

  #notify(): void {
    for (const fn of this.#listeners) fn();
  }
}

/** Bytes counters for one proxy. */
export interface WanCounters {
  connections: number;
  bytes: number;
}

/** One direction of one connection: a delay line with order kept, a rate cap and a hold. */
class Pipe {
  #queue: { at: number; chunk: Buffer }[] = [];
  #queued = 0;
  #lastRelease = 0;
  #timer: NodeJS.Timeout | undefined;
  #ended = false;

  constructor(
    private readonly from: net.Socket,
    private readonly to: net.Socket,
    private readonly shape: () => LinkShape,
    private readonly held: () => boolean,
    private readonly onBytes: (n: number) => void,
  ) {
    from.on('data', (chunk: Buffer) => this.#push(chunk));
    from.on('end', () => {
      this.#ended = true;
      this.#pump();
    });
  }

  #push(chunk: Buffer): void {
    const s = this.shape();
    const now = Date.now();
    let at = now + s.latencyMs + (s.jitterMs > 0 ? Math.random() * s.jitterMs : 0);
    if (s.loss > 0 && Math.random() < s.loss) at += RETRANSMIT_MS;
    if (s.bandwidthBytesPerSec > 0) at = Math.max(at, this.#lastRelease) + (chunk.length / s.bandwidthBytesPerSec) * 1000;
    at = Math.max(at, this.#lastRelease);
    this.#lastRelease = at;
    this.#queue.push({ at, chunk });
    this.#queued += chunk.length;
    if (this.#queued > HIGH_WATER) this.from.pause();
    this.#pump();
  }

  /** Release what is due; called on data, timers and link changes. */
  pump(): void {
    this.#pump();
  }

  #pump(): void {
    if (this.#timer) {
      clearTimeout(this.#timer);
      this.#timer = undefined;
    }
    if (this.held()) return;
    const now = Date.now();
    while (this.#queue.length && this.#queue[0]!.at <= now) {
      const { chunk } = this.#queue.shift()!;
      this.#queued -= chunk.length;
      this.onBytes(chunk.length);
      if (!this.to.destroyed) this.to.write(chunk);
    }
    if (this.#queued <= HIGH_WATER / 2 && this.from.isPaused()) this.from.resume();
    if (this.#queue.length) {
      this.#timer = setTimeout(() => this.#pump(), Math.max(1, this.#queue[0]!.at - now));
    } else if (this.#ended && !this.to.destroyed) {
      this.to.end();
    }
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#queue = [];
  }
}

/** Options of one proxy (one per region's PostgreSQL). */
export interface WanProxyOptions {
  /** The region behind this proxy. */
  region: string;
  listen: { host: string; port: number };
  upstream: { host: string; port: number };
  state: WanState;
  /** Which region a client address belongs to; undefined = not a lab region (no shaping). */
  regionOf(address: string): string | undefined;
  logger?: Logger;
}

/** A TCP proxy that shapes each connection by the link between its client's region and ours. */
export class WanProxy extends BaseService {
  readonly name: string;
  readonly counters: WanCounters = { connections: 0, bytes: 0 };
  readonly #opts: WanProxyOptions;
  #server: net.Server | undefined;
  #conns = new Set<{ client: net.Socket; upstream: net.Socket; peer: string | undefined; pipes: Pipe[] }>();
  #unsubscribe: (() => void) | undefined;

  constructor(opts: WanProxyOptions) {
    super();
    this.#opts = opts;
    this.name = `wan:${opts.region}`;
  }

  protected async onStart(): Promise<void> {
    const o = this.#opts;
    const log = o.logger ?? silentLogger();
    this.#unsubscribe = o.state.onChange(() => this.#onLinkChange());
    const server = net.createServer((client) => {
      const peer = o.regionOf(client.remoteAddress ?? '');
      const shaped = peer !== undefined && peer !== o.region;
      const held = () => shaped && o.state.isPartitioned(peer, o.region);
      const shape = () => (shaped ? o.state.shape(peer, o.region) : { latencyMs: 0, jitterMs: 0, loss: 0, bandwidthBytesPerSec: 0 });
      const upstream = new net.Socket();
      client.setNoDelay(true);
      upstream.setNoDelay(true);
      const entry = { client, upstream, peer: shaped ? peer : undefined, pipes: [] as Pipe[] };
      this.#conns.add(entry);
      this.counters.connections++;
      const count = (n: number) => {
        this.counters.bytes += n;
      };
      // Bytes for the upstream wait in the pipe until its connect has begun (a socket written before
      // connect() fails, which would kill a connection held by a partition at the heal); after that
      // the socket buffers them until it is connected.
      let connectStarted = false;
      entry.pipes.push(new Pipe(client, upstream, shape, () => !connectStarted || held(), count), new Pipe(upstream, client, shape, held, count));
      const connect = () => {
        connectStarted = true;
        upstream.connect(o.upstream.port, o.upstream.host);
        for (const p of entry.pipes) p.pump();
      };
      // A partitioned path does not complete the connection until it heals (like a lost SYN).
      if (held()) {
        const waitHeal = o.state.onChange(() => {
          if (!held()) {
            waitHeal();
            if (!client.destroyed) connect();
          }
        });
        client.once('close', waitHeal);
      } else {
        connect();
      }
      const cleanup = () => {
        client.destroy();
        upstream.destroy();
        for (const p of entry.pipes) p.close();
        this.#conns.delete(entry);
      };
      client.on('error', cleanup);
      upstream.on('error', (err) => {
        log.debug({ err, region: o.region }, 'wan upstream error');
        cleanup();
      });
      client.on('close', cleanup);
      upstream.on('close', () => {
        // Let queued bytes drain to the client first; the pipe ends it.
        if (client.destroyed) cleanup();
      });
    });
    server.maxConnections = 1000;
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.listen.port, o.listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  #onLinkChange(): void {
    for (const c of this.#conns) for (const p of c.pipes) p.pump();
  }

  /** Cut every connection of one link (as a long partition eventually does). */
  resetLink(peer: string): number {
    let n = 0;
    for (const c of this.#conns) {
      if (c.peer === peer) {
        c.client.destroy();
        c.upstream.destroy();
        n++;
      }
    }
    return n;
  }

  protected async onStop(): Promise<void> {
    this.#unsubscribe?.();
    for (const c of this.#conns) {
      c.client.destroy();
      c.upstream.destroy();
    }
    const server = this.#server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
