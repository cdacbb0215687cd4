/**
 * `tandem dns serve`: one region's authoritative geo-DNS server with its own
 * health checker (each DNS server is a vantage point) and its admin API
 * (drain, weights, reload, explain, state; bearer token).
 */
import path from 'node:path';
import { Gauge, Counter, type Registry } from 'prom-client';
import { BaseService } from '../core/lifecycle.ts';
import { TandemError, isTandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { silentLogger } from '../core/log.ts';
import { createRegistry } from '../core/metrics.ts';
import { ApiServer, type Route } from '../core/http.ts';
import { loadConfig, regionByName, type Config, type HostPort } from '../core/config/index.ts';
import { HealthChecker, isServing, type HealthSource, type RegionHealth, type HealthTransition } from '../health/checker.ts';
import { GeoDb } from './geo.ts';
import { GeoPolicy, AnswerTable, parseCidr, type RegionAnswerInput } from './policy.ts';
import { buildZone, type Zone } from './zone.ts';
import { DnsEngine, type EngineState } from './engine.ts';
import { DnsServer, type BoundListener } from './server.ts';
import { StateStore, type OperatorState } from './state.ts';

const geoCache = new Map<string, GeoDb>();

/** Open a geo database once per process (the bundled files are ~130 MB). */
export function openGeoDb(spec: Config['geo']['database']): GeoDb {
  const key = GeoDb.fingerprint(spec);
  let db = geoCache.get(key);
  if (!db) {
    db = GeoDb.open(spec);
    geoCache.set(key, db);
  }
  return db;
}

/** Compile the parts of a config the engine needs (throws config errors). */
export function compile(config: Config, serial: number): { zone: Zone; policy: GeoPolicy } {
  const zone = buildZone(config, serial);
  const policy = new GeoPolicy(config, openGeoDb(config.geo.database));
  return { zone, policy };
}

/** Options of `DnsDaemon`. */
export interface DnsDaemonOptions {
  region: string;
  /** tandem.yaml; read at start and on reload. */
  configPath?: string;
  /** A config already loaded (tests); reload then re-reads `configPath` if given. */
  config?: Config;
  /** Override the DNS listeners of `regions[].dns.listen` (tests use port 0). */
  listen?: HostPort[];
  /** Override the admin listener of `regions[].dns.admin`. */
  admin?: HostPort;
  /** Admin bearer token (the CLI reads TANDEM_ADMIN_TOKEN / adminToken). */
  token?: string | undefined;
  logger?: Logger;
  registry?: Registry;
  /** The health source to use instead of the daemon's own checker (tests, the lab). */
  health?: HealthSource;
}

/** A region entry of GET /v1/state. */
export interface RegionStateView {
  name: string;
  health: RegionHealth;
  drained: boolean;
  drainedAt?: string;
  drainReason?: string;
  weight?: number;
  weights?: Record<string, number>;
  serving: boolean;
}

/** The DNS daemon: engine, listeners, health checker, admin API, persisted operator state. */
export class DnsDaemon extends BaseService {
  readonly name = 'dns';
  readonly registry: Registry;
  readonly #opts: DnsDaemonOptions;
  readonly #log: Logger;
  #config!: Config;
  #compiled!: { zone: Zone; policy: GeoPolicy };
  #store!: StateStore;
  #checker: HealthChecker | undefined;
  #health!: HealthSource;
  #engine!: DnsEngine;
  #server: DnsServer | undefined;
  #api: ApiServer | undefined;
  #serial = 0;
  readonly #onTransition = (t: HealthTransition) => {
    this.#log.info({ region: t.region, from: t.from, to: t.to, reason: t.reason }, 'health transition; answers rebuilt');
    this.#rebuild();
  };
  #drainedGauge!: Gauge<'target'>;
  #servingGauge!: Gauge<'target'>;
  #reloads!: Counter<'result'>;

  constructor(opts: DnsDaemonOptions) {
    super();
    this.#opts = opts;
    this.#log = opts.logger ?? silentLogger();
    this.registry = opts.registry ?? createRegistry('dns', opts.region);
  }

  get config(): Config {
    return this.#config;
  }

  /** Bound DNS listeners (host and actual port). */
  get listeners(): BoundListener[] {
    return this.#server?.bound ?? [];
  }

  /** The admin API's base URL. */
  get adminUrl(): string | undefined {
    return this.#api?.url;
  }

  get health(): HealthSource {
    return this.#health;
  }

  get engine(): DnsEngine {
    return this.#engine;
  }

  get serial(): number {
    return this.#serial;
  }

  #nextSerial(): number {
    // Seconds since the epoch, strictly increasing across reloads in this process.
    this.#serial = Math.max(this.#serial + 1, Math.floor(Date.now() / 1000));
    return this.#serial;
  }

  #stateFile(config: Config): string {
    return config.dns?.stateFile ?? path.join(config.dataDir, `dns-state-${this.#opts.region}.json`);
  }

  protected async onStart(): Promise<void> {
    const config = this.#opts.config ?? loadConfig(this.#requirePath());
    const region = regionByName(config, this.#opts.region);
    this.#config = config;
    this.#compiled = compile(config, this.#nextSerial());
    this.#store = new StateStore(this.#stateFile(config));
    this.#drainedGauge = new Gauge({ name: 'tandem_dns_region_drained', help: '1 when an operator drained the region', labelNames: ['target'], registers: [this.registry] });
    this.#servingGauge = new Gauge({ name: 'tandem_dns_region_serving', help: '1 when the region is healthy (or unknown) and not drained', labelNames: ['target'], registers: [this.registry] });
    this.#reloads = new Counter({ name: 'tandem_dns_reloads_total', help: 'Config reloads by result', labelNames: ['result'], registers: [this.registry] });
    this.#startHealth(config, undefined);
    this.#engine = new DnsEngine(this.#engineState(), this.registry);
    const listen = this.#opts.listen ?? region.dns?.listen;
    if (!listen?.length) throw new TandemError('TANDEM_ERR_CONFIG', `regions[${config.regions.indexOf(region)}].dns.listen: region ${region.name} has no DNS listeners`);
    const dns = config.dns!;
    const server = (this.#server = new DnsServer({ listen, engine: this.#engine, tcp: dns.tcp, logger: this.#log }));
    new Counter({
      name: 'tandem_dns_tcp_closed_total',
      help: 'TCP connections the server closed itself: refused at the cap, evicted (idle, at the cap), overrun (answers left unread)',
      labelNames: ['reason'],
      registers: [this.registry],
      collect() {
        this.reset();
        for (const [reason, n] of Object.entries(server.tcpClosed)) this.inc({ reason }, n);
      },
    });
    await server.start();
    const admin = this.#opts.admin ?? region.dns?.admin;
    if (admin) {
      this.#api = new ApiServer({ name: 'dns-admin', listen: admin, token: this.#opts.token, routes: this.#routes(), registry: this.registry, logger: this.#log });
      await this.#api.start();
    }
    this.#log.info({ zone: this.#compiled.zone.origin, serial: this.#serial, dns: this.listeners, admin: this.#api?.url }, 'dns daemon started');
  }

  protected async onStop(): Promise<void> {
    await this.#api?.stop();
    await this.#server?.stop();
    this.#checker?.off('transition', this.#onTransition);
    await this.#checker?.stop();
  }

  #requirePath(): string {
    if (!this.#opts.configPath) throw new TandemError('TANDEM_ERR_USAGE', 'no config path to (re)load');
    return this.#opts.configPath;
  }

  #startHealth(config: Config, previous: HealthChecker | undefined, previousConfig?: Config): void {
    if (this.#opts.health) {
      this.#health = this.#opts.health;
      if (!previous) this.#opts.health.on('transition', this.#onTransition);
      return;
    }
    const initial = new Map<string, RegionHealth>();
    for (const s of previous?.snapshot() ?? []) {
      const r = config.regions.find((x) => x.name === s.region);
      // Keep what we know about a region across a reload unless its URL changed.
      if (r && previousConfig?.regions.find((x) => x.name === s.region)?.healthUrl === r.healthUrl) initial.set(s.region, s);
    }
    const checker = new HealthChecker({
      targets: config.regions.map((r) => ({ region: r.name, url: r.healthUrl })),
      config: config.health,
      logger: this.#log,
      registry: this.registry,
      initial,
    });
    checker.on('transition', this.#onTransition);
    this.#checker = checker;
    this.#health = checker;
    void checker.start();
  }

  #regionInputs(): RegionAnswerInput[] {
    return this.#config.regions.map((r) => ({
      name: r.name,
      healthy: isServing(this.#health.get(r.name)?.state ?? 'unknown'),
      drained: Boolean(this.#store.state.regions[r.name]?.drained),
      ipv4: r.addresses.filter((a) => !a.includes(':')),
      ipv6: r.addresses.filter((a) => a.includes(':')),
    }));
  }

  /** Effective weights of service `name`: config, then run-time "*" overrides, then per-service ones. */
  #weights(index: number): Record<string, number> {
    const svc = this.#config.dns!.services[index]!;
    const rt = this.#store.state.weights;
    return { ...(svc.weights ?? {}), ...(rt['*'] ?? {}), ...(rt[svc.name] ?? {}) };
  }

  #engineState(): EngineState {
    const regions = this.#regionInputs();
    for (const r of regions) {
      this.#drainedGauge.set({ target: r.name }, r.drained ? 1 : 0);
      this.#servingGauge.set({ target: r.name }, r.healthy && !r.drained ? 1 : 0);
    }
    const { zone, policy } = this.#compiled;
    const services = zone.services.map((s, i) => ({ name: s.name, ttlSec: s.ttlSec, weights: this.#weights(i) }));
    return { zone, policy, table: new AnswerTable(policy.orders, regions, services), maxUdpPayload: this.#config.dns!.maxUdpPayload };
  }

  #rebuild(): void {
    if (this.#engine) this.#engine.setState(this.#engineState());
  }

  /** Change the persisted state; when it cannot be saved, nothing changes (not even in memory) and the error is thrown. */
  #persist(change: (state: OperatorState) => void): void {
    const before = structuredClone(this.#store.state);
    change(this.#store.state);
    try {
      this.#store.save();
    } catch (err) {
      this.#store.state = before;
      throw err;
    }
  }

  /** Drain a region (take it out of answers). The last serving region needs `force`. */
  drain(regionName: string, opts: { reason?: string; force?: boolean; actor?: string } = {}): RegionStateView {
    regionByName(this.#config, regionName);
    const servingAfter = this.#regionInputs().filter((r) => r.name !== regionName && r.healthy && !r.drained);
    if (servingAfter.length === 0 && !opts.force) {
      throw new TandemError('TANDEM_ERR_SAFETY', `refusing to drain ${regionName}: it is the last serving region (no other region is healthy and undrained); pass force to override`);
    }
    this.#persist((state) => {
      state.regions[regionName] = {
        drained: true,
        drainedAt: new Date().toISOString(),
        ...(opts.reason ? { drainReason: opts.reason.slice(0, 500) } : {}),
        ...(opts.actor ? { drainedBy: opts.actor } : {}),
      };
    });
    this.#log.warn({ target: regionName, reason: opts.reason, force: Boolean(opts.force), actor: opts.actor }, 'region drained');
    this.#rebuild();
    return this.#view(regionName);
  }

  /** Return a drained region to answers (if healthy). */
  undrain(regionName: string, opts: { actor?: string } = {}): RegionStateView {
    regionByName(this.#config, regionName);
    this.#persist((state) => {
      delete state.regions[regionName];
    });
    this.#log.info({ target: regionName, actor: opts.actor }, 'region undrained');
    this.#rebuild();
    return this.#view(regionName);
  }

  /** Set (or with `null`, clear) a run-time weight for a region, for one service or all. */
  setWeight(regionName: string, weight: number | null, service?: string): RegionStateView {
    regionByName(this.#config, regionName);
    if (weight !== null && (!Number.isInteger(weight) || weight < 0 || weight > 1000)) {
      throw new TandemError('TANDEM_ERR_USAGE', `weight must be an integer 0..1000 or null, found ${JSON.stringify(weight)}`);
    }
    let key = '*';
    if (service !== undefined) {
      const svc = this.#compiled.zone.services.find((s, i) => s.name === service || this.#config.dns!.services[i]!.name === service);
      if (!svc) throw new TandemError('TANDEM_ERR_NOT_FOUND', `unknown service "${service}" (known: ${this.#config.dns!.services.map((s) => s.name).join(', ')})`);
      key = this.#config.dns!.services[this.#compiled.zone.services.indexOf(svc)]!.name;
    }
    this.#persist((state) => {
      const map = (state.weights[key] ??= {});
      if (weight === null) delete map[regionName];
      else map[regionName] = weight;
      if (Object.keys(map).length === 0) delete state.weights[key];
    });
    this.#rebuild();
    return this.#view(regionName);
  }

  /** Re-read tandem.yaml. An invalid config is rejected (errors logged) and the old one keeps serving. */
  reload(): { serial: number; changed: string[] } {
    let config: Config;
    let compiled: { zone: Zone; policy: GeoPolicy };
    const serial = Math.max(this.#serial + 1, Math.floor(Date.now() / 1000));
    try {
      config = loadConfig(this.#requirePath());
      regionByName(config, this.#opts.region);
      compiled = compile(config, serial);
    } catch (err) {
      this.#reloads.inc({ result: 'rejected' });
      this.#log.error({ err: isTandemError(err) ? { code: err.code, message: err.message } : err }, 'reload rejected; the previous config keeps serving');
      throw err;
    }
    this.#serial = serial;
    const changed: string[] = [];
    const old = this.#config;
    if (JSON.stringify(old.regions.map((r) => r.dns)) !== JSON.stringify(config.regions.map((r) => r.dns))) changed.push('listeners (restart to apply)');
    const healthChanged =
      JSON.stringify(old.health) !== JSON.stringify(config.health) || JSON.stringify(old.regions.map((r) => [r.name, r.healthUrl])) !== JSON.stringify(config.regions.map((r) => [r.name, r.healthUrl]));
    this.#config = config;
    this.#compiled = compiled;
    if (healthChanged && !this.#opts.health) {
      const previous = this.#checker;
      previous?.off('transition', this.#onTransition);
      void previous?.stop();
      this.#startHealth(config, previous, old);
      changed.push('health');
    }
    this.#rebuild();
    this.#reloads.inc({ result: 'ok' });
    this.#log.info({ serial: this.#serial, changed }, 'config reloaded');
    return { serial: this.#serial, changed };
  }

  #view(name: string): RegionStateView {
    const d = this.#store.state.regions[name];
    const h = this.#health.get(name) ?? { region: name, state: 'unknown' as const, since: new Date(0), consecutiveFailures: 0, consecutiveSuccesses: 0 };
    const weights: Record<string, number> = {};
    this.#config.dns!.services.forEach((s, i) => {
      const w = this.#weights(i)[name];
      if (w !== undefined) weights[s.name] = w;
    });
    const all = Object.values(weights);
    const view: RegionStateView = { name, health: h, drained: Boolean(d?.drained), serving: isServing(h.state) && !d?.drained };
    if (d?.drainedAt) view.drainedAt = d.drainedAt;
    if (d?.drainReason) view.drainReason = d.drainReason;
    if (all.length) {
      view.weights = weights;
      if (all.every((w) => w === all[0])) view.weight = all[0]!;
    }
    return view;
  }

  /** GET /v1/state. */
  stateView(): { region: string; zone: string; serial: number; regions: RegionStateView[]; services: { name: string; ttlSec: number; weights?: Record<string, number> }[] } {
    return {
      region: this.#opts.region,
      zone: `${this.#compiled.zone.origin}.`,
      serial: this.#serial,
      regions: this.#config.regions.map((r) => this.#view(r.name)),
      services: this.#compiled.zone.services.map((s, i) => {
        const w = this.#weights(i);
        return { name: `${s.name}.`, ttlSec: s.ttlSec, ...(Object.keys(w).length ? { weights: w } : {}) };
      }),
    };
  }

  /** What an address (and optional ECS subnet) gets now, for every service. */
  explain(ip: string, ecs?: string): ExplainResult {
    return explainWith(this.#compiled, this.#engine.state.table, ip, ecs);
  }

  #routes(): Route[] {
    const regionParam = /^\/v1\/regions\/(?<region>[^/]+)\/(?<action>drain|undrain|weight)$/;
    return [
      { method: 'GET', path: '/healthz', public: true, handler: () => ({ body: { status: 'ok', region: this.#opts.region, serial: this.#serial } }) },
      { method: 'GET', path: '/v1/state', handler: () => ({ body: this.stateView() }) },
      {
        method: 'POST',
        path: regionParam,
        handler: ({ params, body, actor }) => {
          const b = (body ?? {}) as { reason?: unknown; force?: unknown };
          if (params.action === 'drain') {
            if (b.reason !== undefined && typeof b.reason !== 'string') throw new TandemError('TANDEM_ERR_USAGE', 'reason must be a string');
            return { body: this.drain(params.region!, { reason: b.reason as string | undefined, force: b.force === true, actor }) };
          }
          if (params.action === 'undrain') return { body: this.undrain(params.region!, { actor }) };
          throw new TandemError('TANDEM_ERR_USAGE', 'use PUT for weight');
        },
      },
      {
        method: 'PUT',
        path: regionParam,
        handler: ({ params, body }) => {
          if (params.action !== 'weight') throw new TandemError('TANDEM_ERR_USAGE', 'use POST for drain/undrain');
          const b = (body ?? {}) as { weight?: unknown; service?: unknown };
          if (b.weight !== null && typeof b.weight !== 'number') throw new TandemError('TANDEM_ERR_USAGE', 'body must be { "weight": <0..1000 | null>, "service"?: <name> }');
          if (b.service !== undefined && typeof b.service !== 'string') throw new TandemError('TANDEM_ERR_USAGE', 'service must be a string');
          return { body: this.setWeight(params.region!, b.weight as number | null, b.service as string | undefined) };
        },
      },
      {
        method: 'POST',
        path: '/v1/reload',
        handler: () => {
          try {
            return { body: this.reload() };
          } catch (err) {
            if (isTandemError(err, 'TANDEM_ERR_CONFIG')) throw new TandemError('TANDEM_ERR_CONFIG', err.message, { details: { status: 400, errors: err.details?.errors } });
            throw err;
          }
        },
      },
      {
        method: 'GET',
        path: '/v1/explain',
        handler: ({ url }) => {
          const ip = url.searchParams.get('ip') ?? '';
          const ecs = url.searchParams.get('ecs') ?? undefined;
          if (!ip && !ecs) throw new TandemError('TANDEM_ERR_USAGE', 'give ?ip=<address> and/or &ecs=<cidr>');
          return { body: this.explain(ip || ecs!.split('/')[0]!, ecs) };
        },
      },
    ];
  }
}

/** The answer of `explain`: what the database says, the class and order, and each service's answer. */
export type ExplainResult = ReturnType<GeoPolicy['explain']> & {
  source: 'ecs' | 'address';
  ecs?: string;
  services: { name: string; ttlSec: number; A: ExplainChoice[]; AAAA: ExplainChoice[] }[];
};

/** One possible answer (several when weighted). */
export interface ExplainChoice {
  region: string;
  addresses: string[];
  local: boolean;
  failOpen: boolean;
  weight?: number;
}

function explainWith(compiled: { zone: Zone; policy: GeoPolicy }, table: AnswerTable, ip: string, ecs?: string): ExplainResult {
  let subject = ip;
  if (ecs) {
    if (!parseCidr(ecs)) throw new TandemError('TANDEM_ERR_USAGE', `ecs must be a CIDR with zero host bits, found ${JSON.stringify(ecs)}`);
    subject = ecs.split('/')[0]!;
  }
  const e = compiled.policy.explain(subject);
  const orderIdx = e.class.orderIdx;
  const describe = (p: AnswerTable['picks'][number][number][number]): ExplainChoice[] =>
    p.choices.map((c, k) => ({
      region: c.region,
      addresses: c.addresses,
      local: c.local,
      failOpen: c.failOpen,
      ...(p.choices.length > 1 ? { weight: p.cumulative[k]! - (p.cumulative[k - 1] ?? 0) } : {}),
    }));
  const services = compiled.zone.services.map((s, i) => ({ name: `${s.name}.`, ttlSec: s.ttlSec, A: describe(table.picks[i]![0]![orderIdx]!), AAAA: describe(table.picks[i]![1]![orderIdx]!) }));
  return { ...e, source: ecs ? 'ecs' : 'address', ...(ecs ? { ecs } : {}), services };
}

/**
 * `tandem dns explain` without a running server: the config and database
 * alone, every region assumed healthy and undrained, config weights applied.
 */
export function explainOffline(config: Config, ip: string, ecs?: string): ExplainResult {
  const compiled = compile(config, 1);
  const regions: RegionAnswerInput[] = config.regions.map((r) => ({
    name: r.name,
    healthy: true,
    drained: false,
    ipv4: r.addresses.filter((a) => !a.includes(':')),
    ipv6: r.addresses.filter((a) => a.includes(':')),
  }));
  const services = compiled.zone.services.map((s, i) => ({ name: s.name, ttlSec: s.ttlSec, weights: config.dns!.services[i]!.weights ?? {} }));
  return explainWith(compiled, new AnswerTable(compiled.policy.orders, regions, services), ip, ecs);
}
