/**
 * A bounded store of time series for the dashboard charts: one shared time
 * axis (unix seconds, as uPlot wants it) and one value column per series,
 * `null` where a series had no value (a source was down).
 */

/** What a chart needs to know about one series. */
export interface SeriesMeta {
  key: string;
  /** Which chart it belongs to. */
  group: 'lag' | 'http' | 'dns';
  label: string;
  unit: string;
  /** The region whose colour it takes. */
  region?: string;
  /** Drawn dashed (5xx over requests, say). */
  dashed?: boolean;
}

/** The whole history, as the page loads it once. */
export interface SeriesHistory {
  t: number[];
  series: (SeriesMeta & { values: (number | null)[] })[];
}

/** One new column of values. */
export interface SeriesPoint {
  t: number;
  values: Record<string, number | null>;
}

/** Keeps the last `capacity` points of every series. */
export class SeriesStore {
  readonly capacity: number;
  #t: number[] = [];
  #cols = new Map<string, { meta: SeriesMeta; values: (number | null)[] }>();

  constructor(capacity: number) {
    this.capacity = Math.max(2, Math.floor(capacity));
  }

  get length(): number {
    return this.#t.length;
  }

  /** Append one point; series not given get null, new series are back-filled with null. */
  push(tSec: number, values: ReadonlyMap<string, { meta: SeriesMeta; value: number | null }>): SeriesPoint {
    for (const [key, { meta }] of values) {
      const col = this.#cols.get(key);
      if (col) col.meta = meta;
      else this.#cols.set(key, { meta, values: new Array<number | null>(this.#t.length).fill(null) });
    }
    this.#t.push(tSec);
    const out: Record<string, number | null> = {};
    for (const [key, col] of this.#cols) {
      const v = values.get(key)?.value ?? null;
      const clean = v === null || !Number.isFinite(v) ? null : v;
      col.values.push(clean);
      out[key] = clean;
    }
    if (this.#t.length > this.capacity) {
      const drop = this.#t.length - this.capacity;
      this.#t.splice(0, drop);
      for (const col of this.#cols.values()) col.values.splice(0, drop);
    }
    // A series that has been null for the whole window is forgotten.
    for (const [key, col] of this.#cols) if (col.values.every((v) => v === null)) this.#cols.delete(key);
    return { t: tSec, values: out };
  }

  /** Metadata of the series held now. */
  meta(): SeriesMeta[] {
    return [...this.#cols.values()].map((c) => c.meta);
  }

  history(): SeriesHistory {
    return { t: [...this.#t], series: [...this.#cols.values()].map((c) => ({ ...c.meta, values: [...c.values] })) };
  }
}
