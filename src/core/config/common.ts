/**
 * Small schema pieces shared by the config sections: endpoints, secrets,
 * durations and database connections.
 */
import { isIP } from 'node:net';
import { z } from 'zod';

/** A secret reference: `{ env: NAME }` or `{ file: /path }`, never the value itself. */
export const secretRef = z
  .object({
    env: z.string().min(1).optional(),
    file: z.string().min(1).optional(),
  })
  .strict()
  .refine((s) => (s.env ? 1 : 0) + (s.file ? 1 : 0) === 1, {
    message: 'give exactly one of "env" (an environment variable name) or "file" (a path)',
  });

/** `host:port` or `[v6]:port`, parsed into parts; port 0 lets the OS choose. */
export const hostPort = z.string().transform((text, ctx) => {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(text) ?? /^([^:]+):(\d+)$/.exec(text);
  if (!m) {
    ctx.addIssue({ code: 'custom', message: `expected "host:port" or "[ipv6]:port", found ${JSON.stringify(text)}` });
    return z.NEVER;
  }
  const port = Number(m[2]);
  if (port > 65535) {
    ctx.addIssue({ code: 'custom', message: `port ${port} is out of range 0..65535` });
    return z.NEVER;
  }
  return { host: m[1]!, port };
});
export type HostPort = z.output<typeof hostPort>;

/** An IPv4 or IPv6 address. */
export const ipAddress = z.string().refine((s) => isIP(s) !== 0, { message: 'expected an IPv4 or IPv6 address' });

/** A positive integer count of milliseconds. */
export const ms = z.number().int().positive();
/** A positive integer count of seconds. */
export const sec = z.number().int().positive();

/** TLS settings for a PostgreSQL connection, named as libpq names them. */
export const pgSsl = z
  .object({
    mode: z.enum(['disable', 'prefer', 'require', 'verify-ca', 'verify-full']).default('disable'),
    /** CA bundle (PEM) to verify the server; required for verify-ca / verify-full. */
    ca: z.string().optional(),
    /** Client certificate and key (PEM files) for certificate authentication. */
    cert: z.string().optional(),
    key: z.string().optional(),
  })
  .strict()
  .superRefine((s, ctx) => {
    if ((s.mode === 'verify-ca' || s.mode === 'verify-full') && !s.ca) {
      ctx.addIssue({ code: 'custom', path: ['ca'], message: `sslmode ${s.mode} needs "ca" (a PEM file with the server's CA)` });
    }
  });

/** How to reach one PostgreSQL database. */
export const pgConnection = z
  .object({
    host: z.string().min(1),
    port: z.number().int().min(1).max(65535).default(5432),
    database: z.string().min(1).default('tandem'),
    user: z.string().min(1).default('tandem'),
    password: secretRef.optional(),
    ssl: pgSsl.default({ mode: 'disable' }),
    /** Seconds to wait for a connection before giving up. */
    connectTimeoutSec: sec.default(5),
  })
  .strict();
export type PgConnectionConfig = z.output<typeof pgConnection>;

/** Overrides of a connection for processes inside the region: only what is given replaces (no defaults). */
export const pgConnectionOverride = z
  .object({
    host: z.string().min(1),
    port: z.number().int().min(1).max(65535),
    database: z.string().min(1),
    user: z.string().min(1),
    password: secretRef,
    ssl: pgSsl,
    connectTimeoutSec: sec,
  })
  .partial()
  .strict();
