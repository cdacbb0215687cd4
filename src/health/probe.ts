/**
 * One HTTP(S) health probe: GET the URL, read a bounded body, decide.
 *
 * A probe fails on timeout (the request is aborted, not raced), connection
 * error, a non-2xx status, or a JSON body whose `status` says the service is
 * down. Anything else with a 2xx status passes.
 */
import http from 'node:http';
import https from 'node:https';

/** The outcome of one probe. */
export interface ProbeResult {
  ok: boolean;
  latencyMs: number;
  status?: number;
  /** Why the probe failed (absent when it passed). */
  error?: string;
}

/** Options of `probe()`. */
export interface ProbeOptions {
  timeoutMs: number;
  /** Source address of the probe's connection. */
  bindAddress?: string | undefined;
  maxBodyBytes?: number;
  /** Cancels the probe (the daemon stopping). */
  signal?: AbortSignal;
}

/** `status` values in a JSON body that mean unhealthy (case-insensitive). */
export const UNHEALTHY_STATUS = new Set(['fail', 'failed', 'unhealthy', 'down', 'error']);

/** Decide from a body whether it says unhealthy; returns the reason or undefined. */
export function bodySaysUnhealthy(body: string, contentType: string | undefined): string | undefined {
  const text = body.trim();
  if (!text.startsWith('{') && !(contentType ?? '').includes('json')) return undefined;
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    return undefined; // Not JSON: the status code decides.
  }
  if (doc && typeof doc === 'object' && 'status' in doc) {
    const status = (doc as { status: unknown }).status;
    if (typeof status === 'string' && UNHEALTHY_STATUS.has(status.toLowerCase())) return `body status "${status}"`;
  }
  return undefined;
}

/** Probe `url` once. Never throws: every failure is a `ProbeResult` with `ok: false`. */
export function probe(url: string, opts: ProbeOptions): Promise<ProbeResult> {
  const started = performance.now();
  const elapsed = () => Math.round((performance.now() - started) * 10) / 10;
  const maxBody = opts.maxBodyBytes ?? 65_536;
  return new Promise<ProbeResult>((resolve) => {
    let settled = false;
    const finish = (r: Omit<ProbeResult, 'latencyMs'>) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      opts.signal?.removeEventListener('abort', onAbort);
      resolve({ ...r, latencyMs: elapsed() });
    };
    let parsed: URL;
    try {
      parsed = new URL(url);
    } catch {
      resolve({ ok: false, latencyMs: 0, error: `bad URL ${url}` });
      return;
    }
    const mod = parsed.protocol === 'https:' ? https : http;
    const req = mod.request(parsed, {
      method: 'GET',
      headers: { accept: 'application/json, text/plain;q=0.5', 'user-agent': 'tandem-health', connection: 'close' },
      localAddress: opts.bindAddress,
      agent: false,
    });
    // The timeout destroys the socket: the request is really cancelled, not left running.
    const timer = setTimeout(() => {
      finish({ ok: false, error: `timeout after ${opts.timeoutMs} ms` });
      req.destroy(new Error('probe timeout'));
    }, opts.timeoutMs);
    const onAbort = () => {
      finish({ ok: false, error: 'aborted' });
      req.destroy(new Error('probe aborted'));
    };
    if (opts.signal?.aborted) {
      onAbort();
      return;
    }
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    req.on('error', (err: NodeJS.ErrnoException) => finish({ ok: false, error: err.code ? `${err.code}: ${err.message}` : err.message }));
    req.on('response', (res) => {
      const status = res.statusCode ?? 0;
      const chunks: Buffer[] = [];
      let size = 0;
      res.on('data', (chunk: Buffer) => {
        size += chunk.length;
        if (size <= maxBody) chunks.push(chunk);
      });
      res.on('error', (err) => finish({ ok: false, status, error: err.message }));
      res.on('end', () => {
        if (status < 200 || status > 299) {
          finish({ ok: false, status, error: `HTTP ${status}` });
          return;
        }
        const reason = bodySaysUnhealthy(Buffer.concat(chunks).toString('utf8'), res.headers['content-type']);
        finish(reason ? { ok: false, status, error: reason } : { ok: true, status });
      });
    });
    req.end();
  });
}
