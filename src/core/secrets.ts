/**
 * Secrets (database passwords, admin tokens, signing keys) come from the
 * environment or from files, never from tandem.yaml itself, and are never logged.
 */
import { readFileSync } from 'node:fs';
import { timingSafeEqual, createHash } from 'node:crypto';
import { TandemError } from './errors.ts';

/** Where a secret lives: an environment variable or a file (first line, trimmed). */
export interface SecretRef {
  env?: string | undefined;
  file?: string | undefined;
}

/** Read a secret; `what` names it in errors ("regions[0].database.password"). */
export function readSecret(ref: SecretRef | undefined, what: string, env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (!ref) return undefined;
  if (ref.env) {
    const value = env[ref.env];
    if (value === undefined || value === '') {
      throw new TandemError('TANDEM_ERR_SECRET', `${what}: environment variable ${ref.env} is not set`);
    }
    return value;
  }
  if (ref.file) {
    let text: string;
    try {
      text = readFileSync(ref.file, 'utf8');
    } catch (cause) {
      throw new TandemError('TANDEM_ERR_SECRET', `${what}: cannot read secret file ${ref.file}`, { cause });
    }
    const value = text.split(/\r?\n/, 1)[0]!.trim();
    if (!value) throw new TandemError('TANDEM_ERR_SECRET', `${what}: secret file ${ref.file} is empty`);
    return value;
  }
  return undefined;
}

/** Compare a presented token with the expected one in constant time (lengths hidden by hashing). */
export function tokenEquals(presented: string, expected: string): boolean {
  const a = createHash('sha256').update(presented).digest();
  const b = createHash('sha256').update(expected).digest();
  return timingSafeEqual(a, b);
}

/** Extract the token from an `Authorization: Bearer <token>` header value. */
export function bearerToken(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
  return m ? m[1] : undefined;
}
