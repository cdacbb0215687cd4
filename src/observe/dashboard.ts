/**
 * The dashboard's HTTP routes, for any `ApiServer`: the lab mounts them on
 * its API port (127.0.0.1:7070) and `tandem dashboard` serves them alone.
 *
 *   GET  /                          the page (public)
 *   GET  /assets/<file>             its script and styles, uPlot from node_modules (public)
 *   GET  /v1/dashboard/snapshot     the current snapshot; `?history=1` adds the chart history
 *   GET  /v1/dashboard/stream       server-sent events: `hello` (snapshot + history), then `update` every poll
 *   GET  /v1/alerts                 the alerts firing now (`tandem status` prints them)
 *   GET  /reports/<id>/<file>       drill reports (html, md, json, images)
 *   POST /v1/dashboard/drain        { region, reason?, force? } → the controllers' POST /v1/failover   (token)
 *   POST /v1/dashboard/undrain      { region, reason?, force? } → the controllers' POST /v1/failback   (token)
 *   POST /v1/dashboard/lab/fail     { region }  → lab API POST /v1/lab/regions/:r/fail                 (token, lab only)
 *   POST /v1/dashboard/lab/recover  { region }  → lab API POST /v1/lab/regions/:r/recover              (token, lab only)
 *   POST /v1/dashboard/lab/partition { a, b }   → lab API POST /v1/lab/partition                       (token, lab only)
 *   POST /v1/dashboard/lab/heal     { a?, b? }  → lab API POST /v1/lab/heal                            (token, lab only)
 *
 * Reads are public by default (the dashboard listens on loopback);
 * `viewerAuth: 'token'` makes them need the admin token too.
 */
import { existsSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Registry } from 'prom-client';
import { TandemError, isTandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import { regionByName, type Config } from '../core/config/index.ts';
import { callApi, type RequestContext, type Route } from '../core/http.ts';
import type { Notification } from '../core/notify.ts';
import { Collector, hp, type DashboardUpdate, type LabLink } from './collector.ts';

/** Options of the routes. */
export interface DashboardRouteOptions {
  /** The admin token, forwarded to controllers and the lab API on actions. */
  token: string | undefined;
  /** `public` (default): anyone who reaches the port may look; `token`: reads need the admin token too. */
  viewerAuth?: 'public' | 'token';
  /** Folder of drill reports served under /reports. */
  reportsDir?: string;
  lab?: LabLink;
}

const PAGE_DIR = fileURLToPath(new URL('./page/', import.meta.url));
const require = createRequire(import.meta.url);

/** The bundled assets: name → file and content type. */
const ASSETS: Record<string, { file: () => string; type: string }> = {
  'dashboard.js': { file: () => path.join(PAGE_DIR, 'dashboard.js'), type: 'text/javascript; charset=utf-8' },
  'dashboard.css': { file: () => path.join(PAGE_DIR, 'dashboard.css'), type: 'text/css; charset=utf-8' },
  'uPlot.iife.min.js': { file: () => require.resolve('uplot/dist/uPlot.iife.min.js'), type: 'text/javascript; charset=utf-8' },
  'uPlot.min.css': { file: () => require.resolve('uplot/dist/uPlot.min.css'), type: 'text/css; charset=utf-8' },
};

const REPORT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.md': 'text/markdown; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.csv': 'text/csv; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
};

/** The page may load only its own assets and talk only to its own origin. */
const PAGE_HEADERS = {
  'content-security-policy': "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
  'x-content-type-options': 'nosniff',
  'referrer-policy': 'no-referrer',
  'cache-control': 'no-cache',
};

const cache = new Map<string, Buffer>();
function readAsset(file: string): Buffer {
  // Assets are small and fixed for the life of the process.
  let b = cache.get(file);
  if (!b) {
    b = readFileSync(file);
    cache.set(file, b);
  }
  return b;
}

/** Validate an action body: `{ region, reason?, force? }` with a known region. */
function regionBody(config: Config, body: unknown): { region: string; reason?: string; force?: boolean } {
  const b = (body ?? {}) as Record<string, unknown>;
  if (typeof b.region !== 'string' || !b.region) throw new TandemError('TANDEM_ERR_USAGE', 'body must be {"region": "<name>", "reason"?: string, "force"?: boolean}');
  regionByName(config, b.region);
  if (b.reason !== undefined && (typeof b.reason !== 'string' || b.reason.length > 200)) throw new TandemError('TANDEM_ERR_USAGE', 'reason must be a string of at most 200 characters');
  if (b.force !== undefined && typeof b.force !== 'boolean') throw new TandemError('TANDEM_ERR_USAGE', 'force must be true or false');
  return { region: b.region, ...(b.reason ? { reason: b.reason as string } : {}), ...(b.force ? { force: true } : {}) };
}

const actorOf = (ctx: RequestContext) => (ctx.actor === 'api' ? 'dashboard' : ctx.actor.startsWith('dashboard') ? ctx.actor : `dashboard:${ctx.actor}`);

/**
 * Ask the controllers to fail over or fail back: the first one that answers
 * takes it (a follower forwards to the leader). A controller that refuses
 * (safety rule, RPO) answers with an error that is passed on as it is.
 */
async function controllerAction(config: Config, token: string | undefined, what: 'failover' | 'failback', body: object, actor: string): Promise<unknown> {
  const errors: string[] = [];
  for (const r of config.regions) {
    if (!r.control) continue;
    try {
      return await callApi(`http://${hp(r.control.listen)}/v1/${what}`, { method: 'POST', body, token, actor, timeoutMs: 15_000 });
    } catch (err) {
      if (isTandemError(err) && err.details?.status !== undefined) throw err;
      errors.push(`${r.name}: ${(err as Error).message}`);
    }
  }
  if (!errors.length) throw new TandemError('TANDEM_ERR_CONFIG', 'no region has control.listen set: there is no controller to ask');
  throw new TandemError('TANDEM_ERR_HTTP', `no controller answered (${errors.join('; ')})`);
}

/** The routes of the dashboard for `collector`. */
export function dashboardRoutes(collector: Collector, opts: DashboardRouteOptions): Route[] {
  const config = collector.config;
  const viewPublic = (opts.viewerAuth ?? 'public') === 'public';
  const lab = opts.lab;
  const needLab = (): LabLink => {
    if (!lab) throw new TandemError('TANDEM_ERR_LAB', 'this dashboard does not run in a lab: lab actions are not available');
    return lab;
  };
  const labCall = async (ctx: RequestContext, route: string, body: unknown, label: string, region?: string) => {
    const l = needLab();
    const out = await callApi(`${l.api}${route}`, { method: 'POST', body, token: opts.token, actor: actorOf(ctx), timeoutMs: 150_000 });
    collector.note({ kind: label, severity: label === 'fail' || label === 'partition' ? 'critical' : 'info', message: `${actorOf(ctx)}: lab ${label}${region ? ` ${region}` : ''}`, ...(region ? { region } : {}), actor: actorOf(ctx) });
    collector.refresh();
    return { body: out ?? { ok: true } };
  };

  return [
    {
      method: 'GET',
      path: '/',
      public: true,
      handler: () => ({ body: readAsset(path.join(PAGE_DIR, 'index.html')), contentType: 'text/html; charset=utf-8', headers: PAGE_HEADERS }),
    },
    {
      method: 'GET',
      path: /^\/assets\/(?<name>[\w.-]+)$/,
      public: true,
      handler: ({ params }) => {
        const a = ASSETS[params.name!];
        if (!a) throw new TandemError('TANDEM_ERR_NOT_FOUND', `no such asset: ${params.name}`);
        return { body: readAsset(a.file()), contentType: a.type, headers: { 'cache-control': 'no-cache', 'x-content-type-options': 'nosniff' } };
      },
    },
    {
      method: 'GET',
      path: '/v1/dashboard/snapshot',
      public: viewPublic,
      handler: ({ url }) => ({ body: { snapshot: collector.snapshot(), ...(url.searchParams.get('history') === '1' ? { history: collector.history() } : {}) } }),
    },
    {
      method: 'GET',
      path: '/v1/alerts',
      public: viewPublic,
      handler: () => ({ body: { at: new Date().toISOString(), alerts: collector.alerts() } }),
    },
    {
      method: 'GET',
      path: '/v1/dashboard/stream',
      public: viewPublic,
      raw: true,
      handler: ({ req, res }) => {
        res.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-store',
          connection: 'keep-alive',
          'x-content-type-options': 'nosniff',
        });
        let congested = false;
        const write = (event: string, data: unknown): void => {
          // A slow reader skips updates instead of buffering them without bound; the next one carries the full snapshot.
          if (congested) return;
          const ok = res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
          if (!ok) {
            congested = true;
            res.once('drain', () => (congested = false));
          }
        };
        res.write('retry: 2000\n\n');
        write('hello', { snapshot: collector.snapshot(), history: collector.history(), capacity: collector.capacity });
        const off = collector.subscribe((u: DashboardUpdate) => write('update', u));
        const ping = setInterval(() => res.write(': ping\n\n'), 15_000);
        const end = () => {
          off();
          clearInterval(ping);
        };
        req.on('close', end);
        res.on('close', end);
        void collector.closed.finally(() => {
          end();
          res.end();
        });
      },
    },
    {
      method: 'GET',
      path: /^\/reports\/(?<id>[\w.-]+)\/(?<file>[\w.-]+)$/,
      public: viewPublic,
      handler: ({ params }) => {
        const dir = opts.reportsDir;
        const type = REPORT_TYPES[path.extname(params.file!).toLowerCase()];
        if (!dir || !type || params.id!.startsWith('.') || params.file!.startsWith('.')) throw new TandemError('TANDEM_ERR_NOT_FOUND', `no such report file: ${params.id}/${params.file}`);
        const file = path.join(dir, params.id!, params.file!);
        // The names are restricted to [\w.-]; resolving symlinks too keeps every read inside the reports folder.
        if (!existsSync(file) || !statSync(file).isFile() || !realpathSync(file).startsWith(realpathSync(dir) + path.sep)) {
          throw new TandemError('TANDEM_ERR_NOT_FOUND', `no such report file: ${params.id}/${params.file}`);
        }
        // Reports run in a sandbox: their scripts may draw charts but cannot reach this origin (or the token).
        return { body: readFileSync(file), contentType: type, headers: { 'content-security-policy': 'sandbox allow-scripts', 'x-content-type-options': 'nosniff', 'cache-control': 'no-cache' } };
      },
    },
    {
      method: 'POST',
      path: '/v1/dashboard/drain',
      handler: async (ctx) => {
        const b = regionBody(config, ctx.body);
        const out = await controllerAction(config, opts.token, 'failover', { region: b.region, reason: b.reason ?? 'drained from the dashboard', ...(b.force ? { force: true } : {}) }, actorOf(ctx));
        collector.note({ kind: 'drain-requested', severity: 'warning', region: b.region, message: `${actorOf(ctx)} asked to drain ${b.region}`, actor: actorOf(ctx) });
        collector.refresh();
        return { body: out };
      },
    },
    {
      method: 'POST',
      path: '/v1/dashboard/undrain',
      handler: async (ctx) => {
        const b = regionBody(config, ctx.body);
        const out = await controllerAction(config, opts.token, 'failback', { region: b.region, reason: b.reason ?? 'undrained from the dashboard', ...(b.force ? { force: true } : {}) }, actorOf(ctx));
        collector.note({ kind: 'undrain-requested', severity: 'info', region: b.region, message: `${actorOf(ctx)} asked to return ${b.region} to DNS`, actor: actorOf(ctx) });
        collector.refresh();
        return { body: out };
      },
    },
    {
      method: 'POST',
      path: /^\/v1\/dashboard\/lab\/(?<action>fail|recover)$/,
      handler: async (ctx) => {
        needLab();
        const { region } = regionBody(config, ctx.body);
        return labCall(ctx, `/v1/lab/regions/${encodeURIComponent(region)}/${ctx.params.action}`, undefined, ctx.params.action!, region);
      },
    },
    {
      method: 'POST',
      path: '/v1/dashboard/lab/partition',
      handler: async (ctx) => {
        needLab();
        const b = (ctx.body ?? {}) as { a?: unknown; b?: unknown };
        if (typeof b.a !== 'string' || typeof b.b !== 'string') throw new TandemError('TANDEM_ERR_USAGE', 'body must be {"a": "<region>", "b": "<region>"}');
        regionByName(config, b.a);
        regionByName(config, b.b);
        return labCall(ctx, '/v1/lab/partition', { a: b.a, b: b.b }, 'partition', `${b.a} | ${b.b}`);
      },
    },
    {
      method: 'POST',
      path: '/v1/dashboard/lab/heal',
      handler: async (ctx) => {
        needLab();
        const b = (ctx.body ?? {}) as { a?: unknown; b?: unknown };
        const pair = typeof b.a === 'string' && typeof b.b === 'string' ? { a: b.a, b: b.b } : {};
        return labCall(ctx, '/v1/lab/heal', pair, 'heal');
      },
    },
  ];
}

/** Options of `createDashboard`. */
export interface CreateDashboardOptions {
  config: Config;
  token: string | undefined;
  logger: Logger;
  /** When the lab serves the dashboard: its status in process and its API URL. */
  lab?: LabLink;
  /** Drill reports folder; in a lab, `<lab dir>/reports`. */
  reportsDir?: string;
  viewerAuth?: 'public' | 'token';
  registry?: Registry;
  readConflicts?: boolean;
  notify?: (n: Notification) => void;
  intervalMs?: number;
}

/**
 * One call for the lab and the CLI: a collector (start it, stop it) and the
 * routes to mount on an `ApiServer`.
 */
export function createDashboard(o: CreateDashboardOptions): { collector: Collector; routes: Route[] } {
  const collector = new Collector({
    config: o.config,
    token: o.token,
    logger: o.logger,
    ...(o.lab ? { lab: o.lab } : {}),
    ...(o.reportsDir ? { reportsDir: o.reportsDir } : {}),
    ...(o.registry ? { registry: o.registry } : {}),
    ...(o.readConflicts !== undefined ? { readConflicts: o.readConflicts } : {}),
    ...(o.notify ? { notify: o.notify } : {}),
    ...(o.intervalMs ? { intervalMs: o.intervalMs } : {}),
  });
  const routes = dashboardRoutes(collector, { token: o.token, ...(o.viewerAuth ? { viewerAuth: o.viewerAuth } : {}), ...(o.reportsDir ? { reportsDir: o.reportsDir } : {}), ...(o.lab ? { lab: o.lab } : {}) });
  return { collector, routes };
}
