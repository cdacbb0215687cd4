/**
 * `dns` and `geo`: the authoritative zone, its geo-routed service names, and
 * how client addresses map to an ordered list of regions.
 */
import { z } from 'zod';
import { sec } from './common.ts';

/** A static record in the zone. Names are relative to the zone unless they end with a dot. */
export const staticRecord = z.discriminatedUnion('type', [
  z.object({ name: z.string(), type: z.literal('A'), value: z.ipv4(), ttlSec: sec.optional() }).strict(),
  z.object({ name: z.string(), type: z.literal('AAAA'), value: z.ipv6(), ttlSec: sec.optional() }).strict(),
  z.object({ name: z.string(), type: z.literal('CNAME'), value: z.string().min(1), ttlSec: sec.optional() }).strict(),
  z.object({ name: z.string(), type: z.literal('TXT'), value: z.union([z.string(), z.array(z.string())]), ttlSec: sec.optional() }).strict(),
  z
    .object({ name: z.string(), type: z.literal('MX'), value: z.string().min(1), preference: z.number().int().min(0).max(65535).default(10), ttlSec: sec.optional() })
    .strict(),
]);

/** A geo-routed name: answered with the addresses of the best healthy region. */
export const service = z
  .object({
    name: z.string().min(1),
    ttlSec: sec.optional(),
    /** Static weights for a split answer (e.g. 90/10 during a gradual shift); operators can override at run time. */
    weights: z.record(z.string(), z.number().int().min(0).max(1000)).optional(),
  })
  .strict();

export const dns = z
  .object({
    /** The zone this server is authoritative for, e.g. "tandem.test." */
    zone: z.string().min(1),
    /** Default TTL of answers (the blueprint: 60 s). */
    ttlSec: sec.default(60),
    soa: z
      .object({
        mname: z.string().optional(),
        rname: z.string().default('hostmaster'),
        refreshSec: sec.default(3600),
        retrySec: sec.default(600),
        expireSec: sec.default(604800),
        /** Negative-caching TTL (RFC 2308). */
        minimumSec: sec.default(60),
      })
      .strict()
      .default({ rname: 'hostmaster', refreshSec: 3600, retrySec: 600, expireSec: 604800, minimumSec: 60 }),
    /** NS names for the apex; default one `ns-<region>` per region with a DNS listener. */
    nameservers: z.array(z.string()).optional(),
    services: z.array(service).min(1),
    records: z.array(staticRecord).default([]),
    /** Where drain/weight state is persisted across restarts (default under the data dir). */
    stateFile: z.string().optional(),
    /** UDP payload size we advertise and honour at most (EDNS). */
    maxUdpPayload: z.number().int().min(512).max(4096).default(1232),
    tcp: z
      .object({
        idleTimeoutMs: z.number().int().positive().default(10_000),
        maxConnections: z.number().int().positive().default(256),
      })
      .strict()
      .default({ idleTimeoutMs: 10_000, maxConnections: 256 }),
  })
  .strict();
export type DnsConfig = z.output<typeof dns>;

/** A geography rule: these places get this region order. */
export const geoRule = z
  .object({
    name: z.string().optional(),
    /**
     * Places: a country ("IN"), a subdivision by ISO code ("IN-TN") or by name
     * ("IN/Tamil Nadu"), or a continent ("continent:AS").
     */
    match: z.array(z.string().min(2)).min(1),
    order: z.array(z.string()).min(1),
  })
  .strict();

export const geo = z
  .object({
    /**
     * The City database. `bundled` is DB-IP City Lite (CC BY 4.0) shipped with
     * tandem; otherwise MaxMind-format files: `layout: geoip2` (GeoIP2/GeoLite2
     * City, ISO subdivision codes) or `layout: flat` (@ip-location-db files).
     */
    database: z
      .union([
        z.literal('bundled'),
        z.object({ layout: z.enum(['geoip2', 'flat']), ipv4: z.string(), ipv6: z.string().optional() }).strict(),
      ])
      .default('bundled'),
    rules: z.array(geoRule).default([]),
    /** CIDR overrides win over the database: `{ cidr: "10.1.0.0/16", order: [...] }`. */
    overrides: z.array(z.object({ cidr: z.string(), order: z.array(z.string()).min(1) }).strict()).default([]),
    /** Order for every address no rule matches; default: regions in config order. */
    defaultOrder: z.array(z.string()).optional(),
  })
  .strict();
export type GeoConfig = z.output<typeof geo>;
