/**
 * The DNS wire format of queries and responses, hand-rolled for the one shape
 * an authoritative server answers (one question, an optional OPT record) so
 * that the per-query path does not allocate a parsed packet. Static record
 * data is encoded with dns-packet when the zone is built (`zone.ts`); this
 * module parses queries and assembles responses from precomputed bytes.
 *
 * Every read is bounds-checked: hostile packets (compression loops, label
 * overruns, bogus counts, bad EDNS) end in FORMERR or a silent drop.
 */

/** Header flag bits and codes. Source: RFC 1035 §4.1.1, RFC 6895 §2. */
export const FLAG = { QR: 0x8000, AA: 0x0400, TC: 0x0200, RD: 0x0100, RA: 0x0080, AD: 0x0020, CD: 0x0010 } as const;

/** RCODEs. Source: https://www.iana.org/assignments/dns-parameters/dns-parameters.xhtml#dns-parameters-6 */
export const RCODE = { NOERROR: 0, FORMERR: 1, SERVFAIL: 2, NXDOMAIN: 3, NOTIMP: 4, REFUSED: 5, BADVERS: 16 } as const;

/** RR TYPEs we handle. Source: IANA "Resource Record (RR) TYPEs". */
export const QTYPE = { A: 1, NS: 2, CNAME: 5, SOA: 6, MX: 15, TXT: 16, AAAA: 28, OPT: 41, IXFR: 251, AXFR: 252, ANY: 255 } as const;

/** CLASSes. */
export const QCLASS = { IN: 1, ANY: 255 } as const;

/** EDNS option codes. Source: IANA "DNS EDNS0 Option Codes (OPT)"; ECS is RFC 7871. */
export const EDNS_OPTION = { ClientSubnet: 8 } as const;

/** What `parseQuery` decided. */
export const PARSE = { OK: 0, DROP: 1, FORMERR: 2, NOTIMP: 3 } as const;

const MAX_POINTER_JUMPS = 32;

/** A parsed query. One instance is reused for every packet (no per-query allocation besides the name key). */
export class Query {
  id = 0;
  flags = 0;
  opcode = 0;
  /** Question name as received (case kept), uncompressed wire form, in `nameBuf[0..nameLen)`. */
  readonly nameBuf = Buffer.alloc(256);
  nameLen = 0;
  /** Lower-cased wire form as a latin1 string: the zone lookup key. */
  key = '';
  /** Offsets of label starts in `nameBuf` (for suffix checks). */
  readonly labelStarts = new Int16Array(128);
  labelCount = 0;
  qtype = 0;
  qclass = 0;
  edns = false;
  udpSize = 512;
  ednsVersion = 0;
  ecs = false;
  ecsFamily = 0;
  ecsSource = 0;
  /** ECS address bytes as received (length ceil(source/8)), copied out of the packet. */
  readonly ecsAddr = new Uint8Array(16);
  ecsAddrLen = 0;
  /** True once the question was parsed (a FORMERR may still echo it). */
  haveQuestion = false;
}

function readName(buf: Buffer, start: number, q: Query | undefined): number {
  // Returns the offset after the name in the original position, or -1 (malformed).
  let pos = start;
  let end = -1;
  let jumps = 0;
  let total = 0;
  let out = 0;
  let lowestJump = start;
  let labels = 0;
  for (;;) {
    if (pos >= buf.length) return -1;
    const len = buf[pos]!;
    if (len === 0) {
      if (end < 0) end = pos + 1;
      total += 1;
      if (total > 255) return -1;
      if (q) {
        q.nameBuf[out++] = 0;
        q.nameLen = out;
        q.labelCount = labels;
      }
      return end;
    }
    const kind = len & 0xc0;
    if (kind === 0xc0) {
      if (pos + 1 >= buf.length) return -1;
      const target = ((len & 0x3f) << 8) | buf[pos + 1]!;
      // Only strictly backward pointers (RFC 1035 §4.1.4 "prior occurrence"), and few of them: no loops.
      if (target >= lowestJump || ++jumps > MAX_POINTER_JUMPS) return -1;
      if (end < 0) end = pos + 2;
      lowestJump = target;
      pos = target;
      continue;
    }
    if (kind !== 0) return -1; // 0x40 / 0x80: extended label types are not supported (RFC 6891 §5)
    if (pos + 1 + len > buf.length) return -1;
    total += len + 1;
    if (total > 255) return -1;
    if (q) {
      if (labels >= 127) return -1;
      q.labelStarts[labels++] = out;
      q.nameBuf[out++] = len;
      buf.copy(q.nameBuf, out, pos + 1, pos + 1 + len);
      out += len;
    }
    pos += 1 + len;
  }
}

/**
 * Parse a query into `q`. Returns a `PARSE` code: OK, DROP (not worth an
 * answer: too short, or a response), FORMERR or NOTIMP (answer with that rcode).
 */
export function parseQuery(buf: Buffer, q: Query): number {
  q.haveQuestion = false;
  q.edns = false;
  q.ecs = false;
  q.udpSize = 512;
  q.ednsVersion = 0;
  if (buf.length < 12) return PARSE.DROP;
  q.id = buf.readUInt16BE(0);
  q.flags = buf.readUInt16BE(2);
  if (q.flags & FLAG.QR) return PARSE.DROP; // never answer a response (reflection loops)
  q.opcode = (q.flags >> 11) & 0xf;
  if (q.opcode !== 0) return PARSE.NOTIMP;
  const qd = buf.readUInt16BE(4);
  const an = buf.readUInt16BE(6);
  const ns = buf.readUInt16BE(8);
  const ar = buf.readUInt16BE(10);
  if (qd !== 1) return PARSE.FORMERR;
  let pos = readName(buf, 12, q);
  if (pos < 0 || pos + 4 > buf.length) return PARSE.FORMERR;
  q.qtype = buf.readUInt16BE(pos);
  q.qclass = buf.readUInt16BE(pos + 2);
  pos += 4;
  q.key = q.nameBuf.toString('latin1', 0, q.nameLen).toLowerCase();
  q.haveQuestion = true;
  // Answer and authority sections are empty in ordinary queries; skip them if present.
  for (let i = 0; i < an + ns; i++) {
    pos = skipRecord(buf, pos);
    if (pos < 0) return PARSE.FORMERR;
  }
  for (let i = 0; i < ar; i++) {
    const nameEnd = readName(buf, pos, undefined);
    if (nameEnd < 0 || nameEnd + 10 > buf.length) return PARSE.FORMERR;
    const type = buf.readUInt16BE(nameEnd);
    const rdlen = buf.readUInt16BE(nameEnd + 8);
    const rdata = nameEnd + 10;
    if (rdata + rdlen > buf.length) return PARSE.FORMERR;
    if (type === QTYPE.OPT) {
      // RFC 6891 §6.1.1: one OPT, owner the root.
      if (q.edns || nameEnd !== pos + 1 || buf[pos] !== 0) return PARSE.FORMERR;
      q.edns = true;
      q.udpSize = Math.max(512, buf.readUInt16BE(nameEnd + 2));
      q.ednsVersion = buf[nameEnd + 5]!;
      const st = parseOptions(buf, rdata, rdata + rdlen, q);
      if (st !== PARSE.OK) return st;
    }
    pos = rdata + rdlen;
  }
  return PARSE.OK;
}

function skipRecord(buf: Buffer, pos: number): number {
  const nameEnd = readName(buf, pos, undefined);
  if (nameEnd < 0 || nameEnd + 10 > buf.length) return -1;
  const end = nameEnd + 10 + buf.readUInt16BE(nameEnd + 8);
  return end > buf.length ? -1 : end;
}

function parseOptions(buf: Buffer, pos: number, end: number, q: Query): number {
  while (pos < end) {
    if (pos + 4 > end) return PARSE.FORMERR;
    const code = buf.readUInt16BE(pos);
    const len = buf.readUInt16BE(pos + 2);
    const data = pos + 4;
    if (data + len > end) return PARSE.FORMERR;
    if (code === EDNS_OPTION.ClientSubnet) {
      // RFC 7871 §6 / §7.1.2: a malformed option is FORMERR.
      if (q.ecs || len < 4) return PARSE.FORMERR;
      const family = buf.readUInt16BE(data);
      const source = buf[data + 2]!;
      const maxBits = family === 1 ? 32 : family === 2 ? 128 : -1;
      if (maxBits < 0 || source > maxBits) return PARSE.FORMERR;
      const addrLen = len - 4;
      if (addrLen !== (source + 7) >> 3) return PARSE.FORMERR;
      if (addrLen > 0 && source & 7) {
        const mask = 0xff >> (source & 7);
        if (buf[data + 4 + addrLen - 1]! & mask) return PARSE.FORMERR;
      }
      q.ecs = true;
      q.ecsFamily = family;
      q.ecsSource = source;
      q.ecsAddr.fill(0);
      buf.copy(q.ecsAddr, 0, data + 4, data + 4 + addrLen);
      q.ecsAddrLen = addrLen;
    }
    // Unknown options are ignored (RFC 6891 §6.1.2).
    pos = data + len;
  }
  return PARSE.OK;
}

/** Parts of a response, assembled by `writeResponse`. */
export interface ResponseParts {
  rcode: number;
  aa: boolean;
  answer?: Buffer | undefined;
  answerCount?: number;
  authority?: Buffer | undefined;
  authorityCount?: number;
  additional?: Buffer | undefined;
  additionalCount?: number;
  /** ECS scope to echo (when the query carried ECS). */
  scope?: number;
}

/**
 * Assemble a response to `q`. `limit` is the size the client can take (UDP);
 * if the response is bigger, the sections are dropped and TC is set. `maxUdp`
 * is the payload size we advertise in our OPT.
 */
export function writeResponse(q: Query, parts: ResponseParts, limit: number, maxUdp: number): Buffer {
  const qLen = q.haveQuestion ? q.nameLen + 4 : 0;
  const ecsLen = q.edns && q.ecs ? 8 + q.ecsAddrLen : 0;
  const optLen = q.edns ? 11 + ecsLen : 0;
  const anLen = parts.answer?.length ?? 0;
  const nsLen = parts.authority?.length ?? 0;
  const arLen = parts.additional?.length ?? 0;
  let truncated = false;
  let size = 12 + qLen + anLen + nsLen + arLen + optLen;
  if (size > limit) {
    truncated = true;
    size = 12 + qLen + optLen;
  }
  const out = Buffer.allocUnsafe(size);
  const rcode = parts.rcode;
  let flags = FLAG.QR | (q.flags & (FLAG.RD | 0x7800)) | (rcode & 0xf);
  if (parts.aa) flags |= FLAG.AA;
  if (truncated) flags |= FLAG.TC;
  // RFC 6840 §5.7/5.9: CD is copied; RA and AD stay clear (no recursion, no DNSSEC).
  flags |= q.flags & FLAG.CD;
  out.writeUInt16BE(q.id, 0);
  out.writeUInt16BE(flags, 2);
  out.writeUInt16BE(q.haveQuestion ? 1 : 0, 4);
  out.writeUInt16BE(truncated ? 0 : (parts.answerCount ?? 0), 6);
  out.writeUInt16BE(truncated ? 0 : (parts.authorityCount ?? 0), 8);
  out.writeUInt16BE((truncated ? 0 : (parts.additionalCount ?? 0)) + (q.edns ? 1 : 0), 10);
  let o = 12;
  if (q.haveQuestion) {
    q.nameBuf.copy(out, o, 0, q.nameLen);
    o += q.nameLen;
    out.writeUInt16BE(q.qtype, o);
    out.writeUInt16BE(q.qclass, o + 2);
    o += 4;
  }
  if (!truncated) {
    if (parts.answer) o += parts.answer.copy(out, o);
    if (parts.authority) o += parts.authority.copy(out, o);
    if (parts.additional) o += parts.additional.copy(out, o);
  }
  if (q.edns) {
    out[o] = 0; // root owner
    out.writeUInt16BE(QTYPE.OPT, o + 1);
    out.writeUInt16BE(maxUdp, o + 3);
    out[o + 5] = rcode >> 4; // extended RCODE (BADVERS = 16 → 1)
    out[o + 6] = 0; // version 0
    out.writeUInt16BE(0, o + 7); // flags: DO clear (no DNSSEC)
    out.writeUInt16BE(ecsLen, o + 9);
    o += 11;
    if (ecsLen) {
      // RFC 7871 §7.2.1: echo FAMILY, SOURCE PREFIX-LENGTH and ADDRESS; set SCOPE.
      out.writeUInt16BE(EDNS_OPTION.ClientSubnet, o);
      out.writeUInt16BE(4 + q.ecsAddrLen, o + 2);
      out.writeUInt16BE(q.ecsFamily, o + 4);
      out[o + 6] = q.ecsSource;
      out[o + 7] = parts.scope ?? 0;
      for (let i = 0; i < q.ecsAddrLen; i++) out[o + 8 + i] = q.ecsAddr[i]!;
      o += ecsLen;
    }
  }
  return out;
}

/** A message as sent over TCP: its length (2 bytes, RFC 1035 §4.2.2), then the message. */
export function tcpFrame(msg: Buffer): Buffer {
  const frame = Buffer.allocUnsafe(2 + msg.length);
  frame.writeUInt16BE(msg.length, 0);
  msg.copy(frame, 2);
  return frame;
}

/** A bare error response for a packet whose question could not be parsed: header only. */
export function writeHeaderOnly(buf: Buffer, rcode: number): Buffer | undefined {
  if (buf.length < 12) return undefined;
  const out = Buffer.alloc(12);
  const flags = buf.readUInt16BE(2);
  out.writeUInt16BE(buf.readUInt16BE(0), 0);
  out.writeUInt16BE(FLAG.QR | (flags & (0x7800 | FLAG.RD)) | rcode, 2);
  return out;
}

/** Encode a dotted name to wire form (lower-cased key or as written). */
export function nameToWire(name: string): Buffer {
  const labels = name.replace(/\.$/, '').split('.').filter((l) => l.length > 0);
  const parts: number[] = [];
  for (const l of labels) {
    const b = Buffer.from(l, 'latin1');
    if (b.length > 63) throw new Error(`label "${l}" is longer than 63 bytes`);
    parts.push(b.length, ...b);
  }
  parts.push(0);
  if (parts.length > 255) throw new Error(`name "${name}" is longer than 255 bytes`);
  return Buffer.from(parts);
}

/** The zone lookup key of a dotted name (lower-cased wire form as latin1). */
export function nameKey(name: string): string {
  return nameToWire(name.toLowerCase()).toString('latin1');
}
