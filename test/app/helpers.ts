/**
 * Shared pieces of the app kit's tests: a config for regions backed by a test
 * cluster, a logger that captures lines, and a small HTTP client.
 */
import { Writable } from 'node:stream';
import http from 'node:http';
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config/index.ts';
import { createLogger, type Logger } from '../../src/core/log.ts';
import type pg from 'pg';
import { TEST_PG_PASSWORD, type TestCluster } from '../helpers/pg.ts';
import { Kit, type KitOptions } from '../../src/app/kit.ts';
import { createAppPool } from '../../src/app/db.ts';
import { createRegistry } from '../../src/core/metrics.ts';
import { silentLogger } from '../../src/core/log.ts';
import { localDatabase } from '../../src/core/config/index.ts';
import { migrateDatabase } from '../../src/service/schema.ts';

export const SESSION_KEY_A = 'session-key-A-0123456789abcdef';
export const SESSION_KEY_B = 'session-key-B-fedcba9876543210';

/** Region names of the test regions: r1, r2, ... (one per cluster server). */
export const regionName = (i: number): string => `r${i + 1}`;

/**
 * A validated config with one region per server of `cluster`; the database
 * password and the session keys come from environment variables set here.
 */
export function testConfig(cluster: TestCluster, app: ConfigInput['app'] = {}, extra: Partial<ConfigInput> = {}): Config {
  process.env.TANDEM_TEST_PG_PASSWORD = TEST_PG_PASSWORD;
  process.env.TANDEM_TEST_SESSION_KEY_A = SESSION_KEY_A;
  process.env.TANDEM_TEST_SESSION_KEY_B = SESSION_KEY_B;
  return parseConfig({
    regions: cluster.servers.map((s, i) => ({
      name: regionName(i),
      addresses: [s.options.host],
      healthUrl: `http://${s.options.host}:8080/healthz`,
      database: { host: s.options.host, port: s.options.port, user: 'postgres', database: 'tandem', password: { env: 'TANDEM_TEST_PG_PASSWORD' } },
      app: { listen: `${s.options.host}:0`, workers: 1 },
    })),
    app: { sessionKeys: [{ env: 'TANDEM_TEST_SESSION_KEY_A' }], fenceCacheMs: 100, ...app },
    ...extra,
  });
}

/**
 * A kit on the first region of `cluster`, in this process (no HTTP server): the schema migrated, a request
 * pool, silent logs and a registry of its own. The caller ends `pool`.
 */
export async function kitOnCluster(
  cluster: TestCluster,
  o: { app?: ConfigInput['app']; routes: KitOptions['routes']; sessionSecrets?: (config: Config) => KitOptions['sessionSecrets'] },
): Promise<{ kit: Kit; pool: pg.Pool; config: Config }> {
  const config = testConfig(cluster, o.app);
  const conn = localDatabase(config.regions[0]!);
  await migrateDatabase(conn);
  const pool = createAppPool(conn, { db: config.app.db });
  const kit = new Kit({
    region: 'r1',
    version: 'test',
    app: config.app,
    pool,
    logger: silentLogger(),
    registry: createRegistry('app', 'r1', false),
    ...(o.sessionSecrets ? { sessionSecrets: o.sessionSecrets(config) } : {}),
    routes: o.routes,
  });
  return { kit, pool, config };
}

/** A logger whose JSON lines are kept in `lines`. */
export function captureLogger(name = 'app'): { logger: Logger; lines: Array<Record<string, unknown>> } {
  const lines: Array<Record<string, unknown>> = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString('utf8').split('\n')) if (line.trim()) lines.push(JSON.parse(line) as Record<string, unknown>);
      cb();
    },
  });
  return { logger: createLogger({ name, level: 'debug', destination }), lines };
}

/** A response as the tests look at it. */
export interface Res {
  status: number;
  headers: http.IncomingHttpHeaders;
  text: string;
  json: any;
}

/** One HTTP request with `node:http` (raw control over headers and bodies; no connection reuse). */
export function request(
  base: string,
  method: string,
  path: string,
  opts: { headers?: Record<string, string>; body?: unknown; raw?: string | Buffer; timeoutMs?: number } = {},
): Promise<Res> {
  const url = new URL(path, base);
  const payload = opts.raw !== undefined ? opts.raw : opts.body !== undefined ? JSON.stringify(opts.body) : undefined;
  const headers: Record<string, string> = { connection: 'close', ...opts.headers };
  if (payload !== undefined && opts.raw === undefined) headers['content-type'] ??= 'application/json';
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method, headers, agent: false }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        const text = Buffer.concat(chunks).toString('utf8');
        let json: unknown;
        try {
          json = text ? JSON.parse(text) : undefined;
        } catch {
          json = undefined;
        }
        resolve({ status: res.statusCode ?? 0, headers: res.headers, text, json });
      });
      res.on('error', reject);
    });
    req.setTimeout(opts.timeoutMs ?? 15_000, () => req.destroy(new Error(`${method} ${path} timed out`)));
    req.on('error', reject);
    if (payload !== undefined) req.end(payload);
    else req.end();
  });
}

/** A quoted structured-field string for an Idempotency-Key header. */
export const sfKey = (key: string): string => `"${key}"`;

/** One sample of a Prometheus text exposition. */
export interface Sample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

/** Parse Prometheus text into samples (enough for tests: no escapes inside label values). */
export function parseMetrics(text: string): Sample[] {
  const out: Sample[] = [];
  for (const line of text.split('\n')) {
    const m = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})? (\S+)$/.exec(line);
    if (!m) continue;
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)) labels[l[1]!] = l[2]!;
    out.push({ name: m[1]!, labels, value: Number(m[3]) });
  }
  return out;
}

/** The summed value of samples named `name` whose labels include `labels`. */
export function metricValue(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(labels).every(([k, v]) => s.labels[k] === v))
    .reduce((acc, s) => acc + s.value, 0);
}
