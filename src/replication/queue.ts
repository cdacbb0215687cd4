/**
 * The queue between a peer pipeline's reader and its applier: whole source
 * transactions, chunks of large ones and heartbeats, bounded in rows and
 * transactions (the reader waits while it is full).
 */
import type { Change } from './apply.ts';

/** One unit the reader hands to the applier. */
export type Unit =
  | { kind: 'txn'; changes: Change[]; rows: number; endLsn: bigint; commitUs: bigint; spilled: boolean }
  | { kind: 'chunk'; changes: Change[]; rows: number }
  | { kind: 'heartbeat'; lsn: bigint; atUs: bigint };

/** A bounded FIFO between reader and applier (array + head index: O(1) per unit). */
export class UnitQueue {
  constructor(
    /** Bounds of what is queued: the reader waits (`room()`) while either is reached. */
    readonly maxRows: number,
    readonly maxTxns: number,
  ) {}

  #items: (Unit | undefined)[] = [];
  #head = 0;
  #rows = 0;
  #txns = 0;
  #closed: Error | null | undefined; // undefined: open; null: closed cleanly; Error: failed
  #takeWaiter: (() => void) | undefined;
  #roomWaiter: (() => void) | undefined;
  /** Units taken by the applier and not yet committed (set synchronously inside take()). */
  #inFlight = false;

  get length(): number {
    return this.#items.length - this.#head;
  }

  get rows(): number {
    return this.#rows;
  }

  get txns(): number {
    return this.#txns;
  }

  /** Nothing queued and nothing being applied: everything received is durable. */
  get idle(): boolean {
    return this.length === 0 && !this.#inFlight;
  }

  /** The applier finished (committed or failed) what it took. */
  done(): void {
    this.#inFlight = false;
  }

  push(u: Unit): void {
    this.#items.push(u);
    this.#rows += u.kind === 'heartbeat' ? 0 : u.rows;
    if (u.kind === 'txn') this.#txns++;
    this.#takeWaiter?.();
  }

  #peek(): Unit | undefined {
    return this.#items[this.#head];
  }

  #shift(): Unit {
    const u = this.#items[this.#head]!;
    this.#items[this.#head++] = undefined;
    if (this.#head > 4096 && this.#head * 2 > this.#items.length) {
      this.#items = this.#items.slice(this.#head);
      this.#head = 0;
    }
    this.#rows -= u.kind === 'heartbeat' ? 0 : u.rows;
    if (u.kind === 'txn') this.#txns--;
    return u;
  }

  /** Rows or transactions at their bound (checked synchronously, so a reader with room skips `room()`'s await). */
  get full(): boolean {
    return this.#rows >= this.maxRows || this.#txns >= this.maxTxns;
  }

  /** Wait until the queue is no longer full, or is closed. */
  async room(): Promise<void> {
    while (this.#closed === undefined && this.full) {
      await new Promise<void>((resolve) => (this.#roomWaiter = resolve));
    }
  }

  /**
   * Take a batch: every queued unit up to the limits (at least one), or a
   * single chunk of a spilled transaction. Resolves `undefined` when closed
   * cleanly and empty; rejects at once when closed with an error.
   */
  async take(maxTxns: number, maxRows: number): Promise<Unit[] | undefined> {
    // Failed (or stopped): what is still queued was never acknowledged and is streamed again next session.
    if (this.#closed) throw this.#closed;
    while (this.length === 0) {
      if (this.#closed !== undefined) {
        if (this.#closed) throw this.#closed;
        return undefined;
      }
      await new Promise<void>((resolve) => (this.#takeWaiter = resolve));
      this.#takeWaiter = undefined;
    }
    const out: Unit[] = [];
    let txns = 0;
    let rows = 0;
    while (this.length > 0) {
      const u = this.#peek()!;
      if (u.kind === 'chunk') {
        if (out.length === 0) out.push(this.#shift());
        break;
      }
      if (u.kind === 'txn' && u.spilled && out.length > 0) break; // the end of a spilled transaction goes alone
      const r = u.kind === 'heartbeat' ? 0 : u.rows;
      if (out.length > 0 && (txns + 1 > maxTxns || rows + r > maxRows)) break;
      out.push(this.#shift());
      if (u.kind === 'txn') txns++;
      rows += r;
      if (u.kind === 'txn' && u.spilled) break;
    }
    this.#inFlight = true;
    this.#roomWaiter?.();
    return out;
  }

  /**
   * Wait up to `ms` for a whole batch (`maxTxns` transactions or `maxRows` rows) to be queued: the
   * applier's group-commit wait. Returns early when that many are queued or the queue is closed.
   */
  async fill(maxTxns: number, maxRows: number, ms: number): Promise<void> {
    const until = performance.now() + ms;
    for (;;) {
      const left = until - performance.now();
      if (this.#closed !== undefined || this.#txns >= maxTxns || this.#rows >= maxRows || left <= 0) return;
      let timer: NodeJS.Timeout | undefined;
      await new Promise<void>((resolve) => {
        this.#takeWaiter = resolve;
        timer = setTimeout(resolve, left);
      });
      clearTimeout(timer);
      this.#takeWaiter = undefined;
    }
  }

  close(err?: Error): void {
    if (this.#closed !== undefined) return;
    this.#closed = err ?? null;
    this.#takeWaiter?.();
    this.#roomWaiter?.();
  }
}
