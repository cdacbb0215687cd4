/**
 * The blueprint's outage runbook (its section 10) as a pure state machine per
 * region: detect → confirm → act (drain) → cutover check (RPO) → communicate →
 * recover → failback → reconcile. No I/O here: the controller feeds it
 * observations and carries out what it decides, so every rule is testable.
 */
import type { ControlConfig } from '../core/config/index.ts';
import { TandemError } from '../core/errors.ts';

/** Where a region is in the runbook. */
export type Phase =
  /** In DNS answers and healthy. */
  | 'serving'
  /** At least one vantage point sees it unhealthy; not confirmed yet. */
  | 'suspect'
  /** Confirmed failed; waiting for an operator (autoDrain off, or RPO breach with policy hold) or for the wait period. */
  | 'failed'
  /** Out of DNS answers (automatically or by an operator). */
  | 'drained'
  /** Drained, healthy again, waiting for its replication to catch up. */
  | 'recovering';

/** What the controller saw of one region in one tick. */
export interface RegionObservation {
  name: string;
  /** Vantage points (DNS servers) that see it unhealthy, plus one if its own DNS server is unreachable. */
  votesUnhealthy: number;
  /** Vantage points that see it healthy (or not yet probed). */
  votesHealthy: number;
  /** When (ms) enough vantage points to confirm a failure had seen it unhealthy (the quorum-th earliest report). */
  unhealthySince?: number;
  /** This region's replication from each peer: seconds behind, and the source commit time (ms) of the last change applied. Absent when its database cannot be read. */
  lagFrom?: Record<string, PeerLagObservation>;
}

/** This region's replication from one peer. */
export interface PeerLagObservation {
  lagSec: number;
  /** Source commit time (ms) of the last change or heartbeat applied from the peer. */
  sourceCommitAt: number | undefined;
  /**
   * The worst lag seen from the peer in the half minute before it was last known
   * alive (the controller keeps the history). When the peer dies, this is how far
   * behind this region was at the failure, which the growing current lag is not.
   */
  lagBeforeFailureSec?: number;
}

export interface Observation {
  now: number;
  regions: RegionObservation[];
}

/** The runbook's memory of one region. */
export interface RegionRunbook {
  name: string;
  phase: Phase;
  since: number;
  drainedBy?: 'auto' | 'operator';
  /** An operator drained it past the last-serving-region rule (`--force`): DNS servers must be told to force it too. */
  drainForced?: boolean;
  /** Last automatic action on this region (the wait period counts from here). */
  lastAutoActionAt?: number;
  /** The current or last failure. */
  failure?: {
    detectedAt: number;
    confirmedAt: number;
    drainedAt?: number;
    /** Per survivor: seconds of this region's writes it may miss (failure time − last applied commit from it). */
    rpoExposureSec?: Record<string, number>;
    rpoBreached?: boolean;
    /** Survivors whose lag behind this region could not be read at the cutover check (said once). */
    rpoUnknown?: string[];
    /** The runbook waits for an operator; said once. */
    awaitingOperator?: boolean;
    /** The safety rule kept it in DNS (it was the last serving region); said once. */
    drainRefused?: boolean;
    recoveredAt?: number;
    readyAt?: number;
    failedBackAt?: number;
  };
}

/** Something that happened, for the audit log, notifications and the timeline. */
export interface RunbookEvent {
  at: number;
  region: string;
  kind:
    | 'suspect'
    | 'cleared'
    | 'confirmed'
    | 'drained'
    | 'drain-refused'
    | 'rpo-breach'
    | 'awaiting-operator'
    | 'recovering'
    | 'ready'
    | 'failed-back'
    | 'relapsed';
  severity: 'info' | 'warning' | 'critical' | 'resolved';
  message: string;
  details?: Record<string, unknown>;
  /** Who acted: `controller:<region>` or the operator. */
  actor: string;
}

/** The settings the runbook uses (from `control` and `health`). */
export type RunbookConfig = Pick<ControlConfig, 'autoDrain' | 'autoFailback' | 'readinessLagSec' | 'waitPeriodSec' | 'rpoSec' | 'rpoBreach'> & {
  /** Votes needed to confirm a failure. */
  quorum: number;
};

/** True when the region is in DNS answers (as far as the runbook decides). */
/**
 * When a failure was confirmed, from the times (ms) vantage points reported the region unhealthy: the
 * quorum-th earliest. One vantage point that has seen it unhealthy for a day (a broken probe path) must not
 * date a failure of today back to yesterday, which would hide the survivors' lag from the cutover check.
 * With fewer dated reports than the quorum (a vote without a time), the latest of them.
 */
export function quorumSince(sinces: readonly number[], quorum: number): number | undefined {
  if (sinces.length === 0) return undefined;
  const sorted = [...sinces].sort((a, b) => a - b);
  return sorted[Math.min(Math.max(1, quorum), sorted.length) - 1];
}

export function inRotation(r: RegionRunbook): boolean {
  return r.phase === 'serving' || r.phase === 'suspect' || r.phase === 'failed';
}

/** The runbook for every region. */
export class Runbook {
  readonly regions: Map<string, RegionRunbook>;
  readonly #cfg: RunbookConfig;
  readonly #actor: string;

  constructor(names: string[], cfg: RunbookConfig, actor: string, now = Date.now()) {
    this.#cfg = cfg;
    this.#actor = actor;
    this.regions = new Map(names.map((name) => [name, { name, phase: 'serving', since: now }]));
  }

  /** Adopt drains already in effect (e.g. found in the DNS servers' persisted state at start-up). */
  adoptDrained(name: string, by: 'auto' | 'operator', now = Date.now()): void {
    const r = this.#get(name);
    if (r.phase === 'drained' || r.phase === 'recovering') return;
    Object.assign(r, { phase: 'drained', since: now, drainedBy: by });
  }

  /** The regions that must be drained in DNS. */
  drainedSet(): Set<string> {
    return new Set([...this.regions.values()].filter((r) => !inRotation(r)).map((r) => r.name));
  }

  #get(name: string): RegionRunbook {
    const r = this.regions.get(name);
    if (!r) throw new TandemError('TANDEM_ERR_NOT_FOUND', `unknown region "${name}" (known: ${[...this.regions.keys()].join(', ')})`);
    return r;
  }

  #confirmedFailed(o: RegionObservation): boolean {
    return o.votesUnhealthy >= this.#cfg.quorum;
  }

  #healthy(o: RegionObservation): boolean {
    return o.votesUnhealthy === 0 && o.votesHealthy > 0;
  }

  /** Regions other than `name` that are in rotation and healthy now. */
  #otherServing(name: string, obs: Map<string, RegionObservation>): string[] {
    return [...this.regions.values()].filter((r) => r.name !== name && inRotation(r) && obs.get(r.name) && this.#healthy(obs.get(r.name)!)).map((r) => r.name);
  }

  /**
   * Seconds of `failed`'s writes each survivor may miss: its replication lag
   * from the failed region just before the failure when the controller saw it,
   * else the failure time − the last change it applied from there.
   */
  #rpoExposure(failed: string, at: number, obs: Map<string, RegionObservation>, survivors: string[]): { exposure: Record<string, number>; unknown: string[] } {
    const exposure: Record<string, number> = {};
    const unknown: string[] = [];
    for (const s of survivors) {
      const lag = obs.get(s)?.lagFrom?.[failed];
      if (!lag) unknown.push(s);
      else if (lag.lagBeforeFailureSec !== undefined) exposure[s] = lag.lagBeforeFailureSec;
      else exposure[s] = lag.sourceCommitAt === undefined ? lag.lagSec : Math.max(0, (at - lag.sourceCommitAt) / 1000);
    }
    return { exposure, unknown };
  }

  /** Seconds behind `from` for region `to` (undefined when unknown). */
  #lag(to: string, from: string, obs: Map<string, RegionObservation>): number | undefined {
    return obs.get(to)?.lagFrom?.[from]?.lagSec;
  }

  /** Feed one round of observations; returns the events of this step. */
  step(observation: Observation): RunbookEvent[] {
    const now = observation.now;
    const obs = new Map(observation.regions.map((o) => [o.name, o]));
    const events: RunbookEvent[] = [];
    const ev = (r: RegionRunbook, kind: RunbookEvent['kind'], severity: RunbookEvent['severity'], message: string, details?: Record<string, unknown>) =>
      events.push({ at: now, region: r.name, kind, severity, message, actor: this.#actor, ...(details ? { details } : {}) });
    const waitOver = (r: RegionRunbook) => r.lastAutoActionAt === undefined || now - r.lastAutoActionAt >= this.#cfg.waitPeriodSec * 1000;

    for (const r of this.regions.values()) {
      const o = obs.get(r.name);
      if (!o) continue;
      switch (r.phase) {
        case 'serving':
        case 'suspect': {
          if (this.#confirmedFailed(o)) {
            const detectedAt = o.unhealthySince ?? now;
            r.failure = { detectedAt, confirmedAt: now };
            Object.assign(r, { phase: 'failed', since: now });
            ev(r, 'confirmed', 'critical', `${r.name} failed: ${o.votesUnhealthy} vantage points agree`, { votesUnhealthy: o.votesUnhealthy, detectedAt: new Date(detectedAt).toISOString() });
            this.#tryDrain(r, obs, now, ev, waitOver);
          } else if (o.votesUnhealthy > 0 && r.phase === 'serving') {
            Object.assign(r, { phase: 'suspect', since: now });
            ev(r, 'suspect', 'warning', `${r.name} looks unhealthy from ${o.votesUnhealthy} vantage point(s); confirming`);
          } else if (o.votesUnhealthy === 0 && r.phase === 'suspect') {
            Object.assign(r, { phase: 'serving', since: now });
            ev(r, 'cleared', 'info', `${r.name} healthy again before confirmation`);
          }
          break;
        }
        case 'failed': {
          if (this.#healthy(o)) {
            Object.assign(r, { phase: 'serving', since: now });
            if (r.failure) r.failure.recoveredAt = now;
            ev(r, 'cleared', 'resolved', `${r.name} recovered before it was drained`);
          } else {
            this.#tryDrain(r, obs, now, ev, waitOver);
          }
          break;
        }
        case 'drained': {
          if (r.drainedBy === 'auto' && this.#healthy(o)) {
            Object.assign(r, { phase: 'recovering', since: now });
            if (r.failure) r.failure.recoveredAt = now;
            ev(r, 'recovering', 'info', `${r.name} is healthy again; it stays drained until its replication catches up (< ${this.#cfg.readinessLagSec} s)`);
          }
          break;
        }
        case 'recovering': {
          if (this.#confirmedFailed(o)) {
            Object.assign(r, { phase: 'drained', since: now });
            ev(r, 'relapsed', 'warning', `${r.name} failed again while recovering; it stays drained`);
            break;
          }
          // Back only when healthy from every vantage point (as a manual failback requires), not merely below the quorum.
          if (!this.#healthy(o)) break;
          const peers = [...this.regions.keys()].filter((n) => n !== r.name);
          const lags = Object.fromEntries(peers.map((p) => [p, this.#lag(r.name, p, obs)]));
          const ready = peers.every((p) => lags[p] !== undefined && lags[p]! <= this.#cfg.readinessLagSec);
          if (!ready) break;
          if (r.failure && !r.failure.readyAt) {
            r.failure.readyAt = now;
            ev(r, 'ready', 'info', `${r.name} caught up (lag ${JSON.stringify(lags)} s)`, { lagSec: lags });
          }
          if (this.#cfg.autoFailback && waitOver(r)) {
            Object.assign(r, { phase: 'serving', since: now, lastAutoActionAt: now });
            delete r.drainedBy;
            delete r.drainForced;
            if (r.failure) r.failure.failedBackAt = now;
            ev(r, 'failed-back', 'resolved', `${r.name} is back in DNS answers`, this.#failureDetails(r));
          }
          break;
        }
      }
    }
    return events;
  }

  #failureDetails(r: RegionRunbook): Record<string, unknown> {
    const f = r.failure;
    if (!f) return {};
    const iso = (t?: number) => (t === undefined ? undefined : new Date(t).toISOString());
    return {
      detectedAt: iso(f.detectedAt),
      confirmedAt: iso(f.confirmedAt),
      drainedAt: iso(f.drainedAt),
      recoveredAt: iso(f.recoveredAt),
      readyAt: iso(f.readyAt),
      failedBackAt: iso(f.failedBackAt),
      rpoExposureSec: f.rpoExposureSec,
    };
  }

  #tryDrain(
    r: RegionRunbook,
    obs: Map<string, RegionObservation>,
    now: number,
    ev: (r: RegionRunbook, kind: RunbookEvent['kind'], severity: RunbookEvent['severity'], message: string, details?: Record<string, unknown>) => void,
    waitOver: (r: RegionRunbook) => boolean,
  ): void {
    const survivors = this.#otherServing(r.name, obs);
    const f = r.failure!;
    if (survivors.length === 0) {
      // Never drain the last serving region: DNS fails open instead. The cutover check waits for survivors.
      if (!f.drainRefused) ev(r, 'drain-refused', 'critical', `not draining ${r.name}: no other region is serving (safety rule); DNS fails open`);
      f.drainRefused = true;
      return;
    }
    if (f.rpoExposureSec === undefined) {
      const { exposure, unknown } = this.#rpoExposure(r.name, f.detectedAt, obs, survivors);
      const worst = Math.max(0, ...Object.values(exposure));
      // A survivor whose lag cannot be read may be any distance behind: a breach until it is known.
      f.rpoBreached = worst > this.#cfg.rpoSec || unknown.length > 0;
      // Kept once complete (or when nothing will wait for it); else checked again next round.
      if (unknown.length === 0 || this.#cfg.rpoBreach === 'proceed') f.rpoExposureSec = exposure;
      const details = { rpoExposureSec: exposure, ...(unknown.length ? { unknown } : {}), policy: this.#cfg.rpoBreach };
      if (unknown.length > 0 && f.rpoUnknown?.join() !== unknown.join()) {
        ev(r, 'rpo-breach', 'critical', `cutover check: cannot read how far ${unknown.join(', ')} ${unknown.length === 1 ? 'is' : 'are'} behind ${r.name}; treated as above the RPO of ${this.#cfg.rpoSec} s`, details);
      } else if (unknown.length === 0 && worst > this.#cfg.rpoSec) {
        ev(r, 'rpo-breach', 'critical', `cutover check: survivors may miss up to ${worst.toFixed(1)} s of ${r.name}'s writes, above the RPO of ${this.#cfg.rpoSec} s`, details);
      }
      f.rpoUnknown = unknown;
    }
    if (!this.#cfg.autoDrain || (f.rpoBreached && this.#cfg.rpoBreach === 'hold')) {
      if (r.phase === 'failed' && !f.awaitingOperator) ev(r, 'awaiting-operator', 'critical', `${r.name} failed; waiting for an operator to run \`tandem failover --drain ${r.name}\``);
      f.awaitingOperator = true;
      return;
    }
    if (!waitOver(r)) return;
    Object.assign(r, { phase: 'drained', since: now, drainedBy: 'auto', lastAutoActionAt: now });
    f.drainedAt = now;
    ev(r, 'drained', 'critical', `${r.name} drained from DNS; traffic goes to ${survivors.join(', ')}`, { survivors, rpoExposureSec: f.rpoExposureSec });
  }

  /** An operator drains a region (`tandem failover --drain`). */
  manualDrain(name: string, observation: Observation, opts: { actor: string; force?: boolean; reason?: string }): RunbookEvent {
    const r = this.#get(name);
    const obs = new Map(observation.regions.map((o) => [o.name, o]));
    const now = observation.now;
    if (!inRotation(r)) throw new TandemError('TANDEM_ERR_STATE', `${name} is already drained`);
    const survivors = this.#otherServing(name, obs);
    if (survivors.length === 0 && !opts.force) {
      throw new TandemError('TANDEM_ERR_SAFETY', `refusing to drain ${name}: it is the last serving region`);
    }
    // Lag of the targets behind the region being drained: at its failure time if it failed, else now.
    const o = obs.get(name);
    const at = o && this.#confirmedFailed(o) ? (o.unhealthySince ?? now) : now;
    const { exposure, unknown } = this.#rpoExposure(name, at, obs, survivors);
    // A survivor whose lag cannot be read counts as lagging: its loss is unknown.
    const lagging = [...Object.entries(exposure).filter(([, sec]) => sec > this.#cfg.rpoSec), ...unknown.map((s) => [s, Infinity] as [string, number])];
    if (survivors.length > 0 && lagging.length === survivors.length && !opts.force) {
      throw new TandemError(
        'TANDEM_ERR_RPO',
        `refusing to fail over from ${name}: ${lagging.map(([s, sec]) => (sec === Infinity ? `how far ${s} is behind it cannot be read` : `${s} is ${sec.toFixed(1)} s behind it`)).join(', ')}, above the RPO of ${this.#cfg.rpoSec} s (use --force to accept the loss)`,
      );
    }
    Object.assign(r, { phase: 'drained', since: now, drainedBy: 'operator', drainForced: survivors.length === 0 });
    r.failure = { ...(r.failure ?? { detectedAt: now, confirmedAt: now }), drainedAt: now, rpoExposureSec: exposure };
    return {
      at: now,
      region: name,
      kind: 'drained',
      severity: 'warning',
      actor: opts.actor,
      message: `${name} drained by ${opts.actor}${opts.reason ? `: ${opts.reason}` : ''}${opts.force ? ' (forced)' : ''}`,
      details: { survivors, rpoExposureSec: exposure, force: Boolean(opts.force) },
    };
  }

  /** An operator returns a drained region (`tandem failback`). */
  manualFailback(name: string, observation: Observation, opts: { actor: string; force?: boolean; reason?: string }): RunbookEvent {
    const r = this.#get(name);
    const obs = new Map(observation.regions.map((o) => [o.name, o]));
    if (inRotation(r)) throw new TandemError('TANDEM_ERR_STATE', `${name} is not drained`);
    const o = obs.get(name);
    if (!opts.force) {
      if (!o || !this.#healthy(o)) throw new TandemError('TANDEM_ERR_SAFETY', `refusing to fail back ${name}: it is not healthy from every vantage point`);
      const peers = [...this.regions.keys()].filter((n) => n !== name);
      const behind = peers.filter((p) => {
        const lag = this.#lag(name, p, obs);
        return lag === undefined || lag > this.#cfg.readinessLagSec;
      });
      if (behind.length) {
        throw new TandemError(
          'TANDEM_ERR_RPO',
          `refusing to fail back ${name}: its replication from ${behind.map((p) => `${p} (${this.#lag(name, p, obs)?.toFixed(1) ?? 'unknown'} s)`).join(', ')} is above the readiness lag of ${this.#cfg.readinessLagSec} s (use --force)`,
        );
      }
    }
    const now = observation.now;
    Object.assign(r, { phase: 'serving', since: now });
    delete r.drainedBy;
    delete r.drainForced;
    if (r.failure) r.failure.failedBackAt = now;
    return {
      at: now,
      region: name,
      kind: 'failed-back',
      severity: 'resolved',
      actor: opts.actor,
      message: `${name} returned to DNS by ${opts.actor}${opts.reason ? `: ${opts.reason}` : ''}${opts.force ? ' (forced)' : ''}`,
      details: this.#failureDetails(r),
    };
  }
}
