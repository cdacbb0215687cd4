/**
 * The health engine: probes each region's health URL at a fixed cadence and
 * keeps one state per region with fail/recover thresholds. DNS, the
 * controller and the dashboard share it through `HealthSource`.
 */
import { EventEmitter } from 'node:events';
import { Counter, Gauge, Histogram, type Registry } from 'prom-client';
import { BaseService } from '../core/lifecycle.ts';
import type { Logger } from '../core/log.ts';
import { silentLogger } from '../core/log.ts';
import type { HealthConfig } from '../core/config/health.ts';
import { probe, type ProbeResult } from './probe.ts';

/** `unknown` until the first decisive probe; it counts as serving. */
export type HealthState = 'unknown' | 'healthy' | 'unhealthy';

/** What is known about one region's health. */
export interface RegionHealth {
  region: string;
  state: HealthState;
  since: Date;
  consecutiveFailures: number;
  consecutiveSuccesses: number;
  lastProbe?: { at: Date; ok: boolean; latencyMs: number; status?: number; error?: string };
}

/** One state change, with the reason that caused it. */
export interface HealthTransition {
  region: string;
  from: HealthState;
  to: HealthState;
  at: Date;
  reason: string;
}

/** The interface other parts depend on: current states and transition events. */
export interface HealthSource {
  snapshot(): RegionHealth[];
  get(region: string): RegionHealth | undefined;
  on(event: 'transition', fn: (t: HealthTransition) => void): this;
  off(event: 'transition', fn: (t: HealthTransition) => void): this;
}

/** True when a state counts as serving (unknown is serving until proven unhealthy). */
export function isServing(state: HealthState): boolean {
  return state !== 'unhealthy';
}

/** A probe target: a region name and its health URL. */
export interface HealthTarget {
  region: string;
  url: string;
}

/** Options of `HealthChecker`. */
export interface HealthCheckerOptions {
  targets: HealthTarget[];
  config: Pick<HealthConfig, 'intervalMs' | 'timeoutMs' | 'failThreshold' | 'recoverThreshold'> & { bindAddress?: string | undefined; maxBodyBytes?: number };
  logger?: Logger;
  /** Metrics go here (probe results, latency, state, transitions). */
  registry?: Registry;
  /** Seed states (e.g. carried over a reload) by region name. */
  initial?: Map<string, RegionHealth>;
  /** The probe function (tests of the threshold logic may pass their own). */
  probeFn?: typeof probe;
}

interface Metrics {
  probes: Counter<'target' | 'result'>;
  latency: Histogram<'target'>;
  state: Gauge<'target' | 'state'>;
  transitions: Counter<'target' | 'to'>;
}

const metricsByRegistry = new WeakMap<Registry, Metrics>();

function metricsFor(registry: Registry): Metrics {
  let m = metricsByRegistry.get(registry);
  if (!m) {
    m = {
      probes: new Counter({ name: 'tandem_health_probes_total', help: 'Health probes by target region and result', labelNames: ['target', 'result'], registers: [registry] }),
      latency: new Histogram({
        name: 'tandem_health_probe_latency_seconds',
        help: 'Health probe latency by target region',
        labelNames: ['target'],
        buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5],
        registers: [registry],
      }),
      state: new Gauge({ name: 'tandem_health_state', help: '1 for the current health state of each target region', labelNames: ['target', 'state'], registers: [registry] }),
      transitions: new Counter({ name: 'tandem_health_transitions_total', help: 'Health state transitions by target region and new state', labelNames: ['target', 'to'], registers: [registry] }),
    };
    metricsByRegistry.set(registry, m);
  }
  return m;
}

/** Probes every target each `intervalMs`; see `HealthSource` for what it exposes. */
export class HealthChecker extends BaseService implements HealthSource {
  readonly name = 'health-checker';
  readonly #emitter = new EventEmitter();
  readonly #opts: HealthCheckerOptions;
  readonly #log: Logger;
  readonly #states = new Map<string, RegionHealth>();
  readonly #timers: NodeJS.Timeout[] = [];
  readonly #inFlight = new Set<string>();
  readonly #metrics: Metrics | undefined;
  #abort = new AbortController();

  constructor(opts: HealthCheckerOptions) {
    super();
    this.#opts = opts;
    this.#log = opts.logger ?? silentLogger();
    this.#metrics = opts.registry ? metricsFor(opts.registry) : undefined;
    const now = new Date();
    for (const t of opts.targets) {
      const seed = opts.initial?.get(t.region);
      this.#states.set(t.region, seed ? { ...seed } : { region: t.region, state: 'unknown', since: now, consecutiveFailures: 0, consecutiveSuccesses: 0 });
      this.#setStateGauge(t.region);
    }
  }

  snapshot(): RegionHealth[] {
    return [...this.#states.values()].map((s) => ({ ...s }));
  }

  get(region: string): RegionHealth | undefined {
    const s = this.#states.get(region);
    return s ? { ...s } : undefined;
  }

  on(event: 'transition', fn: (t: HealthTransition) => void): this {
    this.#emitter.on(event, fn);
    return this;
  }

  off(event: 'transition', fn: (t: HealthTransition) => void): this {
    this.#emitter.off(event, fn);
    return this;
  }

  protected async onStart(): Promise<void> {
    this.#abort = new AbortController();
    const { intervalMs } = this.#opts.config;
    this.#opts.targets.forEach((t, i) => {
      // Spread first probes a little so N targets do not fire in one burst.
      const offset = Math.min(intervalMs, 50) * (i / Math.max(1, this.#opts.targets.length));
      const first = setTimeout(() => {
        void this.#probeOnce(t);
        // A fixed cadence (not "interval after the last probe ended") keeps
        // detection time bounded by interval × threshold + timeout.
        const every = setInterval(() => void this.#probeOnce(t), intervalMs);
        this.#timers.push(every);
      }, offset);
      this.#timers.push(first);
    });
  }

  protected async onStop(): Promise<void> {
    for (const t of this.#timers) {
      clearTimeout(t);
      clearInterval(t);
    }
    this.#timers.length = 0;
    this.#abort.abort();
    this.#emitter.removeAllListeners();
  }

  async #probeOnce(target: HealthTarget): Promise<void> {
    if (this.#inFlight.has(target.region) || this.#abort.signal.aborted) return;
    this.#inFlight.add(target.region);
    try {
      const probeFn = this.#opts.probeFn ?? probe;
      const { timeoutMs, bindAddress, maxBodyBytes } = this.#opts.config;
      const result = await probeFn(target.url, { timeoutMs, bindAddress, maxBodyBytes, signal: this.#abort.signal });
      if (this.#abort.signal.aborted) return;
      this.record(target.region, result);
    } finally {
      this.#inFlight.delete(target.region);
    }
  }

  /** Apply one probe result to a region's state (public so the threshold logic is testable on its own). */
  record(region: string, result: ProbeResult, at = new Date()): void {
    const s = this.#states.get(region);
    if (!s) return;
    s.lastProbe = { at, ok: result.ok, latencyMs: result.latencyMs, ...(result.status !== undefined ? { status: result.status } : {}), ...(result.error ? { error: result.error } : {}) };
    this.#metrics?.probes.inc({ target: region, result: result.ok ? 'ok' : 'fail' });
    this.#metrics?.latency.observe({ target: region }, result.latencyMs / 1000);
    const { failThreshold, recoverThreshold } = this.#opts.config;
    if (result.ok) {
      s.consecutiveSuccesses++;
      s.consecutiveFailures = 0;
      // From unknown one success decides; from unhealthy it takes recoverThreshold.
      if (s.state === 'unknown' || (s.state === 'unhealthy' && s.consecutiveSuccesses >= recoverThreshold)) {
        this.#transition(s, 'healthy', `${s.consecutiveSuccesses} consecutive successful probe(s)`, at);
      }
    } else {
      s.consecutiveFailures++;
      s.consecutiveSuccesses = 0;
      if (s.state !== 'unhealthy' && s.consecutiveFailures >= failThreshold) {
        this.#transition(s, 'unhealthy', `${s.consecutiveFailures} consecutive failed probe(s), last: ${result.error ?? 'failed'}`, at);
      }
    }
  }

  #transition(s: RegionHealth, to: HealthState, reason: string, at: Date): void {
    const from = s.state;
    s.state = to;
    s.since = at;
    this.#setStateGauge(s.region);
    this.#metrics?.transitions.inc({ target: s.region, to });
    const t: HealthTransition = { region: s.region, from, to, at, reason };
    this.#log.info({ transition: { ...t, at: at.toISOString() } }, `region ${s.region} ${from} -> ${to}: ${reason}`);
    this.#emitter.emit('transition', t);
  }

  #setStateGauge(region: string): void {
    const m = this.#metrics;
    const s = this.#states.get(region);
    if (!m || !s) return;
    for (const state of ['unknown', 'healthy', 'unhealthy'] as const) m.state.set({ target: region, state }, s.state === state ? 1 : 0);
  }
}
