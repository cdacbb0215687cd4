/**
 * The app kit: one request pipeline for stateless regional services.
 *
 * Handlers are written once against `KitRequest` → `KitReply` and served
 * three ways without change: a plain `node:http` handler (`kit.handler`), an
 * Express/connect middleware (`kit.express()`), and a Fastify plugin
 * (`kit.fastify()`). Around every handler the kit does, in this order:
 *
 * 1. correlation: validate `traceparent` / `X-Correlation-ID` (replace bad
 *    ones), bind the id to the logger (AsyncLocalStorage), return it;
 * 2. bad input: `Idempotency-Key` syntax, body size (413), JSON (400);
 * 3. sessions: verify the bearer token (401 when forged/expired/revoked);
 * 4. the write fence: a read-only region answers writes 503 + Retry-After;
 * 5. idempotency: claim the key (409 in flight, 422 other payload, replay a
 *    stored response), run the handler and store its 2xx response in the
 *    same transaction as its effects;
 * 6. errors: problem+json; a database outage answers 503 quickly.
 */
import type http from 'node:http';
import type pg from 'pg';
import type { Registry } from 'prom-client';
import type { Logger } from '../core/log.ts';
import type { AppConfig } from '../core/config/app.ts';
import { BaseService, sleep } from '../core/lifecycle.ts';
import { contextFromHeaders, formatTraceparent, runWithContext, HEADER, type RequestContext } from './correlation.ts';
import { HttpProblem, isProblem } from './problem.ts';
import { inTransaction, isDbUnavailable, type Queryable } from './db.ts';
import { IdempotencyStore, entityId, fingerprint, parseIdempotencyKey, type KeyRef, type StoredResponse } from './idempotency.ts';
import { FenceReader, ensureFenceRow, readFence } from './fence.ts';
import { SessionKeyring, SessionStore, type Session } from './session.ts';
import { HealthChecker, type LagSource } from './health.ts';
import { AppMetrics } from './metrics.ts';

/** HTTP methods a route may have. */


/** The response closes its connection once sent (`Connection: close`), unless its headers are out already. */
function closeAfter(res: http.ServerResponse): void {
  if (res.headersSent) return;
  res.shouldKeepAlive = false;
  res.setHeader('connection', 'close');
}
/** Expired idempotency keys and sessions deleted per purge transaction, and transactions per purge run. */
const PURGE_BATCH = 1_000;
const PURGE_ROUNDS = 100;
export type Method = 'GET' | 'POST' | 'PUT' | 'PATCH' | 'DELETE';

/** What a handler receives. */
export interface KitRequest {
  method: string;
  /** The path without the query string. */
  path: string;
  /** The route pattern that matched (`/v1/orders/:id`). */
  route: string;
  params: Record<string, string>;
  query: URLSearchParams;
  headers: http.IncomingHttpHeaders;
  /** The parsed JSON body; `undefined` when there was none. */
  body: unknown;
  /** Correlation: ids, trace context, the request's logger. */
  context: RequestContext;
  log: Logger;
  region: string;
  /** The verified session, when the request carried a valid one. */
  session: Session | undefined;
  /** Who the idempotency key belongs to: `user:<id>`, `client:<X-Client-ID>` or `anonymous`. */
  scope: string;
  /** The Idempotency-Key (idempotent routes only). */
  idempotencyKey: string | undefined;
  /** A deterministic id (UUIDv5 of scope + key) for an entity this request creates; idempotent routes only. */
  entityId(kind?: string): string;
  /** The database: the request's own transaction on idempotent routes, the pool otherwise. */
  db: Queryable;
  /** Run `fn` in a transaction (on idempotent routes: the request's transaction). */
  transaction<T>(fn: (db: Queryable) => Promise<T>): Promise<T>;
  /** The session store (login/logout handlers); undefined when `app.sessionKeys` is empty. */
  sessions: SessionStore | undefined;
}

/** What a handler returns. A body that is not a string is sent as JSON. */
export interface KitReply {
  status?: number;
  body?: unknown;
  headers?: Record<string, string>;
}

/** One route of the service. */
export interface KitRoute {
  method: Method;
  /** A path with `:name` parameters, e.g. `/v1/orders/:id/pay`. */
  path: string;
  /** It changes state: refused with 503 while the region is fenced. */
  write?: boolean;
  /** It requires an Idempotency-Key (implies `write`). */
  idempotent?: boolean;
  /** `required`: 401 without a valid session; `optional` (default): verified when present; `none`: ignored. */
  session?: 'required' | 'optional' | 'none';
  handler(req: KitRequest): Promise<KitReply> | KitReply;
}

/** Options of the kit. */
export interface KitOptions {
  region: string;
  version: string;
  app: AppConfig;
  /** The request pool (see `createAppPool`). */
  pool: pg.Pool;
  /** A small separate pool for /healthz; defaults to `pool`. */
  healthPool?: pg.Pool;
  logger: Logger;
  registry: Registry;
  /** Session signing secrets, first signs (from `app.sessionKeys`); none disables sessions. */
  sessionSecrets?: readonly string[];
  lagSource?: LagSource;
  /** Lag above this makes /healthz `degraded` (replication.lagWarnSec). */
  lagWarnSec?: number;
  routes?: KitRoute[];
  /** How /metrics gets its text (cluster workers aggregate through the primary); default: this registry. */
  metricsText?: () => Promise<{ body: string; contentType: string }>;
  /** Where the built-in endpoints live. */
  paths?: { health?: string; ready?: string; metrics?: string };
  /** How often expired idempotency keys and sessions are purged (ms); 0 disables. */
  purgeIntervalMs?: number;
}

interface CompiledRoute extends KitRoute {
  regex: RegExp;
  builtin: boolean;
}

/** A reply a handler returned that is not a success: roll back its transaction, then send it. */
class NonSuccess extends Error {
  constructor(readonly reply: KitReply) {
    super('non-success reply');
  }
}

const CLIENT_ID = /^[A-Za-z0-9._:\-]{1,128}$/;
const BODY_METHODS = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

/** Compile `/v1/orders/:id` into a regex with named groups. */
export function compilePath(path: string): RegExp {
  if (!path.startsWith('/')) throw new TypeError(`route path must start with "/": ${path}`);
  const source = path
    .split('/')
    .map((seg) => {
      if (seg.startsWith(':')) {
        const name = seg.slice(1);
        if (!/^[A-Za-z_]\w*$/.test(name)) throw new TypeError(`bad parameter name in route ${path}`);
        return `(?<${name}>[^/]+)`;
      }
      return seg.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
    })
    .join('/');
  return new RegExp(`^${source}/?$`);
}

/** The kit. `start()` runs its background purge; handling requests works without it. */
export class Kit extends BaseService {
  readonly name: string;
  readonly metrics: AppMetrics;
  readonly health: HealthChecker;
  readonly fence: FenceReader;
  readonly idempotency: IdempotencyStore;
  readonly sessions: SessionStore | undefined;
  readonly #opts: KitOptions;
  readonly #routes: CompiledRoute[] = [];
  #draining = false;
  /** Responses of the requests being served (a request leaves when its handler has settled and its response ended). */
  readonly #inFlight = new Set<http.ServerResponse>();
  #idle: Array<() => void> = [];
  #purgeAbort = new AbortController();
  #purgeLoop: Promise<void> | undefined;

  constructor(opts: KitOptions) {
    super();
    this.#opts = opts;
    this.name = `app-kit@${opts.region}`;
    this.metrics = new AppMetrics(opts.registry);
    this.fence = new FenceReader(opts.pool, opts.region, opts.app.fenceCacheMs);
    this.idempotency = new IdempotencyStore({ region: opts.region, ttlSec: opts.app.idempotencyTtlSec, lockSec: opts.app.idempotencyLockSec });
    this.sessions =
      opts.sessionSecrets && opts.sessionSecrets.length > 0
        ? new SessionStore({ keyring: new SessionKeyring(opts.sessionSecrets), ttlSec: opts.app.sessionTtlSec, region: opts.region })
        : undefined;
    this.health = new HealthChecker({
      pool: opts.healthPool ?? opts.pool,
      region: opts.region,
      version: opts.version,
      timeoutMs: opts.app.healthTimeoutMs,
      lagWarnSec: opts.lagWarnSec ?? 60,
      lagSource: opts.lagSource,
      draining: () => this.#draining,
    });
    const paths = { health: '/healthz', ready: '/readyz', metrics: '/metrics', ...opts.paths };
    this.#add({ method: 'GET', path: paths.health, session: 'none', handler: () => this.#healthz() }, true);
    this.#add({ method: 'GET', path: paths.ready, session: 'none', handler: () => this.#readyz() }, true);
    this.#add({ method: 'GET', path: paths.metrics, session: 'none', handler: () => this.#metricsReply() }, true);
    for (const r of opts.routes ?? []) this.route(r);
  }

  /** Add a route. */
  route(route: KitRoute): this {
    this.#add(route, false);
    return this;
  }

  #add(route: KitRoute, builtin: boolean): void {
    this.#routes.push({ ...route, write: route.write || route.idempotent, regex: compilePath(route.path), builtin });
  }

  /** The routes (built-ins included), e.g. to register them with a framework. */
  get routes(): readonly KitRoute[] {
    return this.#routes;
  }

  get region(): string {
    return this.#opts.region;
  }

  /** True once `startDrain()` was called. */
  get draining(): boolean {
    return this.#draining;
  }

  /** Requests being served right now. */
  get inFlight(): number {
    return this.#inFlight.size;
  }

  /** Enter draining: /readyz answers 503, responses say `Connection: close`. */
  startDrain(): void {
    this.#draining = true;
    // Responses in flight close their connections too, so a keep-alive client cannot send a next request into
    // the shutdown.
    for (const res of this.#inFlight) closeAfter(res);
  }

  /** Resolve when no request is in flight, or after `timeoutMs`; returns whether it drained. */
  async waitIdle(timeoutMs: number): Promise<boolean> {
    if (this.#inFlight.size === 0) return true;
    let timer: NodeJS.Timeout | undefined;
    const idle = new Promise<boolean>((resolve) => this.#idle.push(() => resolve(true)));
    const timeout = new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(false), timeoutMs)));
    try {
      return await Promise.race([idle, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  protected async onStart(): Promise<void> {
    const every = this.#opts.purgeIntervalMs ?? 60_000;
    if (every > 0) this.#purgeLoop = this.#purge(every, this.#purgeAbort.signal);
  }

  protected async onStop(): Promise<void> {
    this.#purgeAbort.abort();
    await this.#purgeLoop;
  }

  /**
   * Purge expired keys and sessions, `PURGE_BATCH` of each per transaction, until fewer are left (at most
   * `PURGE_ROUNDS` transactions per call); one instance per region at a time (advisory lock).
   */
  async purgeOnce(): Promise<{ keys: number; sessions: number }> {
    const total = { keys: 0, sessions: 0 };
    for (let round = 0; round < PURGE_ROUNDS; round++) {
      const n = await inTransaction(this.#opts.pool, async (db) => {
        const { rows } = await db.query<{ got: boolean }>('SELECT pg_try_advisory_xact_lock($1) AS got', [7_346_224_502]);
        if (!rows[0]?.got) return undefined;
        const keys = await this.idempotency.purgeExpired(db, PURGE_BATCH);
        const sessions = (await this.sessions?.purgeExpired(db, PURGE_BATCH)) ?? 0;
        return { keys, sessions };
      });
      if (!n) break;
      total.keys += n.keys;
      total.sessions += n.sessions;
      if (n.keys < PURGE_BATCH && n.sessions < PURGE_BATCH) break;
    }
    return total;
  }

  async #purge(everyMs: number, signal: AbortSignal): Promise<void> {
    while (!signal.aborted) {
      try {
        // Jitter so that the workers of a region do not all wake together.
        await sleep(everyMs * (0.5 + Math.random()), signal);
        const n = await this.purgeOnce();
        if (n.keys || n.sessions) this.#opts.logger.info(n, 'purged expired idempotency keys and sessions');
      } catch (err) {
        if (signal.aborted) return;
        this.#opts.logger.warn({ err: (err as Error).message }, 'purge of expired keys failed; will retry');
      }
    }
  }

  /** A plain `node:http` request listener. */
  readonly handler = (req: http.IncomingMessage, res: http.ServerResponse): void => {
    this.handle(req, res);
  };

  /** Express / connect middleware: serves the kit's routes, passes everything else to `next`. */
  express(): (req: http.IncomingMessage, res: http.ServerResponse, next: (err?: unknown) => void) => void {
    return (req, res, next) => this.handle(req, res, () => next());
  }

  /**
   * A Fastify plugin: registers every kit route with Fastify's router and
   * hands the raw request over (`reply.hijack()`), with a pass-through body
   * parser so the kit reads and bounds the body itself. Register it without
   * fastify-plugin so the parser stays inside the plugin's scope.
   */
  fastify(): (instance: FastifyLike) => Promise<void> {
    return async (instance) => {
      instance.removeAllContentTypeParsers();
      instance.addContentTypeParser('*', (_req: unknown, _payload: unknown, done: (err: Error | null, body?: unknown) => void) => done(null, undefined));
      for (const r of this.#routes) {
        instance.route({
          method: r.method === 'GET' ? ['GET', 'HEAD'] : r.method,
          url: r.path,
          handler: (request: { raw: http.IncomingMessage }, reply: { hijack(): void; raw: http.ServerResponse }) => {
            reply.hijack();
            this.handle(request.raw, reply.raw);
          },
        });
      }
    };
  }

  /** Serve one request; with `next`, unmatched requests are passed on instead of answered 404/405. */
  handle(req: http.IncomingMessage, res: http.ServerResponse, next?: () => void): void {
    const started = performance.now();
    const raw = req.url ?? '/';
    // Origin-form ("/path") is appended rather than resolved, so "//host/x" stays a path; absolute-form is parsed as is.
    // A target Node's parser accepts but URL does not (e.g. "http://[::1") is answered 400, not thrown.
    let url: URL;
    let badTarget = false;
    try {
      url = new URL(/^https?:\/\//i.test(raw) ? raw : `http://kit.invalid${raw.startsWith('/') ? '' : '/'}${raw}`);
    } catch {
      url = new URL('http://kit.invalid/');
      badTarget = true;
    }
    const method = (req.method ?? 'GET').toUpperCase();
    let matched: CompiledRoute | undefined;
    let params: Record<string, string> = {};
    let pathKnown = false;
    for (const r of badTarget ? [] : this.#routes) {
      const m = r.regex.exec(url.pathname);
      if (!m) continue;
      pathKnown = true;
      if (r.method === method || (method === 'HEAD' && r.method === 'GET')) {
        matched = r;
        params = { ...m.groups };
        break;
      }
    }
    if (!matched && next && !badTarget) {
      next();
      return;
    }
    const ctx = contextFromHeaders(req.headers, this.#opts.region, this.#opts.logger);
    res.setHeader('x-tandem-region', this.#opts.region);
    res.setHeader('x-correlation-id', ctx.correlationId);
    res.setHeader('traceparent', formatTraceparent(ctx.traceId, ctx.spanId, ctx.flags));
    if (this.#draining) closeAfter(res);
    const routeLabel = matched?.path ?? 'unmatched';
    this.#inFlight.add(res);
    // Done when the handler has settled AND the response is finished or its connection closed: a client that
    // hangs up must not make a drain think a handler that is still running has finished.
    let pending = 2;
    const done = () => {
      if (--pending > 0) return;
      this.#inFlight.delete(res);
      const status = res.statusCode;
      this.metrics.requests.inc({ route: routeLabel, method, status: String(status) });
      this.metrics.duration.observe({ route: routeLabel, method }, (performance.now() - started) / 1000);
      if (!matched?.builtin) {
        ctx.log.info({ method, route: routeLabel, path: url.pathname, status, ms: Math.round(performance.now() - started) }, 'request');
      }
      if (this.#inFlight.size === 0) for (const f of this.#idle.splice(0)) f();
    };
    // 'close' comes once per response: after it was sent, or when the connection went first.
    res.once('close', done);
    if (ctx.replaced.length) ctx.log.warn({ replaced: ctx.replaced }, 'invalid correlation headers replaced');
    void runWithContext(ctx, async () => {
      try {
        if (badTarget) throw new HttpProblem('bad-request', 'the request target is not a valid URL');
        if (!matched) {
          throw pathKnown
            ? new HttpProblem('method-not-allowed', `${method} is not allowed on ${url.pathname}`)
            : new HttpProblem('not-found', `no such endpoint: ${url.pathname}`);
        }
        await this.#serve(matched, params, req, res, url, method, ctx);
      } catch (err) {
        this.#sendError(res, err, ctx, routeLabel);
      } finally {
        done();
      }
    });
  }

  #fenced(routePath: string, reason: string | undefined): HttpProblem {
    this.metrics.fencedRejections.inc({ route: routePath });
    const o = this.#opts;
    return new HttpProblem('region-read-only', `region ${o.region} is read-only${reason ? `: ${reason}` : ''}`, {
      headers: { 'retry-after': String(o.app.retryAfterSec) },
      extra: { region: o.region, reason: reason ?? null },
    });
  }

  #fenceRow: Promise<void> | undefined;
  /**
   * Inside a write's transaction: share-lock this region's fence row and refuse if it is set. `setFence`
   * updates that row, so it waits for the writes in flight, and no write commits after it returns.
   */
  async #holdFence(client: pg.PoolClient, routePath: string): Promise<void> {
    const o = this.#opts;
    // Once per kit (a region never fenced has no row to lock).
    this.#fenceRow ??= ensureFenceRow(o.pool, o.region).catch((err: unknown) => {
      this.#fenceRow = undefined;
      throw err;
    });
    await this.#fenceRow;
    const fence = await readFence(client, o.region, { share: true });
    if (fence.readOnly) throw this.#fenced(routePath, fence.reason);
  }

  async #serve(
    route: CompiledRoute,
    rawParams: Record<string, string>,
    req: http.IncomingMessage,
    res: http.ServerResponse,
    url: URL,
    method: string,
    ctx: RequestContext,
  ): Promise<void> {
    const o = this.#opts;
    const params: Record<string, string> = {};
    for (const [k, v] of Object.entries(rawParams)) {
      try {
        params[k] = decodeURIComponent(v);
      } catch {
        throw new HttpProblem('bad-request', `path parameter "${k}" is not valid percent-encoding`);
      }
    }
    // 1. Cheap checks first: they need no database and must answer even when it is down.
    const key = route.idempotent ? parseIdempotencyKey(req.headers['idempotency-key'], o.app.idempotencyKeyMaxLength) : undefined;
    if (route.idempotent && key === undefined) {
      throw new HttpProblem('idempotency-key-missing', `${method} ${route.path} requires an Idempotency-Key header (a quoted string, unique per operation)`, {
        extra: { policy: this.#policy('anonymous') },
      });
    }
    const rawClient = req.headers['x-client-id'];
    if (rawClient !== undefined && (typeof rawClient !== 'string' || !CLIENT_ID.test(rawClient))) {
      throw new HttpProblem('bad-request', 'X-Client-ID must be 1-128 letters, digits or ._:-');
    }
    const body = BODY_METHODS.has(method) ? await this.#readBody(req, res) : undefined;

    // 2. Session.
    let session: Session | undefined;
    if (route.session !== 'none') {
      const token = bearer(req.headers.authorization);
      if (token !== undefined) {
        if (!this.sessions) {
          if (route.session === 'required') throw new HttpProblem('sessions-disabled', 'this service has no session keys configured');
          throw new HttpProblem('unauthorized', 'sessions are not configured here, so no session token can be accepted');
        }
        session = await this.#db(() => this.sessions!.resolve(o.pool, token));
      } else if (route.session === 'required') {
        if (!this.sessions) throw new HttpProblem('sessions-disabled', 'this service has no session keys configured');
        throw new HttpProblem('unauthorized', 'this endpoint needs a session: send "Authorization: Bearer <token>" from /v1/login', {
          headers: { 'www-authenticate': 'Bearer realm="tandem"' },
        });
      }
    }
    const scope = session ? `user:${session.userId}` : typeof rawClient === 'string' ? `client:${rawClient}` : 'anonymous';

    // 3. The write fence: the cached state turns most writes away early; the request's transaction holds it
    // (`#holdFence`), so none commits once a fence has been set.
    if (route.write) {
      const fence = await this.#db(() => this.fence.get());
      if (fence.readOnly) throw this.#fenced(route.path, fence.reason);
    }

    const base = {
      method,
      path: url.pathname,
      route: route.path,
      params,
      query: url.searchParams,
      headers: req.headers,
      body,
      context: ctx,
      log: ctx.log,
      region: o.region,
      session,
      scope,
      idempotencyKey: key,
      sessions: this.sessions,
    };

    if (!route.idempotent || key === undefined) {
      const kreq: KitRequest = {
        ...base,
        entityId: () => {
          throw new TypeError(`entityId() needs an idempotent route (${route.path} is not)`);
        },
        db: o.pool,
        transaction: (fn) =>
          this.#db(() =>
            inTransaction(o.pool, async (client) => {
              if (route.write) await this.#holdFence(client, route.path);
              return fn(client);
            }),
          ),
      };
      const reply = await this.#db(async () => route.handler(kreq));
      this.#send(res, reply);
      return;
    }

    // 4. Idempotency: claim, run in a transaction with the stored outcome, or answer from the store.
    const ref: KeyRef = { scope, key };
    res.setHeader('idempotency-policy', this.#policy(scope.split(':')[0]!));
    const fp = fingerprint(method, url.pathname + url.search, body);
    const claim = await this.#db(() => this.idempotency.claim(o.pool, ref, fp, { method, path: url.pathname, correlationId: ctx.correlationId }));
    if (claim.kind === 'mismatch') {
      this.metrics.idempotencyConflicts.inc({ route: route.path, kind: 'mismatch' });
      throw new HttpProblem('idempotency-key-reused', 'this Idempotency-Key was already used with a different request (method, path or body); use a new key for a new operation');
    }
    if (claim.kind === 'in-flight') {
      this.metrics.idempotencyConflicts.inc({ route: route.path, kind: 'in_flight' });
      throw new HttpProblem('idempotency-key-in-use', `a request with this Idempotency-Key is still being processed (in region ${claim.region}); retry shortly`, {
        headers: { 'retry-after': '1' },
      });
    }
    if (claim.kind === 'replay') {
      this.metrics.idempotencyReplays.inc({ route: route.path });
      ctx.log.info({ key, scope, originalRegion: claim.region }, 'idempotent replay');
      res.writeHead(claim.response.status, { ...claim.response.headers, 'idempotent-replayed': 'true' });
      res.end(claim.response.body);
      return;
    }
    let stored: StoredResponse;
    try {
      stored = await this.#db(() =>
        inTransaction(o.pool, async (client) => {
          if (route.write) await this.#holdFence(client, route.path);
          const kreq: KitRequest = {
            ...base,
            entityId: (kind?: string) => entityId(scope, key, kind),
            db: client,
            transaction: (fn) => fn(client),
          };
          const reply = await route.handler(kreq);
          const status = reply.status ?? 200;
          // Only successes are stored; anything else is rolled back and the key released, so a retry runs again.
          if (status < 200 || status > 299) throw new NonSuccess(reply);
          const s = serialize(reply);
          // The claim was lost while the handler ran (it outlived app.idempotencyLockSec and a retry took the
          // key over, or the key was replaced): roll back, or the operation would take effect twice.
          if (!(await this.idempotency.complete(client, ref, claim.claimId, s))) {
            throw new HttpProblem('idempotency-key-in-use', 'this request took longer than the Idempotency-Key lock and another request took the key over; nothing was changed, retry to get its outcome');
          }
          return s;
        }),
      );
    } catch (err) {
      await this.idempotency.release(o.pool, ref, claim.claimId).catch((e: unknown) => {
        ctx.log.warn({ err: (e as Error).message, key }, 'could not release the idempotency key; it frees itself after app.idempotencyLockSec');
      });
      if (err instanceof NonSuccess) {
        this.#send(res, err.reply);
        return;
      }
      throw err;
    }
    res.writeHead(stored.status, stored.headers);
    res.end(stored.body);
  }

  /** The advertised idempotency policy (draft §2.3: "publish expiration policy"). */
  #policy(scopeKind: string): string {
    return `ttl=${this.#opts.app.idempotencyTtlSec}, scope=${scopeKind}`;
  }

  /** Run database work; an outage becomes a 503 with Retry-After. */
  async #db<T>(fn: () => Promise<T> | T): Promise<T> {
    try {
      return await fn();
    } catch (err) {
      if (!isProblem(err) && !(err instanceof NonSuccess) && isDbUnavailable(err)) {
        throw new HttpProblem('database-unavailable', `the ${this.#opts.region} database cannot serve the request right now`, {
          headers: { 'retry-after': String(this.#opts.app.retryAfterSec) },
          cause: err,
        });
      }
      throw err;
    }
  }

  /** Read and parse the JSON body, bounded by `app.maxBodyBytes`. Frameworks that parsed it already are honoured. */
  async #readBody(req: http.IncomingMessage, res: http.ServerResponse): Promise<unknown> {
    const pre = (req as { body?: unknown }).body;
    if (req.readableEnded) return pre;
    const limit = this.#opts.app.maxBodyBytes;
    const tooLarge = () => {
      // The rest of the body is not read; closing the connection is cheaper than draining it.
      res.setHeader('connection', 'close');
      return new HttpProblem('payload-too-large', `request body exceeds ${limit} bytes`, { extra: { limitBytes: limit } });
    };
    const declared = Number(req.headers['content-length'] ?? NaN);
    if (Number.isFinite(declared) && declared > limit) throw tooLarge();
    const chunks: Buffer[] = [];
    let size = 0;
    for await (const chunk of req) {
      size += (chunk as Buffer).length;
      if (size > limit) throw tooLarge();
      chunks.push(chunk as Buffer);
    }
    if (size === 0) return undefined;
    const type = req.headers['content-type'];
    if (type && !/^application\/([\w.+-]*\+)?json\s*(;|$)/i.test(type)) {
      throw new HttpProblem('unsupported-media-type', `send the body as application/json (found ${type.slice(0, 100)})`);
    }
    const text = Buffer.concat(chunks).toString('utf8');
    try {
      return JSON.parse(text);
    } catch (err) {
      throw new HttpProblem('invalid-json', `request body is not valid JSON: ${(err as Error).message}`);
    }
  }

  #send(res: http.ServerResponse, reply: KitReply): void {
    const s = serialize(reply);
    res.writeHead(s.status, s.headers);
    res.end(s.body);
  }

  #sendError(res: http.ServerResponse, err: unknown, ctx: RequestContext, route: string): void {
    let problem: HttpProblem;
    if (isProblem(err)) {
      problem = err;
    } else if (isDbUnavailable(err)) {
      problem = new HttpProblem('database-unavailable', `the ${this.#opts.region} database cannot serve the request right now`, {
        headers: { 'retry-after': String(this.#opts.app.retryAfterSec) },
      });
    } else {
      ctx.log.error({ err }, 'request failed');
      problem = new HttpProblem('internal', `internal error; quote correlation id ${ctx.correlationId}`);
    }
    if (problem.slug === 'database-unavailable') {
      this.metrics.dbUnavailable.inc({ route });
      ctx.log.warn({ err: ((problem.cause ?? err) as Error)?.message }, 'database unavailable');
    }
    if (res.headersSent) {
      res.destroy();
      return;
    }
    const body = JSON.stringify({ ...problem.toJSON(), correlationId: ctx.correlationId });
    res.writeHead(problem.status, { 'content-type': 'application/problem+json', 'cache-control': 'no-store', ...problem.headers });
    res.end(body);
  }

  async #healthz(): Promise<KitReply> {
    const report = await this.health.check();
    return { status: report.status === 'fail' ? 503 : 200, body: report, headers: { 'cache-control': 'no-store' } };
  }

  #readyz(): KitReply {
    return this.#draining
      ? { status: 503, body: { status: 'draining', region: this.#opts.region }, headers: { 'retry-after': String(this.#opts.app.retryAfterSec) } }
      : { status: 200, body: { status: 'ready', region: this.#opts.region } };
  }

  async #metricsReply(): Promise<KitReply> {
    const m = this.#opts.metricsText ? await this.#opts.metricsText() : { body: await this.#opts.registry.metrics(), contentType: this.#opts.registry.contentType };
    return { status: 200, body: m.body, headers: { 'content-type': m.contentType } };
  }
}

/** The minimum of Fastify's instance API the plugin uses (Fastify is a dev dependency only). */
export interface FastifyLike {
  removeAllContentTypeParsers(): void;
  addContentTypeParser(type: string, fn: (req: never, payload: never, done: (err: Error | null, body?: unknown) => void) => void): void;
  route(opts: { method: string | string[]; url: string; handler: (request: never, reply: never) => void }): unknown;
}

function bearer(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  // Any other Authorization scheme is not a session; treat it like a malformed token.
  return m ? m[1] : header;
}

/** A reply as bytes on the wire (what the idempotency store keeps). */
function serialize(reply: KitReply): StoredResponse {
  const status = reply.status ?? 200;
  const headers: Record<string, string> = {};
  for (const [k, v] of Object.entries(reply.headers ?? {})) headers[k.toLowerCase()] = v;
  let body: string;
  if (reply.body === undefined) {
    body = '';
  } else if (typeof reply.body === 'string') {
    body = reply.body;
    headers['content-type'] ??= 'text/plain; charset=utf-8';
  } else {
    body = JSON.stringify(reply.body);
    headers['content-type'] ??= 'application/json; charset=utf-8';
  }
  return { status, headers, body };
}

export { HEADER };
