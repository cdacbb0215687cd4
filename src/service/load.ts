/**
 * The load client the lab's gentle traffic and the DR drills reuse: synthetic
 * clients, one per geography, that find the service the way real clients do —
 * through DNS, with their subnet as EDNS Client Subnet, honouring the answer's
 * TTL and falling back to the next DNS server when one does not answer — and
 * send idempotent writes and reads at a steady rate. A failed write is retried
 * with the same Idempotency-Key against a freshly resolved address, so a
 * failover never turns one intended order into two.
 *
 * Every HTTP attempt becomes a `LoadRecord`; an acknowledged write is a 2xx
 * received. The drill's checker proves that every acknowledged order exists
 * in every region after the link heals.
 */
import http from 'node:http';
import { isIP } from 'node:net';
import { randomUUID } from 'node:crypto';
import { TandemError } from '../core/errors.ts';
import { sleep } from '../core/lifecycle.ts';
import { queryA as dnsQueryA } from '../dns/client.ts';
import { prng } from '../core/random.ts';

/** A DNS server to ask. */
export interface DnsServerAddress {
  host: string;
  port: number;
}

/** The answer the load client needs from a DNS query. */
export interface ResolvedA {
  addresses: string[];
  ttlSec: number;
  rcode: string;
}

/** One A query against one server (the DNS part's `queryA` by default; swappable for tests or another resolver). */
export type QueryA = (server: DnsServerAddress, name: string, opts: { ecs?: string; timeoutMs: number }) => Promise<ResolvedA>;

/** A synthetic client population. */
export interface GeoClient {
  /** A label for records (e.g. "chennai"). */
  geo: string;
  /** The subnet sent as EDNS Client Subnet, e.g. "49.204.1.0/24". */
  ecs?: string;
  /** Sent as X-Client-ID: the idempotency scope (default `load-<geo>`). */
  clientId?: string;
}

/** What the load client records for every HTTP attempt (and every failed resolution). */
export interface LoadRecord {
  /** When the attempt started (ms since the epoch). */
  t: number;
  geo: string;
  op: 'create' | 'read';
  /** The Idempotency-Key of a write; for a read, the key of the order read (if any). */
  key: string;
  orderId?: string;
  /** From X-Tandem-Region of the answer. */
  region?: string;
  /** The address DNS gave and the request went to. */
  address?: string;
  /** HTTP status; 0 when no response arrived. */
  status: number;
  ok: boolean;
  /** A write answered 2xx. */
  acknowledged: boolean;
  latencyMs: number;
  /** 1 for the first attempt of an operation, 2 for its first retry, ... */
  attempt: number;
  error?: string;
}

/** Options of `runLoad`. */
export interface LoadOptions {
  /** The geo-routed service name, e.g. "app.tandem.test". */
  serviceName: string;
  /** DNS servers in the order a stub resolver would try them. */
  dnsServers: DnsServerAddress[];
  /** The service's port (DNS hands out addresses only). */
  port: number;
  geos: GeoClient[];
  /** Operations started per second, per geography. */
  ratePerSec: number;
  /** Fraction of operations that are writes (create order); the rest read. Default 0.5. */
  writeRatio?: number;
  /** Stop after this many operations per geography ... */
  count?: number;
  /** ... or after this long (whichever comes first; at least one of them is required). */
  durationMs?: number;
  signal?: AbortSignal;
  requestTimeoutMs?: number;
  dnsTimeoutMs?: number;
  /**
   * How long a write keeps being retried before it counts as failed (default
   * 60 s: longer than a failover takes — detection plus the DNS TTL).
   */
  retryBudgetMs?: number;
  /** Attempts per write at most (default 200). */
  maxAttempts?: number;
  /** Pause before the first retry of a write (default 250 ms), doubling up to `maxRetryDelayMs`. */
  retryDelayMs?: number;
  /** Longest pause between attempts (default 2 s). */
  maxRetryDelayMs?: number;
  /** Operations in flight per geography beyond which ticks are skipped (default 32). */
  maxInFlight?: number;
  /** Called for every record as it happens (the drill streams them). */
  onRecord?: (r: LoadRecord) => void;
  queryA?: QueryA;
  /** Seeds the choice of reads vs writes; printed so a run can be repeated. */
  seed?: number;
  /** Refuse addresses outside loopback (default true: tandem's tests and lab never leave the machine). */
  loopbackOnly?: boolean;
}

/** Figures of one geography (or of all). */
export interface LoadStats {
  operations: number;
  writes: number;
  acknowledged: number;
  /** Writes that never got a 2xx after all attempts. */
  writesFailed: number;
  reads: number;
  readsOk: number;
  attempts: number;
  retries: number;
  byRegion: Record<string, number>;
  latencyMs: { p50: number; p95: number; p99: number; max: number };
  skippedTicks: number;
}

/** What `runLoad` returns. */
export interface LoadResult {
  seed: number;
  records: LoadRecord[];
  /** Every acknowledged write: the order that must exist everywhere. */
  acknowledged: Array<{ geo: string; key: string; orderId: string; region: string; t: number }>;
  stats: LoadStats;
  byGeo: Record<string, LoadStats>;
  dnsQueries: number;
}

/**
 * A stub resolver with a cache: one answer per name, kept until its TTL runs
 * out (a TTL of 0 is not cached), servers tried in order with a timeout each.
 */
export class CachingResolver {
  readonly #servers: DnsServerAddress[];
  readonly #query: QueryA;
  readonly #ecs: string | undefined;
  readonly #timeoutMs: number;
  #cache = new Map<string, { addresses: string[]; expiresAt: number }>();
  /** Resolutions in progress: concurrent callers share one (as a stub resolver does). */
  #pending = new Map<string, Promise<string[]>>();
  /** Queries sent (each server tried counts). */
  queries = 0;

  constructor(opts: { servers: DnsServerAddress[]; query?: QueryA; ecs?: string; timeoutMs?: number }) {
    if (opts.servers.length === 0) throw new TandemError('TANDEM_ERR_USAGE', 'the load client needs at least one DNS server');
    this.#servers = opts.servers;
    this.#query = opts.query ?? dnsQueryA;
    this.#ecs = opts.ecs;
    this.#timeoutMs = opts.timeoutMs ?? 1_000;
  }

  /** The addresses of `name`, from the cache while the TTL lasts. */
  async resolve(name: string, signal?: AbortSignal): Promise<string[]> {
    const hit = this.#cache.get(name);
    if (hit && hit.expiresAt > Date.now()) return hit.addresses;
    let pending = this.#pending.get(name);
    if (!pending) {
      pending = this.#lookup(name, signal).finally(() => this.#pending.delete(name));
      this.#pending.set(name, pending);
    }
    return pending;
  }

  async #lookup(name: string, signal?: AbortSignal): Promise<string[]> {
    const errors: string[] = [];
    for (const server of this.#servers) {
      signal?.throwIfAborted();
      this.queries++;
      try {
        const r = await this.#query(server, name, { ecs: this.#ecs, timeoutMs: this.#timeoutMs });
        if (r.rcode !== 'NOERROR' || r.addresses.length === 0) {
          // An authoritative "no" is an answer, not a dead server; the next server would say the same.
          errors.push(`${server.host}:${server.port} answered ${r.rcode} with ${r.addresses.length} addresses`);
          if (r.rcode === 'NXDOMAIN') break;
          continue;
        }
        if (r.ttlSec > 0) this.#cache.set(name, { addresses: r.addresses, expiresAt: Date.now() + r.ttlSec * 1000 });
        else this.#cache.delete(name);
        return r.addresses;
      } catch (err) {
        errors.push(`${server.host}:${server.port}: ${(err as Error).message}`);
      }
    }
    throw new TandemError('TANDEM_ERR_TIMEOUT', `could not resolve ${name}: ${errors.join('; ')}`);
  }
}

function isLoopback(address: string): boolean {
  return (isIP(address) === 4 && address.startsWith('127.')) || address === '::1';
}

interface HttpAnswer {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

function httpJson(
  agent: http.Agent,
  address: string,
  port: number,
  method: string,
  path: string,
  headers: Record<string, string>,
  body: unknown,
  timeoutMs: number,
  signal: AbortSignal,
): Promise<HttpAnswer> {
  const payload = body === undefined ? undefined : JSON.stringify(body);
  return new Promise((resolve, reject) => {
    const req = http.request(
      {
        host: address,
        port,
        method,
        path,
        agent,
        headers: { accept: 'application/json', ...(payload ? { 'content-type': 'application/json', 'content-length': String(Buffer.byteLength(payload)) } : {}), ...headers },
        signal,
      },
      (res) => {
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks).toString('utf8') }));
        res.on('error', reject);
      },
    );
    req.setTimeout(timeoutMs, () => req.destroy(new TandemError('TANDEM_ERR_TIMEOUT', `no answer within ${timeoutMs} ms`)));
    req.on('error', reject);
    req.end(payload);
  });
}

function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)]!;
}

/** Figures of a set of records. */
export function summarize(records: LoadRecord[], skippedTicks = 0): LoadStats {
  // A write is one operation however many attempts it took (same key); a read is one attempt.
  const writesByKey = new Map<string, boolean>();
  let reads = 0;
  let readsOk = 0;
  for (const r of records) {
    if (r.op === 'create') {
      const id = `${r.geo}\n${r.key}`;
      writesByKey.set(id, (writesByKey.get(id) ?? false) || r.acknowledged);
    } else {
      reads++;
      if (r.ok) readsOk++;
    }
  }
  const writes = writesByKey.size;
  const acknowledged = [...writesByKey.values()].filter(Boolean).length;
  const byRegion: Record<string, number> = {};
  for (const r of records) if (r.region) byRegion[r.region] = (byRegion[r.region] ?? 0) + 1;
  const lat = records.filter((r) => r.status > 0).map((r) => r.latencyMs).sort((a, b) => a - b);
  return {
    operations: writes + reads,
    writes,
    acknowledged,
    writesFailed: writes - acknowledged,
    reads,
    readsOk,
    attempts: records.length,
    retries: records.filter((r) => r.attempt > 1).length,
    byRegion,
    latencyMs: { p50: percentile(lat, 50), p95: percentile(lat, 95), p99: percentile(lat, 99), max: lat.at(-1) ?? 0 },
    skippedTicks,
  };
}

/**
 * Run synthetic clients until `count` operations per geography were started
 * (and finished), `durationMs` passed, or `signal` aborted.
 */
export async function runLoad(opts: LoadOptions): Promise<LoadResult> {
  if (opts.count === undefined && opts.durationMs === undefined) {
    throw new TandemError('TANDEM_ERR_USAGE', 'runLoad needs a bound: count or durationMs');
  }
  if (!(opts.ratePerSec > 0)) throw new TandemError('TANDEM_ERR_USAGE', `ratePerSec must be > 0 (found ${opts.ratePerSec})`);
  if (opts.geos.length === 0) throw new TandemError('TANDEM_ERR_USAGE', 'runLoad needs at least one geography');
  const seed = opts.seed ?? Math.floor(Math.random() * 2 ** 31);
  const random = prng(seed);
  const writeRatio = opts.writeRatio ?? 0.5;
  const requestTimeoutMs = opts.requestTimeoutMs ?? 2_000;
  const maxAttempts = opts.maxAttempts ?? 200;
  const retryDelayMs = opts.retryDelayMs ?? 250;
  const maxRetryDelayMs = opts.maxRetryDelayMs ?? 2_000;
  const retryBudgetMs = opts.retryBudgetMs ?? 60_000;
  const maxInFlight = opts.maxInFlight ?? 32;
  const loopbackOnly = opts.loopbackOnly ?? true;
  // `ticking` ends the schedule (bound reached or aborted); operations already started finish their
  // retries unless the caller aborts, which cancels everything at once.
  const ticking = new AbortController();
  const hard = opts.signal ?? new AbortController().signal;
  const onAbort = () => ticking.abort(opts.signal?.reason);
  opts.signal?.addEventListener('abort', onAbort, { once: true });
  const timer = opts.durationMs !== undefined ? setTimeout(() => ticking.abort(new Error('duration reached')), opts.durationMs) : undefined;
  const records: LoadRecord[] = [];
  const acknowledged: LoadResult['acknowledged'] = [];
  const record = (r: LoadRecord) => {
    records.push(r);
    opts.onRecord?.(r);
  };
  const resolvers: CachingResolver[] = [];
  const skipped: Record<string, number> = {};

  const runGeo = async (g: GeoClient) => {
    const resolver = new CachingResolver({ servers: opts.dnsServers, query: opts.queryA, ecs: g.ecs, timeoutMs: opts.dnsTimeoutMs });
    resolvers.push(resolver);
    const agent = new http.Agent({ keepAlive: true, maxSockets: maxInFlight });
    const clientId = g.clientId ?? `load-${g.geo}`;
    const known: Array<{ key: string; orderId: string }> = [];
    const inFlight = new Set<Promise<void>>();
    skipped[g.geo] = 0;

    /** One HTTP attempt, recorded. */
    const attempt = async (op: 'create' | 'read', key: string, n: number, method: string, path: (o?: string) => string, body: unknown, orderId?: string): Promise<LoadRecord> => {
      const t = Date.now();
      const started = performance.now();
      const rec: LoadRecord = { t, geo: g.geo, op, key, status: 0, ok: false, acknowledged: false, latencyMs: 0, attempt: n };
      if (orderId) rec.orderId = orderId;
      try {
        const addresses = await resolver.resolve(opts.serviceName, hard);
        const address = addresses[Math.floor(random() * addresses.length)]!;
        rec.address = address;
        if (loopbackOnly && !isLoopback(address)) throw new TandemError('TANDEM_ERR_USAGE', `${opts.serviceName} resolved to ${address}, outside loopback; refusing`);
        const headers: Record<string, string> = { 'x-client-id': clientId, 'x-correlation-id': `load-${g.geo}-${randomUUID()}` };
        if (op === 'create') headers['idempotency-key'] = `"${key}"`;
        const res = await httpJson(agent, address, opts.port, method, path(orderId), headers, body, requestTimeoutMs, hard);
        rec.status = res.status;
        rec.ok = res.status >= 200 && res.status < 300;
        const region = res.headers['x-tandem-region'];
        if (typeof region === 'string') rec.region = region;
        if (rec.ok && op === 'create') {
          rec.acknowledged = true;
          try {
            rec.orderId = (JSON.parse(res.body) as { id: string }).id;
          } catch {
            rec.error = 'acknowledged without a JSON body naming the order';
          }
        } else if (!rec.ok) {
          rec.error = `HTTP ${res.status}: ${res.body.slice(0, 200)}`;
        }
      } catch (err) {
        rec.error = hard.aborted ? 'aborted' : (err as Error).message;
      }
      rec.latencyMs = Math.round((performance.now() - started) * 10) / 10;
      record(rec);
      return rec;
    };

    const write = async () => {
      const key = randomUUID();
      const body = { customer: clientId, amountCents: 100 + Math.floor(random() * 10_000), currency: 'INR' };
      const giveUpAt = performance.now() + retryBudgetMs;
      for (let n = 1; n <= maxAttempts; n++) {
        const r = await attempt('create', key, n, 'POST', () => '/v1/orders', body);
        if (r.acknowledged && r.orderId) {
          known.push({ key, orderId: r.orderId });
          acknowledged.push({ geo: g.geo, key, orderId: r.orderId, region: r.region ?? '', t: r.t });
          return;
        }
        // A 4xx other than "in flight" (409) or "not here yet" (404) will not change on retry.
        if (r.status >= 400 && r.status < 500 && r.status !== 409 && r.status !== 404 && r.status !== 408 && r.status !== 429) return;
        // Even after the bound is reached, a write already started keeps retrying (it may have been applied); an abort ends it.
        const delay = Math.min(maxRetryDelayMs, retryDelayMs * 2 ** (n - 1));
        if (hard.aborted || performance.now() + delay > giveUpAt) return;
        await sleep(delay, hard).catch(() => {});
      }
    };

    const read = async () => {
      const k = known.length ? known[Math.floor(random() * known.length)]! : undefined;
      if (k) await attempt('read', k.key, 1, 'GET', (id) => `/v1/orders/${id}`, undefined, k.orderId);
      else await attempt('read', '', 1, 'GET', () => `/v1/orders?customer=${encodeURIComponent(clientId)}&limit=5`, undefined);
    };

    const intervalMs = 1000 / opts.ratePerSec;
    let started = 0;
    const begin = performance.now();
    while (!ticking.signal.aborted && (opts.count === undefined || started < opts.count)) {
      if (inFlight.size >= maxInFlight) {
        skipped[g.geo]!++;
      } else {
        const p = (random() < writeRatio ? write() : read()).finally(() => inFlight.delete(p));
        inFlight.add(p);
        started++;
      }
      // A steady schedule: tick n at begin + n × interval, whatever the previous op took.
      const next = begin + (started + skipped[g.geo]!) * intervalMs;
      const wait = next - performance.now();
      if (wait > 0) await sleep(wait, ticking.signal).catch(() => {});
    }
    await Promise.all(inFlight);
    agent.destroy();
  };

  try {
    await Promise.all(opts.geos.map(runGeo));
  } finally {
    clearTimeout(timer);
    opts.signal?.removeEventListener('abort', onAbort);
  }
  records.sort((a, b) => a.t - b.t);
  const byGeo: Record<string, LoadStats> = {};
  for (const g of opts.geos) byGeo[g.geo] = summarize(records.filter((r) => r.geo === g.geo), skipped[g.geo]);
  const totalSkipped = Object.values(skipped).reduce((a, b) => a + b, 0);
  return {
    seed,
    records,
    acknowledged,
    stats: summarize(records, totalSkipped),
    byGeo,
    dnsQueries: resolvers.reduce((a, r) => a + r.queries, 0),
  };
}
