/**
 * `tandem replicate bootstrap --region N`: add a region to a live mesh. The
 * existing regions E1..Ek keep writing; N (tables created, empty) gets a
 * consistent copy of one source region S and then streams from every peer
 * from exactly the point the copy covers — nothing lost, nothing applied
 * twice — and every copied row keeps its exact version (commit time, region),
 * so early conflicts in N resolve as they would anywhere else.
 *
 * The order of things (each step is needed for the next):
 *   1. checks: prerequisites, table definitions of N against S, N's tables
 *      empty, nobody streaming into N yet;
 *   2. N gets tandem's schema, triggers, publication, origins and its slots
 *      `tandem_<ei>` (so the Ei stream N's own writes later); each Ei gets the
 *      origin `tandem_from_<n>`;
 *   3. every Ej other than S gets the slot `tandem_<n>` at Lj;
 *   4. wait until S has applied Ej's changes up to Lj (S's
 *      `replication_status.source_lsn`, committed with the data it describes);
 *   5. S gets its slot `tandem_<n>` with an exported snapshot, consistent point C;
 *   6. one REPEATABLE READ transaction on S in that snapshot reads every row
 *      with its version (the rule apply uses), the tombstones, and S's
 *      `replication_status` (P_j: how far S had applied each Ej in the snapshot);
 *   7. ONE transaction on N writes rows, version entries (the rows' xmin is
 *      this transaction, so the entries match them), tombstones and status,
 *      advances origin `tandem_from_<ej>` to P_j and commits origin
 *      `tandem_from_<s>` at C with the data. It runs under that origin, so the
 *      copy never streams out of N's slots (pgoutput `origin 'none'`).
 * N's agent then streams S from C and each Ej from P_j ≥ Lj: the slots hold
 * exactly what the copy lacks.
 *
 * An interrupted bootstrap leaves no copied rows (the copy is one transaction);
 * running it again drops what the previous attempt created and starts over.
 */
import type pg from 'pg';
import type { Config } from '../core/config/index.ts';
import { regionByName } from '../core/config/index.ts';
import { TandemError, toError } from '../core/errors.ts';
import { sleep } from '../core/lifecycle.ts';
import { silentLogger, type Logger } from '../core/log.ts';
import { connectClient } from '../core/pg.ts';
import { quoteIdent, quoteTable } from '../core/sql.ts';
import { asSourceRelation, schemaDrift, type TargetTable } from './catalog.ts';
import { checkPrerequisites, formatProblems } from './prereq.ts';
import { formatLsn, parseLsn } from './protocol.ts';
import { CANONICAL_SETTINGS, PUBLICATION, originName, slotName, sqlLiteral } from './schema.ts';
import { configuredTables, connectAll, ensureOrigin, ensurePublication, installRegion, priorityTables, validateTables, type Conn } from './setup.ts';
import { createLogicalSlot, createSlotWithSnapshot, dropSlot, readSlot, type SnapshotSlot } from './slot.ts';
import { nextInClass, setupInterleavedSequences } from './sequences.ts';

/** Options of `bootstrapRegion`. */
export interface BootstrapOptions {
  /** A config that already lists the new region in `regions[]`. */
  config: Config;
  /** The new region N. */
  region: string;
  /** The source region S to copy from (default: the first other region of the config). */
  from?: string;
  logger?: Logger;
  /** Progress of each step and of the copy (rows and bytes per table). */
  onProgress?(p: BootstrapProgress): void;
  /** Rows per fetch from S and per insert into N (default 5000). */
  batchRows?: number;
  /** How long to wait for S to apply the other regions up to their new slots (default 300 s). */
  catchUpTimeoutMs?: number;
  /** Cancels the bootstrap (nothing is committed in N before the copy's single commit). */
  signal?: AbortSignal;
  /**
   * Bootstrap N again although it has rows or was bootstrapped before (e.g. after a slot lost its
   * WAL): N's replicated tables are emptied in the copy's own transaction, so N keeps its old
   * content if the copy fails. N's own writes that have not reached the other regions are lost.
   */
  reset?: boolean;
}

/** What `onProgress` receives. */
export type BootstrapProgress =
  | { kind: 'step'; message: string }
  /** Waiting for S to apply `peer` up to `needLsn`. */
  | { kind: 'wait'; peer: string; appliedLsn: string | null; needLsn: string }
  /** Copy progress of one table; `done` on its last call. */
  | { kind: 'copy'; table: string; rows: number; bytes: number; tombstones: number; done: boolean; elapsedMs: number };

/** The copy of one table. */
export interface BootstrapTableReport {
  table: string;
  rows: number;
  /** Bytes of the rows' text form as transferred. */
  bytes: number;
  tombstones: number;
  elapsedMs: number;
}

/** What `bootstrapRegion` did. */
export interface BootstrapReport {
  region: string;
  source: string;
  /** N was bootstrapped before; only the finishing steps were re-checked. */
  alreadyDone: boolean;
  /** A previous attempt had been interrupted; its leftovers were removed first. */
  restarted: boolean;
  /** Where N streams S from (the consistent point of S's slot `tandem_<n>`). */
  consistentPoint: string;
  /** Where N streams each peer from (S: the consistent point; others: S's applied position in the snapshot). */
  startPoints: Record<string, string>;
  tables: BootstrapTableReport[];
  actions: string[];
  elapsedMs: number;
}

/** The bootstrap's own bookkeeping in N: one row, so a second run knows what happened. */
const MARKER_DDL = `CREATE TABLE IF NOT EXISTS tandem.bootstrap (
  singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
  source text NOT NULL,
  state text NOT NULL CHECK (state IN ('copying', 'done')),
  started_at timestamptz NOT NULL DEFAULT now(),
  finished_at timestamptz,
  consistent_point pg_lsn,
  start_points jsonb,
  rows_copied bigint
)`;

/** application_name of the sessions the bootstrap opens (a stale one of an interrupted run is recognised by it). */
const APP_ADMIN = 'tandem-bootstrap';
const APP_COPY = 'tandem-bootstrap-copy';
const APP_SOURCE = 'tandem-bootstrap-source';
const APP_SNAPSHOT = 'tandem-bootstrap-snapshot';
/** Exported snapshot names are hex groups joined by dashes (e.g. 00000003-0000001B-1). */
const SNAPSHOT_NAME = /^[0-9A-Fa-f]+(-[0-9A-Fa-f]+)+$/;

/**
 * Bootstrap region `opts.region` into the live mesh of the other regions of
 * the config. Idempotent: a finished bootstrap is reported as such; an
 * interrupted one is started over.
 */
export async function bootstrapRegion(opts: BootstrapOptions): Promise<BootstrapReport> {
  const t0 = Date.now();
  const { config } = opts;
  const log = (opts.logger ?? silentLogger()).child({ component: 'bootstrap', region: opts.region });
  const step = (message: string) => {
    log.info(message);
    opts.onProgress?.({ kind: 'step', message });
  };
  const signal = opts.signal;
  const batchRows = opts.batchRows ?? 5000;
  if (!Number.isInteger(batchRows) || batchRows < 1) throw new TandemError('TANDEM_ERR_USAGE', `batchRows must be a positive integer, found ${batchRows}`);

  const n = regionByName(config, opts.region).name;
  const others = config.regions.filter((r) => r.name !== n).map((r) => r.name);
  if (others.length === 0) throw new TandemError('TANDEM_ERR_CONFIG', `regions: bootstrap of "${n}" needs at least one other region in tandem.yaml to copy from`);
  const s = opts.from ?? others[0]!;
  regionByName(config, s);
  if (s === n) throw new TandemError('TANDEM_ERR_USAGE', `--from must name another region than the one being bootstrapped ("${n}")`);
  const tables = configuredTables(config);
  if (tables.length === 0) throw new TandemError('TANDEM_ERR_CONFIG', 'replication.tables: nothing to bootstrap (no replicated tables)');

  const report: BootstrapReport = { region: n, source: s, alreadyDone: false, restarted: false, consistentPoint: '', startPoints: {}, tables: [], actions: [], elapsedMs: 0 };
  const conns = await connectAll(config, APP_ADMIN);
  const conn = (region: string) => conns.find((c) => c.region === region)!;
  const N = conn(n);
  const S = conn(s);
  const peers = conns.filter((c) => c.region !== n);
  /** Slots `tandem_<n>` this run created on existing regions (dropped again if the run fails). */
  const created: Conn[] = [];
  let copied = false;
  try {
    // One bootstrap of N at a time (held by this session until it ends, also when this process dies).
    const { rows: lock } = await N.db.query<{ ok: boolean }>(`SELECT pg_try_advisory_lock(hashtext('tandem.bootstrap')) AS ok`);
    if (!lock[0]?.ok) throw new TandemError('TANDEM_ERR_STATE', `another bootstrap of ${n} is running (it holds the bootstrap lock in ${n}'s database)`);
    // 1. Checks; nothing is changed anywhere until they all pass.
    step(`checking prerequisites of ${conns.map((c) => c.region).join(', ')}`);
    const problems: string[] = [];
    for (const c of conns) {
      const rep = await checkPrerequisites(c.db, { slots: others.length, senders: others.length, role: 'setup' });
      problems.push(...formatProblems(c.region, rep));
    }
    if (problems.length > 0) {
      throw new TandemError('TANDEM_ERR_PG_PREREQ', `PostgreSQL is not ready for tandem replication:\n  - ${problems.join('\n  - ')}`, { details: { problems } });
    }
    for (const p of peers) await assertReplicating(p, n);
    const sourceTables = await validateTables(S.db, tables, s);
    const targetTables = await validateTables(N.db, tables, n);
    const drift: string[] = [];
    for (const [key, st] of sourceTables) for (const d of schemaDrift(asSourceRelation(st), targetTables.get(key))) drift.push(`${key}: ${d}`);
    if (drift.length > 0) {
      throw new TandemError('TANDEM_ERR_SCHEMA_DRIFT', `${n}: table definitions differ from ${s}; make them identical first:\n  - ${drift.join('\n  - ')}`, { details: { drift } });
    }
    signal?.throwIfAborted();

    const marker = await readMarker(N.db);
    if (marker?.state === 'done' && !opts.reset) {
      step(`${n} was bootstrapped from ${marker.source} at ${marker.finishedAt}; checking the finishing steps only`);
      report.alreadyDone = true;
      report.source = marker.source;
      report.consistentPoint = marker.consistentPoint ?? '';
      report.startPoints = marker.startPoints ?? {};
      await installTarget(config, N, peers, tables, report, step);
      const missing: string[] = [];
      for (const p of peers) if (!(await readSlot(p.db, slotName(n)))) missing.push(p.region);
      if (missing.length > 0) {
        throw new TandemError(
          'TANDEM_ERR_STATE',
          `${n} was bootstrapped, but its slot ${slotName(n)} is missing on ${missing.join(', ')}: ${n} can no longer stream from there; stop ${n}'s agent and bootstrap it again with --reset`,
        );
      }
      await finishSequences(config, conns, n, tables, report, step);
      return report;
    }
    for (const [key, t] of opts.reset ? [] : targetTables) {
      const { rows } = await N.db.query<{ any: boolean }>(`SELECT EXISTS (SELECT 1 FROM ${t.quoted}) AS any`);
      if (rows[0]!.any) {
        throw new TandemError(
          'TANDEM_ERR_STATE',
          `${n}: table ${key} already has rows; bootstrap copies into empty tables (to discard ${n}'s content and copy again, pass --reset)`,
          { details: { table: key } },
        );
      }
    }
    await assertNoConsumer(peers, n);

    // Leftovers of an interrupted attempt: its slots on the existing regions and N's origin progress.
    const leftovers: string[] = [];
    if (marker) leftovers.push(`an attempt from ${marker.source} started at ${marker.startedAt}`);
    for (const p of peers) {
      if (await dropSlot(p.db, slotName(n), { ifExists: true, terminateActive: true })) leftovers.push(`slot ${slotName(n)} on ${p.region} (dropped)`);
    }
    await terminateStale(N.db, [APP_COPY]);
    for (const p of peers) {
      const origin = originName(p.region);
      const { rows } = await N.db.query<{ lsn: string | null }>('SELECT pg_replication_origin_progress($1, false)::text AS lsn FROM pg_replication_origin WHERE roname = $1', [origin]);
      if (rows[0]?.lsn && parseLsn(rows[0].lsn) !== 0n) {
        await N.db.query('SELECT pg_replication_origin_drop($1)', [origin]);
        leftovers.push(`origin ${origin} in ${n} at ${rows[0].lsn} (reset)`);
      }
    }
    if (leftovers.length > 0) {
      report.restarted = true;
      step(
        marker?.state === 'copying'
          ? `a previous bootstrap of ${n} did not finish; starting over (removed: ${leftovers.join('; ')})`
          : `removed what an earlier setup or bootstrap of ${n} left: ${leftovers.join('; ')}`,
      );
    }

    // 2. N: schema, triggers, publication, origins, its own slots; the Ei: origin for N.
    await installTarget(config, N, peers, tables, report, step, { freshSlots: true });
    await N.db.query(MARKER_DDL);
    await N.db.query(
      `INSERT INTO tandem.bootstrap (source, state) VALUES ($1, 'copying')
       ON CONFLICT (singleton) DO UPDATE SET source = EXCLUDED.source, state = 'copying', started_at = now(), finished_at = NULL,
         consistent_point = NULL, start_points = NULL, rows_copied = NULL`,
      [s],
    );

    // 3. Slots tandem_<n> on every other existing region, created before S's snapshot.
    const need = new Map<string, bigint>();
    for (const p of peers) {
      if (p.region === s) continue;
      const slot = await createLogicalSlot(p.db, slotName(n));
      created.push(p);
      need.set(p.region, slot.lsn);
      report.actions.push(`slot ${slotName(n)} on ${p.region} at ${formatLsn(slot.lsn)}`);
      step(`slot ${slotName(n)} created on ${p.region} at ${formatLsn(slot.lsn)}`);
    }

    // 4. S must have applied every Ej up to where Ej's new slot starts, or N would miss what lies between.
    if (need.size > 0) await waitApplied(S, need, opts.catchUpTimeoutMs ?? 300_000, opts, step);

    // 5. S's slot with an exported snapshot: the copy is that snapshot, the stream starts after it.
    step(`creating slot ${slotName(n)} on ${s} with an exported snapshot`);
    const snap = await createSlotWithSnapshot(regionByName(config, s).database, slotName(n), { applicationName: APP_SNAPSHOT, what: `${s} database` });
    created.push(S);
    report.consistentPoint = formatLsn(snap.consistentPoint);
    report.startPoints[s] = report.consistentPoint;
    report.actions.push(`slot ${slotName(n)} on ${s} at ${report.consistentPoint} (exported snapshot)`);

    // 6 + 7. Copy in one transaction on each side.
    const result = await copySnapshot({ config, n, s, snap, need, sourceTables, targetTables, batchRows, opts, step, report });
    copied = true;
    report.tables = result.tables;
    step(`copy committed in ${n}: ${result.tables.reduce((a, t) => a + t.rows, 0)} rows, ${result.tables.reduce((a, t) => a + t.tombstones, 0)} tombstones`);

    await finishSequences(config, conns, n, tables, report, step);
    step(
      `${n} is bootstrapped. Next: start its agent (tandem replicate run --region ${n}), then restart the agents of ${others.join(', ')} with this config so they stream from ${n}`,
    );
    return report;
  } catch (err) {
    // A lost answer to COMMIT must not cost N its slots: ask N whether the copy committed.
    if (!copied && created.length > 0 && (await readMarker(N.db).catch(() => undefined))?.state !== 'done') {
      // Slots on live regions retain WAL until they are consumed or dropped: do not leave them behind.
      for (const c of created) await dropSlot(c.db, slotName(n), { ifExists: true, terminateActive: true, waitMs: 3_000 }).catch(() => {});
      log.warn({ err: toError(err).message }, `bootstrap of ${n} failed; dropped its slots on ${created.map((c) => c.region).join(', ')}`);
    }
    throw err;
  } finally {
    report.elapsedMs = Date.now() - t0;
    await Promise.all(conns.map((c) => c.db.end().catch(() => {})));
  }
}

/** An existing region must already replicate: tandem installed for that region, publication present. */
async function assertReplicating(p: Conn, n: string): Promise<void> {
  const { rows } = await p.db.query<{ region: string | null; pub: boolean }>(
    `SELECT (SELECT region FROM tandem.node) AS region, EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1) AS pub
      WHERE to_regclass('tandem.node') IS NOT NULL`,
    [PUBLICATION],
  );
  const r = rows[0];
  if (!r || r.region === null || !r.pub) {
    throw new TandemError(
      'TANDEM_ERR_STATE',
      `${p.region} is not set up for replication (no tandem schema or publication); bootstrap adds ${n} to regions that already replicate — set those up first`,
    );
  }
  if (r.region !== p.region) throw new TandemError('TANDEM_ERR_STATE', `${p.region}: this database belongs to region "${r.region}"; check regions[].database in tandem.yaml`);
}

interface Marker {
  source: string;
  state: 'copying' | 'done';
  startedAt: string;
  finishedAt: string | null;
  consistentPoint: string | null;
  startPoints: Record<string, string> | null;
}

async function readMarker(db: pg.Client): Promise<Marker | undefined> {
  const { rows: exists } = await db.query<{ ok: boolean }>(`SELECT to_regclass('tandem.bootstrap') IS NOT NULL AS ok`);
  if (!exists[0]?.ok) return undefined;
  const { rows } = await db.query<{ source: string; state: 'copying' | 'done'; started_at: string; finished_at: string | null; consistent_point: string | null; start_points: Record<string, string> | null }>(
    `SELECT source, state, started_at::text, finished_at::text, consistent_point::text, start_points FROM tandem.bootstrap`,
  );
  const r = rows[0];
  return r && { source: r.source, state: r.state, startedAt: r.started_at, finishedAt: r.finished_at, consistentPoint: r.consistent_point, startPoints: r.start_points };
}

/** Refuse while anything streams into N already (its agent): the origins and slots are about to be reset. */
async function assertNoConsumer(peers: Conn[], n: string): Promise<void> {
  for (const p of peers) {
    const slot = await readSlot(p.db, slotName(n));
    if (!slot?.active || slot.activePid === null) continue;
    const { rows } = await p.db.query<{ app: string | null }>('SELECT application_name AS app FROM pg_stat_activity WHERE pid = $1', [slot.activePid]);
    const app = rows[0]?.app ?? '';
    if (app === APP_SNAPSHOT) {
      // The snapshot connection of an interrupted bootstrap (this run holds the lock) that the server has not noticed yet.
      await p.db.query('SELECT pg_terminate_backend($1)', [slot.activePid]);
      continue;
    }
    throw new TandemError(
      'TANDEM_ERR_STATE',
      `slot ${slotName(n)} on ${p.region} is in use by process ${slot.activePid} (${app || 'unknown client'}): is ${n}'s agent running? Stop it before bootstrapping ${n}`,
    );
  }
}

/** End sessions of an earlier, interrupted bootstrap that the server still runs (a statement in flight). */
async function terminateStale(db: pg.Client, apps: string[]): Promise<void> {
  const deadline = Date.now() + 10_000;
  for (;;) {
    const { rows } = await db.query<{ pid: number }>(`SELECT pid FROM pg_stat_activity WHERE application_name = ANY($1) AND pid <> pg_backend_pid()`, [apps]);
    if (rows.length === 0) return;
    for (const r of rows) await db.query('SELECT pg_terminate_backend($1)', [r.pid]);
    if (Date.now() > deadline) throw new TandemError('TANDEM_ERR_TIMEOUT', `sessions of an earlier bootstrap (pids ${rows.map((r) => r.pid).join(', ')}) did not end`);
    await sleep(100);
  }
}

/**
 * N's side of replication, installed the normal way (N has no rows yet): schema, triggers,
 * publication, an origin and a status row per peer, its slots `tandem_<ei>`; each Ei gets the
 * origin `tandem_from_<n>` and a status row for N. With `freshSlots`, N's slots are recreated
 * so they hold nothing written in N before the bootstrap.
 */
async function installTarget(
  config: Config,
  N: Conn,
  peers: Conn[],
  tables: ReturnType<typeof configuredTables>,
  report: BootstrapReport,
  step: (m: string) => void,
  o: { freshSlots?: boolean } = {},
): Promise<void> {
  step(`installing tandem in ${N.region} (schema, triggers, publication, origins, slots)`);
  await installRegion(N.db, { region: N.region, tables, priority: priorityTables(config) });
  const pub = await ensurePublication(N.db, tables);
  if (pub === 'created') report.actions.push(`publication ${PUBLICATION} created in ${N.region}`);
  for (const p of peers) {
    if (await ensureOrigin(N.db, p.region)) report.actions.push(`origin ${originName(p.region)} created in ${N.region}`);
    await N.db.query('INSERT INTO tandem.replication_status (peer) VALUES ($1) ON CONFLICT (peer) DO NOTHING', [p.region]);
    if (await ensureOrigin(p.db, N.region)) report.actions.push(`origin ${originName(N.region)} created in ${p.region}`);
    // N has written nothing before now: lag from N counts from here (not from the existing region's setup,
    // which would read as hours of lag until its agent learns about N).
    await p.db.query(
      `INSERT INTO tandem.replication_status AS st (peer, source_commit_ts, applied_at) VALUES ($1, clock_timestamp(), clock_timestamp())
       ON CONFLICT (peer) DO UPDATE SET source_commit_ts = COALESCE(st.source_commit_ts, EXCLUDED.source_commit_ts), applied_at = COALESCE(st.applied_at, EXCLUDED.applied_at)`,
      [N.region],
    );
  }
  for (const p of peers) {
    if (o.freshSlots) await dropSlot(N.db, slotName(p.region), { ifExists: true, terminateActive: true });
    const slot = await createLogicalSlot(N.db, slotName(p.region), { ifNotExists: true });
    if (slot.created) report.actions.push(`slot ${slot.slot} created in ${N.region}`);
  }
}

/** Poll S's `replication_status` until it has applied each peer up to the LSN given. */
async function waitApplied(S: Conn, need: Map<string, bigint>, timeoutMs: number, opts: BootstrapOptions, step: (m: string) => void): Promise<void> {
  step(`waiting until ${S.region} has applied ${[...need.keys()].join(', ')} up to their new slots`);
  const deadline = Date.now() + timeoutMs;
  let lastReport = 0;
  for (;;) {
    const { rows } = await S.db.query<{ peer: string; lsn: string | null }>('SELECT peer, source_lsn::text AS lsn FROM tandem.replication_status WHERE peer = ANY($1)', [[...need.keys()]]);
    const applied = new Map(rows.map((r) => [r.peer, r.lsn === null ? null : parseLsn(r.lsn)]));
    const behind = [...need].filter(([peer, lsn]) => (applied.get(peer) ?? -1n) < lsn!);
    if (behind.length === 0) return;
    if (Date.now() - lastReport >= 1_000) {
      lastReport = Date.now();
      for (const [peer, lsn] of behind) {
        const a = applied.get(peer);
        opts.onProgress?.({ kind: 'wait', peer, appliedLsn: a == null ? null : formatLsn(a), needLsn: formatLsn(lsn) });
      }
    }
    if (Date.now() > deadline) {
      throw new TandemError(
        'TANDEM_ERR_TIMEOUT',
        `${S.region} has not applied ${behind.map(([p, l]) => `${p} up to ${formatLsn(l)} (at ${applied.get(p) == null ? 'nothing yet' : formatLsn(applied.get(p)!)})`).join(', ')} within ${Math.round(timeoutMs / 1000)} s; is ${S.region}'s agent running and streaming from them? (tandem replicate status) Or bootstrap --from another region`,
      );
    }
    await sleep(200, opts.signal);
  }
}

interface CopyInput {
  config: Config;
  n: string;
  s: string;
  snap: SnapshotSlot;
  /** Ej → LSN their slot `tandem_<n>` starts at. */
  need: Map<string, bigint>;
  sourceTables: Map<string, TargetTable>;
  targetTables: Map<string, TargetTable>;
  batchRows: number;
  opts: BootstrapOptions;
  step: (m: string) => void;
  report: BootstrapReport;
}

const CANONICAL_SET = CANONICAL_SETTINGS.map(([k, v]) => `SET ${k} = ${sqlLiteral(v)}`).join('; ');

/** Steps 6 and 7: read S in the slot's snapshot, write N in one transaction that commits origin S at C. */
async function copySnapshot(c: CopyInput): Promise<{ tables: BootstrapTableReport[] }> {
  const { config, n, s, snap, opts, report } = c;
  const signal = opts.signal;
  if (!SNAPSHOT_NAME.test(snap.snapshotName)) {
    await snap.release();
    throw new TandemError('TANDEM_ERR_REPLICATION', `unexpected exported snapshot name ${JSON.stringify(snap.snapshotName)} from ${s}`);
  }
  let src: pg.Client | undefined;
  let dst: pg.Client | undefined;
  try {
    src = await connectClient(regionByName(config, s).database, { applicationName: APP_SOURCE }, `${s} database`);
    src.on('error', () => {});
    dst = await connectClient(regionByName(config, n).database, { applicationName: APP_COPY }, `${n} database`);
    dst.on('error', () => {});
    // The same text forms as apply and the capture triggers (keys and values compare as text).
    await src.query(CANONICAL_SET);
    await src.query('BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY');
    await src.query(`SET TRANSACTION SNAPSHOT ${sqlLiteral(snap.snapshotName)}`);
    // Imported: this transaction now holds the snapshot itself, and the replication connection can go
    // (PostgreSQL keeps an exported snapshot importable only while that connection stays idle).
    await snap.release();
    const { rows: at } = await src.query<{ at: string }>('SELECT clock_timestamp()::text AS at');
    const snapshotAt = at[0]!.at;
    const { rows: parked } = await src.query<{ relname: string; n: string }>('SELECT relname, count(*)::text AS n FROM tandem.parked GROUP BY relname');
    if (parked.length > 0) {
      throw new TandemError(
        'TANDEM_ERR_STATE',
        `${s} has paused tables with parked changes (${parked.map((p) => `${p.relname}: ${p.n}`).join(', ')}), which a copy would miss; fix the drift there (tandem replicate status) or bootstrap --from another region`,
      );
    }
    const { rows: status } = await src.query<{ peer: string; source_lsn: string | null; source_commit_ts: string | null; last_heartbeat_at: string | null }>(
      'SELECT peer, source_lsn::text, source_commit_ts::text, last_heartbeat_at::text FROM tandem.replication_status',
    );
    const startAt = new Map<string, { lsn: bigint; commitTs: string | null; heartbeatAt: string | null }>();
    for (const [peer, needLsn] of c.need) {
      const row = status.find((r) => r.peer === peer);
      const lsn = row?.source_lsn ? parseLsn(row.source_lsn) : -1n;
      // Checked before the snapshot was taken; source_lsn only grows, so this is a bug if it fires.
      if (lsn < needLsn) throw new TandemError('TANDEM_ERR_INTERNAL', `${s} had applied ${peer} only up to ${row?.source_lsn ?? 'nothing'} in the snapshot, below ${formatLsn(needLsn)}`);
      startAt.set(peer, { lsn, commitTs: row!.source_commit_ts, heartbeatAt: row!.last_heartbeat_at });
      report.startPoints[peer] = formatLsn(lsn);
    }

    await dst.query(`${CANONICAL_SET}; SET session_replication_role = 'replica'`);
    // Everything N writes now carries origin S: pgoutput's origin 'none' keeps the copy out of N's slots.
    await dst.query('SELECT pg_replication_origin_session_setup($1)', [originName(s)]);
    await dst.query('BEGIN');
    if (opts.reset) {
      // Filtered out of N's slots like the copy (origin S): the other regions keep their rows.
      await dst.query(`TRUNCATE ${[...c.targetTables.values()].map((t) => t.quoted).join(', ')}`);
      c.step(`${n}: replicated tables emptied (--reset; committed only with the copy)`);
    }
    await dst.query('DELETE FROM tandem.row_versions');
    await dst.query('DELETE FROM tandem.parked');
    const tables: BootstrapTableReport[] = [];
    for (const [key, st] of c.sourceTables) {
      signal?.throwIfAborted();
      tables.push(await copyTable(src, dst, st, c.targetTables.get(key)!, s, c.batchRows, opts));
    }
    // Progress: S at C (committed with the data below), every other peer where S had applied it.
    for (const [peer, p] of startAt) {
      await dst.query('SELECT pg_replication_origin_advance($1, $2::pg_lsn)', [originName(peer), formatLsn(p.lsn)]);
    }
    const statusRows = [
      { peer: s, lsn: snap.consistentPoint, commitTs: snapshotAt as string | null, heartbeatAt: null as string | null },
      ...[...startAt].map(([peer, p]) => ({ peer, lsn: p.lsn, commitTs: p.commitTs, heartbeatAt: p.heartbeatAt })),
    ];
    for (const r of statusRows) {
      await dst.query(
        `INSERT INTO tandem.replication_status AS st (peer, source_commit_ts, source_lsn, applied_at, last_heartbeat_at)
         VALUES ($1, $2::timestamptz, $3::pg_lsn, clock_timestamp(), $4::timestamptz)
         ON CONFLICT (peer) DO UPDATE SET source_commit_ts = EXCLUDED.source_commit_ts, source_lsn = EXCLUDED.source_lsn,
           applied_at = EXCLUDED.applied_at, last_heartbeat_at = EXCLUDED.last_heartbeat_at, applied_txns = 0, applied_rows = 0`,
        [r.peer, r.commitTs, formatLsn(r.lsn), r.heartbeatAt],
      );
    }
    await dst.query(
      `UPDATE tandem.bootstrap SET state = 'done', finished_at = clock_timestamp(), consistent_point = $1::pg_lsn, start_points = $2::jsonb, rows_copied = $3`,
      [report.consistentPoint, JSON.stringify(report.startPoints), tables.reduce((a, t) => a + t.rows, 0)],
    );
    await dst.query('SELECT pg_replication_origin_xact_setup($1::pg_lsn, $2::timestamptz)', [report.consistentPoint, snapshotAt]);
    signal?.throwIfAborted();
    await dst.query('COMMIT');
    await dst.query('SELECT pg_replication_origin_session_reset()').catch(() => {});
    await src.query('COMMIT').catch(() => {});
    return { tables };
  } catch (err) {
    await dst?.query('ROLLBACK').catch(() => {});
    await src?.query('ROLLBACK').catch(() => {});
    throw err;
  } finally {
    await snap.release();
    await src?.end().catch(() => {});
    await dst?.end().catch(() => {});
  }
}

/**
 * Copy one table's rows with their versions, then its tombstones. A row's version is what apply
 * in S would read: the `row_versions` entry when it was written with the row version we see (the
 * entry's xid is the row's xmin), else (`pg_xact_commit_timestamp(xmin)`, S). Reading S and
 * writing N overlap: the next batch is fetched while the previous one is inserted.
 */
async function copyTable(src: pg.Client, dst: pg.Client, st: TargetTable, tt: TargetTable, s: string, batchRows: number, opts: BootstrapOptions): Promise<BootstrapTableReport> {
  const t0 = Date.now();
  const cols = st.columns.map((c) => c.name);
  const target = new Map(tt.columns.map((c) => [c.name, c]));
  const keys = st.keyColumns.map((c) => c.name);
  const canonKey = (alias: string) => `ARRAY[${keys.map((k) => `(${alias}.${quoteIdent(k)})::text`).join(', ')}]::text[]`;
  const match = `(e.xid IS NOT NULL AND NOT e.deleted AND xid(e.xid) = t.xmin)`;
  const cursor = 'tandem_bootstrap_rows';
  await src.query(
    `DECLARE ${cursor} NO SCROLL CURSOR FOR
     SELECT ${cols.map((c) => `(t.${quoteIdent(c)})::text`).join(', ')},
            COALESCE(CASE WHEN ${match} THEN COALESCE(e.commit_ts, pg_xact_commit_timestamp(xid(e.xid))) ELSE pg_xact_commit_timestamp(t.xmin) END, 'epoch'::timestamptz)::text,
            CASE WHEN ${match} THEN e.region ELSE $2 END,
            COALESCE(${match} AND e.priority, false)
       FROM ${st.quoted} t LEFT JOIN tandem.row_versions e ON e.relname = $1 AND e.pk = ${canonKey('t')}`,
    [st.key, s],
  );
  const cast = (name: string, expr: string) => `(${expr})::${target.get(name)!.castType}`;
  const nc = cols.length;
  const insert = `WITH k AS (
      SELECT * FROM unnest(${cols.map((_, i) => `$${i + 1}::text[]`).join(', ')}, $${nc + 1}::text[], $${nc + 2}::text[], $${nc + 3}::bool[])
        AS k(${cols.map((_, i) => `c${i}`).join(', ')}, ts, region, priority)
    ), r AS (
      INSERT INTO ${tt.quoted} (${cols.map(quoteIdent).join(', ')}) OVERRIDING SYSTEM VALUE
      SELECT ${cols.map((c, i) => cast(c, `k.c${i}`)).join(', ')} FROM k
      RETURNING 1
    )
    INSERT INTO tandem.row_versions (relname, pk, commit_ts, region, xid, deleted, priority)
    SELECT $${nc + 4}, ARRAY[${keys.map((kname) => `(${cast(kname, `k.c${cols.indexOf(kname)}`)})::text`).join(', ')}]::text[],
           k.ts::timestamptz, k.region, pg_current_xact_id(), false, k.priority
      FROM k`;
  let rows = 0;
  let bytes = 0;
  let lastReport = Date.now();
  const fetch = () => src.query<unknown[]>({ text: `FETCH ${batchRows} FROM ${cursor}`, rowMode: 'array' });
  let next = fetch();
  for (;;) {
    const batch = (await next).rows;
    if (batch.length === 0) break;
    next = fetch();
    next.catch(() => {}); // observed by the next iteration's await
    opts.signal?.throwIfAborted();
    const columns: (string | null)[][] = Array.from({ length: nc + 2 }, () => new Array(batch.length));
    const priority: boolean[] = new Array(batch.length);
    for (let r = 0; r < batch.length; r++) {
      const row = batch[r]!;
      for (let i = 0; i < nc + 2; i++) {
        const v = row[i] as string | null;
        columns[i]![r] = v;
        if (v !== null && i < nc) bytes += Buffer.byteLength(v);
      }
      priority[r] = row[nc + 2] === true;
    }
    await dst.query(insert, [...columns, priority, st.key]);
    rows += batch.length;
    if (Date.now() - lastReport >= 500) {
      lastReport = Date.now();
      opts.onProgress?.({ kind: 'copy', table: st.key, rows, bytes, tombstones: 0, done: false, elapsedMs: Date.now() - t0 });
    }
  }
  await src.query(`CLOSE ${cursor}`);
  const tombstones = await copyTombstones(src, dst, st, batchRows);
  const out = { table: st.key, rows, bytes, tombstones, elapsedMs: Date.now() - t0 };
  opts.onProgress?.({ kind: 'copy', ...out, done: true });
  return out;
}

/** Tombstones of keys that are absent in S (a present row's version is the row's, above). */
async function copyTombstones(src: pg.Client, dst: pg.Client, st: TargetTable, batchRows: number): Promise<number> {
  const cursor = 'tandem_bootstrap_tombstones';
  const keyMatch = st.keyColumns.map((c, i) => `t.${quoteIdent(c.name)} = (e.pk[${i + 1}])::${c.castType}`).join(' AND ');
  await src.query(
    `DECLARE ${cursor} NO SCROLL CURSOR FOR
     SELECT e.pk, COALESCE(e.commit_ts, pg_xact_commit_timestamp(xid(e.xid)), 'epoch'::timestamptz)::text, e.region, e.priority
       FROM tandem.row_versions e
      WHERE e.relname = $1 AND e.deleted AND NOT EXISTS (SELECT 1 FROM ${st.quoted} t WHERE ${keyMatch})`,
    [st.key],
  );
  let total = 0;
  for (;;) {
    const { rows } = await src.query<unknown[]>({ text: `FETCH ${batchRows} FROM ${cursor}`, rowMode: 'array' });
    if (rows.length === 0) break;
    // pk arrays go as their array literal text (pg would otherwise flatten an array of arrays).
    await dst.query(
      `INSERT INTO tandem.row_versions (relname, pk, commit_ts, region, xid, deleted, priority)
       SELECT $1, k.pk::text[], k.ts::timestamptz, k.region, pg_current_xact_id(), true, k.priority
         FROM unnest($2::text[], $3::text[], $4::text[], $5::bool[]) AS k(pk, ts, region, priority)`,
      [st.key, rows.map((r) => arrayLiteral(r[0] as string[])), rows.map((r) => r[1]), rows.map((r) => r[2]), rows.map((r) => r[3] === true)],
    );
    total += rows.length;
  }
  await src.query(`CLOSE ${cursor}`);
  return total;
}

/** A text[] literal (`{"a","b"}`) for values that are never NULL (key texts). */
function arrayLiteral(values: readonly string[]): string {
  return `{${values.map((v) => `"${v.replaceAll('\\', '\\\\').replaceAll('"', '\\"')}"`).join(',')}}`;
}

/**
 * Sequences after the copy. With `replication.interleaveSequences`, every region (N included)
 * moves to INCREMENT BY the new region count in its own residue class: a mesh that grows needs a
 * new modulus everywhere. Otherwise N's own serial/identity sequences are moved past the copied
 * values, so N's first insert does not reuse a copied key.
 */
async function finishSequences(
  config: Config,
  conns: Conn[],
  n: string,
  tables: ReturnType<typeof configuredTables>,
  report: BootstrapReport,
  step: (m: string) => void,
): Promise<void> {
  const N = conns.find((c) => c.region === n)!;
  if (config.replication.interleaveSequences) {
    step(`interleaving sequences for ${config.regions.length} regions`);
    await regrowInterleaved(config, conns, n, tables, report);
    return;
  }
  for (const t of tables) {
    const { rows } = await N.db.query<{ seq: string; col: string }>(
      `SELECT s.seq, a.attname AS col
         FROM pg_attribute a, LATERAL (SELECT pg_get_serial_sequence($1, a.attname) AS seq) s
        WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped AND s.seq IS NOT NULL`,
      [quoteTable(t)],
    );
    for (const r of rows) {
      const { rows: moved } = await N.db.query<{ v: string }>(
        `SELECT setval($1::regclass, x.m)::text AS v FROM (SELECT max(${quoteIdent(r.col)})::int8 AS m FROM ${quoteTable(t)}) x
          WHERE x.m IS NOT NULL AND x.m > COALESCE(pg_sequence_last_value($1::regclass), 0)`,
        [r.seq],
      );
      if (moved[0]) report.actions.push(`sequence ${r.seq} in ${n} continues after the copied values (last ${moved[0].v})`);
    }
  }
}

/**
 * Move every region's interleaved sequences to the grown modulus without ever handing out a value
 * twice. N (no writers yet) is set up by `setupInterleavedSequences`, which also names the
 * sequences (the schema is the same everywhere). Then the tables behind them are locked against
 * writers in every region at once, each region's sequence state and column maximum is read, and
 * every sequence that is not yet in its region's class above the largest value any region holds
 * or has handed out restarts there. Values handed out under the old modulus and still on their
 * way to other regions are below that maximum, so no region can produce them again.
 */
async function regrowInterleaved(config: Config, conns: Conn[], n: string, tables: ReturnType<typeof configuredTables>, report: BootstrapReport): Promise<void> {
  const count = config.regions.length;
  const ordered = config.regions.map((r) => conns.find((c) => c.region === r.name)!);
  const N = conns.find((c) => c.region === n)!;
  const found = await setupInterleavedSequences(N.db, { regionIndex: config.regions.findIndex((r) => r.name === n), regionCount: count, tables });
  if (found.length === 0) return;
  const lockTables = [...new Set(found.map((f) => f.table))];
  for (const c of ordered) {
    await c.db.query('BEGIN');
    // Writers of these tables wait (in every region) until the sequences are moved; readers do not.
    await c.db.query(`LOCK TABLE ${lockTables.join(', ')} IN SHARE ROW EXCLUSIVE MODE`);
  }
  try {
    const mod = BigInt(count);
    for (const f of found) {
      const states = [];
      let top = 0n;
      for (const c of ordered) {
        const { rows } = await c.db.query<{ last: string; called: boolean; inc: string; max: string; m: string | null }>(
          `SELECT s.last_value::text AS last, s.is_called AS called, ps.seqincrement::text AS inc, ps.seqmax::text AS max,
                  (SELECT max(${quoteIdent(f.column)})::text FROM ${f.table}) AS m
             FROM ${f.sequence} s, pg_sequence ps WHERE ps.seqrelid = $1::regclass`,
          [f.sequence],
        );
        const r = rows[0]!;
        const inc = BigInt(r.inc);
        const next = r.called ? BigInt(r.last) + inc : BigInt(r.last);
        states.push({ c, inc, next, max: BigInt(r.max) });
        for (const v of [next - 1n, r.m === null ? 0n : BigInt(r.m)]) if (v > top) top = v;
      }
      for (const [i, st] of states.entries()) {
        const residue = BigInt(i + 1) % mod;
        const inClass = st.inc === mod && (((st.next - residue) % mod) + mod) % mod === 0n;
        // An existing region already on this modulus moved in an earlier run (or setup): its values
        // cannot meet another region's any more. N was just set above its own (copied) maximum only.
        if (inClass && (st.c.region !== n || st.next > top)) continue;
        const restart = nextInClass(top, residue, mod);
        if (restart > st.max) throw new TandemError('TANDEM_ERR_STATE', `${st.c.region}: sequence ${f.sequence} would restart at ${restart}, above its maximum ${st.max}`);
        // ALTER SEQUENCE takes literals; both numbers are bigints computed here.
        await st.c.db.query(`ALTER SEQUENCE ${f.sequence} INCREMENT BY ${mod} RESTART WITH ${restart}`);
        report.actions.push(`sequence ${f.sequence} in ${st.c.region}: INCREMENT BY ${mod}, restarts at ${restart} (above ${top}, the largest value of any region)`);
      }
    }
    for (const c of ordered) await c.db.query('COMMIT');
  } catch (err) {
    for (const c of ordered) await c.db.query('ROLLBACK').catch(() => {});
    throw err;
  }
}

/** One progress line for people (the CLI prints these to stderr). */
export function formatBootstrapProgress(p: BootstrapProgress): string {
  switch (p.kind) {
    case 'step':
      return `bootstrap: ${p.message}`;
    case 'wait':
      return `bootstrap: waiting for the source to apply ${p.peer} up to ${p.needLsn} (applied: ${p.appliedLsn ?? 'nothing yet'})`;
    case 'copy': {
      const rate = p.elapsedMs > 0 ? Math.round((p.rows * 1000) / p.elapsedMs) : 0;
      const head = `bootstrap: copy ${p.table}: ${p.rows} rows, ${formatBytes(p.bytes)}`;
      return p.done ? `${head}, ${p.tombstones} tombstones — done in ${(p.elapsedMs / 1000).toFixed(1)} s (${rate} rows/s)` : `${head} (${rate} rows/s)`;
    }
  }
}

/** The result for people. */
export function formatBootstrapReport(r: BootstrapReport): string {
  const lines = [
    r.alreadyDone
      ? `${r.region} was already bootstrapped from ${r.source}; finishing steps checked`
      : `${r.region} bootstrapped from ${r.source} in ${(r.elapsedMs / 1000).toFixed(1)} s${r.restarted ? ' (an interrupted attempt was cleaned up first)' : ''}`,
    `  streams from: ${Object.entries(r.startPoints)
      .map(([peer, lsn]) => `${peer} at ${lsn}`)
      .join(', ')}`,
    ...r.tables.map((t) => `  ${t.table}: ${t.rows} rows, ${formatBytes(t.bytes)}, ${t.tombstones} tombstones in ${(t.elapsedMs / 1000).toFixed(1)} s`),
    ...r.actions.map((a) => `  - ${a}`),
    `next: start ${r.region}'s agent (tandem replicate run --region ${r.region}), then restart every other region's agent with this config`,
  ];
  return lines.join('\n');
}

function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}
