/**
 * The reference service assembled for one region: the region's database
 * pools, the kit with the shop routes, and the HTTP server on
 * `regions[r].app.listen`. `tandem app serve` runs one of these per worker.
 */
import { readFileSync } from 'node:fs';
import type pg from 'pg';
import type { Registry } from 'prom-client';
import { BaseService } from '../core/lifecycle.ts';
import { TandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { createRegistry } from '../core/metrics.ts';
import { readSecret } from '../core/secrets.ts';
import { localDatabase, regionByName, type Config, type HostPort } from '../core/config/index.ts';
import { createAppPool } from '../app/db.ts';
import { Kit } from '../app/kit.ts';
import { AppServer } from '../app/server.ts';
import type { LagSource } from '../app/health.ts';
import { readLag } from '../replication/status.ts';
import { shopRoutes } from './routes.ts';
import { migrateDatabase } from './schema.ts';

/** tandem's version, reported by /healthz. */
export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

/** Options of one service instance. */
export interface ShopServiceOptions {
  config: Config;
  region: string;
  logger: Logger;
  /** Default: a new registry labelled component=app, region=<region>. */
  registry?: Registry;
  /** Default: `regions[r].app.listen`. */
  listen?: HostPort;
  /** Run the migrations before listening (default false: `tandem app migrate` does it). */
  migrate?: boolean;
  lagSource?: LagSource;
  /** Cluster workers serve the primary's aggregate at /metrics. */
  metricsText?: () => Promise<{ body: string; contentType: string }>;
  /** Override of the purge interval (tests). */
  purgeIntervalMs?: number;
}

/** Lag per peer from the replication part's `readLag` (from `tandem.replication_status`; none when replication is not set up). */
export function replicationLag(heartbeatIntervalMs = 0): LagSource {
  return async (db) => (await readLag(db, { heartbeatIntervalMs })).map((l) => ({ peer: l.peer, lagSec: Math.round(l.lagSec * 1000) / 1000 }));
}

/** Read `app.sessionKeys` (secret references) into their values. */
export function sessionSecrets(config: Config): string[] {
  return config.app.sessionKeys.map((ref, i) => readSecret(ref, `app.sessionKeys[${i}]`)!);
}

/** The listen address of a region's service, or a clear error. */
export function serviceListen(config: Config, region: string): HostPort {
  const r = regionByName(config, region);
  if (!r.app) {
    const i = config.regions.indexOf(r);
    throw new TandemError('TANDEM_ERR_CONFIG', `regions[${i}].app is not set: add app: { listen: "host:port" } for region ${region}`);
  }
  return r.app.listen;
}

/** One instance of the reference service. */
export class ShopService extends BaseService {
  readonly name: string;
  readonly kit: Kit;
  readonly server: AppServer;
  readonly registry: Registry;
  readonly #opts: ShopServiceOptions;
  readonly #pool: pg.Pool;
  readonly #healthPool: pg.Pool;

  constructor(opts: ShopServiceOptions) {
    super();
    this.#opts = opts;
    const { config, region, logger } = opts;
    const r = regionByName(config, region);
    const conn = localDatabase(r);
    const listen = opts.listen ?? serviceListen(config, region);
    const what = `regions[${config.regions.indexOf(r)}].database`;
    this.name = `shop@${region}`;
    this.registry = opts.registry ?? createRegistry('app', region);
    this.#pool = createAppPool(conn, { db: config.app.db, applicationName: `tandem-app-${region}` }, what);
    this.#healthPool = createAppPool(
      conn,
      { db: config.app.db, applicationName: `tandem-app-health-${region}`, max: 2, statementTimeoutMs: config.app.healthTimeoutMs },
      what,
    );
    this.kit = new Kit({
      region,
      version: VERSION,
      app: config.app,
      pool: this.#pool,
      healthPool: this.#healthPool,
      logger,
      registry: this.registry,
      sessionSecrets: sessionSecrets(config),
      lagSource: opts.lagSource ?? replicationLag(config.replication.heartbeatIntervalMs),
      lagWarnSec: config.replication.lagWarnSec,
      routes: shopRoutes(),
      metricsText: opts.metricsText,
      purgeIntervalMs: opts.purgeIntervalMs,
    });
    if (!this.kit.sessions) logger.warn('app.sessionKeys is empty: /v1/login answers 503 until session keys are configured');
    this.server = new AppServer({ kit: this.kit, host: listen.host, port: listen.port, shutdownGraceMs: config.app.shutdownGraceMs, logger });
  }

  /** The service's base URL once started. */
  get url(): string {
    return this.server.url;
  }

  protected async onStart(signal?: AbortSignal): Promise<void> {
    const { config, region } = this.#opts;
    if (this.#opts.migrate) {
      const r = regionByName(config, region);
      await migrateDatabase(localDatabase(r), `regions[${config.regions.indexOf(r)}].database`);
    }
    await this.server.start(signal);
    this.#opts.logger.info({ url: this.server.url, region }, 'reference service listening');
  }

  protected async onStop(): Promise<void> {
    await this.server.stop().catch(() => {});
    await Promise.all([this.#pool.end().catch(() => {}), this.#healthPool.end().catch(() => {})]);
  }
}
