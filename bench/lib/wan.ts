/**
 * Parent side of the benchmark's WAN emulator (`wan-child.ts`): start the
 * proxies in a child process, partition and heal links, stop it.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { WanChildProxy, WanReply, WanRequest } from './wan-child.ts';

type Body<T> = T extends unknown ? Omit<T, 'id'> : never;

/** A running WAN emulator process. */
export class WanEmulator {
  readonly #child: ChildProcess;
  #next = 1;
  #waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();
  #exited: Promise<void>;

  private constructor(child: ChildProcess) {
    this.#child = child;
    child.on('message', (m: WanReply) => {
      const w = this.#waiting.get(m.id);
      if (!w) return;
      this.#waiting.delete(m.id);
      if (m.ok) w.resolve();
      else w.reject(new Error(`WAN emulator: ${m.error}`));
    });
    this.#exited = new Promise((resolve) => {
      child.once('exit', () => {
        for (const w of this.#waiting.values()) w.reject(new Error('WAN emulator exited'));
        this.#waiting.clear();
        resolve();
      });
    });
  }

  get pid(): number | undefined {
    return this.#child.pid;
  }

  /** Spawn the emulator and start one proxy per entry, every link shaped alike. */
  static async start(proxies: WanChildProxy[], shape: { latencyMs: number; jitterMs: number }): Promise<WanEmulator> {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, 'wan-child.ts')], { cwd: path.resolve(import.meta.dirname, '../..'), stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
    const wan = new WanEmulator(child);
    await wan.#call({ op: 'start', latencyMs: shape.latencyMs, jitterMs: shape.jitterMs, proxies });
    return wan;
  }

  #call(body: Body<WanRequest>): Promise<void> {
    const id = this.#next++;
    return new Promise<void>((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      this.#child.send({ ...body, id } as WanRequest);
    });
  }

  partition(a: string, b: string): Promise<void> {
    return this.#call({ op: 'partition', a, b });
  }

  heal(): Promise<void> {
    return this.#call({ op: 'heal' });
  }

  /** Stop the proxies and the process (SIGKILL by PID if it does not exit within 5 s). */
  async stop(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    await Promise.race([this.#call({ op: 'stop' }).catch(() => {}), new Promise((r) => setTimeout(r, 5_000))]);
    const timer = setTimeout(() => this.#child.kill('SIGKILL'), 5_000);
    await this.#exited;
    clearTimeout(timer);
  }
}
