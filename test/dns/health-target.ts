/**
 * A health endpoint for tests whose behaviour can be switched at run time:
 * healthy, 503, a JSON body saying "fail", hanging (never answers) or closed.
 */
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export type TargetMode = 'ok' | '503' | 'body-fail' | 'hang' | 'closed';

export interface HealthTargetServer {
  url: string;
  mode: TargetMode;
  /** Requests seen, with their source address. */
  hits: { at: number; remote: string }[];
  close(): Promise<void>;
}

/** Start a switchable health endpoint on `host` (port chosen by the OS). */
export async function startHealthTarget(host = '127.0.0.1'): Promise<HealthTargetServer> {
  const sockets = new Set<Socket>();
  const state: HealthTargetServer = {
    url: '',
    mode: 'ok',
    hits: [],
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
  const server = http.createServer((req, res) => {
    state.hits.push({ at: Date.now(), remote: req.socket.remoteAddress ?? '' });
    switch (state.mode) {
      case 'ok':
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
        return;
      case '503':
        res.writeHead(503).end('unavailable');
        return;
      case 'body-fail':
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"fail","checks":{"db":"down"}}');
        return;
      case 'hang':
        return; // Never answer; the prober's timeout must cancel.
      case 'closed':
        req.socket.destroy();
        return;
    }
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, host, resolve));
  const { port } = server.address() as AddressInfo;
  state.url = `http://${host}:${port}/healthz`;
  return state;
}
