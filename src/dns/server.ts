/**
 * The DNS listeners: UDP and TCP on every configured address (IPv4 and
 * IPv6), feeding packets to a `DnsEngine`. TCP is length-prefixed (RFC 1035
 * §4.2.2) with several queries per connection (RFC 7766 §6.2.1), an idle
 * timeout and a cap on concurrent connections.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { isIP } from 'node:net';
import { BaseService } from '../core/lifecycle.ts';
import { TandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { silentLogger } from '../core/log.ts';
import type { HostPort } from '../core/config/common.ts';
import type { DnsEngine } from './engine.ts';
import { tcpFrame, writeHeaderOnly, RCODE } from './wire.ts';

/** Answers a TCP client may leave unread before it is cut off (bytes). */
const MAX_UNREAD_BYTES = 256 * 1024;

/** What the server tracks per TCP connection. */
interface TcpConn {
  /** When it last sent a byte (performance.now()). */
  lastActive: number;
  /** A frame has started and not yet arrived whole. */
  inFrame: boolean;
}

/** Options of `DnsServer`. */
export interface DnsServerOptions {
  listen: HostPort[];
  engine: DnsEngine;
  tcp: { idleTimeoutMs: number; maxConnections: number };
  logger?: Logger;
}

/** One bound listener: its UDP socket and TCP server share host and port. */
export interface BoundListener {
  host: string;
  port: number;
}

/** UDP + TCP front end of the authoritative server. */
export class DnsServer extends BaseService {
  readonly name = 'dns-server';
  readonly #opts: DnsServerOptions;
  readonly #log: Logger;
  readonly #udp: dgram.Socket[] = [];
  readonly #tcp: net.Server[] = [];
  readonly #conns = new Map<net.Socket, TcpConn>();
  readonly bound: BoundListener[] = [];
  /**
   * TCP connections the server closed itself, by reason: `refused` at the cap (every connection was in the
   * middle of a frame), `evicted` (idle, to make room at the cap), `overrun` (answers left unread).
   */
  readonly tcpClosed = { refused: 0, evicted: 0, overrun: 0 };

  constructor(opts: DnsServerOptions) {
    super();
    this.#opts = opts;
    this.#log = opts.logger ?? silentLogger();
  }

  protected async onStart(): Promise<void> {
    for (const l of this.#opts.listen) {
      // With port 0 the OS picks the UDP port; TCP must get the same one, so retry on a clash.
      let lastErr: unknown;
      for (let attempt = 0; attempt < 10; attempt++) {
        try {
          const udp = await this.#bindUdp(l.host, l.port);
          const port = (udp.address() as net.AddressInfo).port;
          try {
            const tcp = await this.#bindTcp(l.host, port);
            this.#udp.push(udp);
            this.#tcp.push(tcp);
            this.bound.push({ host: l.host, port });
            lastErr = undefined;
            break;
          } catch (err) {
            udp.close();
            throw err;
          }
        } catch (err) {
          lastErr = err;
          if (l.port !== 0) break;
        }
      }
      if (lastErr) {
        throw new TandemError('TANDEM_ERR_STATE', `cannot listen for DNS on ${l.host}:${l.port}: ${(lastErr as Error).message}`, { cause: lastErr });
      }
    }
    this.#log.info({ listen: this.bound }, 'dns server listening');
  }

  protected async onStop(): Promise<void> {
    for (const s of this.#udp) s.close();
    for (const c of this.#conns.keys()) c.destroy();
    await Promise.all(this.#tcp.map((t) => new Promise<void>((resolve) => t.close(() => resolve()))));
    this.#udp.length = 0;
    this.#tcp.length = 0;
  }

  #bindUdp(host: string, port: number): Promise<dgram.Socket> {
    const type = isIP(host) === 6 ? 'udp6' : 'udp4';
    // Replies go to the literal address a query came from: resolve it synchronously
    // instead of through dns.lookup's nextTick round trip on every send.
    const family = type === 'udp6' ? 6 : 4;
    const lookup = (address: string, _opts: unknown, cb: (err: Error | null, address: string, family: number) => void) => cb(null, address, family);
    const sock = dgram.createSocket({ type, reuseAddr: false, ipv6Only: type === 'udp6', lookup: lookup as never });
    const engine = this.#opts.engine;
    return new Promise((resolve, reject) => {
      sock.once('error', reject);
      sock.bind(port, host, () => {
        sock.off('error', reject);
        try {
          // A deeper receive queue absorbs bursts; the kernel caps it at rmem_max.
          sock.setRecvBufferSize(4 * 1024 * 1024);
        } catch {
          // Not allowed here: keep the default.
        }
        sock.on('error', (err) => this.#log.warn({ err }, 'dns udp socket error'));
        sock.on('message', (msg, rinfo) => {
          // Source port 0 cannot be answered (a spoofed packet): send() would throw.
          if (rinfo.port === 0) {
            engine.dropped++;
            return;
          }
          let out: Buffer | undefined;
          try {
            out = engine.answer(msg, rinfo.address, false);
          } catch (err) {
            this.#log.error({ err }, 'dns query failed');
            out = writeHeaderOnly(msg, RCODE.SERVFAIL);
          }
          if (!out) return;
          try {
            sock.send(out, rinfo.port, rinfo.address);
          } catch (err) {
            this.#log.debug({ err }, 'dns udp send failed');
          }
        });
        resolve(sock);
      });
    });
  }

  #bindTcp(host: string, port: number): Promise<net.Server> {
    const server = net.createServer((socket) => this.#onConnection(socket));
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host, ipv6Only: isIP(host) === 6 }, () => {
        server.off('error', reject);
        server.on('error', (err) => this.#log.warn({ err }, 'dns tcp server error'));
        resolve(server);
      });
    });
  }

  /**
   * One TCP client. A frame must arrive whole within `idleTimeoutMs` of its first byte (a client trickling
   * bytes cannot hold the connection), frames are assembled in a buffer of their own size (no re-copying of
   * what came before), and a client that does not read its answers is cut off once `MAX_UNREAD_BYTES` wait.
   * At the connection cap the connection idle the longest makes room (RFC 7766 §6.2.2); when every one is
   * in the middle of a frame, the new one is refused.
   */
  #onConnection(socket: net.Socket): void {
    const { idleTimeoutMs, maxConnections } = this.#opts.tcp;
    if (this.#conns.size >= maxConnections && !this.#evictIdle()) {
      this.tcpClosed.refused++;
      socket.destroy();
      return;
    }
    const conn: TcpConn = { lastActive: performance.now(), inFrame: false };
    this.#conns.set(socket, conn);
    const engine = this.#opts.engine;
    const lenBuf = Buffer.alloc(2);
    let lenHave = 0;
    let frame: Buffer | undefined;
    let have = 0;
    let frameTimer: NodeJS.Timeout | undefined;
    // A frame has begun: it must arrive whole within idleTimeoutMs.
    const startFrame = () => {
      if (frameTimer) return;
      frameTimer = setTimeout(() => socket.destroy(), idleTimeoutMs);
      conn.inFrame = true;
    };
    const endFrame = () => {
      clearTimeout(frameTimer);
      frameTimer = undefined;
      conn.inFrame = false;
    };
    socket.setNoDelay(true);
    // Idle or half-open clients are cut off.
    socket.setTimeout(idleTimeoutMs, () => socket.destroy());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      clearTimeout(frameTimer);
      this.#conns.delete(socket);
    });
    socket.on('drain', () => socket.resume());
    socket.on('data', (chunk: Buffer) => {
      conn.lastActive = performance.now();
      startFrame();
      let off = 0;
      while (off < chunk.length) {
        if (!frame) {
          const take = Math.min(2 - lenHave, chunk.length - off);
          chunk.copy(lenBuf, lenHave, off, off + take);
          lenHave += take;
          off += take;
          if (lenHave < 2) break;
          lenHave = 0;
          const len = lenBuf.readUInt16BE(0);
          if (len === 0) {
            socket.destroy();
            return;
          }
          frame = Buffer.allocUnsafe(len);
          have = 0;
        }
        const take = Math.min(frame.length - have, chunk.length - off);
        chunk.copy(frame, have, off, off + take);
        have += take;
        off += take;
        if (have < frame.length) break;
        const msg = frame;
        frame = undefined;
        endFrame();
        let out: Buffer | undefined;
        try {
          out = engine.answer(msg, socket.remoteAddress ?? '', true);
        } catch (err) {
          this.#log.error({ err }, 'dns query failed');
          out = writeHeaderOnly(msg, RCODE.SERVFAIL);
        }
        if (out) {
          if (!socket.write(tcpFrame(out))) socket.pause(); // read more once the client has taken its answers
          if (socket.writableLength > MAX_UNREAD_BYTES) {
            this.tcpClosed.overrun++;
            socket.destroy();
            return;
          }
        }
        if (off < chunk.length) startFrame();
      }
    });
  }

  /** Close the connection idle the longest (not in the middle of a frame); false when there is none. */
  #evictIdle(): boolean {
    let oldest: [net.Socket, TcpConn] | undefined;
    for (const entry of this.#conns) if (!entry[1].inFrame && (!oldest || entry[1].lastActive < oldest[1].lastActive)) oldest = entry;
    if (!oldest) return false;
    this.tcpClosed.evicted++;
    oldest[0].destroy();
    this.#conns.delete(oldest[0]);
    return true;
  }
}
