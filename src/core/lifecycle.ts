/**
 * The start/stop lifecycle every long-lived part of tandem follows.
 *
 * `start()` resolves once the thing is serving; `stop()` drains and is
 * idempotent; `closed` settles when it has fully stopped (rejects if it died).
 */
import { TandemError } from './errors.ts';

/** The states a service moves through, in order; `failed` is terminal like `stopped`. */
export type ServiceState = 'new' | 'starting' | 'running' | 'stopping' | 'stopped' | 'failed';

/** What the CLI and the lab compose: anything that starts, stops and reports when closed. */
export interface Service {
  readonly name: string;
  readonly state: ServiceState;
  start(signal?: AbortSignal): Promise<void>;
  stop(): Promise<void>;
  readonly closed: Promise<void>;
}

/**
 * A small base that enforces the state machine so each part only writes
 * `onStart` and `onStop`. `fail(err)` ends a running service from inside.
 */
export abstract class BaseService implements Service {
  abstract readonly name: string;
  #state: ServiceState = 'new';
  #stopping: Promise<void> | undefined;
  #starting: Promise<void> | undefined;
  #resolveClosed!: () => void;
  #rejectClosed!: (err: unknown) => void;
  readonly closed: Promise<void>;

  constructor() {
    this.closed = new Promise<void>((resolve, reject) => {
      this.#resolveClosed = resolve;
      this.#rejectClosed = reject;
    });
    // A service nobody awaits must not crash the process with an unhandled rejection.
    this.closed.catch(() => {});
  }

  get state(): ServiceState {
    return this.#state;
  }

  protected abstract onStart(signal?: AbortSignal): Promise<void>;
  protected abstract onStop(): Promise<void>;

  async start(signal?: AbortSignal): Promise<void> {
    if (this.#state !== 'new') {
      throw new TandemError('TANDEM_ERR_STATE', `${this.name}: start() called in state ${this.#state}`);
    }
    this.#state = 'starting';
    this.#starting = (async () => {
      try {
        signal?.throwIfAborted();
        await this.onStart(signal);
        // A stop() that came while starting runs onStop now, after everything onStart built exists.
        if (this.#state === 'starting') this.#state = 'running';
      } catch (err) {
        this.#state = 'failed';
        await this.onStop().catch(() => {});
        this.#rejectClosed(err);
        throw err;
      }
    })();
    return this.#starting;
  }

  stop(): Promise<void> {
    if (this.#stopping) return this.#stopping;
    if (this.#state === 'new' || this.#state === 'stopped' || this.#state === 'failed') {
      if (this.#state === 'new') {
        this.#state = 'stopped';
        this.#resolveClosed();
      }
      return Promise.resolve();
    }
    // Stopping while starting: wait for the start to settle (a failed start has stopped itself).
    const starting = this.#state === 'starting' ? this.#starting : undefined;
    this.#state = 'stopping';
    const stopped = starting ? starting.then(() => this.onStop(), () => undefined) : this.onStop();
    this.#stopping = stopped.then(
      () => {
        if (this.#state === 'failed') return;
        this.#state = 'stopped';
        this.#resolveClosed();
      },
      (err) => {
        this.#state = 'failed';
        this.#rejectClosed(err);
        throw err;
      },
    );
    return this.#stopping;
  }

  /** End the service because something inside it broke; `closed` rejects with `err`. */
  protected fail(err: unknown): void {
    if (this.#state === 'stopped' || this.#state === 'failed') return;
    this.#state = 'failed';
    void this.onStop().catch(() => {});
    this.#rejectClosed(err);
  }
}

/** Resolve after `ms`, or reject with the signal's reason when aborted first. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', onAbort, { once: true });
  });
}
