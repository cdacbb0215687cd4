/**
 * `tandem app ...`: run the reference service of a region (serve), create or
 * update its schema (migrate), fence or unfence a region's writes, print the
 * tables to replicate, and drive synthetic load.
 */
import type { Command } from 'commander';
import { commandConfig, intOption, output } from './common.ts';
import { TandemError } from '../core/errors.ts';

/** Register the `app` command group. */
export function register(program: Command): void {
  const app = program.command('app').description('The app kit and the reference orders-and-payments service.');

  app
    .command('serve')
    .description('Serve the reference service of a region on regions[r].app.listen with regions[r].app.workers workers.')
    .requiredOption('--region <name>', 'the region to serve')
    .option('--workers <n>', 'worker processes (default: regions[r].app.workers)', intOption('--workers', 1))
    .option('--no-migrate', 'do not create/update the schema before serving')
    .action(async (opts: { region: string; workers?: number; migrate: boolean }, cmd: Command) => {
      const [{ default: cluster }, { createLogger }, { regionByName, localDatabase }, svc, clusterKit, schema] = await Promise.all([
        import('node:cluster'),
        import('../core/log.ts'),
        import('../core/config/index.ts'),
        import('../service/service.ts'),
        import('../app/cluster.ts'),
        import('../service/schema.ts'),
      ]);
      const config = commandConfig(cmd);
      const r = regionByName(config, opts.region);
      const listen = svc.serviceListen(config, opts.region);
      const workers = opts.workers ?? r.app?.workers ?? 1;
      const logger = createLogger({ name: 'app', region: opts.region });
      const stop = new AbortController();
      const onSignal = (sig: NodeJS.Signals) => {
        logger.info({ signal: sig }, 'shutdown requested');
        stop.abort();
      };
      process.once('SIGTERM', onSignal);
      process.once('SIGINT', onSignal);

      if (cluster.isPrimary) {
        if (opts.migrate) {
          const results = await schema.migrateDatabase(localDatabase(r), `regions[${config.regions.indexOf(r)}].database`);
          logger.info({ migrations: results }, 'schema up to date');
        }
        if (workers > 1) {
          logger.info({ workers, listen: `${listen.host}:${listen.port}` }, 'starting workers');
          await clusterKit.runPrimary({ workers, shutdownGraceMs: config.app.shutdownGraceMs, logger, signal: stop.signal });
          logger.info('all workers stopped');
          return;
        }
      }
      const service = new svc.ShopService({
        config,
        region: opts.region,
        logger,
        metricsText: cluster.isWorker ? () => clusterKit.clusterMetricsText() : undefined,
      });
      if (cluster.isWorker) clusterKit.shareRegistry(service.registry);
      await service.start();
      if (cluster.isWorker) {
        await clusterKit.runWorker(service, stop.signal);
        // Closing the IPC channel lets the worker exit once its server is closed.
        process.disconnect?.();
      } else {
        await new Promise<void>((resolve) => stop.signal.addEventListener('abort', () => resolve(), { once: true }));
        await service.stop();
      }
      logger.info('stopped');
    });

  app
    .command('migrate')
    .description("Create or update the kit's and the reference service's tables in a region's database (idempotent).")
    .option('--region <name>', 'the region (default: every region)')
    .option('--json', 'print JSON')
    .action(async (opts: { region?: string; json?: boolean }, cmd: Command) => {
      const [{ regionByName, localDatabase }, schema] = await Promise.all([import('../core/config/index.ts'), import('../service/schema.ts')]);
      const config = commandConfig(cmd);
      const regions = opts.region ? [regionByName(config, opts.region)] : config.regions;
      const out: Record<string, unknown> = {};
      for (const r of regions) {
        out[r.name] = await schema.migrateDatabase(localDatabase(r), `regions[${config.regions.indexOf(r)}].database`);
      }
      output(Boolean(opts.json), out, () =>
        Object.entries(out)
          .map(([name, res]) =>
            (res as Array<{ component: string; applied: number[]; current: number }>)
              .map((m) => `${name}: ${m.component} at version ${m.current}${m.applied.length ? ` (applied ${m.applied.join(', ')})` : ' (up to date)'}`)
              .join('\n'),
          )
          .join('\n'),
      );
    });

  const fenceAction = (readOnly: boolean) => async (opts: { region: string; reason?: string; json?: boolean }, cmd: Command) => {
    const [{ regionByName, localDatabase }, { pgClientConfig }, { setFence }, { default: pg }] = await Promise.all([
      import('../core/config/index.ts'),
      import('../core/pg.ts'),
      import('../app/fence.ts'),
      import('pg'),
    ]);
    const config = commandConfig(cmd);
    const r = regionByName(config, opts.region);
    const conn = localDatabase(r);
    const client = new pg.Client(pgClientConfig(conn, { applicationName: 'tandem-app-fence' }, `regions[${config.regions.indexOf(r)}].database`));
    client.on('error', () => {});
    try {
      await client.connect();
    } catch (cause) {
      throw new TandemError('TANDEM_ERR_DB_UNAVAILABLE', `cannot connect to the ${r.name} database at ${conn.host}:${conn.port}: ${(cause as Error).message}`, { cause });
    }
    try {
      const state = await setFence(client, r.name, readOnly, opts.reason ?? (readOnly ? `fenced by ${process.env.USER ?? 'operator'}` : undefined));
      output(Boolean(opts.json), { region: r.name, ...state }, () =>
        state.readOnly
          ? `${r.name}: read-only (${state.reason ?? 'no reason'}); instances refuse writes within app.fenceCacheMs`
          : `${r.name}: writable`,
      );
    } finally {
      await client.end().catch(() => {});
    }
  };

  app
    .command('fence')
    .description("Make a region read-only: its instances answer writes 503 + Retry-After, reads are still served.")
    .requiredOption('--region <name>', 'the region to fence')
    .option('--reason <text>', 'why (shown in /healthz and in 503 answers)')
    .option('--json', 'print JSON')
    .action(fenceAction(true));

  app
    .command('unfence')
    .description('Make a region writable again.')
    .requiredOption('--region <name>', 'the region to unfence')
    .option('--json', 'print JSON')
    .action(fenceAction(false));

  app
    .command('tables')
    .description('Print the tables to put in replication.tables for the kit and the reference service.')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const { REPLICATED_TABLES } = await import('../service/schema.ts');
      output(Boolean(opts.json), REPLICATED_TABLES, () => REPLICATED_TABLES.join('\n'));
    });
}
