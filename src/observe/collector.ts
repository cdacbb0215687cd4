/**
 * The collector behind the dashboard and tandem's own alerts. Every poll
 * interval it asks every daemon named in the config what it sees:
 *
 *   - each controller: `GET /v1/status` (runbook phase, leader, events) and,
 *     every few polls, `GET /v1/audit`;
 *   - each DNS server: `GET /v1/state` (health of every region from that
 *     vantage point, drains) and `/metrics` (answers by region);
 *   - each replication agent: `GET /v1/status` (lag per peer, rates, paused tables);
 *   - each app: `/metrics` (requests by status → rates and the 5xx share) and,
 *     every few polls, `/healthz`;
 *   - the lab, when there is one: its status;
 *   - every few seconds, each region's recent conflicts (from the agent if it
 *     lists them, else read-only from `tandem.conflicts`) and the drill reports.
 *
 * Any source may be down (a failed region): that is recorded and the rest
 * carries on. The figures the page charts are kept as a bounded history; the
 * alert evaluator runs after every poll and notifications go to the webhooks.
 */
import type pg from 'pg';
import { Counter, Gauge, type Registry } from 'prom-client';
import { BaseService } from '../core/lifecycle.ts';
import type { Logger } from '../core/log.ts';
import type { Config, RegionConfig } from '../core/config/index.ts';
import { callApi } from '../core/http.ts';
import { WebhookNotifier, type Notification } from '../core/notify.ts';
import { connectClient } from '../core/pg.ts';
import type { ControllerStatus } from '../control/controller.ts';
import type { AuditEntry } from '../control/audit.ts';
import type { LabStatus } from '../lab/lab.ts';
import { AlertTracker, evaluateConditions, type AlertInputs, type AlertJson, type AlertThresholds } from './alerts.ts';
import { parseExposition, sumBy } from './exposition.ts';
import { geographySnapshot, type GeographyView, type TileView } from './geography.ts';
import { SeriesStore, type SeriesHistory, type SeriesMeta, type SeriesPoint } from './series.ts';
import { scanReports } from './reports.ts';
import type { DashboardSnapshot, DashboardUpdate, DirectionView, RegionView, ReportView, SourceKind, TimelineEntry } from './snapshot.ts';
import {
  parseAgentStatus,
  parseConflictRow,
  parseDnsState,
  parseHealthz,
  type AgentStatus,
  type AppHealth,
  type ConflictRow,
  type DnsState,
  type HealthState,
} from './sources.ts';

/** How the dashboard reaches the lab, when it runs in one. */
export interface LabLink {
  /** The lab's status in process (when the lab itself serves the dashboard); else fetched from `api`. */
  status?: () => LabStatus;
  /** The lab API's base URL (fault actions; its status when `status` is not given). */
  api: string;
}

export interface CollectorOptions {
  config: Config;
  /** The admin token for the daemons' protected routes. */
  token: string | undefined;
  logger: Logger;
  lab?: LabLink;
  /** Folder of drill reports (`<id>/report.json` + `report.html`). */
  reportsDir?: string;
  /** Read recent conflicts from each region's database when its agent does not list them (default true). */
  readConflicts?: boolean;
  /** Collector metrics (sources up, alerts firing, notifications) go here. */
  registry?: Registry;
  /** Where notifications go; default a WebhookNotifier to `alerts.webhooks`. */
  notify?: (n: Notification) => void;
  /** Override `alerts.pollIntervalMs`. */
  intervalMs?: number;
  /** Override `alerts.historySec`. */
  historySec?: number;
}

interface SourceDef {
  id: string;
  kind: SourceKind;
  region: string;
  url: string;
  auth: boolean;
  everyTicks: number;
  text?: boolean;
}

interface SourceState {
  up: boolean | undefined;
  lastOkAt?: number;
  error?: string;
  latencyMs?: number;
}

/** `host:port` for a URL; a wildcard listen address is reached on loopback. */
export function hp(x: { host: string; port: number }): string {
  const host = x.host === '0.0.0.0' ? '127.0.0.1' : x.host === '::' ? '::1' : x.host;
  return host.includes(':') ? `[${host}]:${x.port}` : `${host}:${x.port}`;
}

/** Rate of a counter between polls (a drop means the process restarted: count from zero). */
class Rates {
  #prev = new Map<string, { t: number; v: number }>();

  rate(key: string, t: number, v: number): { rate: number; delta: number } | undefined {
    const p = this.#prev.get(key);
    this.#prev.set(key, { t, v });
    if (!p || t <= p.t) return undefined;
    const delta = v >= p.v ? v - p.v : v;
    return { rate: delta / ((t - p.t) / 1000), delta };
  }

  forget(prefix: string): void {
    for (const k of this.#prev.keys()) if (k.startsWith(prefix)) this.#prev.delete(k);
  }
}

const TIMELINE_MAX = 500;
const AUDIT_MAX = 300;

export { summariseReport } from './reports.ts';
export type * from './snapshot.ts';

/** Polls every daemon, keeps history, evaluates alerts. */
export class Collector extends BaseService {
  readonly name = 'observe-collector';
  readonly config: Config;
  readonly #o: CollectorOptions;
  readonly #log: Logger;
  readonly #defs: SourceDef[];
  readonly #state = new Map<string, SourceState>();
  readonly #intervalMs: number;
  readonly #series: SeriesStore;
  readonly #tracker: AlertTracker;
  readonly #notifier: WebhookNotifier | undefined;
  readonly #notify: (n: Notification) => void;
  readonly #rates = new Rates();
  readonly #subscribers = new Set<(u: DashboardUpdate) => void>();
  readonly #metrics: { up: Gauge; firing: Gauge; notifications: Counter } | undefined;

  #controllers = new Map<string, ControllerStatus>();
  #dns = new Map<string, DnsState>();
  #dnsAnswers = new Map<string, Map<string, number>>();
  #agents = new Map<string, AgentStatus>();
  #apps = new Map<string, AppHealth>();
  #http = new Map<string, { rps: number | null; errorsPerSec: number | null; clientErrorsPerSec: number | null }>();
  #httpWindow = new Map<string, { t: number; requests: number; errors5xx: number }[]>();
  #lab: LabStatus | undefined;
  #labEventsSeen = new Set<string>();
  #lastPartitions: string | undefined;
  #timeline = new Map<string, TimelineEntry>();
  #audit = new Map<string, AuditEntry>();
  #conflicts = new Map<string, ConflictRow[]>();
  #reports: ReportView[] = [];
  #pg = new Map<string, Promise<pg.Client>>();
  #background = new Set<string>();
  #tick = 0;
  #last: DashboardUpdate | undefined;
  #ac = new AbortController();
  #loop: Promise<void> | undefined;
  #wake: (() => void) | undefined;

  constructor(o: CollectorOptions) {
    super();
    this.#o = o;
    this.config = o.config;
    this.#log = o.logger;
    const a = o.config.alerts;
    this.#intervalMs = o.intervalMs ?? a.pollIntervalMs;
    this.#series = new SeriesStore(Math.ceil(((o.historySec ?? a.historySec) * 1000) / this.#intervalMs));
    this.#tracker = new AlertTracker({ repeatIntervalSec: a.repeatIntervalSec });
    if (o.notify) {
      this.#notify = o.notify;
    } else {
      const notifier = new WebhookNotifier(a.webhooks.map((w) => w.url), 'tandem alerts', o.logger);
      this.#notifier = notifier;
      this.#notify = (n) => notifier.send(n);
    }
    this.#defs = this.#sources();
    if (o.registry) {
      const registers = [o.registry];
      this.#metrics = {
        up: new Gauge({ name: 'tandem_observe_source_up', help: 'Whether the last poll of a source answered (1) or not (0)', labelNames: ['source', 'target'], registers }),
        firing: new Gauge({ name: 'tandem_observe_alerts_firing', help: 'Alerts firing now, by kind and severity', labelNames: ['alert', 'severity'], registers }),
        notifications: new Counter({ name: 'tandem_observe_notifications_total', help: 'Alert notifications sent, by severity', labelNames: ['severity'], registers }),
      };
    }
  }

  /** Every source derived from the config (and the lab link). */
  #sources(): SourceDef[] {
    const defs: SourceDef[] = [];
    const slow = Math.max(1, Math.round(5_000 / (this.#o.intervalMs ?? this.config.alerts.pollIntervalMs)));
    for (const r of this.config.regions) {
      if (r.control) {
        const base = `http://${hp(r.control.listen)}`;
        defs.push({ id: `controller:${r.name}`, kind: 'controller', region: r.name, url: `${base}/v1/status`, auth: false, everyTicks: 1 });
        defs.push({ id: `audit:${r.name}`, kind: 'audit', region: r.name, url: `${base}/v1/audit?limit=200`, auth: true, everyTicks: slow });
      }
      if (r.dns) {
        const base = `http://${hp(r.dns.admin)}`;
        defs.push({ id: `dns:${r.name}`, kind: 'dns', region: r.name, url: `${base}/v1/state`, auth: true, everyTicks: 1 });
        defs.push({ id: `dns-metrics:${r.name}`, kind: 'dns-metrics', region: r.name, url: `${base}/metrics`, auth: false, everyTicks: 1, text: true });
      }
      if (r.agent) {
        defs.push({ id: `agent:${r.name}`, kind: 'agent', region: r.name, url: `http://${hp(r.agent.admin)}/v1/status`, auth: true, everyTicks: 1 });
        // Recent conflicts through the agent (it reads tandem.conflicts of its own region).
        if (this.#o.readConflicts !== false) defs.push({ id: `agent-conflicts:${r.name}`, kind: 'agent-conflicts', region: r.name, url: `http://${hp(r.agent.admin)}/v1/conflicts?limit=20`, auth: true, everyTicks: slow });
      }
      const appBase = r.app ? `http://${hp(r.app.listen)}` : new URL(r.healthUrl).origin;
      defs.push({ id: `app-metrics:${r.name}`, kind: 'app-metrics', region: r.name, url: `${appBase}/metrics`, auth: false, everyTicks: 1, text: true });
      defs.push({ id: `app-health:${r.name}`, kind: 'app-health', region: r.name, url: r.healthUrl, auth: false, everyTicks: slow });
      // Without an agent, recent conflicts are read from the database by a background task (listed so the page shows whether it answers).
      if (this.#o.readConflicts !== false && !r.agent) defs.push({ id: `database:${r.name}`, kind: 'database', region: r.name, url: `postgresql://${hp(r.database)}/${r.database.database}`, auth: false, everyTicks: 0 });
    }
    if (this.#o.lab && !this.#o.lab.status) defs.push({ id: 'lab', kind: 'lab', region: '', url: `${this.#o.lab.api}/v1/lab/status`, auth: false, everyTicks: 1 });
    return defs;
  }

  protected async onStart(): Promise<void> {
    const signal = this.#ac.signal;
    // The first poll happens before start() resolves, so the page never shows an empty dashboard.
    await this.#poll(signal);
    this.#loop = this.#run(signal);
  }

  protected async onStop(): Promise<void> {
    this.#ac.abort();
    this.#wake?.();
    await this.#loop?.catch(() => {});
    await Promise.all([...this.#pg.values()].map((p) => p.then((c) => c.end()).catch(() => {})));
    this.#pg.clear();
    await this.#notifier?.flush();
    for (const fn of this.#subscribers) this.#subscribers.delete(fn);
  }

  async #run(signal: AbortSignal): Promise<void> {
    let polledAt = Date.now();
    while (!signal.aborted) {
      const wait = Math.max(50, this.#intervalMs - (Date.now() - polledAt));
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, wait);
        this.#wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
      this.#wake = undefined;
      if (signal.aborted) break;
      polledAt = Date.now();
      await this.#poll(signal).catch((err) => this.#log.error({ err }, 'collector poll failed'));
    }
  }

  /** Poll again now (after an action, so the page shows its effect at once). */
  refresh(): void {
    this.#wake?.();
  }

  /** Called after every poll with the new snapshot and chart point; returns the unsubscribe function. */
  subscribe(fn: (u: DashboardUpdate) => void): () => void {
    this.#subscribers.add(fn);
    return () => this.#subscribers.delete(fn);
  }

  /** The latest snapshot (after the first poll). */
  snapshot(): DashboardSnapshot {
    return this.#last?.snapshot ?? this.#compose(Date.now());
  }

  /** How many points of history the charts keep. */
  get capacity(): number {
    return this.#series.capacity;
  }

  /** The chart history. */
  history(): SeriesHistory {
    return this.#series.history();
  }

  /** The alerts firing now. */
  alerts(): AlertJson[] {
    return this.#tracker.toJSON();
  }

  /** Put something the dashboard did (an operator action) on the timeline. */
  note(entry: Omit<TimelineEntry, 'at' | 'source'>): void {
    const at = new Date().toISOString();
    this.#addTimeline(`d|${at}|${entry.kind}|${entry.region ?? ''}`, { at, source: 'dashboard', ...entry });
  }

  async #poll(signal: AbortSignal): Promise<void> {
    const tick = this.#tick++;
    const due = this.#defs.filter((d) => d.everyTicks > 0 && tick % d.everyTicks === 0);
    const timeoutMs = Math.max(500, Math.min(2_000, this.#intervalMs * 1.5));
    await Promise.all(due.map((d) => this.#fetch(d, timeoutMs, signal)));
    if (this.#o.lab?.status) {
      try {
        this.#onLab(this.#o.lab.status());
      } catch (err) {
        this.#log.debug({ err }, 'lab status failed');
      }
    }
    if (tick % Math.max(1, Math.round(5_000 / this.#intervalMs)) === 0) {
      this.#backgroundTask('reports', async () => {
        this.#reports = this.#o.reportsDir ? scanReports(this.#o.reportsDir) : [];
      });
      if (this.#o.readConflicts !== false) for (const r of this.config.regions) if (!r.agent) this.#backgroundTask(`conflicts:${r.name}`, () => this.#readConflicts(r));
    }
    const now = Date.now();
    const snapshot = this.#compose(now);
    const point = this.#pushSeries(now, snapshot);
    snapshot.series = this.#series.meta();
    this.#evaluate(now, snapshot);
    snapshot.alerts = this.#tracker.toJSON();
    snapshot.timeline = this.#timelineView();
    const update = { snapshot, point };
    this.#last = update;
    for (const fn of this.#subscribers) {
      try {
        fn(update);
      } catch (err) {
        this.#log.warn({ err }, 'dashboard subscriber failed');
      }
    }
  }

  #backgroundTask(id: string, fn: () => Promise<void>): void {
    if (this.#background.has(id) || this.#ac.signal.aborted) return;
    this.#background.add(id);
    fn()
      .catch((err) => this.#log.debug({ err, task: id }, 'collector background task failed'))
      .finally(() => this.#background.delete(id));
  }

  async #fetch(d: SourceDef, timeoutMs: number, signal: AbortSignal): Promise<void> {
    const st = this.#state.get(d.id) ?? { up: undefined };
    this.#state.set(d.id, st);
    const t0 = performance.now();
    try {
      let body: unknown;
      if (d.text) {
        const res = await fetch(d.url, { signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
        body = await res.text();
        if (!res.ok) throw new Error(`${d.url} answered ${res.status}`);
      } else if (d.kind === 'app-health') {
        // A failing app answers 503 with the same JSON body: read it either way.
        const res = await fetch(d.url, { signal: AbortSignal.any([signal, AbortSignal.timeout(timeoutMs)]) });
        const text = await res.text();
        try {
          body = JSON.parse(text);
        } catch {
          body = undefined;
        }
      } else {
        body = await callApi(d.url, { token: d.auth ? this.#o.token : undefined, timeoutMs, signal, actor: 'dashboard' });
      }
      st.up = true;
      st.lastOkAt = Date.now();
      delete st.error;
      st.latencyMs = Math.round((performance.now() - t0) * 10) / 10;
      this.#onData(d, body);
    } catch (err) {
      if (signal.aborted) return;
      st.up = false;
      st.error = String((err as Error).cause ?? (err as Error).message).slice(0, 300);
      this.#onDown(d);
    }
    this.#metrics?.up.set({ source: d.kind, target: d.region || 'lab' }, st.up ? 1 : 0);
  }

  #onData(d: SourceDef, body: unknown): void {
    const t = Date.now();
    switch (d.kind) {
      case 'controller': {
        const s = body as ControllerStatus;
        if (!s || !Array.isArray(s.regions)) throw new Error('not a controller status');
        this.#controllers.set(d.region, s);
        for (const e of Array.isArray(s.events) ? s.events : []) {
          this.#addTimeline(`c|${e.at}|${e.region}|${e.kind}`, {
            at: e.iso ?? new Date(e.at).toISOString(),
            source: 'controller',
            region: e.region,
            kind: e.kind,
            severity: e.severity,
            message: e.message,
            actor: e.actor,
          });
        }
        return;
      }
      case 'audit': {
        const entries = (body as { entries?: AuditEntry[] })?.entries;
        for (const e of Array.isArray(entries) ? entries : []) {
          if (!e || typeof e.at !== 'string') continue;
          this.#audit.set(`${e.at}|${e.actor}|${e.action}|${e.region}|${e.reason}`, e);
        }
        if (this.#audit.size > AUDIT_MAX) {
          const keep = [...this.#audit.entries()].sort((a, b) => a[1].at.localeCompare(b[1].at)).slice(-AUDIT_MAX);
          this.#audit = new Map(keep);
        }
        return;
      }
      case 'dns':
        this.#dns.set(d.region, parseDnsState(body));
        return;
      case 'dns-metrics': {
        const byRegion = sumBy(parseExposition(String(body)).samples, 'tandem_dns_queries_total', 'answered');
        const rates = new Map<string, number>();
        for (const r of this.config.regions) {
          const rate = this.#rates.rate(`${d.id}|${r.name}`, t, byRegion.get(r.name) ?? 0);
          if (rate) rates.set(r.name, rate.rate);
        }
        this.#dnsAnswers.set(d.region, rates);
        return;
      }
      case 'agent':
        this.#agents.set(d.region, parseAgentStatus(body));
        return;
      case 'agent-conflicts': {
        const rows = Array.isArray(body) ? body : Array.isArray((body as { conflicts?: unknown })?.conflicts) ? (body as { conflicts: unknown[] }).conflicts : [];
        this.#conflicts.set(d.region, rows.flatMap((x) => parseConflictRow(x, d.region) ?? []));
        return;
      }
      case 'app-metrics': {
        const byStatus = sumBy(parseExposition(String(body)).samples, 'tandem_http_requests_total', 'status');
        let all = 0;
        let e5 = 0;
        let e4 = 0;
        for (const [status, v] of byStatus) {
          all += v;
          if (status.startsWith('5')) e5 += v;
          else if (status.startsWith('4')) e4 += v;
        }
        const ra = this.#rates.rate(`${d.id}|all`, t, all);
        const r5 = this.#rates.rate(`${d.id}|5xx`, t, e5);
        const r4 = this.#rates.rate(`${d.id}|4xx`, t, e4);
        this.#http.set(d.region, { rps: ra?.rate ?? null, errorsPerSec: r5?.rate ?? null, clientErrorsPerSec: r4?.rate ?? null });
        if (ra && r5) {
          const w = this.#httpWindow.get(d.region) ?? [];
          w.push({ t, requests: ra.delta, errors5xx: r5.delta });
          const since = t - this.config.alerts.errorRateWindowSec * 1000;
          while (w.length && w[0]!.t <= since) w.shift();
          this.#httpWindow.set(d.region, w);
        }
        return;
      }
      case 'app-health':
        this.#apps.set(d.region, parseHealthz(body));
        return;
      case 'lab':
        this.#onLab(body as LabStatus);
        return;
      case 'database':
        return;
    }
  }

  #onDown(d: SourceDef): void {
    switch (d.kind) {
      case 'controller':
        this.#controllers.delete(d.region);
        return;
      case 'dns':
        this.#dns.delete(d.region);
        return;
      case 'dns-metrics':
        this.#dnsAnswers.delete(d.region);
        this.#rates.forget(`${d.id}|`);
        return;
      case 'agent':
        this.#agents.delete(d.region);
        return;
      case 'app-metrics':
        this.#http.delete(d.region);
        this.#httpWindow.delete(d.region);
        this.#rates.forget(`${d.id}|`);
        return;
      case 'app-health':
        this.#apps.delete(d.region);
        return;
      case 'lab':
        this.#lab = undefined;
        return;
      default:
        return;
    }
  }

  #onLab(s: LabStatus | undefined): void {
    if (!s || !Array.isArray(s.regions)) return;
    this.#lab = s;
    for (const r of s.regions) {
      if (r.failedAt) this.#addTimeline(`l|failed|${r.name}|${r.failedAt}`, { at: r.failedAt, source: 'lab', region: r.name, kind: 'region-failed', severity: 'critical', message: `lab: every process of ${r.name} was killed (SIGKILL)` });
      if (r.recoveredAt) this.#addTimeline(`l|recovered|${r.name}|${r.recoveredAt}`, { at: r.recoveredAt, source: 'lab', region: r.name, kind: 'region-recovered', severity: 'resolved', message: `lab: ${r.name} restarted on the same data` });
    }
    const parts = JSON.stringify(s.wan?.partitions ?? []);
    if (this.#lastPartitions !== undefined && parts !== this.#lastPartitions) {
      const at = new Date().toISOString();
      const list = (s.wan?.partitions ?? []).map((p) => p.join(' | '));
      this.#addTimeline(`l|wan|${at}`, {
        at,
        source: 'lab',
        kind: list.length ? 'partition' : 'healed',
        severity: list.length ? 'warning' : 'resolved',
        message: list.length ? `lab: WAN partitioned (${list.join(', ')})` : 'lab: every WAN partition healed',
      });
    }
    this.#lastPartitions = parts;
  }

  #addTimeline(key: string, e: TimelineEntry): void {
    if (this.#timeline.has(key)) return;
    this.#timeline.set(key, e);
    if (this.#timeline.size > TIMELINE_MAX) {
      const keep = [...this.#timeline.entries()].sort((a, b) => a[1].at.localeCompare(b[1].at)).slice(-TIMELINE_MAX);
      this.#timeline = new Map(keep);
    }
  }

  #timelineView(): TimelineEntry[] {
    return [...this.#timeline.values()].sort((a, b) => b.at.localeCompare(a.at)).slice(0, 150);
  }

  /** The controller whose view counts: the one that says it leads, else the first that answers. */
  #leaderStatus(): ControllerStatus | undefined {
    const all = this.config.regions.map((r) => this.#controllers.get(r.name)).filter((s): s is ControllerStatus => s !== undefined);
    return all.find((s) => s.isLeader) ?? all[0];
  }

  #directions(leader: ControllerStatus | undefined): DirectionView[] {
    const out: DirectionView[] = [];
    for (const target of this.config.regions) {
      const agent = this.#agents.get(target.name);
      for (const source of this.config.regions) {
        if (source.name === target.name) continue;
        const d: DirectionView = { source: source.name, target: target.name, paused: [] };
        const p = agent?.peers.find((x) => x.peer === source.name);
        if (p) {
          for (const k of ['lagSec', 'lagBytes', 'txPerSec', 'rowsPerSec', 'conflicts', 'state', 'error'] as const) {
            if (p[k] !== undefined) (d as unknown as Record<string, unknown>)[k] = p[k];
          }
          if (p.lagSec !== undefined) d.from = 'agent';
        }
        if (d.lagSec === undefined) {
          const fromController = leader?.regions.find((r) => r.name === target.name)?.lagFrom?.[source.name];
          const fromApp = this.#apps.get(target.name)?.lagFrom[source.name];
          if (typeof fromController === 'number') Object.assign(d, { lagSec: fromController, from: 'controller' });
          else if (typeof fromApp === 'number') Object.assign(d, { lagSec: fromApp, from: 'app' });
        }
        d.paused = (agent?.paused ?? []).filter((x) => !x.peer || x.peer === source.name).map((x) => ({ table: x.table, ...(x.reason ? { reason: x.reason } : {}) }));
        out.push(d);
      }
    }
    return out;
  }

  #regions(leader: ControllerStatus | undefined): RegionView[] {
    const dnsRegions = this.config.regions.filter((r) => r.dns);
    return this.config.regions.map((r): RegionView => {
      const vantages: RegionView['vantages'] = dnsRegions.map((v) => {
        const view = this.#dns.get(v.name);
        if (!view) return { vantage: v.name, state: 'unreachable' };
        const x = view.regions.find((y) => y.name === r.name);
        return { vantage: v.name, state: x?.health ?? 'unknown', ...(x?.healthSince ? { since: x.healthSince } : {}) };
      });
      const reachable = vantages.filter((v) => v.state !== 'unreachable');
      const bad = reachable.filter((v) => v.state === 'unhealthy').length;
      const good = reachable.filter((v) => v.state === 'healthy').length;
      const health: RegionView['health'] = reachable.length === 0 ? 'unknown' : bad === reachable.length ? 'unhealthy' : bad > 0 ? 'partial' : good > 0 ? 'healthy' : 'unknown';
      const drains = [...this.#dns.values()].map((v) => v.regions.find((y) => y.name === r.name)).filter((x) => x !== undefined);
      const drainedEntry = drains.find((x) => x.drained);
      const c = leader?.regions.find((x) => x.name === r.name);
      const labR = this.#lab?.regions.find((x) => x.name === r.name);
      const http = this.#http.get(r.name);
      const win = this.#httpWindow.get(r.name) ?? [];
      const windowRequests = win.reduce((a, x) => a + x.requests, 0);
      const windowErrors5xx = win.reduce((a, x) => a + x.errors5xx, 0);
      const answers = [...this.#dnsAnswers.values()];
      const view: RegionView = {
        name: r.name,
        cloud: r.cloud,
        ...(r.location ? { location: r.location } : {}),
        address: r.addresses[0]!,
        vantages,
        health,
        drained: drains.length ? drainedEntry !== undefined : undefined,
        ...(drainedEntry?.drainReason ? { drainReason: drainedEntry.drainReason } : {}),
        up: {
          ...(r.control ? { controller: this.#state.get(`controller:${r.name}`)?.up === true } : {}),
          ...(r.dns ? { dns: this.#state.get(`dns:${r.name}`)?.up === true } : {}),
          ...(r.agent ? { agent: this.#state.get(`agent:${r.name}`)?.up === true } : {}),
          app: this.#state.get(`app-metrics:${r.name}`)?.up === true,
        },
      };
      if (labR) view.lab = { state: labR.state, ...(labR.failedAt ? { failedAt: labR.failedAt } : {}), ...(labR.recoveredAt ? { recoveredAt: labR.recoveredAt } : {}) };
      if (c) {
        view.phase = c.phase;
        view.phaseSince = c.since;
        view.inRotation = c.inRotation;
        if (c.drainedBy) view.drainedBy = c.drainedBy;
        if (c.failure) view.failure = c.failure;
      }
      const app = this.#apps.get(r.name);
      if (app) view.app = app;
      if (http) view.http = { ...http, windowRequests, windowErrors5xx, errorShare: windowRequests > 0 ? windowErrors5xx / windowRequests : null };
      if (answers.length) view.dnsAnswersPerSec = answers.reduce((a, m) => a + (m.get(r.name) ?? 0), 0);
      return view;
    });
  }

  #compose(now: number): DashboardSnapshot {
    const leader = this.#leaderStatus();
    const views = new Map([...this.#dns].map(([k, v]) => [k, v.regions]));
    const geo = geographySnapshot(this.config, views);
    const conflicts = this.config.regions
      .flatMap((r) => this.#conflicts.get(r.name) ?? [])
      .sort((a, b) => (b.at ?? '').localeCompare(a.at ?? ''))
      .slice(0, 50);
    const lab = this.#lab;
    const ctl = this.config.control;
    return {
      at: new Date(now).toISOString(),
      mode: this.#o.lab ? 'lab' : 'standalone',
      ...(this.config.dns ? { zone: this.config.dns.zone, service: this.config.dns.services.map((s) => s.name).join(', ') } : {}),
      ...(leader?.leader ? { leader: leader.leader } : {}),
      thresholds: {
        lagWarnSec: this.config.replication.lagWarnSec,
        lagCriticalSec: this.config.replication.lagCriticalSec,
        errorRateThreshold: this.config.alerts.errorRateThreshold,
        rpoSec: ctl.rpoSec,
        rtoSec: ctl.rtoSec,
      },
      ...(lab ? { lab: { state: lab.state, api: this.#o.lab?.api ?? lab.api, partitions: lab.wan?.partitions ?? [], wan: { ...(lab.wan?.shape ?? {}) } } } : {}),
      regions: this.#regions(leader),
      directions: this.#directions(leader),
      geographies: geo.geographies,
      tiles: geo.tiles,
      alerts: this.#tracker.toJSON(),
      timeline: this.#timelineView(),
      audit: [...this.#audit.values()].sort((a, b) => b.at.localeCompare(a.at)).slice(0, 100),
      conflicts,
      reports: this.#reports,
      sources: this.#defs.map((d) => {
        const st = this.#state.get(d.id);
        return {
          id: d.id,
          kind: d.kind,
          ...(d.region ? { region: d.region } : {}),
          url: d.url,
          up: st?.up,
          ...(st?.lastOkAt ? { lastOkAt: new Date(st.lastOkAt).toISOString() } : {}),
          ...(st?.error ? { error: st.error } : {}),
          ...(st?.latencyMs !== undefined ? { latencyMs: st.latencyMs } : {}),
        };
      }),
      series: this.#series.meta(),
    };
  }

  #pushSeries(now: number, s: DashboardSnapshot): SeriesPoint {
    const values = new Map<string, { meta: SeriesMeta; value: number | null }>();
    for (const d of s.directions) {
      values.set(`lag:${d.source}>${d.target}`, {
        meta: { key: `lag:${d.source}>${d.target}`, group: 'lag', label: `${d.source} → ${d.target}`, unit: 's', region: d.source },
        value: d.lagSec ?? null,
      });
    }
    for (const r of s.regions) {
      values.set(`http:${r.name}`, { meta: { key: `http:${r.name}`, group: 'http', label: `${r.name} req/s`, unit: '/s', region: r.name }, value: r.http?.rps ?? null });
      values.set(`http5xx:${r.name}`, { meta: { key: `http5xx:${r.name}`, group: 'http', label: `${r.name} 5xx/s`, unit: '/s', region: r.name, dashed: true }, value: r.http?.errorsPerSec ?? null });
      values.set(`dns:${r.name}`, { meta: { key: `dns:${r.name}`, group: 'dns', label: `answers → ${r.name}`, unit: '/s', region: r.name }, value: r.dnsAnswersPerSec ?? null });
    }
    return this.#series.push(Math.round(now / 100) / 10, values);
  }

  #alertInputs(s: DashboardSnapshot): AlertInputs {
    const windowed = new Map(s.regions.map((r) => [r.name, r.http]));
    return {
      lag: s.directions.map((d) => ({ source: d.source, target: d.target, lagSec: d.lagSec })),
      paused: this.config.regions.filter((r) => r.agent).map((r) => ({ region: r.name, tables: this.#agents.get(r.name)?.paused })),
      http: this.config.regions.map((r) => {
        const h = windowed.get(r.name);
        return { region: r.name, requests: h ? h.windowRequests : undefined, errors5xx: h ? h.windowErrors5xx : undefined };
      }),
      health: s.regions.map((r) => ({ target: r.name, vantages: r.vantages.flatMap((v) => (v.state === 'unreachable' ? [] : [{ vantage: v.vantage, state: v.state }])) })),
      drains: s.regions.map((r) => ({ region: r.name, drained: r.drained, ...(r.drainReason ? { reason: r.drainReason } : {}) })),
    };
  }

  #evaluate(now: number, s: DashboardSnapshot): void {
    const c = this.config;
    const thresholds: AlertThresholds = {
      lagWarnSec: c.replication.lagWarnSec,
      lagCriticalSec: c.replication.lagCriticalSec,
      errorRateThreshold: c.alerts.errorRateThreshold,
      errorRateMinRequests: c.alerts.errorRateMinRequests,
      errorRateWindowSec: c.alerts.errorRateWindowSec,
    };
    const notes = this.#tracker.update(now, evaluateConditions(this.#alertInputs(s), thresholds));
    for (const n of notes) {
      this.#metrics?.notifications.inc({ severity: n.severity });
      const region = String(n.fields?.target ?? n.fields?.region ?? n.fields?.source ?? '');
      this.#addTimeline(`n|${n.key}|${n.severity}|${now}`, {
        at: new Date(now).toISOString(),
        source: 'alert',
        ...(region ? { region } : {}),
        kind: n.severity === 'resolved' ? 'alert-resolved' : 'alert',
        severity: n.severity,
        message: n.title,
      });
      try {
        this.#notify(n);
      } catch (err) {
        this.#log.warn({ err }, 'alert notification failed');
      }
    }
    if (this.#metrics) {
      this.#metrics.firing.reset();
      for (const a of this.#tracker.active()) this.#metrics.firing.inc({ alert: a.kind, severity: a.severity });
    }
  }

  async #readConflicts(r: RegionConfig): Promise<void> {
    const id = `database:${r.name}`;
    const st = this.#state.get(id) ?? { up: undefined };
    this.#state.set(id, st);
    let p = this.#pg.get(r.name);
    if (!p) {
      const i = this.config.regions.indexOf(r);
      p = connectClient(r.database, { applicationName: 'tandem-dashboard' }, `regions[${i}].database`).then(async (c) => {
        c.on('error', () => this.#pg.delete(r.name));
        // Read-only and bounded: the dashboard never changes a region's data or holds it up.
        await c.query("SET default_transaction_read_only = on; SET statement_timeout = '2s'; SET lock_timeout = '1s'");
        return c;
      });
      this.#pg.set(r.name, p);
    }
    try {
      const client = await p;
      const { rows } = await client.query(
        `SELECT id::text AS id, at, peer, relname, pk, kind, decision, reason, local_region, remote_region, local_commit_ts, remote_commit_ts
           FROM tandem.conflicts ORDER BY id DESC LIMIT 20`,
      );
      this.#conflicts.set(r.name, rows.flatMap((x) => parseConflictRow(x, r.name) ?? []));
      st.up = true;
      st.lastOkAt = Date.now();
      delete st.error;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === '42P01' || code === '3F000') {
        // No tandem schema (replication not set up here): nothing to show, and not an error.
        this.#conflicts.set(r.name, []);
        st.up = true;
        st.lastOkAt = Date.now();
        return;
      }
      st.up = false;
      st.error = (err as Error).message.slice(0, 300);
      this.#pg.delete(r.name);
      void p.then((c) => c.end()).catch(() => {});
    }
  }

}

/** `GET <dashboard>/v1/alerts`: the alerts firing now (for `tandem status`). */
export async function fetchAlerts(url: string, opts: { token?: string; timeoutMs?: number } = {}): Promise<AlertJson[]> {
  const base = url.replace(/\/+$/, '');
  const body = await callApi<{ alerts?: AlertJson[] }>(`${base}/v1/alerts`, { token: opts.token, timeoutMs: opts.timeoutMs ?? 3_000 });
  return Array.isArray(body?.alerts) ? body.alerts : [];
}

/** For tests: wait until the collector has polled `n` more times. */
export function nextUpdates(c: Collector, n = 1, timeoutMs = 10_000): Promise<DashboardUpdate> {
  return new Promise((resolve, reject) => {
    let left = n;
    const timer = setTimeout(() => {
      off();
      reject(new Error(`no collector update within ${timeoutMs} ms`));
    }, timeoutMs);
    const off = c.subscribe((u) => {
      if (--left > 0) return;
      clearTimeout(timer);
      off();
      resolve(u);
    });
  });
}

