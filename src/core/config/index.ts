/**
 * `tandem.yaml`: one file describes regions, endpoints, geography, health,
 * DNS, replication and thresholds. It is validated at load; every bad field is
 * reported with its key path, what was expected and what was found.
 */
import { readFileSync } from 'node:fs';
import { z } from 'zod';
import { parse as parseYaml, YAMLParseError } from 'yaml';
import { TandemError } from '../errors.ts';
import { parseTableName } from '../sql.ts';
import { secretRef } from './common.ts';
import { region, type RegionConfig } from './region.ts';
import { health } from './health.ts';
import { dns, geo } from './dns.ts';
import { replication } from './replication.ts';
import { app } from './app.ts';
import { control } from './control.ts';
import { alerts } from './observe.ts';

export * from './common.ts';
export * from './region.ts';
export * from './health.ts';
export * from './dns.ts';
export * from './replication.ts';
export * from './app.ts';
export * from './control.ts';
export * from './observe.ts';

const configSchema = z
  .object({
    version: z.literal(1).default(1),
    /** Where daemons keep state (drain state, audit log) unless a section names a file. */
    dataDir: z.string().default('./.tandem'),
    regions: z.array(region).min(1),
    /** The bearer token every admin and control API requires. */
    adminToken: secretRef.optional(),
    health: health.default(health.parse({})),
    dns: dns.optional(),
    geo: geo.default(geo.parse({})),
    replication: replication.default(replication.parse({})),
    app: app.default(app.parse({})),
    control: control.default(control.parse({})),
    alerts: alerts.default(alerts.parse({})),
  })
  .strict()
  .superRefine((c, ctx) => {
    const names = new Set<string>();
    c.regions.forEach((r, i) => {
      if (names.has(r.name)) ctx.addIssue({ code: 'custom', path: ['regions', i, 'name'], message: `duplicate region name "${r.name}"` });
      names.add(r.name);
    });
    const checkRegions = (list: readonly string[], path: (string | number)[]) => {
      list.forEach((n, i) => {
        if (!names.has(n)) ctx.addIssue({ code: 'custom', path: [...path, i], message: `unknown region "${n}" (known: ${[...names].join(', ')})` });
      });
    };
    c.geo.rules.forEach((rule, i) => checkRegions(rule.order, ['geo', 'rules', i, 'order']));
    c.geo.overrides.forEach((o, i) => checkRegions(o.order, ['geo', 'overrides', i, 'order']));
    if (c.geo.defaultOrder) checkRegions(c.geo.defaultOrder, ['geo', 'defaultOrder']);
    c.dns?.services.forEach((s, i) => {
      if (s.weights) checkRegions(Object.keys(s.weights), ['dns', 'services', i, 'weights']);
    });
    c.replication.tables.forEach((t, i) => {
      try {
        parseTableName(t);
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['replication', 'tables', i], message: (err as Error).message });
      }
    });
    // Each DNS server is one vantage point: a quorum above their number could never confirm a failure.
    const vantagePoints = c.regions.filter((r) => r.dns).length;
    if (c.control.quorum !== undefined && vantagePoints > 0 && c.control.quorum > vantagePoints) {
      ctx.addIssue({ code: 'custom', path: ['control', 'quorum'], message: `${c.control.quorum} is more than the ${vantagePoints} vantage point(s) (regions with dns): no failure could ever be confirmed` });
    }
    for (const [table, policy] of Object.entries(c.replication.conflicts)) {
      if (policy.policy === 'region-priority' && !names.has(policy.region)) {
        ctx.addIssue({ code: 'custom', path: ['replication', 'conflicts', table, 'region'], message: `unknown region "${policy.region}"` });
      }
    }
  });

/** The validated configuration with every default filled in. */
export type Config = z.output<typeof configSchema>;
/** The configuration as written (defaults optional). */
export type ConfigInput = z.input<typeof configSchema>;

/** Format zod issues as `path: message (found X)` lines. */
function describeIssues(error: z.ZodError, input: unknown): string[] {
  return error.issues.map((issue) => {
    const path = issue.path.length ? formatPath(issue.path as (string | number)[]) : '(top level)';
    const found = valueAt(input, issue.path as (string | number)[]);
    const foundText = found === undefined ? 'nothing' : JSON.stringify(found)?.slice(0, 80);
    return `${path}: ${issue.message} (found ${foundText})`;
  });
}

/** `regions[0].database.port` */
export function formatPath(path: readonly (string | number)[]): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : /^[A-Za-z_][\w-]*$/.test(p) ? (i ? `.${p}` : p) : `[${JSON.stringify(p)}]`)).join('');
}

function valueAt(input: unknown, path: readonly (string | number)[]): unknown {
  let cur: unknown = input;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object') return undefined;
    cur = (cur as Record<string | number, unknown>)[p];
  }
  return cur;
}

/** Validate a parsed object; `source` names where it came from in errors. */
export function parseConfig(input: unknown, source = 'tandem.yaml'): Config {
  const result = configSchema.safeParse(input);
  if (!result.success) {
    const lines = describeIssues(result.error, input);
    throw new TandemError('TANDEM_ERR_CONFIG', `${source} is invalid:\n  - ${lines.join('\n  - ')}`, {
      details: { source, errors: lines },
    });
  }
  return result.data;
}

/** Read, parse and validate a YAML config file. */
export function loadConfig(path: string): Config {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (cause) {
    throw new TandemError('TANDEM_ERR_CONFIG', `cannot read config file ${path}: ${(cause as NodeJS.ErrnoException).code ?? cause}`, { cause });
  }
  let doc: unknown;
  try {
    doc = parseYaml(text, { prettyErrors: true });
  } catch (cause) {
    const where = cause instanceof YAMLParseError && cause.linePos ? ` at line ${cause.linePos[0].line}, column ${cause.linePos[0].col}` : '';
    throw new TandemError('TANDEM_ERR_CONFIG', `${path} is not valid YAML${where}: ${(cause as Error).message.split('\n')[0]}`, { cause });
  }
  return parseConfig(doc, path);
}

/** Find a region by name or throw a clear error naming the known ones. */
export function regionByName(config: Config, name: string): RegionConfig {
  const r = config.regions.find((x) => x.name === name);
  if (!r) {
    throw new TandemError('TANDEM_ERR_NOT_FOUND', `unknown region "${name}" (known: ${config.regions.map((x) => x.name).join(', ')})`);
  }
  return r;
}

/** The connection a process inside `region` uses for its own database. */
export function localDatabase(r: RegionConfig): RegionConfig['database'] {
  return { ...r.database, ...(r.localDatabase ?? {}) };
}
