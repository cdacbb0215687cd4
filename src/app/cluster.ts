/**
 * Several worker processes per region sharing one listening address
 * (node:cluster). The primary forks the workers, restarts one that dies,
 * answers their requests for cluster-wide metrics, and on shutdown tells every
 * worker to drain and waits for them. Shutdown is requested through an
 * AbortSignal; the daemon's main wires SIGTERM/SIGINT to it.
 */
import cluster, { type Worker } from 'node:cluster';
import promClient from 'prom-client';
import type { Registry } from 'prom-client';
import { TandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { Service } from '../core/lifecycle.ts';

const MSG = {
  shutdown: 'tandem:shutdown',
  /** worker → primary: "give me the cluster's metrics" (a scrape arrived). */
  metricsReq: 'tandem:metrics-req',
  /** primary → worker: the aggregate. */
  metricsRes: 'tandem:metrics-res',
  /** primary → each listening worker: "send me your registry". */
  collect: 'tandem:metrics-collect',
  /** worker → primary: its registry as JSON. */
  part: 'tandem:metrics-part',
} as const;

type MetricsJson = Awaited<ReturnType<Registry['getMetricsAsJSON']>>;

type Message =
  | { type: typeof MSG.shutdown }
  | { type: typeof MSG.metricsReq; id: number }
  | { type: typeof MSG.metricsRes; id: number; body?: string; contentType?: string; error?: string }
  | { type: typeof MSG.collect; id: number }
  | { type: typeof MSG.part; id: number; metrics?: MetricsJson; error?: string };

/** How long the primary waits for the workers' registries before answering with what it has. */
const COLLECT_TIMEOUT_MS = 2_000;

/** True in a worker process forked by `runPrimary`. */
export const isWorker = (): boolean => cluster.isWorker;

/** Options of the primary. */
export interface PrimaryOptions {
  workers: number;
  /** Time each worker gets to drain after shutdown starts; the primary waits a little longer, then kills. */
  shutdownGraceMs: number;
  logger: Logger;
  /** Abort to shut the cluster down. */
  signal: AbortSignal;
}

/**
 * Run the primary: fork `workers` workers and keep them running until
 * `signal` aborts, then drain them. Resolves when every worker has exited;
 * rejects when workers keep dying before they ever listen (a bad config or a
 * taken port would otherwise restart forever).
 */
export async function runPrimary(opts: PrimaryOptions): Promise<void> {
  const { logger, signal } = opts;
  let allExited: () => void = () => {};
  let stopping = false;
  let failedStarts = 0;
  let fatal: Error | undefined;
  const live = new Set<Worker>();
  // Only listening workers are asked for metrics: one still loading has served nothing and could not answer yet.
  const listening = new Set<Worker>();
  const exitedAll = new Promise<void>((resolve) => (allExited = resolve));
  let nextCollect = 0;
  const collecting = new Map<number, { parts: MetricsJson[]; waiting: Set<Worker>; done: () => void }>();

  /** Gather every listening worker's registry and sum them (prom-client's aggregation rules). */
  const aggregate = async (): Promise<{ body: string; contentType: string }> => {
    const id = nextCollect++;
    const targets = [...listening].filter((w) => w.isConnected());
    const parts: MetricsJson[] = [];
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        logger.warn({ missing: [...(collecting.get(id)?.waiting ?? [])].map((w) => w.process.pid) }, 'metrics: some workers did not answer; serving the others');
        finish();
      }, COLLECT_TIMEOUT_MS);
      const finish = () => {
        clearTimeout(timer);
        collecting.delete(id);
        resolve();
      };
      collecting.set(id, { parts, waiting: new Set(targets), done: finish });
      if (targets.length === 0) finish();
      for (const w of targets) w.send({ type: MSG.collect, id } satisfies Message, undefined, () => {});
    });
    const registry = promClient.AggregatorRegistry.aggregate(parts);
    return { body: await registry.metrics(), contentType: registry.contentType };
  };

  const onMessage = (worker: Worker, msg: Message) => {
    if (msg?.type === MSG.part) {
      const c = collecting.get(msg.id);
      if (!c || !c.waiting.delete(worker)) return;
      if (msg.metrics) c.parts.push(msg.metrics);
      if (c.waiting.size === 0) c.done();
      return;
    }
    if (msg?.type !== MSG.metricsReq) return;
    aggregate().then(
      (m) => worker.isConnected() && worker.send({ type: MSG.metricsRes, id: msg.id, body: m.body, contentType: m.contentType } satisfies Message, undefined, () => {}),
      (err: Error) => worker.isConnected() && worker.send({ type: MSG.metricsRes, id: msg.id, error: err.message } satisfies Message, undefined, () => {}),
    );
  };

  const fork = () => {
    const w = cluster.fork();
    live.add(w);
    // Sending to a worker that is just exiting fails with EPIPE; the exit handler deals with it.
    w.on('error', (err) => logger.debug({ workerPid: w.process.pid, err: err.message }, 'worker channel error'));
    w.once('listening', () => {
      listening.add(w);
      failedStarts = 0;
    });
    w.once('exit', (code, sig) => {
      const wasListening = listening.has(w);
      live.delete(w);
      listening.delete(w);
      for (const c of collecting.values()) if (c.waiting.delete(w) && c.waiting.size === 0) c.done();
      if (stopping || fatal) {
        if (live.size === 0) allExited();
        return;
      }
      if (!wasListening) failedStarts++;
      logger.error({ workerPid: w.process.pid, code, signal: sig }, 'worker exited unexpectedly');
      if (failedStarts >= Math.max(3, opts.workers * 2)) {
        fatal = new TandemError('TANDEM_ERR_STATE', `workers keep exiting before they listen (${failedStarts} times); see the log lines above`);
        stopAll();
        if (live.size === 0) allExited();
        return;
      }
      // Not unref'd: while the primary waits for a replacement, this timer is all that keeps it running.
      setTimeout(() => !stopping && !fatal && fork(), 500);
    });
  };

  const stopAll = () => {
    stopping = true;
    for (const w of live) if (w.isConnected()) w.send({ type: MSG.shutdown } satisfies Message, undefined, () => {});
    // A worker that does not finish within its grace period (plus slack) is killed.
    setTimeout(() => {
      for (const w of live) w.process.kill('SIGKILL');
    }, opts.shutdownGraceMs + 3_000).unref();
  };

  cluster.on('message', onMessage);
  for (let i = 0; i < opts.workers; i++) fork();
  const onAbort = () => {
    logger.info({ workers: live.size }, 'shutting down workers');
    stopAll();
    if (live.size === 0) allExited();
  };
  if (signal.aborted) onAbort();
  else signal.addEventListener('abort', onAbort, { once: true });
  await exitedAll;
  signal.removeEventListener('abort', onAbort);
  cluster.off('message', onMessage);
  if (fatal) throw fatal;
}

/**
 * Run the worker's service until the primary says shutdown, the primary
 * disappears, or `signal` aborts; then stop it (drain) and resolve.
 */
export async function runWorker(service: Service, signal: AbortSignal): Promise<void> {
  const stop = new AbortController();
  const onMsg = (msg: Message) => msg?.type === MSG.shutdown && stop.abort();
  const onDisconnect = () => stop.abort();
  process.on('message', onMsg);
  process.once('disconnect', onDisconnect);
  // prom-client answers the primary's metric requests from this registry.
  const stopped = new Promise<void>((resolve) => {
    const go = () => {
      service.stop().then(resolve, resolve);
    };
    if (signal.aborted) go();
    signal.addEventListener('abort', go, { once: true });
    stop.signal.addEventListener('abort', go, { once: true });
  });
  await stopped;
  process.off('message', onMsg);
  process.off('disconnect', onDisconnect);
}

/** In a worker: answer the primary's requests for this worker's metrics from `registry`. */
export function shareRegistry(registry: Registry): void {
  process.on('message', (msg: Message) => {
    if (msg?.type !== MSG.collect || !process.send) return;
    registry.getMetricsAsJSON().then(
      (metrics) => process.send?.({ type: MSG.part, id: msg.id, metrics } satisfies Message, undefined, {}, () => {}),
      (err: Error) => process.send?.({ type: MSG.part, id: msg.id, error: err.message } satisfies Message, undefined, {}, () => {}),
    );
  });
}

let nextId = 0;
const pending = new Map<number, { resolve: (v: { body: string; contentType: string }) => void; reject: (e: Error) => void; timer: NodeJS.Timeout }>();
let metricsReplyListener = false;

/** In a worker: the metrics of the whole cluster, aggregated by the primary. */
export function clusterMetricsText(timeoutMs = 3_000): Promise<{ body: string; contentType: string }> {
  if (!cluster.isWorker || !process.send) return Promise.reject(new TandemError('TANDEM_ERR_STATE', 'not a cluster worker'));
  if (!metricsReplyListener) {
    metricsReplyListener = true;
    process.on('message', (msg: Message) => {
      if (msg?.type !== MSG.metricsRes) return;
      const p = pending.get(msg.id);
      if (!p) return;
      pending.delete(msg.id);
      clearTimeout(p.timer);
      if (msg.error !== undefined || msg.body === undefined) p.reject(new TandemError('TANDEM_ERR_STATE', `cluster metrics: ${msg.error ?? 'empty answer'}`));
      else p.resolve({ body: msg.body, contentType: msg.contentType ?? 'text/plain; version=0.0.4; charset=utf-8' });
    });
  }
  const id = nextId++;
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      pending.delete(id);
      reject(new TandemError('TANDEM_ERR_TIMEOUT', `cluster metrics: the primary did not answer within ${timeoutMs} ms`));
    }, timeoutMs);
    pending.set(id, { resolve, reject, timer });
    process.send!({ type: MSG.metricsReq, id } satisfies Message);
  });
}
