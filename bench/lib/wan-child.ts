/**
 * The WAN emulator of the replication benchmark, in its own process so that
 * the benchmark's pollers and load bookkeeping never delay its timers.
 * Driven over IPC by `wan.ts`: `start` (proxies and link shape), `partition`,
 * `heal`, `stop`. Every reply echoes the request's `id`.
 */
import { WanProxy, WanState } from '../../src/lab/wan.ts';

/** One proxy: in front of `region`'s PostgreSQL, carrying the connections of `peer`. */
export interface WanChildProxy {
  region: string;
  peer: string;
  listen: { host: string; port: number };
  upstream: { host: string; port: number };
}

export type WanRequest =
  | { id: number; op: 'start'; latencyMs: number; jitterMs: number; proxies: WanChildProxy[] }
  | { id: number; op: 'partition'; a: string; b: string }
  | { id: number; op: 'heal' }
  | { id: number; op: 'stop' };

export interface WanReply {
  id: number;
  ok: boolean;
  error?: string;
}

const state = new WanState();
const proxies: WanProxy[] = [];

async function handle(req: WanRequest): Promise<void> {
  switch (req.op) {
    case 'start':
      state.setShape({ latencyMs: req.latencyMs, jitterMs: req.jitterMs, loss: 0, bandwidthBytesPerSec: 0 });
      for (const p of req.proxies) {
        // Only the peer's replication connections come through this proxy, so every client is the peer.
        const proxy = new WanProxy({ region: p.region, listen: p.listen, upstream: p.upstream, state, regionOf: () => p.peer });
        await proxy.start();
        proxies.push(proxy);
      }
      return;
    case 'partition':
      state.partition(req.a, req.b);
      return;
    case 'heal':
      state.heal();
      return;
    case 'stop':
      state.heal();
      await Promise.all(proxies.map((p) => p.stop().catch(() => {})));
      return;
  }
}

if (!process.send) throw new Error('wan-child.ts runs as a child process with an IPC channel (see bench/lib/wan.ts)');
process.on('message', (msg: WanRequest) => {
  handle(msg).then(
    () => {
      process.send!({ id: msg.id, ok: true } satisfies WanReply);
      if (msg.op === 'stop') process.disconnect();
    },
    (err: unknown) => process.send!({ id: msg.id, ok: false, error: (err as Error).message } satisfies WanReply),
  );
});
// The parent went away: nothing left to proxy for.
process.on('disconnect', () => process.exit(0));
