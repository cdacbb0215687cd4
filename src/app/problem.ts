/**
 * Errors a request handler can raise, answered as Problem Details
 * (RFC 9457, `application/problem+json`).
 */

/** The problem types the kit itself answers with; `type` is `urn:tandem:problem:<slug>`. */
export const PROBLEMS = {
  'bad-request': { status: 400, title: 'Bad request' },
  'invalid-json': { status: 400, title: 'Request body is not valid JSON' },
  'validation': { status: 400, title: 'Request body failed validation' },
  'idempotency-key-missing': { status: 400, title: 'Idempotency-Key header is required' },
  'idempotency-key-invalid': { status: 400, title: 'Idempotency-Key header is invalid' },
  'unauthorized': { status: 401, title: 'Missing, forged, expired or revoked session' },
  'not-found': { status: 404, title: 'Not found' },
  'method-not-allowed': { status: 405, title: 'Method not allowed' },
  'conflict': { status: 409, title: 'Conflict' },
  'idempotency-key-in-use': { status: 409, title: 'A request with this Idempotency-Key is still being processed' },
  'payload-too-large': { status: 413, title: 'Request body too large' },
  'unsupported-media-type': { status: 415, title: 'Unsupported media type' },
  'idempotency-key-reused': { status: 422, title: 'Idempotency-Key was already used with a different request' },
  'internal': { status: 500, title: 'Internal error' },
  'region-read-only': { status: 503, title: 'This region is read-only (fenced); retry later or elsewhere' },
  'database-unavailable': { status: 503, title: 'The region database is unavailable' },
  'draining': { status: 503, title: 'This instance is shutting down' },
  'sessions-disabled': { status: 503, title: 'Sessions are not configured (app.sessionKeys is empty)' },
} as const;

export type ProblemSlug = keyof typeof PROBLEMS;

/** The `type` URI of a problem slug. */
export const problemType = (slug: string): string => `urn:tandem:problem:${slug}`;

/** An error a handler throws to answer with a problem+json response. */
export class HttpProblem extends Error {
  readonly status: number;
  readonly slug: string;
  readonly title: string;
  readonly headers: Record<string, string>;
  /** Extension members (RFC 9457 §3.2), e.g. `errors` of a validation failure. */
  readonly extra: Record<string, unknown>;

  constructor(
    slug: ProblemSlug | string,
    detail: string,
    opts: { status?: number; title?: string; headers?: Record<string, string>; extra?: Record<string, unknown>; cause?: unknown } = {},
  ) {
    super(detail, opts.cause === undefined ? undefined : { cause: opts.cause });
    this.name = 'HttpProblem';
    const known = (PROBLEMS as Record<string, { status: number; title: string }>)[slug];
    this.slug = slug;
    this.status = opts.status ?? known?.status ?? 500;
    this.title = opts.title ?? known?.title ?? 'Error';
    this.headers = opts.headers ?? {};
    this.extra = opts.extra ?? {};
  }

  /** The problem+json body. */
  toJSON(instance?: string): Record<string, unknown> {
    return {
      type: problemType(this.slug),
      title: this.title,
      status: this.status,
      detail: this.message,
      ...(instance ? { instance } : {}),
      ...this.extra,
    };
  }
}

/** True when `err` is an HttpProblem (optionally of `slug`). */
export function isProblem(err: unknown, slug?: string): err is HttpProblem {
  return err instanceof HttpProblem && (slug === undefined || err.slug === slug);
}
