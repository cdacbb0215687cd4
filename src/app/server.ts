/**
 * An HTTP server for a kit with the drain the lab and SIGTERM need: stop
 * accepting, let in-flight requests finish within a grace period (their
 * responses say `Connection: close`), then cut what is left.
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { BaseService } from '../core/lifecycle.ts';
import { TandemError } from '../core/errors.ts';
import type { Logger } from '../core/log.ts';
import type { Kit } from './kit.ts';

/** Options of the server. */
export interface AppServerOptions {
  kit: Kit;
  host: string;
  /** 0 lets the OS choose (tests). */
  port: number;
  /** How long in-flight requests get after stop() before their connections are cut. */
  shutdownGraceMs: number;
  logger: Logger;
}

/** The kit behind a `node:http` server, with a graceful stop. */
export class AppServer extends BaseService {
  readonly name: string;
  readonly #opts: AppServerOptions;
  #server: http.Server | undefined;

  constructor(opts: AppServerOptions) {
    super();
    this.#opts = opts;
    this.name = `app@${opts.host}:${opts.port}`;
  }

  /** The bound address. */
  get address(): AddressInfo {
    const a = this.#server?.address();
    if (!a || typeof a === 'string') throw new TandemError('TANDEM_ERR_STATE', `${this.name} is not listening`);
    return a;
  }

  /** The base URL of the running server. */
  get url(): string {
    const a = this.address;
    return `http://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;
  }

  protected async onStart(signal?: AbortSignal): Promise<void> {
    const server = http.createServer({ keepAliveTimeout: 5_000, headersTimeout: 10_000, requestTimeout: 60_000 }, this.#opts.kit.handler);
    this.#server = server;
    await this.#opts.kit.start(signal);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) =>
        reject(
          new TandemError('TANDEM_ERR_CONFIG', `cannot listen on ${this.#opts.host}:${this.#opts.port} (the app.listen address): ${err.code ?? err.message}`, {
            cause: err,
          }),
        );
      server.once('error', onError);
      server.listen(this.#opts.port, this.#opts.host, () => {
        server.off('error', onError);
        resolve();
      });
    });
  }

  protected async onStop(): Promise<void> {
    const { kit, shutdownGraceMs, logger } = this.#opts;
    const server = this.#server;
    kit.startDrain();
    if (server) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      // Idle keep-alive connections would hold close() until their timeout.
      server.closeIdleConnections();
      const inFlight = kit.inFlight;
      const drained = await kit.waitIdle(shutdownGraceMs);
      if (!drained) logger.warn({ inFlight: kit.inFlight, graceMs: shutdownGraceMs }, 'grace period over; closing connections with requests in flight');
      else if (inFlight > 0) logger.info({ finished: inFlight }, 'in-flight requests finished');
      server.closeAllConnections();
      await closed;
    }
    await kit.stop();
  }
}
