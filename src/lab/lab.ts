/**
 * The lab: the whole system on one machine. Per region an embedded
 * PostgreSQL, the reference service, an authoritative DNS server, a
 * replication agent and a controller; cross-region database traffic through
 * the WAN emulator; faults (fail, recover, partition, WAN shape) on demand;
 * the lab API on 127.0.0.1:7070.
 */
import { createHash, randomBytes } from 'node:crypto';
import { setMaxListeners } from 'node:events';
import { chmodSync, existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify as toYaml } from 'yaml';
import { BaseService, sleep } from '../core/lifecycle.ts';
import { TandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { parseConfig, type Config } from '../core/config/index.ts';
import { ApiServer, callApi, type Route } from '../core/http.ts';
import { PostgresServer, assertReachable, postgresUserIds } from './postgres.ts';
import { WanProxy, WanState, type LinkShape } from './wan.ts';
import { Daemon, runOnce, type DaemonStatus } from './processes.ts';
import { LAB_API, LAB_PORTS, LAB_SERVICE, LAB_ZONE, labConfig, labRegions, regionOfAddress, type LabRegion } from './topology.ts';

/** The parts the lab starts; tests may leave some out. */
export interface LabParts {
  app: boolean;
  dns: boolean;
  replication: boolean;
  control: boolean;
  traffic: boolean;
  /** The live dashboard on the lab API's port. */
  dashboard: boolean;
}

export interface LabOptions {
  /** The lab folder: config, secrets, data, logs. */
  dir: string;
  regions: number;
  /** Wipe the lab folder first. */
  fresh?: boolean;
  parts?: Partial<LabParts>;
  api?: { host: string; port: number };
  logger: Logger;
  /** Called with each start-up step, for progress output. */
  onProgress?: (step: string) => void;
  /** Tables the reference service replicates (from the app kit). */
  replicatedTables: readonly string[];
  /** Extra environment for the daemons. */
  env?: Record<string, string>;
}

/** A region's runtime state. */
export type RegionState = 'starting' | 'up' | 'failed' | 'recovering';

interface RegionRuntime {
  region: LabRegion;
  state: RegionState;
  pg: PostgresServer | undefined;
  wan: WanProxy | undefined;
  daemons: Daemon[];
  failedAt?: string;
  recoveredAt?: string;
}

/** What `tandem lab status --json` and GET /v1/lab/status return. */
export interface LabStatus {
  state: 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';
  dir: string;
  config: string;
  api: string;
  supervisorPid: number;
  startedAt: string;
  readyAt?: string;
  progress: { at: string; step: string }[];
  zone: string;
  service: string;
  regions: {
    name: string;
    address: string;
    state: RegionState;
    failedAt?: string;
    recoveredAt?: string;
    postgres: { pid?: number; port: number; wanPort: number; dataDir: string };
    endpoints: { app: string; dns: string; dnsAdmin: string; agent: string; control: string };
    processes: DaemonStatus[];
  }[];
  wan: { shape: LinkShape; partitions: [string, string][] };
  parts: LabParts;
}

const DEFAULT_PARTS: LabParts = { app: true, dns: true, replication: true, control: true, traffic: true, dashboard: true };

/** Read a secret file of the lab, creating it with random content the first time. */
function ensureSecret(file: string, bytes = 24): string {
  if (!existsSync(file)) writeFileSync(file, `${randomBytes(bytes).toString('base64url')}\n`, { mode: 0o600 });
  return readFileSync(file, 'utf8').trim();
}

/** The paths of a lab folder. */
export function labPaths(dir: string) {
  const abs = path.resolve(dir);
  return {
    dir: abs,
    config: path.join(abs, 'tandem.yaml'),
    state: path.join(abs, 'lab.json'),
    logs: path.join(abs, 'logs'),
    secrets: path.join(abs, 'secrets'),
    adminToken: path.join(abs, 'secrets', 'admin-token'),
    pgPassword: path.join(abs, 'secrets', 'pg-password'),
    sessionKey: path.join(abs, 'secrets', 'session-key-1'),
    supervisorLog: path.join(abs, 'logs', 'supervisor.log'),
  };
}

/**
 * Where PostgreSQL data lives. As root, PostgreSQL runs as "postgres", which
 * may not reach a lab folder under /root; then the data goes under the
 * system's temp folder, in a place named after the lab folder.
 */
function pgDataRoot(labDir: string): string {
  const preferred = path.join(labDir, 'pgdata');
  const ids = postgresUserIds();
  if (!ids) return preferred;
  mkdirSync(preferred, { recursive: true });
  chmodSync(preferred, 0o755);
  try {
    assertReachable(preferred, ids);
    return preferred;
  } catch {
    const alt = altPgRoot(labDir);
    mkdirSync(alt, { recursive: true });
    chmodSync(alt, 0o755);
    return alt;
  }
}

function altPgRoot(labDir: string): string {
  return path.join(tmpdir(), `tandem-lab-${createHash('sha1').update(labDir).digest('hex').slice(0, 10)}`);
}

/** Remove a lab folder and, if it had to live elsewhere, its PostgreSQL data. */
export function wipeLab(dir: string): void {
  const abs = path.resolve(dir);
  rmSync(abs, { recursive: true, force: true });
  rmSync(altPgRoot(abs), { recursive: true, force: true });
}

/** The whole lab as one service. */
export class Lab extends BaseService {
  readonly name = 'lab';
  readonly paths: ReturnType<typeof labPaths>;
  readonly wan = new WanState();
  readonly parts: LabParts;
  readonly #opts: LabOptions;
  readonly #log: Logger;
  #regions: RegionRuntime[] = [];
  #config!: Config;
  #api: ApiServer | undefined;
  #labState: LabStatus['state'] = 'starting';
  #progress: { at: string; step: string }[] = [];
  #startedAt = new Date().toISOString();
  #readyAt: string | undefined;
  #pgRoot = '';
  #token = '';
  /** Serialises fault operations so a fail and a recover never interleave. */
  #ops: Promise<unknown> = Promise.resolve();
  #downRequested: (() => void) | undefined;
  #traffic: Promise<void> | undefined;
  #collector: import('../observe/collector.ts').Collector | undefined;
  readonly #trafficAc = new AbortController();
  /** Resolves when someone asks the lab to stop through its API. */
  readonly downRequested: Promise<void>;

  constructor(opts: LabOptions) {
    super();
    this.#opts = opts;
    this.#log = opts.logger;
    this.paths = labPaths(opts.dir);
    this.parts = { ...DEFAULT_PARTS, ...opts.parts };
    this.downRequested = new Promise((resolve) => (this.#downRequested = resolve));
  }

  get config(): Config {
    return this.#config;
  }

  get token(): string {
    return this.#token;
  }

  #step(step: string): void {
    this.#progress.push({ at: new Date().toISOString(), step });
    this.#log.info({ step }, 'lab');
    this.#opts.onProgress?.(step);
  }

  protected async onStart(signal?: AbortSignal): Promise<void> {
    const p = this.paths;
    if (this.#opts.fresh) {
      this.#step(`wiping ${p.dir}`);
      wipeLab(p.dir);
    }
    for (const d of [p.dir, p.logs, p.secrets]) mkdirSync(d, { recursive: true });
    chmodSync(p.secrets, 0o700);
    this.#token = ensureSecret(p.adminToken);
    ensureSecret(p.pgPassword);
    ensureSecret(p.sessionKey, 32);
    const regions = labRegions(this.#opts.regions);
    const configInput = labConfig({
      regions,
      dataDir: path.join(p.dir, 'state'),
      secrets: { adminTokenFile: p.adminToken, pgPasswordFile: p.pgPassword, sessionKeyFile: p.sessionKey },
      replicatedTables: this.#opts.replicatedTables,
    });
    this.#config = parseConfig(configInput, 'the generated lab config');
    writeFileSync(p.config, `# Generated by \`tandem lab up\`; edits are overwritten.\n${toYaml(configInput)}`);
    this.#pgRoot = pgDataRoot(p.dir);
    this.#regions = regions.map((region) => ({ region, state: 'starting', pg: undefined, wan: undefined, daemons: [] }));

    const apiAddr = this.#opts.api ?? LAB_API;
    const routes = this.#routes();
    if (this.parts.dashboard) {
      const { createDashboard } = await import('../observe/dashboard.ts');
      const dash = createDashboard({
        config: this.#config,
        token: this.#token,
        logger: this.#log.child({ part: 'dashboard' }),
        lab: { status: () => this.status(), api: `http://${apiAddr.host}:${apiAddr.port}` },
        reportsDir: path.join(p.dir, 'reports'),
      });
      this.#collector = dash.collector;
      routes.push(...dash.routes);
    }
    this.#api = new ApiServer({ name: 'lab-api', listen: apiAddr, token: this.#token, routes, logger: this.#log });
    await this.#api.start();
    await this.#collector?.start();
    this.#writeState();

    this.#step(`starting PostgreSQL in ${regions.length} regions`);
    await Promise.all(this.#regions.map((rt) => this.#startPostgres(rt)));
    signal?.throwIfAborted();
    this.#step('starting the WAN emulator (15 ms one way)');
    await Promise.all(this.#regions.map((rt) => this.#startWan(rt)));
    if (this.parts.app) {
      this.#step('migrating the reference service schema');
      await Promise.all(regions.map((r) => runOnce(['app', 'migrate', '-c', p.config, '--region', r.name], { logFile: this.#logFile(r.name, 'migrate'), env: this.#opts.env })));
    }
    if (this.parts.replication) {
      this.#step('setting up replication between every pair of regions');
      await runOnce(['replicate', 'setup', '-c', p.config], { logFile: path.join(p.logs, 'replicate-setup.log'), env: this.#opts.env });
    }
    signal?.throwIfAborted();
    this.#step('starting the daemons of every region');
    for (const rt of this.#regions) this.#startDaemons(rt);
    this.#writeState();
    await this.#waitReady(signal);
    for (const rt of this.#regions) rt.state = 'up';
    this.#labState = 'running';
    this.#readyAt = new Date().toISOString();
    this.#writeState();
    if (this.parts.traffic && this.parts.app && this.parts.dns) {
      this.#traffic = this.#runTraffic(this.#trafficAc.signal);
      this.#step('gentle synthetic traffic from every geography (2 operations/s each)');
    }
    this.#step('ready');
  }

  /**
   * The lab's gentle load: one synthetic client per geography, resolving the
   * service through the DNS servers with its ECS subnet, in 10-minute rounds
   * so the records do not pile up.
   */
  async #runTraffic(signal: AbortSignal): Promise<void> {
    const { runLoad } = await import('../service/load.ts');
    // Every request in flight listens on this signal; there are more than the default ten.
    setMaxListeners(0, signal);
    const dnsServers = this.#regions.map((rt) => ({ host: rt.region.address, port: LAB_PORTS.dns }));
    while (!signal.aborted) {
      try {
        await runLoad({
          serviceName: `${LAB_SERVICE}.${LAB_ZONE}`.replace(/\.$/, ''),
          dnsServers,
          port: LAB_PORTS.app,
          geos: this.#regions.map((rt) => ({ geo: rt.region.geo, ecs: rt.region.clientSubnets[0] })),
          ratePerSec: 2,
          writeRatio: 0.5,
          durationMs: 600_000,
          signal,
          maxAttempts: 3,
        });
      } catch (err) {
        if (!signal.aborted) this.#log.warn({ err }, 'lab traffic round failed');
        await sleep(1_000, signal).catch(() => {});
      }
    }
  }

  #logFile(region: string, kind: string): string {
    return path.join(this.paths.logs, `${region}-${kind}.log`);
  }

  async #startPostgres(rt: RegionRuntime): Promise<void> {
    const pg = new PostgresServer({
      dataDir: path.join(this.#pgRoot, rt.region.name),
      host: rt.region.address,
      port: LAB_PORTS.postgres,
      password: readFileSync(this.paths.pgPassword, 'utf8').trim(),
      database: 'tandem',
      // Faults in the lab are process kills; the page cache survives them (see postgres.ts).
      fsync: false,
      logFile: this.#logFile(rt.region.name, 'postgres'),
    });
    await pg.start();
    rt.pg = pg;
  }

  async #startWan(rt: RegionRuntime): Promise<void> {
    const regions = this.#regions.map((r) => r.region);
    const proxy = new WanProxy({
      region: rt.region.name,
      listen: { host: rt.region.address, port: LAB_PORTS.postgresWan },
      upstream: { host: rt.region.address, port: LAB_PORTS.postgres },
      state: this.wan,
      regionOf: (addr) => regionOfAddress(regions, addr),
      logger: this.#log,
    });
    await proxy.start();
    rt.wan = proxy;
  }

  #startDaemons(rt: RegionRuntime): void {
    const cfg = this.paths.config;
    const r = rt.region.name;
    const specs: { kind: string; args: string[]; on: boolean }[] = [
      { kind: 'app', args: ['app', 'serve', '-c', cfg, '--region', r], on: this.parts.app },
      { kind: 'dns', args: ['dns', 'serve', '-c', cfg, '--region', r], on: this.parts.dns },
      { kind: 'agent', args: ['replicate', 'run', '-c', cfg, '--region', r], on: this.parts.replication },
      { kind: 'control', args: ['control', 'run', '-c', cfg, '--region', r], on: this.parts.control },
    ];
    rt.daemons = specs
      .filter((s) => s.on)
      .map((s) => new Daemon({ kind: s.kind, region: r, args: s.args, logFile: this.#logFile(r, s.kind), env: this.#opts.env }, this.#log));
    for (const d of rt.daemons) d.start();
  }

  /** Wait until every started daemon answers (HTTP health of each). */
  async #waitReady(signal?: AbortSignal, regions = this.#regions): Promise<void> {
    const checks: { what: string; url: string; auth: boolean; daemon: Daemon | undefined }[] = [];
    for (const rt of regions) {
      const a = rt.region.address;
      const find = (kind: string) => rt.daemons.find((d) => d.spec.kind === kind);
      if (this.parts.app) checks.push({ what: `${rt.region.name} app`, url: `http://${a}:${LAB_PORTS.app}/healthz`, auth: false, daemon: find('app') });
      if (this.parts.dns) checks.push({ what: `${rt.region.name} dns`, url: `http://${a}:${LAB_PORTS.dnsAdmin}/healthz`, auth: false, daemon: find('dns') });
      if (this.parts.replication) checks.push({ what: `${rt.region.name} agent`, url: `http://${a}:${LAB_PORTS.agent}/v1/status`, auth: true, daemon: find('agent') });
      if (this.parts.control) checks.push({ what: `${rt.region.name} controller`, url: `http://${a}:${LAB_PORTS.control}/v1/status`, auth: true, daemon: find('control') });
    }
    const deadline = Date.now() + 90_000;
    await Promise.all(
      checks.map(async (c) => {
        for (;;) {
          signal?.throwIfAborted();
          try {
            await callApi(c.url, { token: c.auth ? this.#token : undefined, timeoutMs: 2_000 });
            return;
          } catch {
            if (Date.now() > deadline) {
              throw new TandemError('TANDEM_ERR_LAB', `${c.what} did not become ready at ${c.url}; its log:\n${c.daemon?.logTail(8) ?? ''}`);
            }
          }
          await sleep(250, signal);
        }
      }),
    );
  }

  #regionRt(name: string): RegionRuntime {
    const rt = this.#regions.find((r) => r.region.name === name);
    if (!rt) throw new TandemError('TANDEM_ERR_NOT_FOUND', `unknown lab region "${name}" (regions: ${this.#regions.map((r) => r.region.name).join(', ')})`);
    return rt;
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#ops.then(fn, fn);
    this.#ops = next.catch(() => {});
    return next;
  }

  /** SIGKILL every process of a region, PostgreSQL included. */
  failRegion(name: string): Promise<{ region: string; killed: number[] }> {
    return this.#serial(async () => {
      const rt = this.#regionRt(name);
      if (rt.state === 'failed') throw new TandemError('TANDEM_ERR_LAB', `region ${name} has already failed; recover it first`);
      const killed: number[] = [];
      for (const d of rt.daemons) if (d.pid) killed.push(d.pid);
      if (rt.pg?.pid) killed.push(rt.pg.pid);
      await Promise.all([...rt.daemons.map((d) => d.kill()), (async () => rt.pg?.kill())()]);
      await rt.pg?.exited();
      rt.state = 'failed';
      rt.failedAt = new Date().toISOString();
      this.#writeState();
      this.#log.warn({ region: name, killed }, 'lab: region failed (SIGKILL)');
      return { region: name, killed };
    });
  }

  /** Restart a failed region's PostgreSQL on the same data, then its daemons. */
  recoverRegion(name: string): Promise<{ region: string }> {
    return this.#serial(async () => {
      const rt = this.#regionRt(name);
      if (rt.state !== 'failed') throw new TandemError('TANDEM_ERR_LAB', `region ${name} is ${rt.state}, not failed`);
      rt.state = 'recovering';
      await this.#startPostgres(rt);
      this.#startDaemons(rt);
      this.#writeState();
      await this.#waitReady(undefined, [rt]);
      rt.state = 'up';
      rt.recoveredAt = new Date().toISOString();
      this.#writeState();
      this.#log.info({ region: name }, 'lab: region recovered');
      return { region: name };
    });
  }

  partition(a: string, b: string): void {
    this.#regionRt(a);
    this.#regionRt(b);
    if (a === b) throw new TandemError('TANDEM_ERR_USAGE', 'a partition needs two different regions');
    this.wan.partition(a, b);
    this.#log.warn({ a, b }, 'lab: partition');
  }

  heal(a?: string, b?: string): void {
    this.wan.heal(a, b);
    this.#log.info({ a, b }, 'lab: healed');
  }

  setWan(shape: Partial<LinkShape>, pair?: [string, string]): LinkShape {
    if (pair) {
      this.#regionRt(pair[0]);
      this.#regionRt(pair[1]);
    }
    this.wan.setShape(shape, pair);
    return pair ? this.wan.shape(...pair) : this.wan.defaultShape;
  }

  status(): LabStatus {
    const api = this.#opts.api ?? LAB_API;
    return {
      state: this.#labState,
      dir: this.paths.dir,
      config: this.paths.config,
      api: `http://${api.host}:${api.port}`,
      supervisorPid: process.pid,
      startedAt: this.#startedAt,
      ...(this.#readyAt ? { readyAt: this.#readyAt } : {}),
      progress: this.#progress,
      zone: LAB_ZONE,
      service: `${LAB_SERVICE}.${LAB_ZONE}`,
      regions: this.#regions.map((rt) => {
        const a = rt.region.address;
        return {
          name: rt.region.name,
          address: a,
          state: rt.state,
          ...(rt.failedAt ? { failedAt: rt.failedAt } : {}),
          ...(rt.recoveredAt ? { recoveredAt: rt.recoveredAt } : {}),
          postgres: { ...(rt.pg?.pid && rt.state !== 'failed' ? { pid: rt.pg.pid } : {}), port: LAB_PORTS.postgres, wanPort: LAB_PORTS.postgresWan, dataDir: path.join(this.#pgRoot, rt.region.name) },
          endpoints: {
            app: `http://${a}:${LAB_PORTS.app}`,
            dns: `${a}:${LAB_PORTS.dns}`,
            dnsAdmin: `http://${a}:${LAB_PORTS.dnsAdmin}`,
            agent: `http://${a}:${LAB_PORTS.agent}`,
            control: `http://${a}:${LAB_PORTS.control}`,
          },
          processes: rt.daemons.map((d) => d.status()),
        };
      }),
      wan: { shape: this.wan.defaultShape, partitions: this.wan.partitions },
      parts: this.parts,
    };
  }

  /** lab.json: what `tandem lab down` needs if the supervisor itself is gone (PIDs we started). */
  #writeState(): void {
    const tmp = `${this.paths.state}.tmp`;
    writeFileSync(tmp, JSON.stringify(this.status(), null, 2));
    renameSync(tmp, this.paths.state);
  }

  #routes(): Route[] {
    const regionParam = /^\/v1\/lab\/regions\/(?<region>[^/]+)\/(?<action>fail|recover)$/;
    return [
      { method: 'GET', path: '/v1/lab/status', public: true, handler: () => ({ body: this.status() }) },
      { method: 'GET', path: '/healthz', public: true, handler: () => ({ body: { status: this.#labState === 'running' ? 'ok' : this.#labState } }) },
      {
        method: 'POST',
        path: regionParam,
        handler: async ({ params }) => ({ body: params.action === 'fail' ? await this.failRegion(params.region!) : await this.recoverRegion(params.region!) }),
      },
      {
        method: 'POST',
        path: '/v1/lab/partition',
        handler: ({ body }) => {
          const b = body as { a?: string; b?: string } | undefined;
          if (!b?.a || !b?.b) throw new TandemError('TANDEM_ERR_USAGE', 'body must be {"a": "<region>", "b": "<region>"}');
          this.partition(b.a, b.b);
          return { body: { partitions: this.wan.partitions } };
        },
      },
      {
        method: 'POST',
        path: '/v1/lab/heal',
        handler: ({ body }) => {
          const b = (body ?? {}) as { a?: string; b?: string };
          this.heal(b.a, b.b);
          return { body: { partitions: this.wan.partitions } };
        },
      },
      {
        method: 'PUT',
        path: '/v1/lab/wan',
        handler: ({ body }) => ({ body: this.setWan(...parseWanBody(body)) }),
      },
      {
        method: 'POST',
        path: '/v1/lab/down',
        handler: () => {
          setImmediate(() => this.#downRequested?.());
          return { body: { stopping: true } };
        },
      },
    ];
  }

  protected async onStop(): Promise<void> {
    this.#labState = 'stopping';
    await this.#collector?.stop();
    this.#trafficAc.abort();
    await this.#traffic?.catch(() => {});
    await this.#ops.catch(() => {});
    await Promise.all(this.#regions.flatMap((rt) => rt.daemons.map((d) => d.stop())));
    await Promise.all(this.#regions.map((rt) => rt.wan?.stop()));
    await Promise.all(this.#regions.map((rt) => (rt.state === 'failed' ? undefined : rt.pg?.stop().catch(() => rt.pg?.kill()))));
    this.#labState = 'stopped';
    try {
      this.#writeState();
    } catch {
      // The folder may be gone.
    }
    await this.#api?.stop();
  }
}

/** Validate a WAN body: `{ latencyMs?, jitterMs?, loss?, bandwidthBytesPerSec?, a?, b? }`. */
export function parseWanBody(body: unknown): [Partial<LinkShape>, [string, string] | undefined] {
  if (body === null || typeof body !== 'object') throw new TandemError('TANDEM_ERR_USAGE', 'body must be a JSON object');
  const b = body as Record<string, unknown>;
  const shape: Partial<LinkShape> = {};
  const num = (key: keyof LinkShape, max: number) => {
    const v = b[key];
    if (v === undefined) return;
    if (typeof v !== 'number' || !Number.isFinite(v) || v < 0 || v > max) throw new TandemError('TANDEM_ERR_USAGE', `${key} must be a number between 0 and ${max}, found ${JSON.stringify(v)}`);
    shape[key] = v;
  };
  num('latencyMs', 10_000);
  num('jitterMs', 10_000);
  num('loss', 1);
  num('bandwidthBytesPerSec', 10_000_000_000);
  const pair = typeof b.a === 'string' && typeof b.b === 'string' ? ([b.a, b.b] as [string, string]) : undefined;
  return [shape, pair];
}
