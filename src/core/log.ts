/**
 * Structured logging (pino) with secrets redacted wherever they appear.
 *
 * Library code takes a `Logger` and never writes to the console itself.
 */
import { pino, type Logger as PinoLogger, type LoggerOptions } from 'pino';

/** The logger type every part accepts. */
export type Logger = PinoLogger;

/** Keys whose values are never written to a log, at any depth we know of. */
export const REDACT_PATHS = [
  'password',
  'token',
  'secret',
  'authorization',
  '*.password',
  '*.token',
  '*.secret',
  '*.authorization',
  '*.*.password',
  '*.*.token',
  'headers.authorization',
  'req.headers.authorization',
  'connectionString',
  '*.connectionString',
];

/** Options for `createLogger`. */
export interface LogOptions {
  /** Component name put on every line (`dns`, `replication`, ...). */
  name: string;
  /** Region this process serves, when it serves one. */
  region?: string;
  level?: string;
  /** Write to this stream instead of stdout (tests use a buffer). */
  destination?: NodeJS.WritableStream;
}

/** Create a JSON logger for one component. Level comes from `TANDEM_LOG_LEVEL` unless given. */
export function createLogger(opts: LogOptions): Logger {
  const options: LoggerOptions = {
    name: opts.name,
    level: opts.level ?? process.env.TANDEM_LOG_LEVEL ?? 'info',
    redact: { paths: REDACT_PATHS, censor: '[redacted]' },
    base: opts.region ? { region: opts.region, pid: process.pid } : { pid: process.pid },
    timestamp: pino.stdTimeFunctions.isoTime,
  };
  return opts.destination ? pino(options, opts.destination as never) : pino(options);
}

/** A logger that discards everything (for tests and library defaults). */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
