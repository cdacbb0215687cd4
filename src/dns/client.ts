/**
 * A small DNS client for drills and tests: one query over UDP or TCP, with an
 * optional EDNS Client Subnet and a source address, decoded with dns-packet.
 */
import dgram from 'node:dgram';
import net from 'node:net';
import { isIP } from 'node:net';
import dnsPacket from 'dns-packet';
import { TandemError } from '../core/errors.ts';
import { parseCidr } from './policy.ts';
import { tcpFrame } from './wire.ts';

/** Where to send a query. */
export interface DnsTarget {
  host: string;
  port: number;
}

/** Options of `query` / `queryA`. */
export interface QueryOptions {
  /** Client subnet to send as ECS, e.g. "49.204.1.0/24". */
  ecs?: string;
  timeoutMs?: number;
  tcp?: boolean;
  /** Record type (default A). */
  type?: dnsPacket.RecordType;
  /** Source address to bind (e.g. a chosen loopback address). */
  localAddress?: string;
  /** EDNS UDP payload size to advertise; `false` sends no OPT record. */
  udpPayloadSize?: number | false;
  /** Query id (default random). */
  id?: number;
}

/** What `queryA` returns. */
export interface QueryAResult {
  addresses: string[];
  /** TTL of the answer records (0 when there are none). */
  ttlSec: number;
  rcode: string;
  /** ECS scope prefix the server echoed, if any. */
  scopePrefix?: number;
  truncated: boolean;
  authoritative: boolean;
}

/** Build the query packet. */
export function buildQuery(name: string, opts: QueryOptions = {}): Buffer {
  const additionals: dnsPacket.Answer[] = [];
  if (opts.udpPayloadSize !== false) {
    const options: { code: number; family?: number; sourcePrefixLength?: number; scopePrefixLength?: number; ip?: string }[] = [];
    if (opts.ecs) {
      const net4 = parseCidr(opts.ecs);
      if (!net4) throw new TandemError('TANDEM_ERR_USAGE', `ecs must be a CIDR with zero host bits, found ${JSON.stringify(opts.ecs)}`);
      options.push({ code: 8, family: net4.family === 4 ? 1 : 2, sourcePrefixLength: net4.prefix, scopePrefixLength: 0, ip: opts.ecs.split('/')[0]! });
    }
    additionals.push({ type: 'OPT', name: '.', udpPayloadSize: opts.udpPayloadSize ?? 1232, flags: 0, options } as unknown as dnsPacket.Answer);
  }
  return dnsPacket.encode({
    type: 'query',
    id: opts.id ?? Math.floor(Math.random() * 65536),
    flags: dnsPacket.RECURSION_DESIRED,
    questions: [{ type: opts.type ?? 'A', name, class: 'IN' }],
    additionals,
  });
}

/** Send raw bytes and return the raw answer (UDP datagram or one TCP message). */
export function exchange(server: DnsTarget, packet: Buffer, opts: { timeoutMs?: number; tcp?: boolean; localAddress?: string } = {}): Promise<Buffer> {
  const timeoutMs = opts.timeoutMs ?? 2_000;
  return new Promise<Buffer>((resolve, reject) => {
    let done = false;
    const finish = (err: Error | undefined, buf?: Buffer) => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      cleanup();
      if (err) reject(err);
      else resolve(buf!);
    };
    const timer = setTimeout(
      () => finish(new TandemError('TANDEM_ERR_TIMEOUT', `no DNS answer from ${server.host}:${server.port} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    let cleanup = () => {};
    if (opts.tcp) {
      const sock = net.connect({ host: server.host, port: server.port, localAddress: opts.localAddress });
      cleanup = () => sock.destroy();
      let acc = Buffer.alloc(0);
      sock.on('connect', () => sock.write(tcpFrame(packet)));
      sock.on('data', (chunk: Buffer) => {
        acc = Buffer.concat([acc, chunk]);
        if (acc.length >= 2 && acc.length >= 2 + acc.readUInt16BE(0)) finish(undefined, acc.subarray(2, 2 + acc.readUInt16BE(0)));
      });
      sock.on('error', (err) => finish(err));
      sock.on('close', () => finish(new TandemError('TANDEM_ERR_HTTP', `DNS TCP connection to ${server.host}:${server.port} closed without an answer`)));
    } else {
      const sock = dgram.createSocket(isIP(server.host) === 6 ? 'udp6' : 'udp4');
      cleanup = () => {
        try {
          sock.close();
        } catch {
          // already closed
        }
      };
      sock.on('error', (err) => finish(err));
      sock.on('message', (msg) => finish(undefined, msg));
      const send = () => sock.send(packet, server.port, server.host);
      if (opts.localAddress) sock.bind(0, opts.localAddress, send);
      else send();
    }
  });
}

/** Send one query and decode the answer. */
export async function query(server: DnsTarget, name: string, opts: QueryOptions = {}): Promise<dnsPacket.DecodedPacket & { rcode?: string; raw: Buffer }> {
  const raw = await exchange(server, buildQuery(name, opts), opts);
  return Object.assign(dnsPacket.decode(raw) as dnsPacket.DecodedPacket & { rcode?: string }, { raw });
}

/** Query A (or `opts.type`) records; the resolver client the drills reuse. */
export async function queryA(server: DnsTarget, name: string, opts: QueryOptions & { timeoutMs: number }): Promise<QueryAResult> {
  const type = opts.type ?? 'A';
  const res = await query(server, name, { ...opts, type });
  const answers = (res.answers ?? []).filter((a) => a.type === type) as { data: string; ttl?: number }[];
  const opt = (res.additionals ?? []).find((a) => a.type === 'OPT') as { options?: { code: number; scopePrefixLength?: number }[] } | undefined;
  const ecs = opt?.options?.find((o) => o.code === 8);
  const result: QueryAResult = {
    addresses: answers.map((a) => a.data),
    ttlSec: answers[0]?.ttl ?? 0,
    rcode: res.rcode ?? 'NOERROR',
    truncated: Boolean(res.flag_tc),
    authoritative: Boolean(res.flag_aa),
  };
  if (ecs) result.scopePrefix = ecs.scopePrefixLength ?? 0;
  return result;
}
