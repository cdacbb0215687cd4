/**
 * `tandem replicate ...`: setup, teardown, status, run (the agent daemon),
 * bootstrap (add a region to the live mesh).
 * Heavy imports live inside the actions so `tandem --help` stays fast.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { adminToken, commandConfig, configPath, intOption, output } from './common.ts';

/** Register `tandem replicate`. */
export function register(program: Command): void {
  const rep = program.command('replicate').description('Multi-master PostgreSQL replication between the regions');

  rep
    .command('setup')
    .description('Create publication, slots, origins, the tandem schema and capture triggers in every region (idempotent)')
    .option('--check', 'only check prerequisites and tables; change nothing')
    .option('--json', 'print JSON')
    .action(async (opts: { check?: boolean; json?: boolean }, cmd: Command) => {
      const { setupReplication } = await import('../replication/setup.ts');
      const { createLogger } = await import('../core/log.ts');
      const config = commandConfig(cmd);
      const report = await setupReplication(config, { checkOnly: Boolean(opts.check), logger: createLogger({ name: 'replication-setup', level: process.env.TANDEM_LOG_LEVEL ?? 'warn' }) });
      output(Boolean(opts.json), report, () =>
        report.regions
          .map((r) => `${r.region} (${r.platform}, PostgreSQL ${r.serverVersion}):\n${r.actions.map((a) => `  - ${a}`).join('\n') || '  - nothing to do'}${r.advice.map((a) => `\n  advice: ${a}`).join('')}`)
          .join('\n'),
      );
    });

  rep
    .command('teardown')
    .description('Remove slots, publication, origins, the tandem schema and triggers from every region (idempotent)')
    .option('--force', 'terminate agents still streaming from the slots')
    .option('--json', 'print JSON')
    .action(async (opts: { force?: boolean; json?: boolean }, cmd: Command) => {
      const { teardownReplication } = await import('../replication/setup.ts');
      const config = commandConfig(cmd);
      const report = await teardownReplication(config, { force: Boolean(opts.force) });
      output(Boolean(opts.json), report, () => report.regions.map((r) => `${r.region}:\n${r.actions.map((a) => `  - ${a}`).join('\n') || '  - nothing to remove'}`).join('\n'));
    });

  rep
    .command('status')
    .description('Lag, slots, conflicts and paused tables of every region, read from the databases')
    .option('--json', 'print JSON')
    .action(async (opts: { json?: boolean }, cmd: Command) => {
      const { replicationStatus, formatStatus } = await import('../replication/report.ts');
      const config = commandConfig(cmd);
      const st = await replicationStatus(config);
      output(Boolean(opts.json), st, () => formatStatus(st));
      if (st.regions.some((r) => r.error)) process.exitCode = 1;
    });

  rep
    .command('bootstrap')
    .description('Add a region to the live mesh: copy a consistent snapshot of another region into it, then every peer streams from exactly that point')
    .requiredOption('--region <name>', 'the new region (listed in tandem.yaml; its tables exist and are empty)')
    .option('--from <name>', 'the region to copy from (default: the first other region of the config)')
    .option('--batch-rows <n>', 'rows per fetch from the source and per insert', intOption('--batch-rows', 1), 5000)
    .option('--wait-timeout <sec>', 'how long to wait for the source to apply the other regions up to their new slots', intOption('--wait-timeout', 1), 300)
    .option('--reset', "bootstrap again although the region has rows or was bootstrapped (its content is replaced in one transaction; its writes not yet replicated are lost)")
    .option('--json', 'print JSON')
    .action(async (opts: { region: string; from?: string; batchRows: number; waitTimeout: number; reset?: boolean; json?: boolean }, cmd: Command) => {
      const { bootstrapRegion, formatBootstrapProgress, formatBootstrapReport } = await import('../replication/bootstrap.ts');
      const { TandemError } = await import('../core/errors.ts');
      const { createLogger } = await import('../core/log.ts');
      const config = commandConfig(cmd);
      const abort = new AbortController();
      const onSignal = () => abort.abort(new TandemError('TANDEM_ERR_ABORTED', 'bootstrap interrupted; nothing was committed in the new region, run it again to start over'));
      process.once('SIGINT', onSignal);
      process.once('SIGTERM', onSignal);
      try {
        const report = await bootstrapRegion({
          config,
          region: opts.region,
          ...(opts.from ? { from: opts.from } : {}),
          batchRows: opts.batchRows,
          reset: Boolean(opts.reset),
          catchUpTimeoutMs: opts.waitTimeout * 1000,
          signal: abort.signal,
          logger: createLogger({ name: 'replication-bootstrap', level: process.env.TANDEM_LOG_LEVEL ?? 'warn' }),
          // Progress goes to stderr so stdout stays the result (and valid JSON with --json).
          onProgress: (p) => process.stderr.write(`${formatBootstrapProgress(p)}\n`),
        });
        output(Boolean(opts.json), report, () => formatBootstrapReport(report));
      } finally {
        process.off('SIGINT', onSignal);
        process.off('SIGTERM', onSignal);
      }
    });

  rep
    .command('run')
    .description('Run the replication agent of one region (streams every peer into this region)')
    .requiredOption('--region <name>', 'the region this agent applies into')
    .action(async (opts: { region: string }, cmd: Command) => {
      const { createLogger } = await import('../core/log.ts');
      const { ReplicationAgent } = await import('../replication/agent.ts');
      const file = configPath(cmd);
      const config = commandConfig(cmd);
      const logger = createLogger({ name: 'replication', region: opts.region });
      const agent = new ReplicationAgent({ config, region: opts.region, logger, adminToken: adminToken(config), baseDir: path.dirname(path.resolve(file)) });
      const onStop = () => void agent.stop();
      process.once('SIGTERM', onStop);
      process.once('SIGINT', onStop);
      try {
        await agent.start();
        await agent.closed;
      } finally {
        process.off('SIGTERM', onStop);
        process.off('SIGINT', onStop);
      }
    });
}
