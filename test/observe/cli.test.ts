/**
 * `tandem dashboard` as a process: it serves the page from a config, stops on
 * SIGTERM, and refuses bad flags with a usage error naming them. (Its run
 * against the whole lab is in lab.test.ts.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import { tandem, TANDEM } from '../helpers/lab.ts';
import { freePort } from '../helpers/ports.ts';
import { waitFor } from './helpers.ts';

test('a bad --listen is a usage error (exit 2) that names the flag', async () => {
  const r = await tandem(['dashboard', '-c', '/nonexistent.yaml', '--listen', 'nowhere'], { timeoutMs: 30_000 });
  assert.equal(r.code, 2, r.stderr);
  assert.match(r.stderr, /--listen must be host:port .*found "nowhere" \[TANDEM_ERR_USAGE\]/);
});

test('serves the page and the alerts from a config, with every source down, and stops on SIGTERM', async (t) => {
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-dashboard-cli-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  const port = await freePort('127.0.0.1');
  const deadPort = await freePort('127.0.5.1');
  const file = path.join(dir, 'tandem.yaml');
  writeFileSync(
    file,
    stringify({
      dataDir: dir,
      regions: [{ name: 'solo-1', addresses: ['127.0.5.1'], healthUrl: `http://127.0.5.1:${deadPort}/healthz`, database: { host: '127.0.5.1', port: deadPort, connectTimeoutSec: 1 } }],
    }),
  );
  const child = spawn(process.execPath, [TANDEM, 'dashboard', '-c', file, '--listen', `127.0.0.1:${port}`, '--interval', '300'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, TANDEM_LOG_LEVEL: 'silent' } });
  let err = '';
  child.stderr.on('data', (d: Buffer) => (err += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  t.after(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  await waitFor('dashboard up', async () => (await fetch(`http://127.0.0.1:${port}/`)).ok, 30_000, 200);
  assert.match(err, /tandem dashboard on http:\/\/127\.0\.0\.1:\d+\/ \(views are public; actions need the admin token\)/);
  const snap = (await (await fetch(`http://127.0.0.1:${port}/v1/dashboard/snapshot`)).json()) as { snapshot: { regions: { name: string; up: { app: boolean } }[]; sources: { id: string; up?: boolean }[] } };
  assert.equal(snap.snapshot.regions[0]!.name, 'solo-1');
  await waitFor('sources seen down', async () => {
    const s = (await (await fetch(`http://127.0.0.1:${port}/v1/dashboard/snapshot`)).json()) as typeof snap;
    return s.snapshot.sources.length > 0 && s.snapshot.sources.every((x) => x.up === false);
  }, 15_000);
  const alerts = (await (await fetch(`http://127.0.0.1:${port}/v1/alerts`)).json()) as { alerts: unknown[] };
  assert.deepEqual(alerts.alerts, []);
  child.kill('SIGTERM');
  assert.equal(await exited, 0);
});
