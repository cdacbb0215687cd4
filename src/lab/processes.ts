/**
 * The lab's daemons as child processes: `node bin/tandem.js <command>` each in
 * its own process group with its log in a file, restarted with backoff when it
 * dies on its own, and SIGKILLed as a group when its region fails.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { openSync, closeSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Logger } from '../core/log.ts';

/** The CLI entry the daemons run (the same tree as the supervisor). */
export const TANDEM_BIN = fileURLToPath(new URL('../../bin/tandem.js', import.meta.url));

/** What one supervised daemon is. */
export interface DaemonSpec {
  /** e.g. `app`, `dns`, `agent`, `control`. */
  kind: string;
  region: string;
  args: string[];
  logFile: string;
  env?: Record<string, string>;
}

/** A daemon's state as the lab status shows it. */
export interface DaemonStatus {
  kind: string;
  region: string;
  pid: number | undefined;
  state: 'running' | 'restarting' | 'stopped' | 'killed';
  restarts: number;
  lastExit?: string;
  logFile: string;
}

/** One supervised child process. */
export class Daemon {
  readonly spec: DaemonSpec;
  #child: ChildProcess | undefined;
  #state: DaemonStatus['state'] = 'stopped';
  #restarts = 0;
  #lastExit: string | undefined;
  #restartTimer: NodeJS.Timeout | undefined;
  #exit: Promise<void> = Promise.resolve();
  readonly #log: Logger;

  constructor(spec: DaemonSpec, log: Logger) {
    this.spec = spec;
    this.#log = log;
  }

  get pid(): number | undefined {
    return this.#child?.pid;
  }

  status(): DaemonStatus {
    return {
      kind: this.spec.kind,
      region: this.spec.region,
      pid: this.#state === 'running' ? this.pid : undefined,
      state: this.#state,
      restarts: this.#restarts,
      ...(this.#lastExit ? { lastExit: this.#lastExit } : {}),
      logFile: this.spec.logFile,
    };
  }

  /** Start the process; it is restarted with backoff if it exits while wanted. */
  start(): void {
    this.#state = 'running';
    this.#spawn();
  }

  #spawn(): void {
    const fd = openSync(this.spec.logFile, 'a');
    const child = spawn(process.execPath, [TANDEM_BIN, ...this.spec.args], {
      stdio: ['ignore', fd, fd],
      detached: true,
      env: { ...process.env, ...this.spec.env },
    });
    closeSync(fd);
    this.#child = child;
    this.#exit = new Promise((resolve) => {
      child.once('exit', (code, signal) => {
        this.#lastExit = `code ${code ?? '-'} signal ${signal ?? '-'} at ${new Date().toISOString()}`;
        if (this.#state === 'running') {
          // It died on its own: restart with capped exponential backoff.
          this.#restarts++;
          this.#state = 'restarting';
          const delay = Math.min(10_000, 500 * 2 ** Math.min(this.#restarts - 1, 5));
          this.#log.warn({ kind: this.spec.kind, region: this.spec.region, exit: this.#lastExit, delayMs: delay, log: this.spec.logFile }, 'lab daemon exited; restarting');
          this.#restartTimer = setTimeout(() => {
            if (this.#state !== 'restarting') return;
            this.#state = 'running';
            this.#spawn();
          }, delay);
        }
        resolve();
      });
    });
  }

  /** SIGTERM, then SIGKILL after `graceMs`; the process group goes with it. */
  async stop(graceMs = 8_000): Promise<void> {
    clearTimeout(this.#restartTimer);
    const wasRunning = this.#state === 'running';
    this.#state = 'stopped';
    const child = this.#child;
    if (!wasRunning || !child?.pid || child.exitCode !== null || child.signalCode !== null) return;
    signalGroup(child.pid, 'SIGTERM');
    const timer = setTimeout(() => signalGroup(child.pid!, 'SIGKILL'), graceMs);
    await this.#exit;
    clearTimeout(timer);
    // Workers of a cluster primary share its group; make sure none outlives it.
    signalGroup(child.pid, 'SIGKILL');
  }

  /** SIGKILL the whole process group now (a region outage). */
  async kill(): Promise<void> {
    clearTimeout(this.#restartTimer);
    this.#state = 'killed';
    const pid = this.#child?.pid;
    if (pid) signalGroup(pid, 'SIGKILL');
    await this.#exit;
  }

  /** The last lines of the daemon's log, for error messages. */
  logTail(lines = 5): string {
    try {
      return readFileSync(this.spec.logFile, 'utf8').trim().split('\n').slice(-lines).join('\n');
    } catch {
      return '';
    }
  }
}

/** Send a signal to a process group, ignoring one that is already gone. */
export function signalGroup(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // Gone.
    }
  }
}

/** Run a one-shot tandem command (setup, migrate) and fail with its output if it fails. */
export function runOnce(args: string[], opts: { logFile: string; timeoutMs?: number; env?: Record<string, string> }): Promise<void> {
  return new Promise((resolve, reject) => {
    const fd = openSync(opts.logFile, 'a');
    const child = spawn(process.execPath, [TANDEM_BIN, ...args], { stdio: ['ignore', fd, fd], env: { ...process.env, ...opts.env } });
    closeSync(fd);
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000);
    child.once('exit', (code, signal) => {
      clearTimeout(timer);
      if (code === 0) return resolve();
      let tail = '';
      try {
        tail = readFileSync(opts.logFile, 'utf8').trim().split('\n').slice(-8).join('\n');
      } catch {
        // No log.
      }
      reject(new Error(`tandem ${args.slice(0, 2).join(' ')} failed (code ${code ?? '-'}, signal ${signal ?? '-'}); log ${opts.logFile}:\n${tail}`));
    });
  });
}
