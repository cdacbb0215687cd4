/**
 * Start and stop a whole lab for end-to-end tests, through the real CLI
 * (`tandem lab up --detach` / `tandem lab down`). The lab's ports are fixed,
 * so one lab runs at a time: test files that use it take a lock first.
 */
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, readFileSync, rmdirSync, rmSync, chmodSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { LabStatus } from '../../src/lab/lab.ts';

export const TANDEM = fileURLToPath(new URL('../../bin/tandem.js', import.meta.url));
const LOCK = path.join(tmpdir(), 'tandem-lab-test.lock');

/** Run the tandem CLI; resolves with its exit code and output (never rejects on a non-zero exit). */
export function tandem(args: string[], opts: { timeoutMs?: number; env?: Record<string, string> } = {}): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [TANDEM, ...args], { env: { ...process.env, ...opts.env } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 120_000);
    child.on('close', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Take the machine-wide lab lock (a directory), waiting for another test's lab to go. */
async function lock(timeoutMs = 600_000): Promise<() => void> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      mkdirSync(LOCK);
      return () => rmdirSync(LOCK);
    } catch {
      // A lock older than 15 minutes belongs to a run that died.
      const st = statSync(LOCK, { throwIfNoEntry: false });
      if (st && Date.now() - st.mtimeMs > 15 * 60_000) rmdirSync(LOCK);
      if (Date.now() > deadline) throw new Error(`timed out waiting for the lab lock ${LOCK}`);
      await new Promise((r) => setTimeout(r, 500));
    }
  }
}

/** A running test lab. */
export interface TestLab {
  dir: string;
  status: LabStatus;
  token: string;
  config: string;
  /** Run `tandem <args> --dir <lab>` style commands. */
  cli(args: string[], timeoutMs?: number): Promise<{ code: number | null; stdout: string; stderr: string }>;
  down(): Promise<void>;
}

/** `tandem lab up --detach` in a fresh folder; throws with the CLI's output if it fails. */
export async function startLab(opts: { regions?: number; traffic?: boolean } = {}): Promise<TestLab> {
  const release = await lock();
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-lab-e2e-'));
  chmodSync(dir, 0o755);
  const args = ['lab', 'up', '--detach', '--json', '--dir', dir, '--regions', String(opts.regions ?? 2)];
  if (opts.traffic === false) args.push('--no-traffic');
  const up = await tandem(args, { timeoutMs: 240_000 });
  let downed = false;
  const down = async () => {
    if (downed) return;
    downed = true;
    try {
      await tandem(['lab', 'down', '--dir', dir], { timeoutMs: 120_000 });
    } finally {
      rmSync(dir, { recursive: true, force: true });
      release();
    }
  };
  if (up.code !== 0) {
    await down();
    throw new Error(`tandem lab up failed (${up.code}):\n${up.stderr}\n${up.stdout}`);
  }
  return {
    dir,
    status: JSON.parse(up.stdout) as LabStatus,
    token: readFileSync(path.join(dir, 'secrets', 'admin-token'), 'utf8').trim(),
    config: path.join(dir, 'tandem.yaml'),
    cli: (a, timeoutMs) => tandem(a, { timeoutMs }),
    down,
  };
}
