/**
 * The query engine: one packet in, one response out (or nothing), no sockets.
 * It combines the zone, the geo policy and the current answer table, which
 * the daemon swaps whenever config, health, drain or weights change.
 */
import { Counter, type Registry } from 'prom-client';
import type { Zone } from './zone.ts';
import { type GeoPolicy, type AnswerTable, choose, CLASS_UNKNOWN } from './policy.ts';
import { parseIPv4, parseIPv6 } from './geo.ts';
import { parseQuery, writeResponse, writeHeaderOnly, Query, PARSE, RCODE, QTYPE, QCLASS, type ResponseParts } from './wire.ts';

/** What the engine answers from; replaced as a whole (never mutated) on change. */
export interface EngineState {
  zone: Zone;
  policy: GeoPolicy;
  table: AnswerTable;
  maxUdpPayload: number;
}

const QTYPE_LABELS = ['A', 'AAAA', 'NS', 'SOA', 'CNAME', 'MX', 'TXT', 'ANY', 'other', 'none'] as const;
const RCODE_LABELS: Record<number, string> = { 0: 'NOERROR', 1: 'FORMERR', 2: 'SERVFAIL', 3: 'NXDOMAIN', 4: 'NOTIMP', 5: 'REFUSED', 16: 'BADVERS' };

function qtypeIndex(qtype: number): number {
  switch (qtype) {
    case QTYPE.A:
      return 0;
    case QTYPE.AAAA:
      return 1;
    case QTYPE.NS:
      return 2;
    case QTYPE.SOA:
      return 3;
    case QTYPE.CNAME:
      return 4;
    case QTYPE.MX:
      return 5;
    case QTYPE.TXT:
      return 6;
    case QTYPE.ANY:
      return 7;
    default:
      return 8;
  }
}

/**
 * Query counters kept as plain numbers keyed by small integers on the hot
 * path and folded into prom-client counters when /metrics is scraped.
 */
class QueryStats {
  readonly counts = new Map<number, number>();
  local = 0;
  cross = 0;
  constructor(
    readonly geoLabels: string[],
    readonly regionLabels: string[],
  ) {}
  /** `geo` is a class index or -1; `region` indexes regionLabels. */
  add(qtypeIdx: number, rcode: number, geo: number, region: number): void {
    const key = ((qtypeIdx * 32 + rcode) * (this.geoLabels.length + 1) + (geo + 1)) * this.regionLabels.length + region;
    this.counts.set(key, (this.counts.get(key) ?? 0) + 1);
  }
  /** Drain counts into the counters. */
  flush(queries: Counter<'qtype' | 'rcode' | 'geography' | 'answered'>, share: Counter<'served'>): void {
    const R = this.regionLabels.length;
    const G = this.geoLabels.length + 1;
    for (const [key, n] of this.counts) {
      const region = key % R;
      const rest = (key - region) / R;
      const geo = (rest % G) - 1;
      const rest2 = (rest - (geo + 1)) / G;
      const rcode = rest2 % 32;
      const qt = (rest2 - rcode) / 32;
      queries.inc(
        { qtype: QTYPE_LABELS[qt] ?? 'other', rcode: RCODE_LABELS[rcode] ?? String(rcode), geography: geo < 0 ? 'none' : (this.geoLabels[geo] ?? 'unknown'), answered: this.regionLabels[region] ?? 'none' },
        n,
      );
    }
    this.counts.clear();
    if (this.local) share.inc({ served: 'local' }, this.local);
    if (this.cross) share.inc({ served: 'cross-region' }, this.cross);
    this.local = 0;
    this.cross = 0;
  }
}

/** The per-query logic of the authoritative server. */
export class DnsEngine {
  #state: EngineState;
  #stats: QueryStats;
  readonly #q = new Query();
  readonly #v6 = new Uint8Array(16);
  #lastSrc = '';
  #lastSrcV4 = -1;
  readonly #queries: Counter<'qtype' | 'rcode' | 'geography' | 'answered'> | undefined;
  readonly #share: Counter<'served'> | undefined;
  /** Count of packets dropped without an answer (not a query, too short). */
  dropped = 0;

  constructor(state: EngineState, registry?: Registry) {
    this.#state = state;
    this.#stats = this.#newStats(state);
    if (registry) {
      const self = this;
      this.#queries = new Counter({
        name: 'tandem_dns_queries_total',
        help: 'DNS queries by qtype, rcode, geography (matched place) and answered region',
        labelNames: ['qtype', 'rcode', 'geography', 'answered'],
        registers: [registry],
        collect() {
          self.flushMetrics();
        },
      });
      this.#share = new Counter({ name: 'tandem_dns_geo_answers_total', help: 'Geo-routed answers served by the first region of the geography (local) or another (cross-region)', labelNames: ['served'], registers: [registry] });
      new Counter({
        name: 'tandem_dns_dropped_total',
        help: 'Packets dropped without an answer (responses, runts)',
        registers: [registry],
        collect() {
          this.reset();
          this.inc(self.dropped);
        },
      });
    }
  }

  #newStats(state: EngineState): QueryStats {
    return new QueryStats(
      state.policy.classes.map((c) => c.label),
      [...state.policy.regionNames, 'all', 'none', '-'],
    );
  }

  get state(): EngineState {
    return this.#state;
  }

  /** Swap what the engine answers from (config reload, health or operator change). */
  setState(state: EngineState): void {
    if (state.policy !== this.#state.policy) {
      this.flushMetrics();
      this.#stats = this.#newStats(state);
    }
    this.#state = state;
  }

  /** Fold the hot-path counters into the prom-client counters. */
  flushMetrics(): void {
    if (this.#queries && this.#share) this.#stats.flush(this.#queries, this.#share);
  }

  /**
   * Answer one packet. `src` is the client's (or resolver's) address; `tcp`
   * lifts the size limit. Returns undefined when the packet gets no answer.
   */
  answer(buf: Buffer, src: string, tcp: boolean): Buffer | undefined {
    const q = this.#q;
    const s = this.#state;
    const stats = this.#stats;
    const NONE = stats.regionLabels.length - 1;
    const st = parseQuery(buf, q);
    if (st !== PARSE.OK) {
      if (st === PARSE.DROP) {
        this.dropped++;
        return undefined;
      }
      const rcode = st === PARSE.NOTIMP ? RCODE.NOTIMP : RCODE.FORMERR;
      stats.add(9, rcode, -1, NONE);
      if (st === PARSE.FORMERR && q.haveQuestion) {
        q.edns = false;
        q.ecs = false;
        return writeResponse(q, { rcode, aa: false }, 65535, s.maxUdpPayload);
      }
      return writeHeaderOnly(buf, rcode);
    }
    const max = s.maxUdpPayload;
    const limit = tcp ? 65535 : q.edns ? Math.min(q.udpSize, max) : 512;
    const qt = qtypeIndex(q.qtype);
    if (q.edns && q.ednsVersion > 0) {
      // RFC 6891 §6.1.3: BADVERS, no answer, our OPT says version 0.
      q.ecs = false;
      stats.add(qt, RCODE.BADVERS, -1, NONE);
      return writeResponse(q, { rcode: RCODE.BADVERS, aa: false }, limit, max);
    }
    const zone = s.zone;
    const key = q.key;
    const ok = zone.originKey;
    let inZone = false;
    if ((q.qclass === QCLASS.IN || q.qclass === QCLASS.ANY) && key.length >= ok.length && key.endsWith(ok)) {
      const at = key.length - ok.length;
      for (let i = 0; i < q.labelCount; i++) if (q.labelStarts[i] === at) inZone = true;
      if (at === key.length - 1 && ok.length === 1) inZone = true; // root zone
    }
    if (!inZone) {
      stats.add(qt, RCODE.REFUSED, -1, NONE);
      return writeResponse(q, { rcode: RCODE.REFUSED, aa: false }, limit, max);
    }
    const node = zone.nodes.get(key);
    if (!node) {
      stats.add(qt, RCODE.NXDOMAIN, -1, NONE);
      return writeResponse(q, { rcode: RCODE.NXDOMAIN, aa: true, authority: zone.soaAuthority, authorityCount: 1 }, limit, max);
    }
    if (q.qtype === QTYPE.AXFR || q.qtype === QTYPE.IXFR) {
      stats.add(qt, RCODE.REFUSED, -1, NONE);
      return writeResponse(q, { rcode: RCODE.REFUSED, aa: false }, limit, max);
    }
    const svc = node.service;
    if (svc !== undefined && (q.qtype === QTYPE.A || q.qtype === QTYPE.AAAA || q.qtype === QTYPE.ANY)) {
      // Geography: ECS when the resolver sent a subnet, else the resolver's own address.
      const policy = s.policy;
      let scope = 0;
      let classIdx: number;
      if (q.ecs && q.ecsSource > 0) {
        const a = q.ecsAddr;
        const r = q.ecsFamily === 1 ? policy.resolveV4(((a[0]! << 24) | (a[1]! << 16) | (a[2]! << 8) | a[3]!) >>> 0) : policy.resolveV6(a);
        classIdx = r.classIdx;
        scope = r.scope;
      } else {
        classIdx = this.#resolveSource(policy, src);
      }
      const orderIdx = policy.classes[classIdx]!.orderIdx;
      const picks = s.table.picks[svc]!;
      let answer: Buffer;
      let count: number;
      let regionIdx: number;
      let local: boolean;
      if (q.qtype === QTYPE.ANY) {
        const c4 = choose(picks[0]![orderIdx]!, q.id);
        const c6 = choose(picks[1]![orderIdx]!, q.id);
        answer = Buffer.concat([c4.rr, c6.rr]);
        count = c4.count + c6.count;
        regionIdx = c4.count ? c4.regionIdx : c6.regionIdx;
        local = c4.count ? c4.local : c6.local;
      } else {
        const c = choose(picks[q.qtype === QTYPE.AAAA ? 1 : 0]![orderIdx]!, q.id);
        answer = c.rr;
        count = c.count;
        regionIdx = c.regionIdx;
        local = c.local;
      }
      if (count === 0) {
        stats.add(qt, RCODE.NOERROR, classIdx, regionIdx);
        return writeResponse(q, { rcode: RCODE.NOERROR, aa: true, authority: zone.soaAuthority, authorityCount: 1, scope }, limit, max);
      }
      stats.add(qt, RCODE.NOERROR, classIdx, regionIdx);
      if (local) stats.local++;
      else stats.cross++;
      return writeResponse(q, { rcode: RCODE.NOERROR, aa: true, answer, answerCount: count, scope }, limit, max);
    }
    const parts: ResponseParts = { rcode: RCODE.NOERROR, aa: true };
    if (node.cname && q.qtype !== QTYPE.CNAME) {
      // The resolver follows the CNAME; we do not chase it (RFC 1034 §4.3.2 allows either).
      parts.answer = node.cname.rr;
      parts.answerCount = 1;
    } else {
      let set = node.rrsets.get(q.qtype);
      if (q.qtype === QTYPE.ANY && node.rrsets.size) {
        set = { rr: Buffer.concat([...node.rrsets.values()].map((x) => x.rr)), count: [...node.rrsets.values()].reduce((n, x) => n + x.count, 0) };
      } else if (q.qtype === QTYPE.CNAME && node.cname) set = { rr: node.cname.rr, count: 1 };
      if (set) {
        parts.answer = set.rr;
        parts.answerCount = set.count;
        if (q.qtype === QTYPE.NS && node.name === zone.origin && zone.glue.count) {
          parts.additional = zone.glue.rr;
          parts.additionalCount = zone.glue.count;
        }
      } else {
        parts.authority = zone.soaAuthority; // NODATA (RFC 2308 §2.2)
        parts.authorityCount = 1;
      }
    }
    stats.add(qt, RCODE.NOERROR, -1, NONE);
    return writeResponse(q, parts, limit, max);
  }

  #resolveSource(policy: GeoPolicy, src: string): number {
    if (src === this.#lastSrc && this.#lastSrcV4 >= 0) return policy.resolveV4(this.#lastSrcV4).classIdx;
    const v4 = parseIPv4(src);
    this.#lastSrc = src;
    this.#lastSrcV4 = v4;
    if (v4 >= 0) return policy.resolveV4(v4).classIdx;
    const b = parseIPv6(src.replace(/%.*$/, ''));
    if (!b) return CLASS_UNKNOWN;
    this.#v6.set(b);
    return policy.resolveV6(this.#v6).classIdx;
  }
}
