/**
 * A small JSON HTTP server for tandem's admin and control APIs: bearer-token
 * auth (constant-time compare), bounded bodies, clear JSON errors, and the
 * Prometheus `/metrics` endpoint. Every daemon's API is built on it.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Registry } from 'prom-client';
import { BaseService } from './lifecycle.ts';
import { TandemError, isTandemError, type ErrorCode } from './errors.ts';
import { bearerToken, tokenEquals } from './secrets.ts';
import type { Logger } from './log.ts';
import type { HostPort } from './config/common.ts';

/** What a handler returns: a status, a JSON-able body (or a string with a content type), headers. */
export interface Reply {
  status?: number;
  body?: unknown;
  contentType?: string;
  headers?: Record<string, string>;
}

/** What a handler receives besides the raw request. */
export interface RequestContext {
  req: http.IncomingMessage;
  res: http.ServerResponse;
  url: URL;
  /** Regex groups of the matched path. */
  params: Record<string, string>;
  /** The parsed JSON body (POST/PUT/PATCH/DELETE), `undefined` when empty. */
  body: unknown;
  /** Who called, for audit logs: the `X-Tandem-Actor` header or "api". */
  actor: string;
}

/** One route. Routes need the admin token unless `public` is set. */
export interface Route {
  method: 'GET' | 'POST' | 'PUT' | 'DELETE' | 'PATCH';
  /** An exact path or a regex with named groups. */
  path: string | RegExp;
  public?: boolean;
  /** The handler writes the response itself (server-sent events). */
  raw?: boolean;
  handler(ctx: RequestContext): Promise<Reply | void> | Reply | void;
}

export interface ApiServerOptions {
  name: string;
  listen: HostPort;
  /** The admin token; when undefined every non-public route answers 401. */
  token: string | undefined;
  routes: Route[];
  /** Exposed at GET /metrics when given. */
  registry?: Registry;
  logger: Logger;
  maxBodyBytes?: number;
}

const STATUS_FOR: Partial<Record<ErrorCode, number>> = {
  TANDEM_ERR_AUTH: 401,
  TANDEM_ERR_NOT_FOUND: 404,
  TANDEM_ERR_USAGE: 400,
  TANDEM_ERR_CONFIG: 400,
  TANDEM_ERR_SAFETY: 409,
  TANDEM_ERR_RPO: 409,
  TANDEM_ERR_STATE: 409,
  TANDEM_ERR_LAB: 409,
};

/** Read a request body up to `limit` bytes. */
export async function readBody(req: http.IncomingMessage, limit: number): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new TandemError('TANDEM_ERR_USAGE', `request body exceeds ${limit} bytes`, { details: { status: 413 } });
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

/** An HTTP API server with a start/stop lifecycle. */
export class ApiServer extends BaseService {
  readonly name: string;
  readonly #opts: ApiServerOptions;
  #server: http.Server | undefined;
  #routes: Route[];

  constructor(opts: ApiServerOptions) {
    super();
    this.name = opts.name;
    this.#opts = opts;
    this.#routes = [...opts.routes];
    if (opts.registry) {
      const registry = opts.registry;
      this.#routes.push({
        method: 'GET',
        path: '/metrics',
        public: true,
        handler: async () => ({ body: await registry.metrics(), contentType: registry.contentType }),
      });
    }
  }

  /** The bound address (useful with port 0). */
  get address(): AddressInfo {
    const a = this.#server?.address();
    if (!a || typeof a === 'string') throw new TandemError('TANDEM_ERR_STATE', `${this.name} is not listening`);
    return a;
  }

  /** The base URL of the running server. */
  get url(): string {
    const a = this.address;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  protected async onStart(): Promise<void> {
    const server = http.createServer((req, res) => void this.#handle(req, res));
    server.headersTimeout = 10_000;
    server.requestTimeout = 30_000;
    this.#server = server;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#opts.listen.port, this.#opts.listen.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
  }

  protected async onStop(): Promise<void> {
    const server = this.#server;
    if (!server) return;
    await new Promise<void>((resolve) => {
      server.close(() => resolve());
      server.closeIdleConnections();
      // Long-lived streams (server-sent events) would hold close() forever.
      setTimeout(() => server.closeAllConnections(), 2_000).unref();
    });
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://localhost');
    try {
      let matched: { route: Route; params: Record<string, string> } | undefined;
      let pathExists = false;
      for (const route of this.#routes) {
        const params = matchPath(route.path, url.pathname);
        if (!params) continue;
        pathExists = true;
        if (route.method === req.method || (req.method === 'HEAD' && route.method === 'GET')) {
          matched = { route, params };
          break;
        }
      }
      if (!matched) {
        send(res, pathExists ? 405 : 404, { error: pathExists ? 'method not allowed' : `no such endpoint: ${url.pathname}`, code: 'TANDEM_ERR_NOT_FOUND' });
        return;
      }
      const { route, params } = matched;
      if (!route.public) this.#authorize(req);
      let body: unknown;
      if (req.method !== 'GET' && req.method !== 'HEAD') {
        const raw = await readBody(req, this.#opts.maxBodyBytes ?? 1_048_576);
        if (raw.length) {
          try {
            body = JSON.parse(raw.toString('utf8'));
          } catch (err) {
            throw new TandemError('TANDEM_ERR_USAGE', `request body is not valid JSON: ${(err as Error).message}`);
          }
        }
      }
      const actorHeader = req.headers['x-tandem-actor'];
      const actor = typeof actorHeader === 'string' && actorHeader ? actorHeader.slice(0, 100) : 'api';
      const reply = await route.handler({ req, res, url, params, body, actor });
      if (route.raw) return;
      const r = reply ?? {};
      if (typeof r.body === 'string' || Buffer.isBuffer(r.body)) {
        res.writeHead(r.status ?? 200, { 'content-type': r.contentType ?? 'text/plain; charset=utf-8', ...r.headers });
        res.end(r.body);
      } else {
        send(res, r.status ?? 200, r.body ?? { ok: true }, r.headers);
      }
    } catch (err) {
      const status = isTandemError(err) ? ((err.details?.status as number | undefined) ?? STATUS_FOR[err.code] ?? 500) : 500;
      if (status >= 500) this.#opts.logger.error({ err, path: url.pathname }, 'api request failed');
      if (res.headersSent) {
        res.destroy();
        return;
      }
      send(
        res,
        status,
        { error: (err as Error).message, code: isTandemError(err) ? err.code : 'TANDEM_ERR_INTERNAL' },
        status === 401 ? { 'www-authenticate': 'Bearer realm="tandem"' } : undefined,
      );
    }
  }

  #authorize(req: http.IncomingMessage): void {
    const expected = this.#opts.token;
    const presented = bearerToken(req.headers.authorization);
    if (!expected || !presented || !tokenEquals(presented, expected)) {
      throw new TandemError('TANDEM_ERR_AUTH', expected ? 'missing or wrong admin token' : 'this API has no admin token configured; set adminToken in tandem.yaml');
    }
  }
}

function matchPath(pattern: string | RegExp, pathname: string): Record<string, string> | undefined {
  if (typeof pattern === 'string') return pattern === pathname ? {} : undefined;
  const m = pattern.exec(pathname);
  if (!m) return undefined;
  const params: Record<string, string> = {};
  for (const [k, v] of Object.entries(m.groups ?? {})) {
    try {
      params[k] = decodeURIComponent(v);
    } catch {
      // A bad escape is the caller's mistake (400), not the server's (500, logged as an error).
      throw new TandemError('TANDEM_ERR_USAGE', `path parameter "${k}" is not valid percent-encoding`);
    }
  }
  return params;
}

/** Write a JSON response. */
export function send(res: http.ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}): void {
  const text = JSON.stringify(body, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'cache-control': 'no-store', ...headers });
  res.end(text);
}

/** Call another tandem API with the admin token; errors name the URL and status. */
export async function callApi<T = unknown>(
  url: string,
  opts: { method?: string; token?: string | undefined; body?: unknown; timeoutMs?: number; actor?: string; signal?: AbortSignal; headers?: Record<string, string> } = {},
): Promise<T> {
  const headers: Record<string, string> = { accept: 'application/json' };
  if (opts.token) headers.authorization = `Bearer ${opts.token}`;
  if (opts.actor) headers['x-tandem-actor'] = opts.actor;
  if (opts.headers) Object.assign(headers, opts.headers);
  if (opts.body !== undefined) headers['content-type'] = 'application/json';
  const signals = [AbortSignal.timeout(opts.timeoutMs ?? 5_000), ...(opts.signal ? [opts.signal] : [])];
  let res: Response;
  try {
    res = await fetch(url, {
      method: opts.method ?? (opts.body === undefined ? 'GET' : 'POST'),
      headers,
      body: opts.body === undefined ? undefined : JSON.stringify(opts.body),
      signal: AbortSignal.any(signals),
    });
  } catch (cause) {
    throw new TandemError('TANDEM_ERR_HTTP', `${opts.method ?? 'GET'} ${url} failed: ${(cause as Error).cause ?? (cause as Error).message}`, { cause });
  }
  const text = await res.text();
  let body: unknown = text;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    // Not JSON: keep the text.
  }
  if (!res.ok) {
    const b = body as { error?: string; code?: ErrorCode } | undefined;
    const code: ErrorCode = b?.code && b.code in STATUS_FOR ? b.code : res.status === 401 ? 'TANDEM_ERR_AUTH' : 'TANDEM_ERR_HTTP';
    throw new TandemError(code, `${url} answered ${res.status}: ${b?.error ?? text.slice(0, 200)}`, { details: { status: res.status } });
  }
  return body as T;
}
