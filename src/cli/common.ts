/**
 * What every CLI command shares: loading the config named by --config (or
 * TANDEM_CONFIG), reading the admin token, and printing for people or JSON.
 */
import type { Command } from 'commander';
import { loadConfig, type Config } from '../core/config/index.ts';
import { readSecret } from '../core/secrets.ts';
import { TandemError } from '../core/errors.ts';

/** The default config path: flag > env > ./tandem.yaml. */
export function configPath(cmd: Command): string {
  const opts = cmd.optsWithGlobals<{ config?: string }>();
  return opts.config ?? process.env.TANDEM_CONFIG ?? 'tandem.yaml';
}

/** Load the config named by the command's --config. */
export function commandConfig(cmd: Command): Config {
  return loadConfig(configPath(cmd));
}

/** The admin token: TANDEM_ADMIN_TOKEN wins over the config's adminToken reference. */
export function adminToken(config: Config | undefined): string | undefined {
  return process.env.TANDEM_ADMIN_TOKEN || readSecret(config?.adminToken, 'adminToken');
}

/** Parse a positive integer flag or fail with a usage error naming it. */
export function intOption(name: string, min = 0): (value: string) => number {
  return (value: string) => {
    const n = Number(value);
    if (!Number.isInteger(n) || n < min) throw new TandemError('TANDEM_ERR_USAGE', `${name} must be an integer >= ${min}, found ${JSON.stringify(value)}`);
    return n;
  };
}

/** Print JSON (machines) or text (people). */
export function output(json: boolean, value: unknown, text: () => string): void {
  process.stdout.write(json ? `${JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v), 2)}\n` : `${text()}\n`);
}
