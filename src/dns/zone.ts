/**
 * The zone built from `tandem.yaml`: apex SOA and NS, the geo-routed service
 * names, static records (A, AAAA, CNAME, TXT, MX) and the empty
 * non-terminals between them. Record data is encoded once, with dns-packet,
 * into bytes whose owner is a compression pointer to the question (0xC00C),
 * so an answer is a copy.
 */
import { isIP } from 'node:net';
import dnsPacket from 'dns-packet';
import { TandemError } from '../core/errors.ts';
import type { Config } from '../core/config/index.ts';
import { nameKey, nameToWire, QTYPE } from './wire.ts';

/** An RRset ready to send. */
export interface RRset {
  rr: Buffer;
  count: number;
}

/** One owner name in the zone. */
export interface ZoneNode {
  /** Absolute name, lower case, without the trailing dot. */
  name: string;
  /** Index into `dns.services` when the name is geo-routed. */
  service?: number;
  /** Static RRsets by type, owner = pointer to the question. */
  rrsets: Map<number, RRset>;
  /** A CNAME at this name, and its absolute target. */
  cname?: { rr: Buffer; target: string };
}

/** The compiled zone. */
export interface Zone {
  /** Absolute zone name, lower case, no trailing dot ("tandem.test"). */
  origin: string;
  originKey: string;
  serial: number;
  nodes: Map<string, ZoneNode>;
  services: { name: string; key: string; ttlSec: number }[];
  /** SOA with its full owner (for authority sections). */
  soaAuthority: Buffer;
  /** Glue for the apex NS answer (additional section). */
  glue: RRset;
  nameservers: string[];
  negativeTtlSec: number;
}

type RecordInput = { name: string; type: string; data: unknown; ttl: number };

/** dns-packet's record codec (exported at run time, missing from its type definitions). */
const answerCodec = (dnsPacket as unknown as { answer: { encode(record: Record<string, unknown>): Buffer } }).answer;

/** Encode one record with owner = pointer to the question name. */
function encodeWithPointer(r: Omit<RecordInput, 'name'>): Buffer {
  const full = answerCodec.encode({ name: '.', type: r.type, class: 'IN', ttl: r.ttl, data: r.data });
  // Owner "." is the single byte 0; swap it for the pointer C0 0C.
  return Buffer.concat([Buffer.from([0xc0, 0x0c]), full.subarray(1)]);
}

/** Encode one record with its full owner name. */
function encodeFull(r: RecordInput): Buffer {
  return Buffer.from(answerCodec.encode({ name: r.name, type: r.type, class: 'IN', ttl: r.ttl, data: r.data }));
}

/** Split TXT strings into ≤255-byte character-strings (RFC 1035 §3.3.14). */
function txtChunks(value: string | string[]): Buffer[] {
  const out: Buffer[] = [];
  for (const s of Array.isArray(value) ? value : [value]) {
    const b = Buffer.from(s, 'utf8');
    if (b.length === 0) out.push(b);
    for (let i = 0; i < b.length; i += 255) out.push(b.subarray(i, i + 255));
  }
  return out;
}

/** Build the zone; throws a config error naming the key path of a bad record. */
export function buildZone(config: Config, serial: number): Zone {
  const dns = config.dns;
  if (!dns) throw new TandemError('TANDEM_ERR_CONFIG', 'tandem.yaml has no "dns" section; `tandem dns serve` needs dns.zone and dns.services');
  const origin = dns.zone.toLowerCase().replace(/\.$/, '');
  const errors: string[] = [];
  const abs = (name: string, where: string): string | undefined => {
    const n = name.trim().toLowerCase();
    let full: string;
    if (n === '@' || n === '') full = origin;
    else if (n.endsWith('.')) full = n.slice(0, -1);
    else full = `${n}.${origin}`;
    try {
      nameToWire(full);
    } catch (err) {
      errors.push(`${where}: ${(err as Error).message}`);
      return undefined;
    }
    if (full !== origin && !full.endsWith(`.${origin}`)) {
      errors.push(`${where}: ${JSON.stringify(name)} is outside the zone ${origin}.`);
      return undefined;
    }
    return full;
  };
  const target = (name: string): string => {
    const n = name.trim().toLowerCase();
    if (n.endsWith('.')) return n.slice(0, -1);
    return n === '@' ? origin : `${n}.${origin}`;
  };
  const nodes = new Map<string, ZoneNode>();
  const nodeFor = (full: string): ZoneNode => {
    const key = nameKey(full);
    let node = nodes.get(key);
    if (!node) {
      node = { name: full, rrsets: new Map() };
      nodes.set(key, node);
    }
    // Empty non-terminals exist too (NODATA, not NXDOMAIN: RFC 8020).
    let parent = full;
    while (parent !== origin && parent.includes('.')) {
      parent = parent.slice(parent.indexOf('.') + 1);
      const pk = nameKey(parent);
      if (!nodes.has(pk)) nodes.set(pk, { name: parent, rrsets: new Map() });
    }
    return node;
  };
  const add = (node: ZoneNode, type: number, rr: Buffer) => {
    const set = node.rrsets.get(type);
    if (set) {
      set.rr = Buffer.concat([set.rr, rr]);
      set.count++;
    } else node.rrsets.set(type, { rr, count: 1 });
  };

  const apex = nodeFor(origin);
  const withDns = config.regions.filter((r) => r.dns);
  const nameservers = (dns.nameservers ?? withDns.map((r) => `ns-${r.name}`)).map((n) => target(n));
  if (nameservers.length === 0) nameservers.push(`ns.${origin}`);
  const mname = dns.soa.mname ? target(dns.soa.mname) : nameservers[0]!;
  const rname = target(dns.soa.rname);
  const soaData = { mname, rname, serial, refresh: dns.soa.refreshSec, retry: dns.soa.retrySec, expire: dns.soa.expireSec, minimum: dns.soa.minimumSec };
  const soaTtl = dns.soa.minimumSec;
  add(apex, QTYPE.SOA, encodeWithPointer({ type: 'SOA', data: soaData, ttl: soaTtl }));
  for (const ns of nameservers) add(apex, QTYPE.NS, encodeWithPointer({ type: 'NS', data: ns, ttl: dns.ttlSec }));
  // RFC 2308 §3: the SOA in a negative answer carries the smaller of its TTL and MINIMUM.
  const soaAuthority = encodeFull({ name: origin, type: 'SOA', data: soaData, ttl: soaTtl });

  // Glue for default NS names: the region's DNS listen addresses.
  const glueParts: Buffer[] = [];
  let glueCount = 0;
  if (!dns.nameservers) {
    for (const r of withDns) {
      const ns = target(`ns-${r.name}`);
      const node = nodeFor(ns);
      for (const l of r.dns!.listen) {
        const fam = isIP(l.host);
        if (fam === 0 || l.host === '0.0.0.0' || l.host === '::') continue;
        const type = fam === 4 ? 'A' : 'AAAA';
        add(node, fam === 4 ? QTYPE.A : QTYPE.AAAA, encodeWithPointer({ type, data: l.host, ttl: dns.ttlSec }));
        glueParts.push(encodeFull({ name: ns, type, data: l.host, ttl: dns.ttlSec }));
        glueCount++;
      }
    }
  }

  const services = dns.services.map((s, i) => {
    const full = abs(s.name, `dns.services[${i}].name`) ?? origin;
    const node = nodeFor(full);
    if (node.service !== undefined) errors.push(`dns.services[${i}].name: "${s.name}" is listed twice`);
    node.service = i;
    return { name: full, key: nameKey(full), ttlSec: s.ttlSec ?? dns.ttlSec };
  });

  dns.records.forEach((r, i) => {
    const where = `dns.records[${i}]`;
    const full = abs(r.name, `${where}.name`);
    if (!full) return;
    const node = nodeFor(full);
    const ttl = r.ttlSec ?? dns.ttlSec;
    if (node.service !== undefined && (r.type === 'A' || r.type === 'AAAA' || r.type === 'CNAME')) {
      errors.push(`${where}.name: ${full} is a geo-routed service; it cannot also have a static ${r.type} record`);
      return;
    }
    switch (r.type) {
      case 'A':
      case 'AAAA':
        add(node, r.type === 'A' ? QTYPE.A : QTYPE.AAAA, encodeWithPointer({ type: r.type, data: r.value, ttl }));
        break;
      case 'CNAME': {
        if (full === origin) {
          errors.push(`${where}.name: a CNAME cannot sit at the zone apex`);
          return;
        }
        if (node.cname) {
          errors.push(`${where}.name: ${full} already has a CNAME`);
          return;
        }
        const t = target(r.value);
        node.cname = { rr: encodeWithPointer({ type: 'CNAME', data: t, ttl }), target: t };
        break;
      }
      case 'TXT':
        add(node, QTYPE.TXT, encodeWithPointer({ type: 'TXT', data: txtChunks(r.value), ttl }));
        break;
      case 'MX':
        add(node, QTYPE.MX, encodeWithPointer({ type: 'MX', data: { preference: r.preference, exchange: target(r.value) }, ttl }));
        break;
    }
  });
  for (const node of nodes.values()) {
    if (node.cname && node.rrsets.size > 0) errors.push(`dns.records: ${node.name} has a CNAME and other records (RFC 1034 §3.6.2 forbids it)`);
  }
  if (errors.length) throw new TandemError('TANDEM_ERR_CONFIG', `dns zone is invalid:\n  - ${errors.join('\n  - ')}`, { details: { errors } });
  return {
    origin,
    originKey: nameKey(origin),
    serial,
    nodes,
    services,
    soaAuthority,
    glue: { rr: Buffer.concat(glueParts), count: glueCount },
    nameservers,
    negativeTtlSec: soaTtl,
  };
}
