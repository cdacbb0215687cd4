/**
 * The CLI as the lab runs it: `tandem dns serve` as its own process, reloaded
 * by SIGHUP, driven by `tandem dns status|drain|undrain|weight|explain`.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { promisify } from 'node:util';
import { writeFileSync } from 'node:fs';
import { stringify } from 'yaml';
import { queryA } from '../../src/dns/client.ts';
import { freePort } from '../helpers/ports.ts';
import { startHealthTarget, type HealthTargetServer } from './health-target.ts';
import { labConfigInput, writeConfig, waitFor, expectedRegion } from './helpers.ts';
import type { ConfigInput } from '../../src/core/config/index.ts';

const TOKEN = 'cli-test-token';
const run = promisify(execFile);
let south: HealthTargetServer;
let west: HealthTargetServer;
let serve: ChildProcess | undefined;
let input: ConfigInput;
let file: string;
let port: number;
let adminPort: number;

const tandem = (...args: string[]) =>
  run(process.execPath, ['bin/tandem.js', '-c', file, ...args], { env: { ...process.env, TANDEM_ADMIN_TOKEN: TOKEN }, encoding: 'utf8', timeout: 30_000 });

before(async () => {
  south = await startHealthTarget('127.0.1.1');
  west = await startHealthTarget('127.0.2.1');
  port = await freePort('127.0.1.1');
  adminPort = await freePort('127.0.1.1');
  input = labConfigInput({ healthUrls: [south.url, west.url] });
  // Only aws-south runs a server here; azure-west has no DNS listener.
  input.regions[0]!.dns = { listen: [`127.0.1.1:${port}`], admin: `127.0.1.1:${adminPort}` };
  delete input.regions[1]!.dns;
  file = writeConfig(input).file;
  serve = spawn(process.execPath, ['bin/tandem.js', 'dns', 'serve', '-c', file, '--region', 'aws-south'], {
    env: { ...process.env, TANDEM_ADMIN_TOKEN: TOKEN, TANDEM_LOG_LEVEL: 'warn' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  serve.stderr?.resume();
  await waitFor(async () => {
    try {
      return (await queryA({ host: '127.0.1.1', port }, 'app.tandem.test', { timeoutMs: 300 })).addresses.length > 0;
    } catch {
      return false;
    }
  }, 30_000, 200);
});

after(async () => {
  if (serve && serve.exitCode === null && serve.pid) process.kill(serve.pid, 'SIGKILL');
  await south?.close();
  await west?.close();
});

test('dns serve answers; status, drain (with the safety rule), undrain and weight go through the admin API', async () => {
  const target = { host: '127.0.1.1', port };
  const want = expectedRegion('106.51.0.1')?.region === 'azure-west' ? '127.0.2.1' : '127.0.1.1';
  assert.deepEqual((await queryA(target, 'app.tandem.test', { ecs: '106.51.0.0/24', timeoutMs: 1000 })).addresses, [want]);

  const status = JSON.parse((await tandem('dns', 'status', '--json')).stdout) as { region: string; ok: boolean; result: { zone: string; regions: { name: string }[] } }[];
  assert.equal(status.length, 1);
  assert.equal(status[0]!.ok, true);
  assert.equal(status[0]!.result.zone, 'tandem.test.');

  const drained = await tandem('dns', 'drain', 'aws-south', '--reason', 'cli test');
  assert.match(drained.stdout, /aws-south: drained aws-south/);
  assert.deepEqual((await queryA(target, 'app.tandem.test', { ecs: '106.51.0.0/24', timeoutMs: 1000 })).addresses, ['127.0.2.1']);
  await assert.rejects(tandem('dns', 'drain', 'azure-west'), (err: { code?: number; stderr?: string }) => err.code === 1 && /TANDEM_ERR_SAFETY/.test(err.stderr ?? ''));
  await tandem('dns', 'undrain', 'aws-south');
  const w = await tandem('dns', 'weight', 'azure-west', '10', '--service', 'app');
  assert.match(w.stdout, /weight of azure-west = 10/);
  await tandem('dns', 'weight', 'azure-west', 'clear', '--service', 'app');
  await assert.rejects(tandem('dns', 'weight', 'azure-west', 'lots'), (err: { code?: number }) => err.code === 2);
});

test('dns explain works offline from the config', async () => {
  const out = JSON.parse((await tandem('dns', 'explain', '49.204.1.1', '--json')).stdout) as { geo: { country: string }; order: string[]; scopePrefix: number };
  assert.equal(out.geo.country, 'IN');
  assert.equal(out.order[0], expectedRegion('49.204.1.1')?.region ?? 'aws-south');
  const text = (await tandem('dns', 'explain', '8.8.8.8')).stdout;
  assert.match(text, /matched:\s+default/);
  assert.match(text, /DB-IP/);
});

test('SIGHUP reloads tandem.yaml; a bad file is rejected and the old config keeps serving; SIGTERM exits 0', async () => {
  const target = { host: '127.0.1.1', port };
  const next = structuredClone(input);
  (next.dns!.records as unknown[]).push({ name: 'hup', type: 'A', value: '127.0.9.5' });
  writeFileSync(file, stringify(next));
  process.kill(serve!.pid!, 'SIGHUP');
  await waitFor(async () => (await queryA(target, 'hup.tandem.test', { timeoutMs: 500 })).addresses[0] === '127.0.9.5', 10_000, 100);
  writeFileSync(file, 'regions: [ this is not valid');
  process.kill(serve!.pid!, 'SIGHUP');
  await new Promise((r) => setTimeout(r, 500));
  assert.deepEqual((await queryA(target, 'hup.tandem.test', { timeoutMs: 500 })).addresses, ['127.0.9.5'], 'still serving the last good config');
  const exited = new Promise<number | null>((resolve) => serve!.once('exit', (code) => resolve(code)));
  process.kill(serve!.pid!, 'SIGTERM');
  assert.equal(await exited, 0);
});
