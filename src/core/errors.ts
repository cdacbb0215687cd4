/**
 * tandem's error type and the one table of stable error codes.
 *
 * Callers match on `code`, never on message text. `docs/errors.md` lists every
 * code; `errors.test.ts` fails when the two drift apart.
 */

/** Every error code tandem raises, with a one-line operator hint. */
export const ERROR_CODES = {
  TANDEM_ERR_CONFIG: 'Fix the named key in tandem.yaml (or the flag/env that set it).',
  TANDEM_ERR_USAGE: 'Run the command with --help to see its arguments.',
  TANDEM_ERR_SECRET: 'Set the named environment variable or make the secret file readable.',
  TANDEM_ERR_AUTH: 'Send the admin token as "Authorization: Bearer <token>".',
  TANDEM_ERR_NOT_FOUND: 'Check the name against tandem.yaml.',
  TANDEM_ERR_TIMEOUT: 'The operation took longer than its deadline; check the target is reachable.',
  TANDEM_ERR_ABORTED: 'The operation was cancelled.',
  TANDEM_ERR_STATE: 'The component is not in a state that allows this operation.',
  TANDEM_ERR_PG_PREREQ: 'Change the PostgreSQL settings listed and restart the server.',
  TANDEM_ERR_PG_START: 'PostgreSQL did not start; read its log file named in the message.',
  TANDEM_ERR_NO_PRIMARY_KEY: 'Add a primary key to the table or remove it from replication.tables.',
  TANDEM_ERR_SCHEMA_DRIFT: 'Make the table definitions identical in every region; apply resumes by itself.',
  TANDEM_ERR_UNSUPPORTED_TYPE: 'Use a type with a text representation that is identical in every region.',
  TANDEM_ERR_PROTOCOL: 'A peer sent bytes that do not follow its protocol; this is a bug or a version mismatch.',
  TANDEM_ERR_REPLICATION: 'Replication failed; the agent retries. See the log line for the peer and the cause.',
  TANDEM_ERR_GEO_DB: 'Check the geo database path and format (MaxMind DB, City layout).',
  TANDEM_ERR_SAFETY: 'A safety rule refused the action; pass --force only if you know why it is safe.',
  TANDEM_ERR_RPO: 'The target region lags more than the RPO bound; wait for it to catch up or pass --force.',
  TANDEM_ERR_LAB: 'The lab is not in the state this command needs; run `tandem lab status`.',
  TANDEM_ERR_DRILL: 'The drill could not run or missed a bound; read the report.',
  TANDEM_ERR_VERIFY: 'The regions differ; the differing keys are listed.',
  TANDEM_ERR_HTTP: 'An HTTP call failed; the message names the URL and status.',
  TANDEM_ERR_DB_UNAVAILABLE: 'The region database did not answer; check it is running and reachable from this host.',
  TANDEM_ERR_INTERNAL: 'This is a bug in tandem; please report it with the log.',
} as const;

/** A stable error code, e.g. `TANDEM_ERR_SCHEMA_DRIFT`. */
export type ErrorCode = keyof typeof ERROR_CODES;

/** Process exit codes used by the CLI and daemons (sysexits-style for config). */
export const EXIT = { OK: 0, RUNTIME: 1, USAGE: 2, CONFIG: 78 } as const;

/** The base error: a stable `code`, a message naming what and where, an optional `cause`. */
export class TandemError extends Error {
  readonly code: ErrorCode;
  /** Structured details for logs and APIs (never secrets). */
  readonly details: Record<string, unknown> | undefined;

  constructor(code: ErrorCode, message: string, options: { cause?: unknown; details?: Record<string, unknown> } = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TandemError';
    this.code = code;
    this.details = options.details;
  }

  /** The operator hint for this error's code. */
  get hint(): string {
    return ERROR_CODES[this.code];
  }
}

/** True when `err` is a TandemError, optionally with the given code. */
export function isTandemError(err: unknown, code?: ErrorCode): err is TandemError {
  return err instanceof TandemError && (code === undefined || err.code === code);
}

/** The exit code a CLI should use for an error. */
export function exitCodeFor(err: unknown): number {
  if (!(err instanceof TandemError)) return EXIT.RUNTIME;
  if (err.code === 'TANDEM_ERR_CONFIG') return EXIT.CONFIG;
  if (err.code === 'TANDEM_ERR_USAGE') return EXIT.USAGE;
  return EXIT.RUNTIME;
}

/** One clear line for a person: what failed, the code, and a hint. */
export function formatError(err: unknown): string {
  if (err instanceof TandemError) {
    return `tandem: ${err.message} [${err.code}]\n  hint: ${err.hint}`;
  }
  const message = err instanceof Error ? err.message : String(err);
  return `tandem: ${message} [TANDEM_ERR_INTERNAL]\n  hint: ${ERROR_CODES.TANDEM_ERR_INTERNAL}`;
}

/** Turn anything thrown into an Error, keeping the original as cause. */
export function toError(err: unknown): Error {
  return err instanceof Error ? err : new Error(String(err));
}
