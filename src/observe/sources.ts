/**
 * Reading the other daemons' API answers defensively. The collector polls
 * daemons that may be older or newer than it, or half-started; every field is
 * checked, and a missing one is "unknown", never an exception.
 *
 * Shapes read (from their code):
 *   - DNS admin `GET /v1/state` (src/dns/daemon.ts `stateView`): `{ region,
 *     regions: [{ name, health: { state, since }, drained, drainReason?,
 *     serving, weights? }] }`;
 *   - controller `GET /v1/status` (`ControllerStatus`, src/control/controller.ts)
 *     and `GET /v1/audit` (`{ entries: AuditEntry[] }`);
 *   - app `/healthz` (`HealthReport`, src/app/health.ts);
 *   - replication agent `GET /v1/status`: per peer (the source of a
 *     direction into this region) lag in seconds and bytes, applied tx/s,
 *     conflicts, paused tables. Several spellings are accepted (see
 *     `parseAgentStatus`).
 */

export type HealthState = 'unknown' | 'healthy' | 'unhealthy';

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' && v !== '' ? v : undefined);
const num = (v: unknown): number | undefined => {
  if (typeof v === 'number' && Number.isFinite(v)) return v;
  if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) return Number(v);
  return undefined;
};

/** The first defined value among dotted paths of `o`. */
function pick(o: Obj, paths: readonly string[]): unknown {
  for (const p of paths) {
    let cur: unknown = o;
    for (const part of p.split('.')) {
      if (!isObj(cur)) {
        cur = undefined;
        break;
      }
      cur = cur[part];
    }
    if (cur !== undefined && cur !== null) return cur;
  }
  return undefined;
}

/** A list given as an array of objects or as an object keyed by name (the key becomes `nameKey`). */
function entries(v: unknown, nameKey: string): Obj[] {
  if (Array.isArray(v)) return v.filter(isObj);
  if (isObj(v)) return Object.entries(v).filter(([, x]) => isObj(x)).map(([k, x]) => ({ [nameKey]: k, ...(x as Obj) }));
  return [];
}

/** One region as a DNS server sees it. */
export interface DnsRegion {
  name: string;
  health: HealthState;
  healthSince?: string;
  drained: boolean;
  drainReason?: string;
  drainedAt?: string;
  serving: boolean;
  weights?: Record<string, number>;
}

/** A DNS server's state. */
export interface DnsState {
  region: string | undefined;
  regions: DnsRegion[];
}

function healthState(v: unknown): HealthState {
  return v === 'healthy' || v === 'unhealthy' ? v : 'unknown';
}

/** Parse `GET /v1/state` of a DNS server. */
export function parseDnsState(body: unknown): DnsState {
  if (!isObj(body)) return { region: undefined, regions: [] };
  const regions = entries(body.regions, 'name').flatMap((r): DnsRegion[] => {
    const name = str(r.name);
    if (!name) return [];
    const h = r.health;
    const health = healthState(isObj(h) ? h.state : h);
    const drained = r.drained === true;
    const out: DnsRegion = { name, health, drained, serving: typeof r.serving === 'boolean' ? r.serving : !drained && health !== 'unhealthy' };
    const since = isObj(h) ? str(h.since) : undefined;
    if (since) out.healthSince = since;
    if (str(r.drainReason)) out.drainReason = str(r.drainReason)!;
    if (str(r.drainedAt)) out.drainedAt = str(r.drainedAt)!;
    if (isObj(r.weights)) {
      const w: Record<string, number> = {};
      for (const [k, v] of Object.entries(r.weights)) if (num(v) !== undefined) w[k] = num(v)!;
      if (Object.keys(w).length) out.weights = w;
    }
    return [out];
  });
  return { region: str(body.region), regions };
}

/** One direction into the agent's region. */
export interface AgentPeer {
  /** The source region (the peer whose changes this region applies). */
  peer: string;
  lagSec?: number;
  lagBytes?: number;
  txPerSec?: number;
  rowsPerSec?: number;
  /** Conflicts resolved so far (total). */
  conflicts?: number;
  /** Connected / streaming / error text, as the agent says it. */
  state?: string;
  error?: string;
}

/** A replication agent's status. */
export interface AgentStatus {
  region: string | undefined;
  peers: AgentPeer[];
  /** Tables whose apply is paused (schema drift and the like). */
  paused: { table: string; peer?: string; reason?: string }[];
  /** Recent conflicts if the agent lists them. */
  conflicts?: ConflictRow[];
}

/** A recorded conflict (a row of `tandem.conflicts`). */
export interface ConflictRow {
  id?: string;
  /** The region where it was recorded (where the change was applied). */
  region: string;
  at?: string;
  peer?: string;
  table?: string;
  key?: string;
  kind?: string;
  decision?: string;
  reason?: string;
  localRegion?: string;
  remoteRegion?: string;
  localCommitAt?: string;
  remoteCommitAt?: string;
}

function sumConflicts(v: unknown): number | undefined {
  if (num(v) !== undefined) return num(v);
  if (isObj(v)) {
    if (num(v.total) !== undefined) return num(v.total);
    // Counts by kind; an empty object means none yet.
    let t = 0;
    for (const x of Object.values(v)) if (num(x) !== undefined) t += num(x)!;
    return t;
  }
  return undefined;
}

function pausedList(v: unknown, peer?: string): AgentStatus['paused'] {
  if (!Array.isArray(v) && !isObj(v)) return [];
  const items: unknown[] = Array.isArray(v) ? v : Object.entries(v).map(([table, x]) => (isObj(x) ? { table, ...x } : { table, reason: str(x) }));
  return items.flatMap((x) => {
    if (typeof x === 'string') return [{ table: x, ...(peer ? { peer } : {}) }];
    if (!isObj(x)) return [];
    const table = str(pick(x, ['table', 'relname', 'name']));
    if (!table) return [];
    const p = str(pick(x, ['peer', 'source', 'from'])) ?? peer;
    const reason = str(pick(x, ['reason', 'error', 'message']));
    return [{ table, ...(p ? { peer: p } : {}), ...(reason ? { reason } : {}) }];
  });
}

/** Parse a conflict row as the agent or the database gives it (camelCase or column names). */
export function parseConflictRow(x: unknown, region: string): ConflictRow | undefined {
  if (!isObj(x)) return undefined;
  const iso = (v: unknown) => (v instanceof Date ? v.toISOString() : str(v));
  const key = pick(x, ['key', 'pk']);
  const row: ConflictRow = { region };
  const set = <K extends keyof ConflictRow>(k: K, v: ConflictRow[K] | undefined) => {
    if (v !== undefined) row[k] = v;
  };
  set('id', str(x.id) ?? (num(x.id) !== undefined ? String(num(x.id)) : undefined));
  set('at', iso(x.at));
  set('peer', str(x.peer));
  set('table', str(pick(x, ['table', 'relname'])));
  set('key', Array.isArray(key) ? key.map(String).join(', ') : str(key));
  set('kind', str(x.kind));
  set('decision', str(x.decision));
  set('reason', str(x.reason));
  set('localRegion', str(pick(x, ['localRegion', 'local_region'])));
  set('remoteRegion', str(pick(x, ['remoteRegion', 'remote_region'])));
  set('localCommitAt', iso(pick(x, ['localCommitAt', 'localCommitTs', 'local_commit_ts'])));
  set('remoteCommitAt', iso(pick(x, ['remoteCommitAt', 'remoteCommitTs', 'remote_commit_ts'])));
  return row;
}

/**
 * Parse a replication agent's `GET /v1/status`. Peers are read from `peers`,
 * `sources`, `streams`, `links` or `directions` (an array or an object keyed
 * by peer); per peer the lag from `lagSec` / `lag.seconds` / `lagSeconds`,
 * bytes from `lagBytes` / `lag.bytes`, rates from `txPerSec` /
 * `appliedTxPerSec` / `apply.txPerSec`, paused tables from `pausedTables` /
 * `paused` (per peer or at the top).
 */
export function parseAgentStatus(body: unknown): AgentStatus {
  if (!isObj(body)) return { region: undefined, peers: [], paused: [] };
  const region = str(pick(body, ['region', 'name']));
  const list = entries(pick(body, ['peers', 'sources', 'streams', 'links', 'directions']), 'peer');
  const paused: AgentStatus['paused'] = pausedList(pick(body, ['pausedTables', 'paused', 'tables.paused']));
  const peers = list.flatMap((p): AgentPeer[] => {
    const peer = str(pick(p, ['peer', 'source', 'from', 'region', 'name']));
    if (!peer || peer === region) return [];
    const out: AgentPeer = { peer };
    const set = <K extends keyof AgentPeer>(k: K, v: AgentPeer[K] | undefined) => {
      if (v !== undefined) out[k] = v;
    };
    set('lagSec', num(pick(p, ['lagSec', 'lag.seconds', 'lag.sec', 'lagSeconds', 'lag_sec'])) ?? (typeof p.lag === 'number' ? p.lag : undefined));
    set('lagBytes', num(pick(p, ['lagBytes', 'lag.bytes', 'lag_bytes', 'backlogBytes'])));
    set('txPerSec', num(pick(p, ['txPerSec', 'appliedTxPerSec', 'apply.txPerSec', 'rates.txPerSec', 'tps'])));
    set('rowsPerSec', num(pick(p, ['rowsPerSec', 'appliedRowsPerSec', 'apply.rowsPerSec', 'rates.rowsPerSec'])));
    set('conflicts', sumConflicts(pick(p, ['conflicts', 'conflictsTotal'])));
    set('state', str(pick(p, ['state', 'status'])));
    set('error', str(pick(p, ['error', 'lastError'])));
    paused.push(...pausedList(pick(p, ['pausedTables', 'paused']), peer));
    return [out];
  });
  // The agent lists paused tables per peer and again at the top: keep each once.
  const seen = new Set<string>();
  const unique = paused.filter((x) => {
    const k = `${x.peer ?? '*'}/${x.table}`;
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
  const status: AgentStatus = { region, peers, paused: unique };
  const recent = pick(body, ['recentConflicts', 'conflicts.recent']);
  if (Array.isArray(recent) && region) status.conflicts = recent.flatMap((x) => parseConflictRow(x, region) ?? []);
  return status;
}

/** The parts of `/healthz` the dashboard shows. */
export interface AppHealth {
  status: 'ok' | 'degraded' | 'fail' | 'unknown';
  fenced: boolean;
  fenceReason?: string;
  draining: boolean;
  databaseLatencyMs?: number;
  lagFrom: Record<string, number>;
}

/** Parse an app's `/healthz` body (a 503 carries the same body). */
export function parseHealthz(body: unknown): AppHealth {
  if (!isObj(body)) return { status: 'unknown', fenced: false, draining: false, lagFrom: {} };
  const s = body.status;
  const checks = isObj(body.checks) ? body.checks : {};
  const fenced = isObj(checks.fenced) ? checks.fenced : {};
  const db = isObj(checks.database) ? checks.database : {};
  const lagFrom: Record<string, number> = {};
  const repl = isObj(checks.replication) ? checks.replication : {};
  for (const p of entries(repl.peers, 'peer')) {
    const peer = str(p.peer);
    const lag = num(p.lagSec);
    if (peer && lag !== undefined) lagFrom[peer] = lag;
  }
  const out: AppHealth = {
    status: s === 'ok' || s === 'degraded' || s === 'fail' ? s : 'unknown',
    fenced: fenced.readOnly === true,
    draining: checks.draining === true,
    lagFrom,
  };
  if (str(fenced.reason)) out.fenceReason = str(fenced.reason)!;
  if (num(db.latencyMs) !== undefined) out.databaseLatencyMs = num(db.latencyMs)!;
  return out;
}
