/**
 * Correlation: W3C Trace Context (`traceparent`) and `X-Correlation-ID` for
 * every request, carried through async work by AsyncLocalStorage so every
 * log line, every outgoing call made through `kitFetch` and every stored row
 * knows which request it belongs to.
 *
 * Trace Context: https://www.w3.org/TR/trace-context/ (§3.2 traceparent).
 */
import { AsyncLocalStorage } from 'node:async_hooks';
import { randomBytes } from 'node:crypto';
import type { Logger } from '../core/log.ts';

/** Header names, lower-case as node:http presents them. */
export const HEADER = {
  traceparent: 'traceparent',
  tracestate: 'tracestate',
  correlationId: 'x-correlation-id',
  region: 'x-tandem-region',
} as const;

/** A parsed `traceparent` (W3C Trace Context §3.2.2). */
export interface TraceParent {
  version: string;
  /** 32 lower-case hex digits, not all zero. */
  traceId: string;
  /** 16 lower-case hex digits, not all zero: the caller's span. */
  parentId: string;
  /** 2 hex digits; bit 0 is "sampled". */
  flags: string;
}

const HEX2 = /^[0-9a-f]{2}$/;
const TRACE_ID = /^[0-9a-f]{32}$/;
const SPAN_ID = /^[0-9a-f]{16}$/;
const ALL_ZERO = /^0+$/;

/**
 * Parse a `traceparent` header value, or `undefined` when it is invalid.
 * Version 00 must be exactly four fields; a higher version may carry more
 * fields after the fourth, which we ignore (§3.2.4 "versioning").
 */
export function parseTraceparent(value: string | string[] | undefined): TraceParent | undefined {
  // Several traceparent headers are invalid (§3.2: "a single header").
  if (typeof value !== 'string') return undefined;
  const text = value.trim();
  if (text.length < 55 || text.length > 512) return undefined;
  const parts = text.split('-');
  if (parts.length < 4) return undefined;
  const [version, traceId, parentId, flags] = parts as [string, string, string, string];
  if (!HEX2.test(version) || version === 'ff') return undefined;
  if (version === '00' && (parts.length !== 4 || text.length !== 55)) return undefined;
  if (version !== '00' && parts.length > 4 && text[55] !== '-') return undefined;
  if (!TRACE_ID.test(traceId) || ALL_ZERO.test(traceId)) return undefined;
  if (!SPAN_ID.test(parentId) || ALL_ZERO.test(parentId)) return undefined;
  if (!HEX2.test(flags)) return undefined;
  return { version, traceId, parentId, flags };
}

/** Format a version-00 traceparent. */
export function formatTraceparent(traceId: string, spanId: string, flags: string): string {
  return `00-${traceId}-${spanId}-${flags}`;
}

/** A random, non-zero id of `bytes` bytes in lower-case hex. */
function randomHexId(bytes: number): string {
  for (;;) {
    const id = randomBytes(bytes).toString('hex');
    if (!ALL_ZERO.test(id)) return id;
  }
}

export const newTraceId = (): string => randomHexId(16);
export const newSpanId = (): string => randomHexId(8);

/**
 * A correlation id we accept from a caller: 1-128 characters of letters,
 * digits and `._:-/+=`. Anything else (control characters, spaces, quotes)
 * could forge log lines or headers, so it is replaced, not trusted.
 */
export const CORRELATION_ID = /^[A-Za-z0-9._:\-/+=]{1,128}$/;

/** Everything the kit knows about the request being served. */
export interface RequestContext {
  /** The id in every log line, response and stored row. */
  correlationId: string;
  traceId: string;
  /** This server's span for the request. */
  spanId: string;
  /** The caller's span, when it sent a valid traceparent. */
  parentSpanId: string | undefined;
  flags: string;
  tracestate: string | undefined;
  region: string;
  /** A child of the service logger with the correlation id bound. */
  log: Logger;
  /** What was wrong with the caller's correlation headers, if anything (for one warning line). */
  replaced: string[];
}

/** Build the context of an incoming request from its headers. */
export function contextFromHeaders(headers: Record<string, string | string[] | undefined>, region: string, logger: Logger): RequestContext {
  const replaced: string[] = [];
  const rawParent = headers[HEADER.traceparent];
  const parent = parseTraceparent(rawParent);
  if (rawParent !== undefined && !parent) replaced.push('traceparent');
  const traceId = parent?.traceId ?? newTraceId();
  const rawCid = headers[HEADER.correlationId];
  let correlationId: string;
  if (typeof rawCid === 'string' && CORRELATION_ID.test(rawCid)) {
    correlationId = rawCid;
  } else {
    if (rawCid !== undefined) replaced.push('x-correlation-id');
    correlationId = traceId;
  }
  const rawState = headers[HEADER.tracestate];
  // tracestate is only meaningful with a valid traceparent (§3.3); keep it bounded and printable.
  const tracestate = parent && typeof rawState === 'string' && rawState.length <= 512 && /^[\x20-\x7e]*$/.test(rawState) ? rawState : undefined;
  const spanId = newSpanId();
  return {
    correlationId,
    traceId,
    spanId,
    parentSpanId: parent?.parentId,
    flags: parent?.flags ?? '01',
    tracestate,
    region,
    log: logger.child({ correlationId, traceId, spanId }),
    replaced,
  };
}

const storage = new AsyncLocalStorage<RequestContext>();

/** Run `fn` with `ctx` as the current request context. */
export function runWithContext<T>(ctx: RequestContext, fn: () => T): T {
  return storage.run(ctx, fn);
}

/** The context of the request being served, if any. */
export function currentContext(): RequestContext | undefined {
  return storage.getStore();
}

/** The request's logger, or `fallback` outside a request. */
export function currentLogger(fallback: Logger): Logger {
  return storage.getStore()?.log ?? fallback;
}

/** The headers an outgoing call made on behalf of the current request carries. */
export function outgoingHeaders(ctx: RequestContext | undefined = currentContext()): Record<string, string> {
  if (!ctx) return {};
  const headers: Record<string, string> = {
    // A new span for the outgoing call, child of ours, same trace (§3.2.2.3 "parent-id").
    traceparent: formatTraceparent(ctx.traceId, newSpanId(), ctx.flags),
    'x-correlation-id': ctx.correlationId,
  };
  if (ctx.tracestate) headers.tracestate = ctx.tracestate;
  return headers;
}

/**
 * `fetch` for calls made while serving a request: adds `traceparent`,
 * `tracestate` and `X-Correlation-ID` of the current request (headers the
 * caller set explicitly win) and logs the call with the correlation id.
 */
export async function kitFetch(input: string | URL, init: RequestInit = {}): Promise<Response> {
  const ctx = currentContext();
  const headers = new Headers(init.headers);
  for (const [k, v] of Object.entries(outgoingHeaders(ctx))) if (!headers.has(k)) headers.set(k, v);
  const started = performance.now();
  try {
    const res = await fetch(input, { ...init, headers });
    ctx?.log.debug({ url: String(input), status: res.status, ms: Math.round(performance.now() - started) }, 'outgoing call');
    return res;
  } catch (err) {
    ctx?.log.warn({ url: String(input), err: (err as Error).message }, 'outgoing call failed');
    throw err;
  }
}
