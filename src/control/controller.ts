/**
 * The failover controller of one region: every tick it reads every DNS
 * server's health view (the vantage points) and every region's replication
 * lag, runs the runbook, and — when it is the leader — carries out its
 * decisions on all DNS servers, writes the audit log and notifies.
 *
 * Leadership: the first region in config order whose controller answers and
 * which is in rotation leads; the others watch and mirror. Only the leader
 * changes DNS, and operators' commands are forwarded to it, so there is one
 * writer.
 */
import path from 'node:path';
import { Gauge, Counter, Histogram, type Registry } from 'prom-client';
import { BaseService, sleep } from '../core/lifecycle.ts';
import { TandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { Config, RegionConfig } from '../core/config/index.ts';
import { ApiServer, callApi, type Route } from '../core/http.ts';
import { WebhookNotifier } from '../core/notify.ts';
import { AuditLog, type AuditEntry } from './audit.ts';
import { Runbook, inRotation, quorumSince, type Observation, type PeerLagObservation, type RegionObservation, type RunbookEvent } from './runbook.ts';
import { statusPage } from './page.ts';

/** A region's replication from each peer: seconds behind, and the source commit time (ms) of the last change applied. */
export type RegionLag = Record<string, { lagSec: number; sourceCommitAt: number | undefined }>;

/** Reads a region's lag from its database; undefined when unreadable. */
export type LagReader = (region: RegionConfig) => Promise<RegionLag | undefined>;

/** How much lag history the controller keeps per direction (for the cutover check). */
const LAG_HISTORY_MS = 120_000;
/** The window before a failure whose worst lag is "the lag at the failure". */
const PRE_FAILURE_WINDOW_MS = 30_000;

/** The part of a DNS server's `GET /v1/state` the controller reads. */
export interface DnsStateView {
  region: string;
  regions: { name: string; health: { state: 'unknown' | 'healthy' | 'unhealthy'; since: string }; drained: boolean; drainReason?: string }[];
}

export interface ControllerOptions {
  config: Config;
  region: string;
  token: string | undefined;
  logger: Logger;
  registry?: Registry;
  lag: LagReader;
  /** Tick period; default half the probe interval (at least 250 ms). */
  tickMs?: number;
}

/** Set on an operator command one controller forwards to the leader. */
const FORWARDED_HEADER = 'x-tandem-forwarded-by';
const forwarded = (req: { headers: Record<string, string | string[] | undefined> }): boolean => req.headers[FORWARDED_HEADER] !== undefined;

/** A DNS admin call of the controller's enforcement that failed. */
interface DnsCallFailure {
  server: string;
  target: string;
  action: 'drain' | 'undrain';
  error: string;
}

/** What `GET /v1/status` returns. */
export interface ControllerStatus {
  region: string;
  leader: string | undefined;
  isLeader: boolean;
  at: string;
  rpoSec: number;
  rtoSec: number;
  readinessLagSec: number;
  regions: {
    name: string;
    phase: string;
    since: string;
    drainedBy?: string;
    inRotation: boolean;
    votesUnhealthy: number;
    votesHealthy: number;
    dnsDrained: Record<string, boolean>;
    lagFrom?: Record<string, number>;
    failure?: Record<string, unknown>;
  }[];
  events: (RunbookEvent & { iso: string })[];
  vantagePoints: { region: string; reachable: boolean; error?: string }[];
}

const CONTROLLER_REASON = 'tandem-controller';
const AUTO_DRAIN = /^tandem-controller \([^)]*\): auto:/;
const AUDITED: RunbookEvent['kind'][] = ['confirmed', 'drained', 'drain-refused', 'rpo-breach', 'awaiting-operator', 'ready', 'failed-back', 'relapsed'];
const NOTIFIED: RunbookEvent['kind'][] = ['drained', 'drain-refused', 'rpo-breach', 'awaiting-operator', 'failed-back'];

/** The controller daemon of one region. */
export class Controller extends BaseService {
  readonly name: string;
  readonly #o: ControllerOptions;
  readonly #log: Logger;
  readonly #runbook: Runbook;
  /** Unhealthy votes that confirm a failure. */
  readonly #quorum: number;
  readonly #audit: AuditLog;
  readonly #notifier: WebhookNotifier;
  readonly #me: RegionConfig;
  #api: ApiServer | undefined;
  #loop: Promise<void> | undefined;
  #ac = new AbortController();
  #events: RunbookEvent[] = [];
  #lastObservation: Observation | undefined;
  #dnsViews = new Map<string, DnsStateView | Error>();
  /** What the other controllers said this tick (undefined: no answer). */
  #peerControllers = new Map<string, { isLeader: boolean } | undefined>();
  #leader: string | undefined;
  #wasLeading = false;
  /** Lag samples per direction ("target<peer"), for the cutover check. */
  #lagHistory = new Map<string, { t: number; lagSec: number }[]>();
  /** DNS servers that answered at least once. */
  #answered = new Set<string>();
  readonly #startedAt = Date.now();
  #synced = false;
  /** Undrains that did not reach every DNS server yet. */
  #pendingUndrain = new Set<string>();
  #ops: Promise<unknown> = Promise.resolve();
  readonly #metrics: { phase: Gauge; leader: Gauge; failovers: Counter; auditErrors: Counter; failoverSeconds: Histogram } | undefined;

  constructor(o: ControllerOptions) {
    super();
    this.#o = o;
    this.name = `control:${o.region}`;
    this.#log = o.logger;
    const me = o.config.regions.find((r) => r.name === o.region);
    if (!me) throw new TandemError('TANDEM_ERR_NOT_FOUND', `unknown region "${o.region}"`);
    this.#me = me;
    const c = o.config.control;
    const n = o.config.regions.length;
    this.#quorum = c.quorum ?? Math.min(2, n);
    this.#runbook = new Runbook(
      o.config.regions.map((r) => r.name),
      { ...c, quorum: this.#quorum },
      `controller:${o.region}`,
    );
    this.#audit = new AuditLog(c.auditLog ?? path.join(o.config.dataDir, `control-${o.region}-audit.jsonl`));
    this.#notifier = new WebhookNotifier(c.webhooks.map((w) => w.url), `tandem controller (${o.region})`, o.logger);
    if (o.registry) {
      const registers = [o.registry];
      this.#metrics = {
        phase: new Gauge({ name: 'tandem_control_region_phase', help: 'Runbook phase of each region (1 for the current phase)', labelNames: ['target', 'phase'], registers }),
        leader: new Gauge({ name: 'tandem_control_is_leader', help: '1 when this controller leads', registers }),
        failovers: new Counter({ name: 'tandem_control_failovers_total', help: 'Regions drained from DNS, by who', labelNames: ['target', 'by'], registers }),
        auditErrors: new Counter({ name: 'tandem_control_audit_write_errors_total', help: 'Audit entries that could not be written (they are in the error log)', registers }),
        failoverSeconds: new Histogram({
          name: 'tandem_control_failover_seconds',
          help: 'Time from detection to the drain in DNS',
          buckets: [1, 2, 5, 10, 20, 30, 60, 120, 300, 600],
          registers,
        }),
      };
    }
  }

  get auditLog(): AuditLog {
    return this.#audit;
  }

  protected async onStart(): Promise<void> {
    const listen = this.#me.control?.listen;
    if (!listen) throw new TandemError('TANDEM_ERR_CONFIG', `regions[${this.#o.region}].control.listen is not set`);
    this.#api = new ApiServer({ name: 'control-api', listen, token: this.#o.token, routes: this.#routes(), registry: this.#o.registry, logger: this.#log });
    await this.#api.start();
    this.#loop = this.#run(this.#ac.signal);
  }

  protected async onStop(): Promise<void> {
    this.#ac.abort();
    await this.#loop?.catch(() => {});
    await this.#notifier.flush();
    await this.#api?.stop();
  }

  /** How long a never-seen vantage point is not counted: long enough for every daemon to start and probe. */
  get #startupGraceMs(): number {
    const h = this.#o.config.health;
    return h.intervalMs * (h.failThreshold + 1) + 5_000;
  }

  get #tickMs(): number {
    return this.#o.tickMs ?? Math.max(250, Math.floor(this.#o.config.health.intervalMs / 2));
  }

  async #run(signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      const t0 = Date.now();
      await this.#serial(() => this.tick()).catch((err) => this.#log.error({ err }, 'controller tick failed'));
      await sleep(Math.max(0, this.#tickMs - (Date.now() - t0)), signal).catch(() => {});
    }
  }

  #serial<T>(fn: () => Promise<T>): Promise<T> {
    const next = this.#ops.then(fn, fn);
    this.#ops = next.catch(() => {});
    return next;
  }

  /** One round: observe, decide, act (when leading). Exposed for tests. */
  async tick(): Promise<void> {
    const obs = await this.#observe();
    this.#lastObservation = obs;
    if (!this.#synced) {
      // Mirror DNS once before electing, so a restarted controller knows its region is drained.
      this.#syncFromDns(false);
      this.#synced = true;
    }
    this.#leader = this.#electLeader(obs);
    const leading = this.#leader === this.#o.region;
    this.#syncFromDns(leading);
    if (leading) {
      for (const e of this.#runbook.step(obs)) this.#record(e, true);
      await this.#enforce();
    }
    this.#updateMetrics(leading);
  }

  async #observe(): Promise<Observation> {
    const cfg = this.#o.config;
    const timeoutMs = Math.min(2_000, cfg.health.intervalMs);
    // DNS servers, the other controllers and every region's lag, all at once: the slowest sets the tick's pace.
    const dnsViews = Promise.all(
      cfg.regions.map(async (r) => {
        if (!r.dns) return;
        try {
          this.#dnsViews.set(r.name, await callApi<DnsStateView>(`http://${hostPort(r.dns.admin)}/v1/state`, { token: this.#o.token, timeoutMs }));
        } catch (err) {
          this.#dnsViews.set(r.name, err as Error);
        }
      }),
    );
    const peers = Promise.all(
      cfg.regions.map(async (r) => {
        if (!r.control || r.name === this.#o.region) return;
        try {
          const st = await callApi<ControllerStatus>(`http://${hostPort(r.control.listen)}/v1/status`, { timeoutMs: Math.min(1_000, timeoutMs) });
          this.#peerControllers.set(r.name, { isLeader: st.isLeader === true });
        } catch {
          this.#peerControllers.set(r.name, undefined);
        }
      }),
    );
    const [lags] = await Promise.all([Promise.all(cfg.regions.map((r) => this.#o.lag(r).catch(() => undefined))), dnsViews, peers]);
    const now = Date.now();
    const regions = cfg.regions.map((r) => this.#votes(r.name));
    regions.forEach((o, i) => {
      const lagFrom = lags[i];
      if (lagFrom) o.lagFrom = this.#withLagHistory(o.name, lagFrom, regions, now);
    });
    return { now, regions };
  }

  /** What the vantage points (the DNS servers) say about one region. */
  #votes(target: string): RegionObservation {
    let votesUnhealthy = 0;
    let votesHealthy = 0;
    const sinces: number[] = [];
    for (const [vantage, view] of this.#dnsViews) {
      if (view instanceof Error) {
        // A region's own DNS server not answering is a vote against the region, once it has
        // answered before or the start-up grace is over (daemons start in any order).
        if (vantage === target && (this.#answered.has(vantage) || Date.now() - this.#startedAt > this.#startupGraceMs)) votesUnhealthy++;
        continue;
      }
      this.#answered.add(vantage);
      const h = view.regions.find((x) => x.name === target)?.health;
      if (!h) continue;
      if (h.state === 'unhealthy') {
        votesUnhealthy++;
        const since = Date.parse(h.since);
        if (!Number.isNaN(since)) sinces.push(since);
      } else {
        votesHealthy++;
      }
    }
    const unhealthySince = quorumSince(sinces, this.#quorum);
    return { name: target, votesUnhealthy, votesHealthy, ...(unhealthySince !== undefined ? { unhealthySince } : {}) };
  }

  /**
   * Record this tick's lag of `target` from each peer and attach, for a peer
   * seen unhealthy, the worst lag in the half minute before it was last known
   * alive (about `failThreshold` probes before it turned unhealthy).
   */
  #withLagHistory(target: string, lagFrom: RegionLag, regions: RegionObservation[], now: number): Record<string, PeerLagObservation> {
    const h = this.#o.config.health;
    const out: Record<string, PeerLagObservation> = {};
    for (const [peer, l] of Object.entries(lagFrom)) {
      const hist = this.#lagHistory.get(`${target}<${peer}`) ?? [];
      hist.push({ t: now, lagSec: l.lagSec });
      while (hist.length && hist[0]!.t < now - LAG_HISTORY_MS) hist.shift();
      this.#lagHistory.set(`${target}<${peer}`, hist);
      const since = regions.find((x) => x.name === peer)?.unhealthySince;
      const aliveUntil = since === undefined ? undefined : since - h.failThreshold * h.intervalMs;
      const before = aliveUntil === undefined ? [] : hist.filter((x) => x.t <= aliveUntil && x.t >= aliveUntil - PRE_FAILURE_WINDOW_MS);
      out[peer] = { ...l, ...(before.length ? { lagBeforeFailureSec: Math.max(...before.map((x) => x.lagSec)) } : {}) };
    }
    return out;
  }

  /** The first region in config order that is in rotation and whose controller answers. */
  /**
   * The first region in config order that is in rotation, not suspected and whose controller answers; or an
   * earlier one whose controller says it leads. The runbooks can differ (a controller cut off from the others
   * saw them fail): deferring to an earlier leader that answers ends a second leadership once the path heals.
   */
  #electLeader(obs: Observation): string {
    for (const r of this.#o.config.regions) {
      const rb = this.#runbook.regions.get(r.name)!;
      const o = obs.regions.find((x) => x.name === r.name)!;
      const eligible = inRotation(rb) && rb.phase !== 'failed' && o.votesUnhealthy === 0;
      if (r.name === this.#o.region) {
        if (eligible) return r.name;
        continue;
      }
      const peer = this.#peerControllers.get(r.name);
      if (peer && (eligible || peer.isLeader)) return r.name; // a controller that did not answer is passed over
    }
    return this.#o.region;
  }

  /** What DNS server `server` last said about `region` (undefined when unreachable). */
  #dnsEntry(server: string, region: string): DnsStateView['regions'][number] | undefined {
    const view = this.#dnsViews.get(server);
    return view instanceof Error ? undefined : view?.regions.find((x) => x.name === region);
  }

  /** Reachable DNS servers' drain state for `region`. */
  #dnsDrained(region: string): Record<string, boolean> {
    const out: Record<string, boolean> = {};
    for (const vantage of this.#dnsViews.keys()) {
      const entry = this.#dnsEntry(vantage, region);
      if (entry) out[vantage] = entry.drained;
    }
    return out;
  }


  /**
   * Keep the runbook in step with DNS. A follower only mirrors what the DNS
   * servers say (the leader decides). A leader adopts, when it takes over,
   * every drain it finds, and later any drain on every server that no
   * controller made (an operator's `tandem dns drain`).
   */
  #syncFromDns(leading: boolean): void {
    const views = [...this.#dnsViews.values()].filter((v): v is DnsStateView => !(v instanceof Error));
    if (views.length === 0) return;
    const takingOver = leading && !this.#wasLeading;
    this.#wasLeading = leading;
    for (const [name, rb] of this.#runbook.regions) {
      const entries = views.map((v) => v.regions.find((x) => x.name === name)).filter((x) => x !== undefined);
      if (entries.length === 0) continue;
      const drained = entries.filter((e) => e.drained);
      // The controller tags its drains "auto" or "operator"; a drain made straight on the DNS servers is an operator's.
      const by = drained.some((e) => AUTO_DRAIN.test(e.drainReason ?? '')) ? 'auto' : 'operator';
      if (inRotation(rb)) {
        // Not a region being failed back: its DNS servers still say drained until the undrain gets through.
        if (this.#pendingUndrain.has(name)) continue;
        const adopt = leading ? (takingOver && drained.length > 0) || (drained.length === entries.length && by === 'operator') : drained.length > 0;
        if (adopt) this.#runbook.adoptDrained(name, by);
      } else if (!leading && drained.length === 0) {
        Object.assign(rb, { phase: 'serving', since: Date.now() });
        delete rb.drainedBy;
        delete rb.drainForced;
      }
    }
  }

  /**
   * Make every reachable DNS server match the runbook: drained regions drained; failed-back ones undrained.
   * Returns the calls that failed (retried next tick).
   */
  async #enforce(): Promise<DnsCallFailure[]> {
    const drained = this.#runbook.drainedSet();
    const cfg = this.#o.config;
    const tasks: Promise<DnsCallFailure | undefined>[] = [];
    for (const target of cfg.regions) {
      const want = drained.has(target.name);
      const state = this.#dnsDrained(target.name);
      for (const server of cfg.regions) {
        if (!server.dns) continue;
        const has = state[server.name];
        if (has === undefined) continue; // unreachable now; repaired on a later tick
        if (want && !has) tasks.push(this.#dnsCall(server, target.name, 'drain'));
        // Undrain what this leader failed back, and automatic drains of another controller that this leader's
        // runbook does not share (one that led while cut off). Operators' drains are adopted, never undone.
        const staleAuto = () => AUTO_DRAIN.test(this.#dnsEntry(server.name, target.name)?.drainReason ?? '');
        if (!want && has && (this.#pendingUndrain.has(target.name) || staleAuto())) tasks.push(this.#dnsCall(server, target.name, 'undrain'));
      }
      if (!want && this.#pendingUndrain.has(target.name) && Object.values(state).every((d) => !d) && Object.keys(state).length === cfg.regions.filter((r) => r.dns).length) {
        this.#pendingUndrain.delete(target.name);
      }
    }
    return (await Promise.all(tasks)).filter((f) => f !== undefined);
  }

  async #dnsCall(server: RegionConfig, target: string, action: 'drain' | 'undrain'): Promise<DnsCallFailure | undefined> {
    const rb = this.#runbook.regions.get(target)!;
    const reason = `${CONTROLLER_REASON} (${this.#o.region}): ${rb.drainedBy === 'operator' ? 'operator' : 'auto'}: ${target} ${rb.phase}`;
    try {
      await callApi(`http://${hostPort(server.dns!.admin)}/v1/regions/${encodeURIComponent(target)}/${action}`, {
        method: 'POST',
        token: this.#o.token,
        // An operator's --force past the last-serving-region rule must pass the DNS server's own check too.
        body: action === 'drain' ? { reason, ...(rb.drainForced ? { force: true } : {}) } : {},
        actor: `controller:${this.#o.region}`,
        timeoutMs: 2_000,
      });
      // Keep the cached view true to what we just did, so a second action before the next
      // observation (a drain and a failback in one tick) sees the drain.
      const entry = this.#dnsEntry(server.name, target);
      if (entry) {
        entry.drained = action === 'drain';
        if (action === 'drain') entry.drainReason = reason;
        else delete entry.drainReason;
      }
      return undefined;
    } catch (err) {
      this.#log.warn({ err, server: server.name, target, action }, 'DNS admin call failed; retrying next tick');
      return { server: server.name, target, action, error: (err as Error).message };
    }
  }

  /**
   * Append to the audit log; a write that fails (disk full) is logged with the whole entry and counted, and
   * the step goes on: the remaining events still get logged, notified and enforced.
   */
  #appendAudit(entry: AuditEntry): void {
    try {
      this.#audit.append(entry);
    } catch (err) {
      this.#metrics?.auditErrors.inc();
      this.#log.error({ err: (err as Error).message, entry }, `cannot write the audit log ${this.#audit.file}`);
    }
  }

  #record(e: RunbookEvent, leading: boolean): void {
    this.#events.push(e);
    if (this.#events.length > 500) this.#events.splice(0, this.#events.length - 500);
    const level = e.severity === 'critical' ? 'error' : e.severity === 'warning' ? 'warn' : 'info';
    this.#log[level]({ event: e.kind, target: e.region, details: e.details, leading }, e.message);
    const manual = !e.actor.startsWith('controller:');
    if (!leading && !manual) return;
    if (e.kind === 'failed-back') this.#pendingUndrain.add(e.region);
    if (e.kind === 'drained') {
      this.#pendingUndrain.delete(e.region);
      const f = this.#runbook.regions.get(e.region)?.failure;
      this.#metrics?.failovers.inc({ target: e.region, by: manual ? 'operator' : 'auto' });
      if (f?.drainedAt && !manual) this.#metrics?.failoverSeconds.observe((f.drainedAt - f.detectedAt) / 1000);
    }
    if (AUDITED.includes(e.kind) || manual) {
      this.#appendAudit({ at: new Date(e.at).toISOString(), actor: e.actor, action: e.kind, region: e.region, reason: e.message, ...(e.details ? { details: e.details } : {}) });
    }
    if (NOTIFIED.includes(e.kind)) {
      const f = this.#runbook.regions.get(e.region)?.failure;
      this.#notifier.send({
        key: `${e.region}:${e.kind}:${f?.detectedAt ?? e.at}`,
        severity: e.severity,
        title: e.kind === 'failed-back' ? `RESOLVED: ${e.region} is serving again` : `${e.region}: ${e.kind}`,
        text: e.message,
        fields: { region: e.region, event: e.kind, actor: e.actor, ...(flatten(e.details) ?? {}) },
        at: new Date(e.at),
      });
    }
  }

  #updateMetrics(leading: boolean): void {
    if (!this.#metrics) return;
    this.#metrics.leader.set(leading ? 1 : 0);
    for (const r of this.#runbook.regions.values()) {
      for (const phase of ['serving', 'suspect', 'failed', 'drained', 'recovering']) this.#metrics.phase.set({ target: r.name, phase }, r.phase === phase ? 1 : 0);
    }
  }

  /** Operator: drain a region (forwarded to the leader, unless it was forwarded here already). */
  async failover(body: { region: string; force?: boolean; reason?: string }, actor: string, forwarded = false): Promise<RunbookEvent> {
    return this.#manual('failover', body, actor, forwarded, () => {
      const obs = this.#lastObservation ?? { now: Date.now(), regions: [] };
      return this.#runbook.manualDrain(body.region, { ...obs, now: Date.now() }, { actor, force: body.force, reason: body.reason });
    });
  }

  /** Operator: return a drained region (forwarded to the leader, unless it was forwarded here already). */
  async failback(body: { region: string; force?: boolean; reason?: string }, actor: string, forwarded = false): Promise<RunbookEvent> {
    return this.#manual('failback', body, actor, forwarded, () => {
      const obs = this.#lastObservation ?? { now: Date.now(), regions: [] };
      return this.#runbook.manualFailback(body.region, { ...obs, now: Date.now() }, { actor, force: body.force, reason: body.reason });
    });
  }

  async #manual(what: 'failover' | 'failback', body: { region: string; force?: boolean; reason?: string }, actor: string, forwarded: boolean, act: () => RunbookEvent): Promise<RunbookEvent> {
    if (!body || typeof body.region !== 'string') throw new TandemError('TANDEM_ERR_USAGE', 'body must be {"region": "<name>", "force"?: bool, "reason"?: string}');
    const leader = this.#leader;
    // One hop at most: two controllers that each think the other leads must not pass a command back and forth.
    if (leader && leader !== this.#o.region && !forwarded) {
      const r = this.#o.config.regions.find((x) => x.name === leader);
      if (r?.control) {
        return callApi<RunbookEvent>(`http://${hostPort(r.control.listen)}/v1/${what}`, {
          method: 'POST',
          body,
          token: this.#o.token,
          actor,
          timeoutMs: 10_000,
          headers: { [FORWARDED_HEADER]: this.#o.region },
        });
      }
    }
    return this.#serial(async () => {
      let event: RunbookEvent;
      try {
        event = act();
      } catch (err) {
        this.#appendAudit({ at: new Date().toISOString(), actor, action: `${what}-refused`, region: body.region, reason: (err as Error).message });
        throw err;
      }
      this.#record(event, true);
      // The answer says whether DNS follows: a decision the DNS servers refused or missed is not done yet.
      const failed = (await this.#enforce()).filter((f) => f.target === body.region);
      if (failed.length === 0) return event;
      return {
        ...event,
        message: `${event.message}; not yet in effect on the DNS server(s) of ${failed.map((f) => `${f.server} (${f.error})`).join(', ')}; the leader retries every tick`,
        details: { ...event.details, dnsErrors: Object.fromEntries(failed.map((f) => [f.server, f.error])) },
      };
    });
  }

  status(): ControllerStatus {
    const obs = this.#lastObservation;
    const c = this.#o.config.control;
    return {
      region: this.#o.region,
      leader: this.#leader,
      isLeader: this.#leader === this.#o.region,
      at: new Date().toISOString(),
      rpoSec: c.rpoSec,
      rtoSec: c.rtoSec,
      readinessLagSec: c.readinessLagSec,
      regions: [...this.#runbook.regions.values()].map((r) => {
        const o = obs?.regions.find((x) => x.name === r.name);
        return {
          name: r.name,
          phase: r.phase,
          since: new Date(r.since).toISOString(),
          ...(r.drainedBy ? { drainedBy: r.drainedBy } : {}),
          inRotation: inRotation(r),
          votesUnhealthy: o?.votesUnhealthy ?? 0,
          votesHealthy: o?.votesHealthy ?? 0,
          dnsDrained: this.#dnsDrained(r.name),
          ...(o?.lagFrom ? { lagFrom: Object.fromEntries(Object.entries(o.lagFrom).map(([k, v]) => [k, v.lagSec])) } : {}),
          ...(r.failure ? { failure: isoTimes(r.failure) } : {}),
        };
      }),
      events: this.#events.slice(-100).map((e) => ({ ...e, iso: new Date(e.at).toISOString() })),
      vantagePoints: this.#o.config.regions
        .filter((r) => r.dns)
        .map((r) => {
          const v = this.#dnsViews.get(r.name);
          return { region: r.name, reachable: v !== undefined && !(v instanceof Error), ...(v instanceof Error ? { error: v.message } : {}) };
        }),
    };
  }

  #routes(): Route[] {
    return [
      { method: 'GET', path: '/v1/status', public: true, handler: () => ({ body: this.status() }) },
      { method: 'GET', path: '/healthz', public: true, handler: () => ({ body: { status: 'ok', region: this.#o.region } }) },
      { method: 'GET', path: '/status', public: true, handler: () => ({ body: statusPage(this.status()), contentType: 'text/html; charset=utf-8' }) },
      { method: 'GET', path: '/v1/audit', handler: ({ url }) => ({ body: { entries: this.#audit.read(Number(url.searchParams.get('limit') ?? 200)) satisfies AuditEntry[] } }) },
      { method: 'POST', path: '/v1/failover', handler: async ({ req, body, actor }) => ({ body: await this.failover(body as { region: string }, actor, forwarded(req)) }) },
      { method: 'POST', path: '/v1/failback', handler: async ({ req, body, actor }) => ({ body: await this.failback(body as { region: string }, actor, forwarded(req)) }) },
    ];
  }
}

function hostPort(hp: { host: string; port: number }): string {
  return hp.host.includes(':') ? `[${hp.host}]:${hp.port}` : `${hp.host}:${hp.port}`;
}

function isoTimes(f: object): Record<string, unknown> {
  return Object.fromEntries(Object.entries(f).map(([k, v]) => [k, typeof v === 'number' && k.endsWith('At') ? new Date(v).toISOString() : v]));
}

function flatten(d: Record<string, unknown> | undefined): Record<string, string> | undefined {
  if (!d) return undefined;
  return Object.fromEntries(Object.entries(d).filter(([, v]) => v !== undefined).map(([k, v]) => [k, typeof v === 'object' ? JSON.stringify(v) : String(v)]));
}
