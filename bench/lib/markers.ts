/**
 * Replication lag measured the same way for every system: each source region
 * commits a small marker row (`bench.marker`) every few milliseconds, and a
 * poller on each target region asks, every couple of milliseconds, which
 * markers are visible yet. A marker's lag is the target's `clock_timestamp()`
 * at the first poll that saw it minus its commit time on the source
 * (`pg_xact_commit_timestamp`, read back afterwards). Both clocks are this
 * machine's clock. The poll interval bounds the error (it only adds).
 */
import type pg from 'pg';
import { sleep } from '../../src/core/lifecycle.ts';

/** Commits markers of one source region at a steady pace. */
export class MarkerWriter {
  #seq = 0;
  #stop = false;
  #loop: Promise<void> | undefined;
  /** Node wall-clock (ms) at which marker `seq` was acknowledged by the source. */
  readonly ackedAtMs: number[] = [];
  errors = 0;

  constructor(
    private readonly db: pg.Client,
    readonly region: number,
    readonly intervalMs: number,
  ) {}

  /** The last marker acknowledged by the source (0 before the first). */
  get lastSeq(): number {
    return this.#seq;
  }

  start(): void {
    this.#loop = (async () => {
      while (!this.#stop) {
        const t0 = Date.now();
        try {
          await this.db.query({ name: 'marker', text: 'INSERT INTO bench.marker (region, seq) VALUES ($1, $2)', values: [this.region, this.#seq + 1] });
          this.#seq++;
          this.ackedAtMs[this.#seq] = Date.now();
        } catch {
          this.errors++;
        }
        const wait = this.intervalMs - (Date.now() - t0);
        if (wait > 0) await sleep(wait);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.#loop;
  }

  /** Source commit times (Unix µs) of markers `from..to`. */
  async commitTimesUs(from: number, to: number): Promise<Map<number, number>> {
    const { rows } = await this.db.query<{ seq: string; us: string }>(
      `SELECT seq::text, (extract(epoch from pg_xact_commit_timestamp(xmin)) * 1000000)::int8::text AS us
         FROM bench.marker WHERE region = $1 AND seq BETWEEN $2 AND $3`,
      [this.region, from, to],
    );
    return new Map(rows.map((r) => [Number(r.seq), Number(r.us)]));
  }
}

/** Watches one target region for the markers of one source region. */
export class MarkerPoller {
  #last = 0;
  #stop = false;
  #loop: Promise<void> | undefined;
  /** Target clock (Unix µs) at the first poll that saw marker `seq`. */
  readonly seenUs: number[] = [];
  /** Node wall-clock (ms) of the latest poll, and the newest marker visible then. */
  latest = { atMs: 0, seq: 0 };
  polls = 0;
  errors = 0;

  constructor(
    private readonly db: pg.Client,
    readonly sourceRegion: number,
    readonly intervalMs: number,
  ) {}

  get lastSeen(): number {
    return this.#last;
  }

  start(): void {
    this.#loop = (async () => {
      while (!this.#stop) {
        const t0 = Date.now();
        try {
          // clock_timestamp() is read after the statement's snapshot: whatever is visible committed before it.
          const { rows } = await this.db.query<{ seq: string | null; now: string }>({
            name: 'poll',
            text: `SELECT max(seq)::text AS seq, (extract(epoch from clock_timestamp()) * 1000000)::int8::text AS now
                     FROM bench.marker WHERE region = $1 AND seq > $2`,
            values: [this.sourceRegion, this.#last],
          });
          this.polls++;
          const r = rows[0]!;
          const seq = r.seq === null ? this.#last : Number(r.seq);
          const now = Number(r.now);
          for (let s = this.#last + 1; s <= seq; s++) this.seenUs[s] = now;
          this.#last = seq;
          this.latest = { atMs: Date.now(), seq };
        } catch {
          this.errors++;
          await sleep(50);
        }
        const wait = this.intervalMs - (Date.now() - t0);
        if (wait > 0) await sleep(wait);
      }
    })();
  }

  async stop(): Promise<void> {
    this.#stop = true;
    await this.#loop;
  }

  /** Wait until marker `seq` is visible; resolves the target time (Unix µs) it was first seen, or undefined after `timeoutMs`. */
  async waitFor(seq: number, timeoutMs: number): Promise<number | undefined> {
    const deadline = Date.now() + timeoutMs;
    while (this.#last < seq) {
      if (Date.now() > deadline) return undefined;
      await sleep(2);
    }
    return this.seenUs[seq];
  }
}

/** Lags (ms) of markers `from..to` of one direction: target first-seen time minus source commit time. */
export async function markerLagsMs(writer: MarkerWriter, poller: MarkerPoller, from: number, to: number): Promise<{ lagsMs: number[]; missing: number }> {
  const commits = await writer.commitTimesUs(from, to);
  const lagsMs: number[] = [];
  let missing = 0;
  for (let s = from; s <= to; s++) {
    const c = commits.get(s);
    const seen = poller.seenUs[s];
    if (c === undefined || seen === undefined) {
      missing++;
      continue;
    }
    lagsMs.push(Math.max(0, seen - c) / 1000);
  }
  return { lagsMs, missing };
}
