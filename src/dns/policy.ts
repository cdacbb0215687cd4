/**
 * The routing policy, apart from any I/O: geography → region order, and
 * region state → answers.
 *
 * - `GeoPolicy` compiles `geo` rules against an opened `GeoDb`: every address
 *   resolves to a *class* (a matched place with its region order) and an RFC
 *   7871 scope prefix that is as wide as the answer allows but never wider than
 *   true (the database network, widened over neighbouring networks that get
 *   the same order, narrowed so it never covers a CIDR override it is not in).
 * - `AnswerTable` precomputes, for each service × address family × order, the
 *   answer for the current region states (health, drain, weights), as
 *   ready-to-send resource-record bytes. It is rebuilt on every state change;
 *   the per-query path only indexes into it.
 */
import { TandemError } from '../core/errors.ts';
import type { Config } from '../core/config/index.ts';
import { GeoDb, type GeoInfo, type GeoTree, placeKeys, parseIPv4, parseIPv6, formatNetwork } from './geo.ts';
import { indianCode, indianCodeForName, normaliseName } from './india.ts';

/** A geography class: what an address matched, and the region order it gets. */
export interface GeoClass {
  /** Metric label and explain text: the matched place ("IN-TN"), "override", "default" or "unknown". */
  label: string;
  orderIdx: number;
  /** Where it came from in config, e.g. `geo.rules[0]`. */
  source: string;
}

/** Class index of addresses the database has no record for. */
export const CLASS_UNKNOWN = 0;
/** Class index of addresses with a record that no rule matches. */
export const CLASS_DEFAULT = 1;

interface Override {
  cidr: string;
  family: 4 | 6;
  v4: number;
  bytes: Uint8Array;
  prefix: number;
  classIdx: number;
}

const MIXED = -1;
/** Bound on tree nodes visited to prove one subtree uniform (then it counts as mixed). */
const UNIFORM_BUDGET = 50_000;
const LEAF_CACHE_MAX = 1_000_000;
/** Bound on memoised subtree answers per tree (cleared when reached). */
const UNIFORM_MEMO_MAX = 1_000_000;

/** Parse a CIDR ("10.1.0.0/16", "2001:db8::/32"); host bits must be zero. */
export function parseCidr(text: string): { family: 4 | 6; v4: number; bytes: Uint8Array; prefix: number } | undefined {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(text);
  if (!m) return undefined;
  const prefix = Number(m[2]);
  const v4 = parseIPv4(m[1]!);
  if (v4 >= 0) {
    if (prefix > 32) return undefined;
    const bytes = Uint8Array.of(v4 >>> 24, (v4 >>> 16) & 255, (v4 >>> 8) & 255, v4 & 255);
    if (prefix < 32 && (prefix === 0 ? v4 : (v4 << prefix) >>> 0) !== 0) return undefined;
    return { family: 4, v4, bytes, prefix };
  }
  const bytes = parseIPv6(m[1]!);
  if (!bytes || prefix > 128) return undefined;
  for (let bit = prefix; bit < 128; bit++) if ((bytes[bit >> 3]! >> (7 - (bit & 7))) & 1) return undefined;
  return { family: 6, v4: -1, bytes, prefix };
}

/** Number of leading bits two equal-length byte strings share. */
export function commonPrefix(a: Uint8Array, b: Uint8Array, aOffset = 0): number {
  const n = b.length;
  for (let i = 0; i < n; i++) {
    const x = a[aOffset + i]! ^ b[i]!;
    if (x !== 0) return i * 8 + Math.clz32(x) - 24;
  }
  return n * 8;
}

/** Rules of one kind: place key → class index (first rule wins). */
type RuleMap = Map<string, number>;

/** What `resolve*` found; the hot path reads these fields instead of allocating. */
export interface Resolution {
  classIdx: number;
  scope: number;
}

/** Geography → class and scope. Compiled once per config (and database). */
export class GeoPolicy {
  readonly db: GeoDb;
  readonly regionNames: string[];
  /** Distinct full region orders (indices into `regionNames`). */
  readonly orders: number[][] = [];
  readonly classes: GeoClass[] = [];
  readonly #overrides4: Override[] = [];
  readonly #overrides6: Override[] = [];
  readonly #subRules: RuleMap = new Map();
  readonly #countryRules: RuleMap = new Map();
  readonly #continentRules: RuleMap = new Map();
  readonly #orderIndex = new Map<string, number>();
  readonly #classIndex = new Map<string, number>();
  readonly #recordClass = new Map<GeoTree, Map<number, number>>();
  readonly #uniform = new Map<GeoTree, Map<number, number>>();
  readonly #leafCache4 = new Map<number, number>();
  readonly #path = new Int32Array(129);
  readonly #defaultOrder: number[];
  /** Output of the last `resolve*` call (read it right away). */
  readonly out: Resolution = { classIdx: 0, scope: 0 };

  /**
   * Compile `config.geo` against `db`. Throws a config error naming the key
   * path for a place the database does not know or a bad CIDR.
   */
  constructor(config: Pick<Config, 'regions' | 'geo'>, db: GeoDb, opts: { validatePlaces?: boolean } = {}) {
    this.db = db;
    this.regionNames = config.regions.map((r) => r.name);
    const idx = (name: string) => this.regionNames.indexOf(name);
    this.#defaultOrder = this.#fullOrder((config.geo.defaultOrder ?? this.regionNames).map(idx), this.regionNames.map((_, i) => i));
    const defaultOrderIdx = this.#intern(this.#defaultOrder);
    this.classes.push({ label: 'unknown', orderIdx: defaultOrderIdx, source: 'geo.defaultOrder' });
    this.classes.push({ label: 'default', orderIdx: defaultOrderIdx, source: 'geo.defaultOrder' });
    const errors: string[] = [];
    const known = opts.validatePlaces === false ? undefined : config.geo.rules.length ? db.knownPlaces() : undefined;

    config.geo.rules.forEach((rule, i) => {
      const orderIdx = this.#intern(this.#fullOrder(rule.order.map(idx), this.#defaultOrder));
      rule.match.forEach((text, j) => {
        const where = `geo.rules[${i}].match[${j}]`;
        const parsed = parseMatch(text);
        if ('error' in parsed) {
          errors.push(`${where}: ${parsed.error} (found ${JSON.stringify(text)})`);
          return;
        }
        if (known) {
          const problem = checkKnown(parsed, known, db);
          if (problem) {
            errors.push(`${where}: ${problem} (found ${JSON.stringify(text)})`);
            return;
          }
        }
        const map = parsed.kind === 'subdivision' ? this.#subRules : parsed.kind === 'country' ? this.#countryRules : this.#continentRules;
        if (map.has(parsed.key)) return; // an earlier rule already claims this place
        const classIdx = this.#classFor(parsed.label, orderIdx, `geo.rules[${i}]${rule.name ? ` (${rule.name})` : ''}`);
        map.set(parsed.key, classIdx);
      });
    });
    config.geo.overrides.forEach((o, i) => {
      const net = parseCidr(o.cidr);
      if (!net) {
        errors.push(`geo.overrides[${i}].cidr: expected a CIDR with zero host bits, e.g. "10.1.0.0/16" (found ${JSON.stringify(o.cidr)})`);
        return;
      }
      const orderIdx = this.#intern(this.#fullOrder(o.order.map(idx), this.#defaultOrder));
      const classIdx = this.#classFor(`override ${o.cidr}`, orderIdx, `geo.overrides[${i}]`);
      (net.family === 4 ? this.#overrides4 : this.#overrides6).push({ cidr: o.cidr, ...net, classIdx });
    });
    if (errors.length) {
      throw new TandemError('TANDEM_ERR_CONFIG', `geo rules do not fit the database (${db.description}):\n  - ${errors.join('\n  - ')}`, { details: { errors } });
    }
  }

  /** The order as written, then every other region in default order: failover can reach any region. */
  #fullOrder(head: number[], rest: number[]): number[] {
    const out: number[] = [];
    for (const i of [...head, ...rest]) if (i >= 0 && !out.includes(i)) out.push(i);
    return out;
  }

  #intern(order: number[]): number {
    const key = order.join(',');
    let i = this.#orderIndex.get(key);
    if (i === undefined) {
      i = this.orders.length;
      this.orders.push(order);
      this.#orderIndex.set(key, i);
    }
    return i;
  }

  #classFor(label: string, orderIdx: number, source: string): number {
    const key = `${label}\u0000${orderIdx}`;
    let i = this.#classIndex.get(key);
    if (i === undefined) {
      i = this.classes.length;
      this.classes.push({ label, orderIdx, source });
      this.#classIndex.set(key, i);
    }
    return i;
  }

  /** The class of normalised database info (subdivision rules, then country, then continent). */
  classify(info: GeoInfo | undefined): number {
    if (!info) return CLASS_UNKNOWN;
    for (const k of placeKeys(info)) {
      const c = this.#subRules.get(k);
      if (c !== undefined) return c;
    }
    const c = this.#countryRules.get(info.country);
    if (c !== undefined) return c;
    if (info.continent) {
      const k = this.#continentRules.get(info.continent);
      if (k !== undefined) return k;
    }
    return CLASS_DEFAULT;
  }

  #classOfRecord(tree: GeoTree, record: number): number {
    if (record <= tree.nodeCount) return CLASS_UNKNOWN;
    let cache = this.#recordClass.get(tree);
    if (!cache) this.#recordClass.set(tree, (cache = new Map()));
    let c = cache.get(record);
    if (c === undefined) {
      c = this.classify(this.db.info(tree, record));
      cache.set(record, c);
    }
    return c;
  }

  /** The order index every address under `record` gets, or MIXED. Memoised per record. */
  #uniformOrder(tree: GeoTree, record: number, budget: { left: number }): number {
    if (record >= tree.nodeCount) return this.classes[this.#classOfRecord(tree, record)]!.orderIdx;
    let memo = this.#uniform.get(tree);
    // Bounded like the leaf cache: random ECS subnets would otherwise memoise the whole tree (GBs).
    if (!memo || memo.size >= UNIFORM_MEMO_MAX) this.#uniform.set(tree, (memo = new Map()));
    const hit = memo.get(record);
    if (hit !== undefined) return hit;
    if (--budget.left < 0) return MIXED;
    const left = this.#uniformOrder(tree, tree.child(record, 0), budget);
    let result = MIXED;
    if (left !== MIXED) {
      const right = this.#uniformOrder(tree, tree.child(record, 1), budget);
      if (right === left) result = left;
    }
    // A budget-exhausted answer is conservative (mixed); only memoise complete answers.
    if (budget.left >= 0) memo.set(record, result);
    return result;
  }

  /** Resolve an IPv4 address (as an unsigned 32-bit integer) into `out`. The DNS hot path. */
  resolveV4(addr: number): Resolution {
    const out = this.out;
    // CIDR overrides win; any override the answer block would overlap narrows the scope.
    let best: Override | undefined;
    let minScope = 0;
    const ovs = this.#overrides4;
    for (let i = 0; i < ovs.length; i++) {
      const o = ovs[i]!;
      const cp = Math.clz32((addr ^ o.v4) >>> 0);
      if (cp >= o.prefix) {
        if (!best || o.prefix > best.prefix) best = o;
      } else if (cp + 1 > minScope) minScope = cp + 1;
    }
    if (best) {
      out.classIdx = best.classIdx;
      out.scope = Math.max(best.prefix, minScope);
      return out;
    }
    const tree = this.db.v4;
    const nodeCount = tree.nodeCount;
    const path = this.#path;
    let node = this.db.v4Start;
    let depth = 0;
    while (depth < 32 && node < nodeCount) {
      path[depth] = node;
      node = tree.child(node, (addr >>> (31 - depth)) & 1);
      depth++;
    }
    const key = depth * 4294967296 + (depth === 0 ? 0 : addr >>> (32 - depth));
    const cached = this.#leafCache4.get(key);
    if (cached !== undefined) {
      out.classIdx = cached >>> 8;
      out.scope = Math.max(cached & 255, minScope);
      return out;
    }
    const classIdx = this.#classOfRecord(tree, node);
    const orderIdx = this.classes[classIdx]!.orderIdx;
    let scope = depth;
    const budget = { left: UNIFORM_BUDGET };
    for (let k = depth - 1; k >= 0; k--) {
      const sibling = tree.child(path[k]!, 1 - ((addr >>> (31 - k)) & 1));
      if (this.#uniformOrder(tree, sibling, budget) !== orderIdx) break;
      scope = k;
    }
    if (this.#leafCache4.size >= LEAF_CACHE_MAX) this.#leafCache4.clear();
    this.#leafCache4.set(key, (classIdx << 8) | scope);
    out.classIdx = classIdx;
    out.scope = Math.max(scope, minScope);
    return out;
  }

  /** Resolve an IPv6 address (16 bytes at `offset` of `bytes`) into `out`. */
  resolveV6(bytes: Uint8Array, offset = 0): Resolution {
    const out = this.out;
    // IPv4-mapped (::ffff:a.b.c.d) is the IPv4 address (sockets report clients this way).
    let mapped = true;
    for (let i = 0; i < 10; i++) if (bytes[offset + i] !== 0) mapped = false;
    if (mapped && bytes[offset + 10] === 0xff && bytes[offset + 11] === 0xff) {
      this.resolveV4(((bytes[offset + 12]! << 24) | (bytes[offset + 13]! << 16) | (bytes[offset + 14]! << 8) | bytes[offset + 15]!) >>> 0);
      out.scope += 96;
      return out;
    }
    let best: Override | undefined;
    let minScope = 0;
    for (const o of this.#overrides6) {
      const cp = commonPrefix(bytes, o.bytes, offset);
      if (cp >= o.prefix) {
        if (!best || o.prefix > best.prefix) best = o;
      } else if (cp + 1 > minScope) minScope = cp + 1;
    }
    if (best) {
      out.classIdx = best.classIdx;
      out.scope = Math.max(best.prefix, minScope);
      return out;
    }
    const tree = this.db.v6;
    if (!tree) {
      out.classIdx = CLASS_UNKNOWN;
      out.scope = minScope;
      return out;
    }
    const path = this.#path;
    let node = 0;
    let depth = 0;
    const bit = (d: number) => (bytes[offset + (d >> 3)]! >> (7 - (d & 7))) & 1;
    while (depth < 128 && node < tree.nodeCount) {
      path[depth] = node;
      node = tree.child(node, bit(depth));
      depth++;
    }
    const classIdx = this.#classOfRecord(tree, node);
    const orderIdx = this.classes[classIdx]!.orderIdx;
    let scope = depth;
    const budget = { left: UNIFORM_BUDGET };
    for (let k = depth - 1; k >= 0; k--) {
      if (this.#uniformOrder(tree, tree.child(path[k]!, 1 - bit(k)), budget) !== orderIdx) break;
      scope = k;
    }
    out.classIdx = classIdx;
    out.scope = Math.max(scope, minScope);
    return out;
  }

  /** Resolve a textual address (slow path: explain, tests, non-ECS IPv6 sources). */
  resolveText(ip: string): Resolution {
    const v4 = parseIPv4(ip);
    if (v4 >= 0) return this.resolveV4(v4);
    const b = parseIPv6(ip);
    if (!b) throw new TandemError('TANDEM_ERR_USAGE', `not an IP address: ${JSON.stringify(ip)}`);
    return this.resolveV6(b);
  }

  /** The region order for a class, as names. */
  orderNames(classIdx: number): string[] {
    return this.orders[this.classes[classIdx]!.orderIdx]!.map((i) => this.regionNames[i]!);
  }

  /** Everything about one address, for `explain`. */
  explain(ip: string): { ip: string; database: string; network: string; prefixLength: number; geo: GeoInfo | undefined; class: GeoClass; order: string[]; scopePrefix: number } {
    const lookup = this.db.lookup(ip);
    const r = this.resolveText(ip);
    const cls = this.classes[r.classIdx]!;
    return { ip, database: this.db.description, network: lookup.network, prefixLength: lookup.prefixLength, geo: lookup.info, class: cls, order: this.orderNames(r.classIdx), scopePrefix: r.scope };
  }
}

type Match =
  | { kind: 'country'; key: string; label: string; country: string }
  | { kind: 'continent'; key: string; label: string }
  | { kind: 'subdivision'; key: string; label: string; country: string; byName: boolean; text: string };

/** Parse one `match` entry: "IN", "IN-TN", "IN/Tamil Nadu", "continent:AS". */
export function parseMatch(text: string): Match | { error: string } {
  const t = text.trim();
  let m = /^continent:([A-Za-z]{2})$/.exec(t);
  if (m) return { kind: 'continent', key: m[1]!.toUpperCase(), label: `continent:${m[1]!.toUpperCase()}` };
  m = /^([A-Za-z]{2})$/.exec(t);
  if (m) return { kind: 'country', key: m[1]!.toUpperCase(), label: m[1]!.toUpperCase(), country: m[1]!.toUpperCase() };
  m = /^([A-Za-z]{2})-([A-Za-z0-9]{1,3})$/.exec(t);
  if (m) {
    const country = m[1]!.toUpperCase();
    let code = m[2]!.toUpperCase();
    if (country === 'IN') {
      const c = indianCode(code);
      if (!c) return { error: `"IN-${code}" is not an ISO 3166-2:IN code` };
      code = c;
    }
    return { kind: 'subdivision', key: `${country}-${code}`, label: `${country}-${code}`, country, byName: false, text: t };
  }
  m = /^([A-Za-z]{2})\/(.+)$/.exec(t);
  if (m) {
    const country = m[1]!.toUpperCase();
    const name = m[2]!.trim();
    if (country === 'IN') {
      const code = indianCodeForName(name);
      if (!code) return { error: `"${name}" is not a state or union territory of India` };
      return { kind: 'subdivision', key: `IN-${code}`, label: `IN-${code}`, country, byName: true, text: t };
    }
    return { kind: 'subdivision', key: `${country}/${normaliseName(name)}`, label: `${country}/${name}`, country, byName: true, text: t };
  }
  return { error: 'expected a country ("IN"), a subdivision code ("IN-TN") or name ("IN/Tamil Nadu"), or "continent:AS"' };
}

function checkKnown(match: Match, known: ReturnType<GeoDb['knownPlaces']>, db: GeoDb): string | undefined {
  if (match.kind === 'continent') {
    if (db.layout === 'flat') return 'this database layout (flat) has no continents; name countries instead';
    return known.continents.has(match.key) ? undefined : `the database knows no continent ${match.key}`;
  }
  if (!known.countries.has(match.country)) return `the database (${db.description}) knows no country ${match.country}`;
  if (match.kind === 'country') return undefined;
  if (known.subdivisions.has(match.key)) return undefined;
  const names = [...(known.namesByCountry.get(match.country) ?? [])].sort();
  const hint = names.length ? `; it knows: ${names.slice(0, 40).join(', ')}${names.length > 40 ? ', …' : ''}` : '';
  if (!match.byName && db.layout === 'flat' && match.country !== 'IN') {
    return `the database (${db.description}) has subdivision names, not codes, for ${match.country}: write "${match.country}/<name>"${hint}`;
  }
  return `the database (${db.description}) knows no subdivision ${match.label}${hint}`;
}

// ---------------------------------------------------------------------------
// Answers

/** A region as the answer table sees it. */
export interface RegionAnswerInput {
  name: string;
  /** Healthy or unknown (not proven unhealthy). */
  healthy: boolean;
  drained: boolean;
  ipv4: string[];
  ipv6: string[];
}

/** One precomputed answer: RR bytes with the owner as a pointer to the question (0xC00C). */
export interface Choice {
  /** Resource records ready to append after the question. */
  rr: Buffer;
  count: number;
  /** The region answered, or "all" (fail open across several), or "none" (no addresses: NODATA). */
  region: string;
  regions: string[];
  addresses: string[];
  /** Index of `region` in [...regions, "all", "none"] (metrics). */
  regionIdx: number;
  /** The answered region is the first in the geography's order. */
  local: boolean;
  failOpen: boolean;
  ttlSec: number;
}

/** The answer for one service × family × order: one choice, or a weighted split. */
export interface AnswerPick {
  choices: Choice[];
  /** Cumulative weights (same length as choices); empty for a single choice. */
  cumulative: number[];
  total: number;
}

/** Encode A or AAAA records for `addresses`, owner = pointer to the question name. */
export function encodeAddressRecords(addresses: string[], family: 4 | 6, ttlSec: number): Buffer {
  const size = family === 4 ? 4 : 16;
  const buf = Buffer.alloc(addresses.length * (12 + size));
  let o = 0;
  for (const a of addresses) {
    buf.writeUInt16BE(0xc00c, o);
    buf.writeUInt16BE(family === 4 ? 1 : 28, o + 2);
    buf.writeUInt16BE(1, o + 4);
    buf.writeUInt32BE(ttlSec, o + 6);
    buf.writeUInt16BE(size, o + 10);
    if (family === 4) {
      const v = parseIPv4(a);
      buf.writeUInt32BE(v, o + 12);
    } else buf.set(parseIPv6(a)!, o + 12);
    o += 12 + size;
  }
  return buf;
}

/** Pick a choice deterministically from the query id (resolvers randomise ids, so the split follows the weights). */
export function choose(pick: AnswerPick, queryId: number): Choice {
  const c = pick.choices;
  if (c.length === 1) return c[0]!;
  const r = queryId % pick.total;
  const cum = pick.cumulative;
  for (let i = 0; i < cum.length; i++) if (r < cum[i]!) return c[i]!;
  return c[c.length - 1]!;
}

/** Inputs of one service for the table. */
export interface ServiceAnswerInput {
  name: string;
  ttlSec: number;
  /** Effective weights (config merged with run-time overrides); empty = no split. */
  weights: Record<string, number>;
}

/**
 * All answers for the current state: `picks[service][family 0=A,1=AAAA][orderIdx]`.
 * Immutable; build a new one whenever health, drain or weights change.
 */
export class AnswerTable {
  readonly picks: AnswerPick[][][];

  constructor(orders: number[][], regions: RegionAnswerInput[], services: ServiceAnswerInput[]) {
    this.picks = services.map((svc) => [4, 6].map((family) => orders.map((order) => buildPick(order, regions, svc, family as 4 | 6))));
  }
}

function buildPick(order: number[], regions: RegionAnswerInput[], svc: ServiceAnswerInput, family: 4 | 6): AnswerPick {
  const addrs = (i: number) => (family === 4 ? regions[i]!.ipv4 : regions[i]!.ipv6);
  const first = order[0];
  const candidates = order.filter((i) => addrs(i).length > 0);
  const single = (idx: number[], failOpen: boolean): Choice => {
    const addresses = idx.flatMap(addrs);
    const names = idx.map((i) => regions[i]!.name);
    return {
      rr: encodeAddressRecords(addresses, family, svc.ttlSec),
      count: addresses.length,
      region: names.length === 0 ? 'none' : names.length === 1 ? names[0]! : 'all',
      regionIdx: names.length === 0 ? regions.length + 1 : names.length === 1 ? idx[0]! : regions.length,
      regions: names,
      addresses,
      local: idx.length === 1 && idx[0] === first,
      failOpen,
      ttlSec: svc.ttlSec,
    };
  };
  if (candidates.length === 0) return { choices: [single([], false)], cumulative: [], total: 1 };
  const serving = candidates.filter((i) => regions[i]!.healthy && !regions[i]!.drained);
  if (serving.length === 0) {
    // Fail open: every undrained region (or, if an operator forced every region out, all of them).
    const undrained = candidates.filter((i) => !regions[i]!.drained);
    return { choices: [single(undrained.length ? undrained : candidates, true)], cumulative: [], total: 1 };
  }
  const weighted = serving.filter((i) => (svc.weights[regions[i]!.name] ?? 0) > 0);
  if (weighted.length > 1) {
    const choices: Choice[] = [];
    const cumulative: number[] = [];
    let total = 0;
    for (const i of weighted) {
      total += svc.weights[regions[i]!.name]!;
      choices.push(single([i], false));
      cumulative.push(total);
    }
    return { choices, cumulative, total };
  }
  return { choices: [single([weighted[0] ?? serving[0]!], false)], cumulative: [], total: 1 };
}

/** Convenience for tests and explain: network text for an address and prefix. */
export function networkOf(ip: string, prefix: number): string {
  const v4 = parseIPv4(ip);
  const bytes = v4 >= 0 ? Uint8Array.of(v4 >>> 24, (v4 >>> 16) & 255, (v4 >>> 8) & 255, v4 & 255) : parseIPv6(ip)!;
  return formatNetwork(bytes, prefix);
}
