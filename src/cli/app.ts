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
        // Fail here, once, rather than in every worker: secrets and keys must be readable and valid.
        const secrets = svc.sessionSecrets(config);
        if (secrets.length) new (await import('../app/session.ts')).SessionKeyring(secrets);
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
      try {
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
        } else {
          await new Promise<void>((resolve) => stop.signal.addEventListener('abort', () => resolve(), { once: true }));
          await service.stop();
        }
      } finally {
        // A worker's IPC channel would keep it alive after its server closed (or failed to start).
        if (cluster.isWorker) process.disconnect?.();
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
    .command('load')
    .description('Synthetic clients per geography: resolve the service through the DNS servers (ECS, TTL), send idempotent writes and reads at a steady rate.')
    .option('--dns <host:port...>', 'DNS servers in order (default: every region\'s first dns.listen)')
    .option('--name <fqdn>', 'service name (default: the first dns.services name in dns.zone)')
    .option('--port <n>', 'service port (default: the first region\'s app.listen port)', intOption('--port', 1))
    .option('--geo <name=cidr...>', 'a geography and its ECS subnet, e.g. chennai=49.204.1.0/24 (repeatable; default one client without ECS)')
    .option('--rate <n>', 'operations per second per geography', Number, 2)
    .option('--count <n>', 'operations per geography', intOption('--count', 1))
    .option('--duration <sec>', 'run for this many seconds', intOption('--duration', 1))
    .option('--write-ratio <f>', 'fraction of operations that are writes', Number, 0.5)
    .option('--seed <n>', 'seed of the read/write mix', intOption('--seed', 0))
    .option('--out <file>', 'write every record as a JSON line to this file')
    .option('--json', 'print the summary as JSON')
    .action(
      async (
        opts: { dns?: string[]; name?: string; port?: number; geo?: string[]; rate: number; count?: number; duration?: number; writeRatio: number; seed?: number; out?: string; json?: boolean },
        cmd: Command,
      ) => {
        const [{ runLoad }, { createWriteStream }, { hostPort }] = await Promise.all([import('../service/load.ts'), import('node:fs'), import('../core/config/index.ts')]);
        const config = commandConfig(cmd);
        if (opts.count === undefined && opts.duration === undefined) throw new TandemError('TANDEM_ERR_USAGE', 'give --count or --duration');
        if (!(opts.rate > 0)) throw new TandemError('TANDEM_ERR_USAGE', `--rate must be a number > 0 (found ${opts.rate})`);
        if (!(opts.writeRatio >= 0 && opts.writeRatio <= 1)) throw new TandemError('TANDEM_ERR_USAGE', `--write-ratio must be between 0 and 1 (found ${opts.writeRatio})`);
        const parseHostPort = (text: string, what: string) => {
          const r = hostPort.safeParse(text);
          if (!r.success) throw new TandemError('TANDEM_ERR_USAGE', `${what}: expected host:port, found ${JSON.stringify(text)}`);
          return r.data;
        };
        const dnsServers = opts.dns?.map((d) => parseHostPort(d, '--dns')) ?? config.regions.flatMap((r) => (r.dns ? [r.dns.listen[0]!] : []));
        if (dnsServers.length === 0) throw new TandemError('TANDEM_ERR_USAGE', 'no DNS servers: pass --dns or configure regions[].dns.listen');
        const zone = config.dns?.zone.replace(/\.$/, '');
        const service = config.dns?.services[0]?.name;
        const name = opts.name ?? (zone && service ? `${service}.${zone}` : undefined);
        if (!name) throw new TandemError('TANDEM_ERR_USAGE', 'no service name: pass --name or configure dns.zone and dns.services');
        const port = opts.port ?? config.regions.find((r) => r.app)?.app?.listen.port;
        if (!port) throw new TandemError('TANDEM_ERR_USAGE', 'no service port: pass --port or configure regions[].app.listen');
        const geos = (opts.geo ?? ['default']).map((g) => {
          const [geo, ecs] = g.split('=', 2) as [string, string | undefined];
          if (!geo) throw new TandemError('TANDEM_ERR_USAGE', `--geo: expected name=cidr, found ${JSON.stringify(g)}`);
          return ecs ? { geo, ecs } : { geo };
        });
        const out = opts.out ? createWriteStream(opts.out) : undefined;
        const stop = new AbortController();
        const onSignal = () => stop.abort();
        process.once('SIGINT', onSignal);
        process.once('SIGTERM', onSignal);
        try {
          const result = await runLoad({
            serviceName: name,
            dnsServers,
            port,
            geos,
            ratePerSec: opts.rate,
            count: opts.count,
            durationMs: opts.duration === undefined ? undefined : opts.duration * 1000,
            writeRatio: opts.writeRatio,
            seed: opts.seed,
            signal: stop.signal,
            onRecord: out ? (r) => out.write(`${JSON.stringify(r)}\n`) : undefined,
          });
          const summary = { seed: result.seed, name, dnsServers, port, stats: result.stats, byGeo: result.byGeo, dnsQueries: result.dnsQueries };
          output(Boolean(opts.json), summary, () => {
            const s = result.stats;
            return [
              `seed ${result.seed}: ${s.operations} operations (${s.writes} writes, ${s.acknowledged} acknowledged, ${s.writesFailed} failed; ${s.reads} reads, ${s.readsOk} ok)`,
              `attempts ${s.attempts} (${s.retries} retries), DNS queries ${result.dnsQueries}, by region ${JSON.stringify(s.byRegion)}`,
              `latency ms p50 ${s.latencyMs.p50} p95 ${s.latencyMs.p95} p99 ${s.latencyMs.p99} max ${s.latencyMs.max}`,
            ].join('\n');
          });
        } finally {
          process.off('SIGINT', onSignal);
          process.off('SIGTERM', onSignal);
          if (out) await new Promise<void>((r) => out.end(() => r()));
        }
      },
    );

  app
    .command('tables')
    .description('Print the tables to put in replication.tables for the kit and the reference service.')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }) => {
      const { REPLICATED_TABLES } = await import('../service/schema.ts');
      output(Boolean(opts.json), REPLICATED_TABLES, () => REPLICATED_TABLES.join('\n'));
    });
}
