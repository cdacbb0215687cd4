/**
 * DR drills: inject a fault (region outage, partition, WAN degradation,
 * outage + failback) while synthetic clients in every geography resolve the
 * service through DNS and write and read at a steady rate; watch the
 * controllers and the DNS servers; then measure detection, DNS switch,
 * per-geography RTO, RPO, failback time, and prove convergence (identical
 * regions, every acknowledged write present exactly once).
 */
import { spawn } from 'node:child_process';
import { setMaxListeners } from 'node:events';
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import type { Config, RegionConfig } from '../core/config/index.ts';
import { localDatabase } from '../core/config/index.ts';
import { TandemError } from '../core/errors.ts';
import { callApi } from '../core/http.ts';
import { sleep } from '../core/lifecycle.ts';
import type { Logger } from '../core/log.ts';
import { connectClient } from '../core/pg.ts';
import { queryA } from '../dns/client.ts';
import { runLoad, type GeoClient, type LoadRecord } from '../service/load.ts';
import type { ControllerStatus } from '../control/controller.ts';
import type { LinkShape } from '../lab/wan.ts';
import { acknowledgedWrites, bucketize, homeAgainAt, computeRpo, percentile, recoveryTimeMs, servingRegion, type Marker, type RequestRecord } from './analysis.ts';
import type { BoundCheck, DrillReport } from './report.ts';

export const SCENARIOS = ['region-outage', 'partition', 'wan-degradation', 'failback'] as const;
export type Scenario = (typeof SCENARIOS)[number];

/** How faults are injected: the lab's API, or the operator's own commands. */
export type FaultTarget =
  | { kind: 'lab'; api: string; token: string }
  | { kind: 'external'; inject: string; restore: string };

/** One synthetic client population and the region its users should reach first. */
export interface DrillGeo extends GeoClient {
  ecs: string;
  homeRegion?: string;
}

export interface DrillOptions {
  scenario: Scenario;
  config: Config;
  target: FaultTarget;
  /** The region to fail (outage, failback) or the two to partition. */
  regions: string[];
  geos: DrillGeo[];
  /** Operations per second per geography. */
  ratePerSec: number;
  /** Traffic before the fault. */
  warmupSec: number;
  /** How long the fault lasts after the service recovered (outage) or in all (partition, WAN). */
  holdSec: number;
  /** Traffic after the recovery. */
  settleSec: number;
  /** Let clients reach non-loopback addresses (a drill against a real deployment). */
  allowRemote?: boolean;
  /** The WAN shape for `wan-degradation`. */
  degradation?: Partial<LinkShape>;
  token: string | undefined;
  logger: Logger;
  onProgress?: (line: string) => void;
  signal?: AbortSignal;
}

/** What a scenario measured besides the request records. */
interface ScenarioResult {
  fault: Marker;
  /** The end of the window in which RTO is measured (before any recovery starts). */
  recoveredUntil: number;
  rpoProbe?: Promise<DrillReport['results']['rpo']>;
  restore?: Marker;
  failback?: Marker;
  dnsSwitch?: Marker;
  dnsBack?: Marker;
}

interface ObservedEvent {
  at: number;
  region: string;
  kind: string;
  message: string;
}

/** Reads controllers and DNS servers every 250 ms while the drill runs. */
class Watcher {
  events = new Map<string, ObservedEvent>();
  maxLagSec = 0;
  /** Last status per controller region. */
  statuses = new Map<string, ControllerStatus>();
  /** For each DNS server: does its answer to `geo` contain `address`? Time of each change. */
  #timer: NodeJS.Timeout | undefined;
  #busy = false;

  constructor(private readonly config: Config) {}

  start(): void {
    this.#timer = setInterval(() => void this.poll(), 250);
  }

  stop(): void {
    clearInterval(this.#timer);
  }

  async poll(): Promise<void> {
    if (this.#busy) return;
    this.#busy = true;
    try {
      await Promise.all(
        this.config.regions.map(async (r) => {
          if (!r.control) return;
          try {
            const s = await callApi<ControllerStatus>(`http://${r.control.listen.host}:${r.control.listen.port}/v1/status`, { timeoutMs: 1_000 });
            this.statuses.set(r.name, s);
            for (const e of s.events) this.events.set(`${e.region}|${e.kind}|${e.at}`, { at: e.at, region: e.region, kind: e.kind, message: e.message });
            for (const reg of s.regions) for (const l of Object.values(reg.lagFrom ?? {})) if (reg.phase === 'serving') this.maxLagSec = Math.max(this.maxLagSec, l);
          } catch {
            // A failed region's controller is gone; the others report.
          }
        }),
      );
    } finally {
      this.#busy = false;
    }
  }

  /** The first event of `kind` for `region` at or after `since`. */
  first(region: string, kind: string, since: number): ObservedEvent | undefined {
    return [...this.events.values()].filter((e) => e.region === region && e.kind === kind && e.at >= since).sort((a, b) => a.at - b.at)[0];
  }
}

/** Run a shell command of the operator's (external target), failing with its output. */
function shell(cmd: string, env: Record<string, string>): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', cmd], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), 300_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      if (code === 0) resolve();
      else reject(new TandemError('TANDEM_ERR_DRILL', `command failed (exit ${code}): ${cmd}\n${out.trim().slice(-2000)}`));
    });
  });
}

/** A drill against the lab or a real deployment. */
export class Drill {
  readonly #o: DrillOptions;
  readonly #markers: Marker[] = [];
  readonly #records: LoadRecord[] = [];
  readonly #notes: string[] = [];
  readonly #watcher: Watcher;
  readonly #id = `${new Date().toISOString().replace(/[:.]/g, '-')}-${randomBytes(3).toString('hex')}`;
  #startedAt = 0;

  constructor(o: DrillOptions) {
    this.#o = o;
    this.#watcher = new Watcher(o.config);
    const names = o.config.regions.map((r) => r.name);
    for (const r of o.regions) {
      if (!names.includes(r)) throw new TandemError('TANDEM_ERR_USAGE', `unknown region "${r}" (known: ${names.join(', ')})`);
    }
    const need = o.scenario === 'partition' ? 2 : 1;
    if (o.regions.length !== need) {
      throw new TandemError('TANDEM_ERR_USAGE', `${o.scenario} takes ${need === 2 ? 'two regions (--region a --region b)' : 'one region (--region <name>)'}, found ${o.regions.length}`);
    }
    if (o.geos.length === 0) throw new TandemError('TANDEM_ERR_USAGE', 'a drill needs at least one client geography');
  }

  get id(): string {
    return this.#id;
  }

  #mark(name: string, detail?: string, at = Date.now()): Marker {
    const m = { name, at, ...(detail ? { detail } : {}) };
    this.#markers.push(m);
    this.#o.onProgress?.(`+${((at - this.#startedAt) / 1000).toFixed(1).padStart(6)} s  ${name}${detail ? `: ${detail}` : ''}`);
    return m;
  }

  #progress(line: string): void {
    this.#o.onProgress?.(`+${((Date.now() - this.#startedAt) / 1000).toFixed(1).padStart(6)} s  ${line}`);
  }

  #region(name: string): RegionConfig {
    return this.#o.config.regions.find((r) => r.name === name)!;
  }

  /** The database connection the drill uses to check a region (the lab: direct; elsewhere: as peers reach it). */
  async #db(r: RegionConfig): Promise<pg.Client> {
    const conn = this.#o.target.kind === 'lab' ? localDatabase(r) : r.database;
    const c = await connectClient(conn, { applicationName: 'tandem-drill' }, `regions[${r.name}].database`);
    await c.query("SET statement_timeout = '20s'");
    return c;
  }

  async #fault(action: 'inject' | 'restore'): Promise<void> {
    const o = this.#o;
    const t = o.target;
    if (t.kind === 'external') {
      await shell(action === 'inject' ? t.inject : t.restore, { TANDEM_DRILL_SCENARIO: o.scenario, TANDEM_DRILL_REGIONS: o.regions.join(',') });
      return;
    }
    const call = (method: string, route: string, body?: unknown) => callApi(`${t.api}${route}`, { method, token: t.token, body, actor: 'drill', timeoutMs: 180_000 });
    const [a, b] = o.regions as [string, string | undefined];
    switch (o.scenario) {
      case 'region-outage':
      case 'failback':
        await call('POST', `/v1/lab/regions/${encodeURIComponent(a)}/${action === 'inject' ? 'fail' : 'recover'}`);
        break;
      case 'partition':
        await call('POST', action === 'inject' ? '/v1/lab/partition' : '/v1/lab/heal', action === 'inject' ? { a, b } : { a, b });
        break;
      case 'wan-degradation': {
        if (action === 'inject') {
          const status = await callApi<{ wan: { shape: LinkShape } }>(`${t.api}/v1/lab/status`);
          this.#savedShape = status.wan.shape;
          await call('PUT', '/v1/lab/wan', { latencyMs: 150, jitterMs: 50, loss: 0.02, ...o.degradation });
        } else {
          await call('PUT', '/v1/lab/wan', this.#savedShape ?? { latencyMs: 15, jitterMs: 2, loss: 0, bandwidthBytesPerSec: 0 });
        }
        break;
      }
    }
  }
  #savedShape: LinkShape | undefined;

  /** Which of the DNS servers (by region) answer `geo`'s subnet with `address`. */
  async #dnsIncludes(servers: RegionConfig[], ecs: string, address: string): Promise<boolean[]> {
    const zone = this.#o.config.dns?.zone.replace(/\.$/, '') ?? '';
    const name = `${this.#o.config.dns?.services[0]?.name ?? 'app'}.${zone}`;
    return Promise.all(
      servers.map(async (r) => {
        const l = r.dns?.listen[0];
        if (!l) return false;
        try {
          const a = await queryA(l, name, { ecs, timeoutMs: 500 });
          return a.addresses.includes(address);
        } catch {
          return false;
        }
      }),
    );
  }

  async #waitFor<T>(what: string, timeoutMs: number, fn: () => Promise<T | undefined> | T | undefined): Promise<T | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      this.#o.signal?.throwIfAborted();
      const v = await fn();
      if (v !== undefined) return v;
      await sleep(200, this.#o.signal);
    }
    this.#notes.push(`gave up waiting for ${what} after ${(timeoutMs / 1000).toFixed(0)} s`);
    this.#progress(`gave up waiting for ${what}`);
    return undefined;
  }

  /** Everything serving before we start: a drill from a broken state measures nothing. */
  async #preflight(): Promise<void> {
    await this.#watcher.poll();
    const statuses = [...this.#watcher.statuses.values()];
    if (statuses.length === 0) {
      this.#notes.push('no controller answered: detection and failback times come from DNS only');
      return;
    }
    const leader = statuses.find((s) => s.isLeader) ?? statuses[0]!;
    const notServing = leader.regions.filter((r) => r.phase !== 'serving');
    if (notServing.length) {
      throw new TandemError('TANDEM_ERR_DRILL', `not every region is serving before the drill: ${notServing.map((r) => `${r.name} is ${r.phase}`).join(', ')}; wait or fail back first`);
    }
  }

  async run(): Promise<DrillReport> {
    const o = this.#o;
    this.#startedAt = Date.now();
    this.#watcher.start();
    const loadAc = new AbortController();
    // Every request in flight listens on this signal; there are more than the default ten.
    setMaxListeners(0, loadAc.signal);
    const onAbort = () => loadAc.abort(o.signal?.reason);
    o.signal?.addEventListener('abort', onAbort, { once: true });
    let load: ReturnType<typeof runLoad> | undefined;
    try {
      await this.#preflight();
      const first = o.config.regions[0]!;
      const port = first.app?.listen.port ?? 80;
      load = runLoad({
        serviceName: `${o.config.dns?.services[0]?.name ?? 'app'}.${o.config.dns?.zone.replace(/\.$/, '') ?? ''}`,
        dnsServers: o.config.regions.filter((r) => r.dns).map((r) => r.dns!.listen[0]!),
        port,
        geos: o.geos,
        ratePerSec: o.ratePerSec,
        writeRatio: 0.5,
        durationMs: 3_600_000,
        signal: loadAc.signal,
        maxAttempts: 20,
        retryDelayMs: 250,
        onRecord: (r) => this.#records.push(r),
        loopbackOnly: !o.allowRemote,
      });
      load.catch(() => {});
      this.#mark('traffic started', `${o.geos.length} geographies × ${o.ratePerSec} operations/s`);
      await sleep(o.warmupSec * 1000, o.signal);
      const measure = await this.#scenario();
      this.#mark('traffic stopping');
      loadAc.abort(new Error('drill finished'));
      await load.catch(() => {});
      return await this.#finish(measure);
    } finally {
      loadAc.abort();
      this.#watcher.stop();
      o.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** The fault and its recovery; returns what only the scenario knows. */
  async #scenario(): Promise<ScenarioResult> {
    const o = this.#o;
    const ttlMs = (o.config.dns?.services[0]?.ttlSec ?? o.config.dns?.ttlSec ?? 60) * 1000;
    if (o.scenario === 'region-outage' || o.scenario === 'failback') {
      const failed = this.#region(o.regions[0]!);
      const survivors = o.config.regions.filter((r) => r.name !== failed.name);
      const homeGeo = o.geos.find((g) => g.homeRegion === failed.name) ?? o.geos[0]!;
      const address = failed.addresses[0]!;
      const fault = this.#mark('fault injected', `${failed.name} fails (${o.target.kind === 'lab' ? 'SIGKILL of every process' : 'inject command'})`);
      await this.#fault('inject');
      const rpoProbe = sleep(1_000).then(() => this.#rpoAtFailure(failed, survivors, fault.at));
      rpoProbe.catch(() => {});
      const dnsSwitch = await this.#waitFor('DNS to stop answering with the failed region', Math.max(60_000, o.config.control.rtoSec * 2_000), async () => {
        const inc = await this.#dnsIncludes(survivors, homeGeo.ecs, address);
        return inc.every((x) => !x) ? this.#mark('DNS switched', `${survivors.map((s) => s.name).join(', ')} answer ${homeGeo.geo} without ${address}`) : undefined;
      });
      // Every geography gets a TTL to move plus the hold, so its RTO can be seen.
      await sleep(ttlMs + o.holdSec * 1000, o.signal);
      const recoveredUntil = Date.now();
      const restore = this.#mark(o.scenario === 'failback' ? 'recovery started' : 'restoring (cleanup)', `${failed.name} restarts on its data`);
      await this.#fault('restore');
      this.#mark('region restarted', failed.name);
      const failbackEvent = await this.#waitFor('the controller to fail back', 180_000, () => this.#watcher.first(failed.name, 'failed-back', restore.at));
      const failback = failbackEvent ? this.#mark('failed back', failbackEvent.message, failbackEvent.at) : undefined;
      const dnsBack = await this.#waitFor('DNS to answer with the region again', 60_000, async () => {
        const inc = await this.#dnsIncludes(o.config.regions, homeGeo.ecs, address);
        return inc.every(Boolean) ? this.#mark('DNS back', `every DNS server answers ${homeGeo.geo} with ${address}`) : undefined;
      });
      // Clients hold the survivor's answer for up to a TTL: wait that long too, so the report shows them coming home.
      await sleep((o.scenario === 'failback' ? ttlMs : 0) + o.settleSec * 1000, o.signal);
      return { fault, recoveredUntil, rpoProbe, restore, ...(failback ? { failback } : {}), ...(dnsSwitch ? { dnsSwitch } : {}), ...(dnsBack ? { dnsBack } : {}) };
    }
    const what = o.scenario === 'partition' ? `partition ${o.regions.join(' | ')}` : 'WAN degraded (150 ms ± 50 ms, 2 % loss)';
    const fault = this.#mark('fault injected', what);
    await this.#fault('inject');
    await sleep(o.holdSec * 1000, o.signal);
    const recoveredUntil = Date.now();
    const restore = this.#mark(o.scenario === 'partition' ? 'healed' : 'WAN restored');
    await this.#fault('restore');
    await sleep(o.settleSec * 1000, o.signal);
    return { fault, recoveredUntil, restore };
  }

  /** Which acknowledged writes of the failed region each survivor had just after the failure. */
  async #rpoAtFailure(failed: RegionConfig, survivors: RegionConfig[], faultAt: number): Promise<DrillReport['results']['rpo']> {
    const writes = acknowledgedWrites(this.#asRequests()).filter((w) => w.region === failed.name && w.ackAt <= faultAt);
    let worst: DrillReport['results']['rpo'] = null;
    for (const s of survivors) {
      const c = await this.#db(s);
      try {
        const { rows } = await c.query<{ id: string }>('SELECT id::text AS id FROM shop.orders WHERE id = ANY($1::uuid[])', [writes.map((w) => w.orderId)]);
        const r = { ...computeRpo(writes, failed.name, faultAt, new Set(rows.map((x) => x.id))), survivor: s.name };
        if (!worst || r.rpoSec > worst.rpoSec || r.missing.length > worst.missing.length) worst = r;
      } finally {
        await c.end();
      }
    }
    return worst;
  }

  /** Load records as the analysis reads them: finish time, aborted attempts left out. */
  #asRequests(): RequestRecord[] {
    return this.#records
      .filter((r) => r.error !== 'aborted')
      .map((r) => ({
        t: r.t + r.latencyMs,
        geo: r.geo,
        op: r.op,
        key: r.key,
        ...(r.orderId ? { orderId: r.orderId } : {}),
        ...(r.region ? { region: r.region } : {}),
        status: r.status,
        ok: r.ok,
        acknowledged: r.acknowledged,
        latencyMs: r.latencyMs,
        ...(r.error ? { error: r.error } : {}),
      }));
  }

  /** Wait for replication to catch up, then check convergence and collect conflicts. */
  async #convergence(): Promise<{ convergence: DrillReport['results']['convergence']; conflicts: DrillReport['results']['conflicts'] }> {
    const o = this.#o;
    const readiness = o.config.control.readinessLagSec;
    await this.#waitFor('replication to catch up', 120_000, async () => {
      await this.#watcher.poll();
      const s = [...this.#watcher.statuses.values()].find((x) => x.isLeader);
      if (!s) return true;
      const lags = s.regions.flatMap((r) => Object.values(r.lagFrom ?? {}));
      return lags.length > 0 && lags.every((l) => l <= readiness) ? true : undefined;
    });
    // Heartbeats flow every second or so; give the last writes time to land everywhere.
    await sleep(Math.max(2_000, readiness * 1000));
    const writes = acknowledgedWrites(this.#asRequests());
    const ids = writes.map((w) => w.orderId);
    const acknowledgedMissing: { region: string; orderId: string; key: string }[] = [];
    let duplicates = 0;
    const byKind: Record<string, number> = {};
    let total = 0;
    for (const r of o.config.regions) {
      const c = await this.#db(r);
      try {
        const { rows } = await c.query<{ id: string }>('SELECT id::text AS id FROM shop.orders WHERE id = ANY($1::uuid[])', [ids]);
        const have = new Set(rows.map((x) => x.id));
        for (const w of writes) if (!have.has(w.orderId)) acknowledgedMissing.push({ region: r.name, orderId: w.orderId, key: w.key });
        const dup = await c.query<{ n: number }>(
          'SELECT count(*)::int AS n FROM (SELECT idempotency_key FROM shop.orders WHERE idempotency_key = ANY($1) GROUP BY client_scope, idempotency_key HAVING count(*) > 1) d',
          [writes.map((w) => w.key)],
        );
        duplicates += dup.rows[0]!.n;
        const conflicts = await c
          .query<{ kind: string; n: number }>('SELECT kind, count(*)::int AS n FROM tandem.conflicts WHERE at >= $1 GROUP BY kind', [new Date(this.#startedAt)])
          .catch(() => ({ rows: [] as { kind: string; n: number }[] }));
        for (const row of conflicts.rows) {
          byKind[row.kind] = (byKind[row.kind] ?? 0) + row.n;
          total += row.n;
        }
      } finally {
        await c.end();
      }
    }
    let identical: boolean | null = null;
    let differences = 0;
    let detail: string | undefined;
    try {
      const { verifyTables, formatKey } = await import('../replication/verify.ts');
      const names = o.config.regions.map((r) => r.name);
      identical = true;
      for (const other of names.slice(1)) {
        // Writes still in flight would show up as differences; read differing keys again before reporting.
        const rep = await verifyTables({ config: o.config, regions: [names[0]!, other], useLocal: o.target.kind === 'lab', recheckDelayMs: 1_000 });
        differences += rep.differences.length;
        if (rep.differences.length) {
          identical = false;
          detail = `${names[0]} vs ${other}: ${rep.differences.slice(0, 5).map((d) => `${d.table} ${formatKey(d.key)} ${d.kind}${d.detail ? ` (${d.detail})` : ''}`).join('; ')}`;
        }
      }
    } catch (err) {
      identical = null;
      detail = `verify could not run: ${(err as Error).message}`;
      this.#notes.push(detail);
    }
    return { convergence: { identical, differences, acknowledgedMissing, duplicates, ...(detail ? { detail } : {}) }, conflicts: { total, byKind } };
  }

  async #finish(m: ScenarioResult): Promise<DrillReport> {
    const o = this.#o;
    this.#mark('checking convergence');
    const { convergence, conflicts } = await this.#convergence();
    const finishedAt = Date.now();
    const requests = this.#asRequests();
    const series = bucketize(requests, this.#startedAt, finishedAt);
    const failedRegion = o.scenario === 'region-outage' || o.scenario === 'failback' ? o.regions[0] : undefined;
    const rtoByGeo: DrillReport['results']['rtoByGeo'] = {};
    for (const g of o.geos) {
      const b = series[g.geo] ?? [];
      const ms = recoveryTimeMs(b, m.fault.at, m.recoveredUntil);
      rtoByGeo[g.geo] = {
        sec: ms === undefined ? null : ms / 1000,
        ...(servingRegion(b, this.#startedAt, m.fault.at) ? { servedBefore: servingRegion(b, this.#startedAt, m.fault.at) } : {}),
        ...(servingRegion(b, m.fault.at + 1, m.recoveredUntil) ? { servedDuring: servingRegion(b, m.fault.at + 1, m.recoveredUntil) } : {}),
        ...(m.restore && servingRegion(b, m.restore.at, finishedAt) ? { servedAfter: servingRegion(b, m.restore.at, finishedAt) } : {}),
      };
    }
    const rtoValues = Object.values(rtoByGeo).map((v) => v.sec);
    const rtoSec = rtoValues.some((v) => v === null) ? null : Math.max(0, ...(rtoValues as number[]));
    const rpo = m.rpoProbe ? await m.rpoProbe.catch((err) => {
      this.#notes.push(`RPO check failed: ${(err as Error).message}`);
      return null;
    }) : null;
    const detection = failedRegion ? this.#watcher.first(failedRegion, 'confirmed', m.fault.at) : undefined;
    if (detection) this.#markers.push({ name: 'detected', at: detection.at, detail: detection.message });
    const drained = failedRegion ? this.#watcher.first(failedRegion, 'drained', m.fault.at) : undefined;
    if (drained) this.#markers.push({ name: 'drained', at: drained.at, detail: drained.message });
    this.#markers.sort((a, b) => a.at - b.at);
    const sec = (x: Marker | { at: number } | undefined, from: number | undefined) => (x && from !== undefined ? (x.at - from) / 1000 : null);
    const byGeo: DrillReport['results']['requests']['byGeo'] = {};
    for (const g of o.geos) {
      const rs = requests.filter((r) => r.geo === g.geo);
      const lat = rs.filter((r) => r.status).map((r) => r.latencyMs);
      byGeo[g.geo] = { total: rs.length, ok: rs.filter((r) => r.ok).length, ...(lat.length ? { p50Ms: percentile(lat, 50)!, p99Ms: percentile(lat, 99)! } : {}) };
    }
    const c = o.config.control;
    const bounds: BoundCheck[] = [
      { name: 'RTO (worst geography, s)', bound: c.rtoSec, value: rtoSec, ok: rtoSec !== null && rtoSec <= c.rtoSec },
      ...(rpo !== undefined && failedRegion ? [{ name: 'RPO (oldest acknowledged write missing at the failure, s)', bound: c.rpoSec, value: rpo?.rpoSec ?? null, ok: rpo !== null && rpo.rpoSec <= c.rpoSec }] : []),
      { name: 'acknowledged writes lost after recovery', bound: 0, value: convergence.acknowledgedMissing.length, ok: convergence.acknowledgedMissing.length === 0 },
      { name: 'duplicate orders for one idempotency key', bound: 0, value: convergence.duplicates, ok: convergence.duplicates === 0 },
      { name: 'regions identical after recovery (tandem verify)', bound: 'identical', value: convergence.identical === null ? 'not checked' : convergence.identical ? 'identical' : `${convergence.differences} differences`, ok: convergence.identical === true },
    ];
    if (o.scenario === 'failback') {
      const fb = sec(m.failback, m.restore?.at);
      bounds.push({ name: 'failback completed (s after recovery started)', bound: 'done', value: fb, ok: fb !== null });
    }
    const ttlSec = o.config.dns?.services[0]?.ttlSec ?? o.config.dns?.ttlSec ?? 60;
    // After a failback: when the failed region's home geography was served by it again (clients wait out the TTL).
    const homeGeo = failedRegion ? o.geos.find((g) => g.homeRegion === failedRegion) : undefined;
    const home = o.scenario === 'failback' && homeGeo && m.dnsBack ? homeAgainAt(series[homeGeo.geo] ?? [], failedRegion!, m.dnsBack.at, finishedAt) : undefined;
    if (home !== undefined) this.#markers.push({ name: 'traffic home', at: home, detail: `${homeGeo!.geo} served by ${failedRegion} again` });
    this.#markers.sort((a, b) => a.at - b.at);
    const report: DrillReport = {
      id: this.#id,
      scenario: o.scenario,
      target: o.target.kind,
      startedAt: new Date(this.#startedAt).toISOString(),
      finishedAt: new Date(finishedAt).toISOString(),
      regions: o.config.regions.map((r) => r.name),
      ...(failedRegion ? { failedRegion } : {}),
      ...(o.scenario === 'partition' ? { partition: [o.regions[0]!, o.regions[1]!] as [string, string] } : {}),
      settings: {
        ttlSec,
        probeIntervalMs: o.config.health.intervalMs,
        failThreshold: o.config.health.failThreshold,
        rtoBoundSec: c.rtoSec,
        rpoBoundSec: c.rpoSec,
        ratePerSecPerGeo: o.ratePerSec,
        geos: o.geos.map((g) => ({ name: g.geo, ecs: g.ecs, ...(g.homeRegion ? { homeRegion: g.homeRegion } : {}) })),
      },
      markers: this.#markers.map((mk) => ({ ...mk, iso: new Date(mk.at).toISOString(), offsetSec: (mk.at - this.#startedAt) / 1000 })),
      results: {
        detectionSec: sec(detection, m.fault.at),
        dnsSwitchSec: sec(m.dnsSwitch, m.fault.at),
        rtoSec,
        rtoByGeo,
        rpo: failedRegion ? rpo : null,
        failbackSec: sec(m.failback, m.restore?.at),
        dnsBackSec: sec(m.dnsBack, m.restore?.at),
        trafficHomeSec: home === undefined ? null : sec({ at: home }, m.restore?.at),
        requests: {
          total: requests.length,
          ok: requests.filter((r) => r.ok).length,
          failed: requests.filter((r) => !r.ok).length,
          acknowledgedWrites: acknowledgedWrites(requests).length,
          byGeo,
        },
        convergence,
        conflicts,
        maxLagSec: this.#watcher.maxLagSec || null,
      },
      bounds,
      passed: bounds.every((b) => b.ok),
      series,
      notes: this.#notes,
    };
    return report;
  }
}

/** The lab's client geographies: the first ECS subnet of each lab region's geography. */
export function labGeos(config: Config, regions: readonly { name: string; geo: string; clientSubnets: readonly string[] }[]): DrillGeo[] {
  return regions
    .filter((r) => config.regions.some((c) => c.name === r.name))
    .map((r) => ({ geo: r.geo, ecs: r.clientSubnets[0]!, homeRegion: r.name, clientId: `drill-${r.geo}` }));
}

