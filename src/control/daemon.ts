/**
 * `tandem control run --region <name>`: the controller daemon. It reads every
 * region's replication lag from that region's database (tandem's status
 * table) and runs the runbook until SIGTERM/SIGINT.
 */
import type pg from 'pg';
import { regionByName, localDatabase, type Config, type RegionConfig } from '../core/config/index.ts';
import { createLogger } from '../core/log.ts';
import { createRegistry } from '../core/metrics.ts';
import { closeClient, connectClient } from '../core/pg.ts';
import { readSecret } from '../core/secrets.ts';
import { readLag } from '../replication/status.ts';
import { Controller, type LagReader } from './controller.ts';

/** Client-side deadline of one lag read (ms). */
const LAG_READ_TIMEOUT_MS = 2_500;

/** A lag reader with one cached connection per region (reconnecting after errors). */
export function databaseLagReader(config: Config, me: RegionConfig): LagReader & { close(): Promise<void> } {
  const clients = new Map<string, Promise<pg.Client>>();
  const connect = (r: RegionConfig) => {
    const own = r.name === me.name;
    // A client-side deadline too: statement_timeout never starts for a query that a silent path never delivers,
    // and one stuck read would hold up the whole tick (runbook, DNS enforcement, operator commands, stop).
    const extras = { bindAddress: own ? undefined : me.bindAddress, applicationName: `tandem-control-${me.name}`, queryTimeoutMs: LAG_READ_TIMEOUT_MS };
    const p = connectClient(own ? localDatabase(r) : r.database, extras, `regions[${r.name}].database`).then(async (c) => {
      c.on('error', () => clients.delete(r.name));
      await c.query("SET statement_timeout = '2s'");
      return c;
    });
    clients.set(r.name, p);
    p.catch(() => clients.delete(r.name));
    return p;
  };
  const reader = async (r: RegionConfig) => {
    try {
      const client = await (clients.get(r.name) ?? connect(r));
      const rows = await readLag(client, { heartbeatIntervalMs: config.replication.heartbeatIntervalMs });
      // A peer never heard from has no lag yet: leave it out, so readiness waits for it.
      return Object.fromEntries(rows.flatMap((l) => (l.lagSec === null ? [] : [[l.peer, { lagSec: l.lagSec, sourceCommitAt: l.sourceCommitAt?.getTime() }]])));
    } catch {
      const c = clients.get(r.name);
      clients.delete(r.name);
      void c?.then((x) => closeClient(x, 500)).catch(() => {});
      return undefined;
    }
  };
  return Object.assign(reader, {
    async close() {
      await Promise.all([...clients.values()].map((p) => p.then((c) => closeClient(c, 500)).catch(() => {})));
    },
  });
}

/** Run the controller of `region` until a signal stops it. */
export async function runControllerDaemon(config: Config, region: string): Promise<void> {
  const me = regionByName(config, region);
  const logger = createLogger({ name: 'control', region });
  const registry = createRegistry('control', region);
  const lag = databaseLagReader(config, me);
  const token = process.env.TANDEM_ADMIN_TOKEN || readSecret(config.adminToken, 'adminToken');
  const controller = new Controller({ config, region, token, logger, registry, lag });
  await controller.start();
  logger.info({ listen: me.control?.listen }, 'controller running');
  await new Promise<void>((resolve) => {
    const stop = () => resolve();
    process.once('SIGTERM', stop);
    process.once('SIGINT', stop);
    controller.closed.then(stop, stop);
  });
  await controller.stop();
  await lag.close();
  logger.info('controller stopped');
}
