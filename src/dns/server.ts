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
import { writeHeaderOnly, RCODE } from './wire.ts';

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
  readonly #conns = new Set<net.Socket>();
  readonly bound: BoundListener[] = [];
  /** TCP connections refused because of the cap. */
  tcpRejected = 0;

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
    for (const c of this.#conns) c.destroy();
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
          let out: Buffer | undefined;
          try {
            out = engine.answer(msg, rinfo.address, false);
          } catch (err) {
            this.#log.error({ err }, 'dns query failed');
            out = writeHeaderOnly(msg, RCODE.SERVFAIL);
          }
          if (out) sock.send(out, rinfo.port, rinfo.address);
        });
        resolve(sock);
      });
    });
  }

  #bindTcp(host: string, port: number): Promise<net.Server> {
    const { idleTimeoutMs, maxConnections } = this.#opts.tcp;
    const server = net.createServer((socket) => this.#onConnection(socket, idleTimeoutMs));
    server.maxConnections = maxConnections;
    server.on('drop', () => {
      this.tcpRejected++;
    });
    return new Promise((resolve, reject) => {
      server.once('error', reject);
      server.listen({ port, host, ipv6Only: isIP(host) === 6 }, () => {
        server.off('error', reject);
        server.on('error', (err) => this.#log.warn({ err }, 'dns tcp server error'));
        resolve(server);
      });
    });
  }

  #onConnection(socket: net.Socket, idleTimeoutMs: number): void {
    this.#conns.add(socket);
    const engine = this.#opts.engine;
    let pending: Buffer = Buffer.alloc(0);
    socket.setNoDelay(true);
    // Idle (or slow, or half-open) clients are cut off; every byte received resets it.
    socket.setTimeout(idleTimeoutMs, () => socket.destroy());
    socket.on('error', () => socket.destroy());
    socket.on('close', () => this.#conns.delete(socket));
    socket.on('data', (chunk: Buffer) => {
      pending = pending.length ? Buffer.concat([pending, chunk]) : chunk;
      while (pending.length >= 2) {
        const len = pending.readUInt16BE(0);
        if (len === 0) {
          socket.destroy();
          return;
        }
        if (pending.length < 2 + len) break;
        const msg = pending.subarray(2, 2 + len);
        pending = pending.subarray(2 + len);
        let out: Buffer | undefined;
        try {
          out = engine.answer(msg, socket.remoteAddress ?? '', true);
        } catch (err) {
          this.#log.error({ err }, 'dns query failed');
          out = writeHeaderOnly(msg, RCODE.SERVFAIL);
        }
        if (out) {
          const frame = Buffer.allocUnsafe(2 + out.length);
          frame.writeUInt16BE(out.length, 0);
          out.copy(frame, 2);
          socket.write(frame);
        }
      }
      // Copy the remainder so the (possibly large) chunk it came from can be freed.
      if (pending.length && pending.length < 2 + 65535) pending = Buffer.from(pending);
    });
  }
}
