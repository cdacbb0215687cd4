/**
 * Shared pieces of the DNS end-to-end tests: the lab's two-region config
 * (aws-south on 127.0.1.1, azure-west on 127.0.2.1, zone tandem.test., service
 * app), and addresses whose expected region is derived from the shipped
 * database rather than hard-coded.
 */
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config/index.ts';
import { openGeoDb } from '../../src/dns/daemon.ts';

/** States whose users go to aws-south first, and those that go to azure-west first. */
export const SOUTH = ['IN-TN', 'IN-KA', 'IN-KL', 'IN-TG', 'IN-AP'];
export const WEST = ['IN-MH', 'IN-GJ', 'IN-GA', 'IN-RJ'];

/** Candidate addresses in Indian networks; the test asks the database where each one is. */
export const INDIAN_SAMPLES = ['49.204.1.1', '27.54.160.1', '115.96.0.1', '106.51.0.1', '117.193.0.1', '59.88.0.1', '14.139.0.1', '103.21.124.1', '182.72.0.1', '1.186.0.1', '1.38.0.1', '117.196.0.1'];

/** The expected first region for an address per the bundled database, or undefined if neither south nor west. */
export function expectedRegion(ip: string): { region: string; place: string } | undefined {
  const info = openGeoDb('bundled').lookup(ip).info;
  if (!info || info.country !== 'IN' || !info.subdivisionCode) return undefined;
  const place = `IN-${info.subdivisionCode}`;
  if (SOUTH.includes(place)) return { region: 'aws-south', place };
  if (WEST.includes(place)) return { region: 'azure-west', place };
  return undefined;
}

/** The lab config as YAML-able input, with health URLs and extra settings. */
export function labConfigInput(opts: { healthUrls: [string, string]; dataDir?: string; extra?: Partial<ConfigInput>; dns?: Record<string, unknown>; geo?: Record<string, unknown>; addresses?: [string[], string[]] }): ConfigInput {
  const dataDir = opts.dataDir ?? mkdtempSync(path.join(tmpdir(), 'tandem-dns-'));
  return {
    dataDir,
    regions: [
      { name: 'aws-south', addresses: opts.addresses?.[0] ?? ['127.0.1.1'], healthUrl: opts.healthUrls[0], database: { host: '127.0.1.1' }, dns: { listen: ['127.0.1.1:0'], admin: '127.0.1.1:0' } },
      { name: 'azure-west', addresses: opts.addresses?.[1] ?? ['127.0.2.1'], healthUrl: opts.healthUrls[1], database: { host: '127.0.2.1' }, dns: { listen: ['127.0.2.1:0'], admin: '127.0.2.1:0' } },
    ],
    health: { intervalMs: 150, timeoutMs: 100, failThreshold: 2, recoverThreshold: 2 },
    dns: {
      zone: 'tandem.test.',
      services: [{ name: 'app' }],
      records: [
        { name: 'www', type: 'CNAME', value: 'app' },
        { name: '@', type: 'TXT', value: 'tandem test zone' },
        { name: 'mail', type: 'A', value: '127.0.9.9' },
        { name: 'deep.sub', type: 'A', value: '127.0.9.8' },
      ],
      tcp: { idleTimeoutMs: 400, maxConnections: 4 },
      ...opts.dns,
    } as ConfigInput['dns'],
    geo: {
      rules: [
        { name: 'south', match: SOUTH, order: ['aws-south', 'azure-west'] },
        { name: 'west', match: WEST, order: ['azure-west', 'aws-south'] },
      ],
      overrides: [{ cidr: '127.0.7.0/24', order: ['azure-west', 'aws-south'] }],
      ...opts.geo,
    } as ConfigInput['geo'],
    ...opts.extra,
  };
}

/** Write a config as YAML and parse it; returns the path and the parsed config. */
export function writeConfig(input: ConfigInput, file?: string): { file: string; config: Config } {
  const target = file ?? path.join(input.dataDir ?? mkdtempSync(path.join(tmpdir(), 'tandem-dns-')), 'tandem.yaml');
  writeFileSync(target, stringify(input));
  return { file: target, config: parseConfig(input, target) };
}

/** Wait until `check` returns true, polling every `everyMs`; returns the elapsed ms or throws after `timeoutMs`. */
export async function waitFor(check: () => Promise<boolean> | boolean, timeoutMs: number, everyMs = 20): Promise<number> {
  const started = Date.now();
  for (;;) {
    if (await check()) return Date.now() - started;
    if (Date.now() - started > timeoutMs) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}
