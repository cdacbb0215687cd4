/**
 * A small parser of the Prometheus text exposition format (version 0.0.4),
 * enough for the collector to read the counters every tandem daemon exposes
 * at `/metrics`.
 *
 * Spec: https://prometheus.io/docs/instrumenting/exposition_formats/#text-based-format
 *   - lines end with `\n`; `# HELP name text` and `# TYPE name type` carry
 *     metadata, any other `#` line is a comment; empty lines are ignored;
 *   - a sample is `name{label="value",...} value [timestamp]`, tokens
 *     separated by blanks or tabs, a trailing comma in the label set allowed;
 *   - label values escape `\\`, `\"` and `\n`; HELP text escapes `\\` and `\n`;
 *   - values are Go floats, including `NaN`, `+Inf` and `-Inf`; the timestamp
 *     is an int64 of milliseconds since the epoch.
 *
 * Bad lines do not stop the parse: each is reported with its line number, so
 * one malformed series from a daemon never hides the rest.
 */

/** The metric types the format names. */
export const METRIC_TYPES = ['counter', 'gauge', 'histogram', 'summary', 'untyped'] as const;
export type MetricType = (typeof METRIC_TYPES)[number];

/** One sample line. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
  timestampMs?: number;
}

/** `# HELP` and `# TYPE` of one metric family. */
export interface Family {
  name: string;
  type: MetricType;
  help?: string;
}

/** A line that could not be parsed. */
export interface ParseIssue {
  line: number;
  message: string;
}

export interface Exposition {
  samples: Sample[];
  families: Map<string, Family>;
  issues: ParseIssue[];
}

const NAME_START = /[A-Za-z_:]/;
const NAME_CHAR = /[A-Za-z0-9_:]/;
const LABEL_START = /[A-Za-z_]/;
const LABEL_CHAR = /[A-Za-z0-9_]/;

class LineError extends Error {}

/** Parse a float as the format writes it (Go's ParseFloat plus `+Inf`/`-Inf`/`NaN`). */
export function parseValue(text: string): number {
  switch (text) {
    case '+Inf':
    case 'Inf':
    case '+inf':
    case 'inf':
      return Infinity;
    case '-Inf':
    case '-inf':
      return -Infinity;
    case 'NaN':
    case 'nan':
      return NaN;
  }
  // Number('') is 0 and Number('0x10') is 16: both are not valid here.
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(text)) throw new LineError(`invalid value ${JSON.stringify(text)}`);
  return Number(text);
}

/** Parse one exposition text. */
export function parseExposition(text: string): Exposition {
  const samples: Sample[] = [];
  const families = new Map<string, Family>();
  const issues: ParseIssue[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    let line = lines[i]!;
    if (line.endsWith('\r')) line = line.slice(0, -1);
    if (line.trim() === '') continue;
    try {
      if (/^\s*#/.test(line)) parseComment(line, families);
      else samples.push(parseSampleLine(line));
    } catch (err) {
      if (!(err instanceof LineError)) throw err;
      issues.push({ line: i + 1, message: err.message });
    }
  }
  return { samples, families, issues };
}

function parseComment(line: string, families: Map<string, Family>): void {
  const m = /^\s*#\s+(HELP|TYPE)\s+([^\s]+)(?:[ \t]+(.*))?$/.exec(line);
  if (!m) return; // a plain comment
  const [, kind, name, rest = ''] = m;
  if (!isMetricName(name!)) throw new LineError(`invalid metric name ${JSON.stringify(name)} in # ${kind}`);
  const family = families.get(name!) ?? { name: name!, type: 'untyped' as MetricType };
  if (kind === 'TYPE') {
    const type = rest.trim();
    if (!(METRIC_TYPES as readonly string[]).includes(type)) throw new LineError(`unknown metric type ${JSON.stringify(type)} for ${name}`);
    family.type = type as MetricType;
  } else {
    family.help = unescapeHelp(rest);
  }
  families.set(name!, family);
}

function unescapeHelp(s: string): string {
  return s.replace(/\\(.)/g, (_m, c: string) => (c === 'n' ? '\n' : c === '\\' ? '\\' : `\\${c}`));
}

function isMetricName(s: string): boolean {
  if (!s || !NAME_START.test(s[0]!)) return false;
  for (const c of s) if (!NAME_CHAR.test(c)) return false;
  return true;
}

function parseSampleLine(line: string): Sample {
  let i = 0;
  const n = line.length;
  while (i < n && (line[i] === ' ' || line[i] === '\t')) i++;
  const nameStart = i;
  if (i >= n || !NAME_START.test(line[i]!)) throw new LineError('expected a metric name');
  while (i < n && NAME_CHAR.test(line[i]!)) i++;
  const name = line.slice(nameStart, i);
  const labels: Record<string, string> = {};
  while (i < n && (line[i] === ' ' || line[i] === '\t')) i++;
  if (line[i] === '{') {
    i++;
    for (;;) {
      while (i < n && (line[i] === ' ' || line[i] === '\t')) i++;
      if (line[i] === '}') {
        i++;
        break;
      }
      const ls = i;
      if (i >= n || !LABEL_START.test(line[i]!)) throw new LineError(`expected a label name at column ${i + 1}`);
      while (i < n && LABEL_CHAR.test(line[i]!)) i++;
      const label = line.slice(ls, i);
      while (i < n && (line[i] === ' ' || line[i] === '\t')) i++;
      if (line[i] !== '=') throw new LineError(`expected "=" after label ${label}`);
      i++;
      while (i < n && (line[i] === ' ' || line[i] === '\t')) i++;
      if (line[i] !== '"') throw new LineError(`expected a quoted value for label ${label}`);
      i++;
      let value = '';
      for (;;) {
        if (i >= n) throw new LineError(`unterminated value of label ${label}`);
        const c = line[i]!;
        if (c === '"') {
          i++;
          break;
        }
        if (c === '\\') {
          const e = line[i + 1];
          if (e === 'n') value += '\n';
          else if (e === '\\' || e === '"') value += e;
          else throw new LineError(`invalid escape \\${e ?? ''} in label ${label}`);
          i += 2;
          continue;
        }
        value += c;
        i++;
      }
      if (Object.hasOwn(labels, label)) throw new LineError(`label ${label} given twice`);
      labels[label] = value;
      while (i < n && (line[i] === ' ' || line[i] === '\t')) i++;
      if (line[i] === ',') {
        i++;
        continue;
      }
      if (line[i] === '}') {
        i++;
        break;
      }
      throw new LineError(`expected "," or "}" after label ${label}`);
    }
  }
  const rest = line.slice(i).trim().split(/[ \t]+/);
  if (rest.length === 0 || rest[0] === '') throw new LineError(`missing value for ${name}`);
  if (rest.length > 2) throw new LineError(`unexpected text after the value of ${name}`);
  const sample: Sample = { name, labels, value: parseValue(rest[0]!) };
  if (rest[1] !== undefined) {
    if (!/^-?\d+$/.test(rest[1])) throw new LineError(`invalid timestamp ${JSON.stringify(rest[1])}`);
    sample.timestampMs = Number(rest[1]);
  }
  return sample;
}

/** Sum the samples named `name` whose labels pass `where` (all of them by default). */
export function sumSamples(samples: readonly Sample[], name: string, where: (labels: Record<string, string>) => boolean = () => true): number | undefined {
  let total: number | undefined;
  for (const s of samples) {
    if (s.name !== name || !where(s.labels)) continue;
    if (Number.isNaN(s.value)) continue;
    total = (total ?? 0) + s.value;
  }
  return total;
}

/** Sum the samples named `name` grouped by the value of one label. */
export function sumBy(samples: readonly Sample[], name: string, label: string): Map<string, number> {
  const out = new Map<string, number>();
  for (const s of samples) {
    if (s.name !== name || Number.isNaN(s.value)) continue;
    const k = s.labels[label] ?? '';
    out.set(k, (out.get(k) ?? 0) + s.value);
  }
  return out;
}
