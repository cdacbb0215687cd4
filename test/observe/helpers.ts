/**
 * Pieces of the observe tests: a stand-in region app (the real app kit's
 * metrics and `/healthz` body shape on a real HTTP server, without the
 * database behind it), a webhook receiver, and polling helpers.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import { AppMetrics } from '../../src/app/metrics.ts';
import { ApiServer } from '../../src/core/http.ts';
import { createRegistry } from '../../src/core/metrics.ts';
import { silentLogger } from '../../src/core/log.ts';

/** A stand-in for a region's app: `/healthz` (switchable), `/metrics` with the kit's series, `/work?status=NNN`. */
export interface StandInApp {
  url: string;
  mode: 'ok' | 'fail';
  metrics: AppMetrics;
  /** Count `n` requests answered with `status`. */
  serve(status: number, n?: number): void;
  stop(): Promise<void>;
}

export async function startStandInApp(host: string, port: number, region: string): Promise<StandInApp> {
  const registry = createRegistry('app', region, false);
  const metrics = new AppMetrics(registry);
  const app: StandInApp = {
    url: `http://${host}:${port}`,
    mode: 'ok',
    metrics,
    serve(status, n = 1) {
      metrics.requests.inc({ route: '/v1/orders', method: 'POST', status: String(status) }, n);
    },
    stop: async () => api.stop(),
  };
  const api = new ApiServer({
    name: `stand-in-app:${region}`,
    listen: { host, port },
    token: undefined,
    registry,
    logger: silentLogger(),
    routes: [
      {
        method: 'GET',
        path: '/healthz',
        public: true,
        handler: () => {
          const ok = app.mode === 'ok';
          return {
            status: ok ? 200 : 503,
            body: {
              status: ok ? 'ok' : 'fail',
              region,
              version: 'test',
              checks: {
                database: { ok, writable: ok, latencyMs: 0.4, ...(ok ? {} : { error: 'connect ECONNREFUSED' }) },
                replication: { peers: [] },
                fenced: { readOnly: false },
                draining: false,
              },
            },
          };
        },
      },
    ],
  });
  await api.start();
  return app;
}

/** A webhook receiver that keeps every JSON body it gets. */
export interface WebhookReceiver {
  url: string;
  bodies: Record<string, unknown>[];
  close(): Promise<void>;
}

export async function startWebhookReceiver(host = '127.0.0.1'): Promise<WebhookReceiver> {
  const sockets = new Set<Socket>();
  const bodies: Record<string, unknown>[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      try {
        bodies.push(JSON.parse(Buffer.concat(chunks).toString('utf8')) as Record<string, unknown>);
      } catch {
        bodies.push({ invalid: true });
      }
      res.writeHead(200).end('ok');
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, host, () => resolve()));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://${host}:${port}/hook/secret-path`,
    bodies,
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** Poll `check` until it returns a truthy value; throws with `what` after `timeoutMs`. */
export async function waitFor<T>(what: string, check: () => T | undefined | false | Promise<T | undefined | false>, timeoutMs = 15_000, everyMs = 100): Promise<T> {
  const started = Date.now();
  let lastErr: unknown;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
    } catch (err) {
      lastErr = err;
    }
    if (Date.now() - started > timeoutMs) throw new Error(`${what}: not within ${timeoutMs} ms${lastErr ? ` (last error: ${(lastErr as Error).message})` : ''}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
