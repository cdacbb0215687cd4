/**
 * `tandem verify`: compare the replicated tables of regions by hashed
 * primary-key ranges inside PostgreSQL; exit 0 when identical, 1 with the
 * differing keys listed otherwise. Heavy imports live inside the action.
 */
import type { Command } from 'commander';
import { TandemError } from '../core/errors.ts';
import { commandConfig, intOption, output } from './common.ts';

function list(value: string): string[] {
  return value
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
}

/** Register `tandem verify`. */
export function register(program: Command): void {
  program
    .command('verify')
    .description('Compare the replicated tables of two regions (hashes of key ranges, bisected to the differing rows); exit 1 on any difference')
    .option('--tables <list>', 'comma-separated tables (schema.table) instead of replication.tables', list)
    .option('--regions <a,b>', 'the regions to compare (default: the first region against each other region)', list)
    .option('--local', "connect with each region's localDatabase (from inside the region) instead of database")
    .option('--max-diffs <n>', 'list at most this many differing rows per table', intOption('--max-diffs', 1), 1000)
    .option('--recheck <ms>', 'read differing rows again after this many ms (replication in flight) before reporting them', intOption('--recheck', 0), 0)
    .option('--json', 'print JSON')
    .action(async (opts: { tables?: string[]; regions?: string[]; local?: boolean; maxDiffs: number; recheck: number; json?: boolean }, cmd: Command) => {
      const { verifyTables, formatVerifyReport } = await import('../replication/verify.ts');
      const { createLogger } = await import('../core/log.ts');
      const config = commandConfig(cmd);
      let pairs: Array<[string, string]>;
      if (opts.regions) {
        if (opts.regions.length !== 2) throw new TandemError('TANDEM_ERR_USAGE', `--regions takes exactly two region names, found ${opts.regions.length}`);
        pairs = [[opts.regions[0]!, opts.regions[1]!]];
      } else {
        if (config.regions.length < 2) throw new TandemError('TANDEM_ERR_USAGE', 'verify needs at least two regions in the config');
        pairs = config.regions.slice(1).map((r) => [config.regions[0]!.name, r.name] as [string, string]);
      }
      const tables = opts.tables ?? config.replication.tables;
      if (tables.length === 0) throw new TandemError('TANDEM_ERR_USAGE', 'no tables to verify: set replication.tables or pass --tables');
      const logger = createLogger({ name: 'verify', level: process.env.TANDEM_LOG_LEVEL ?? 'warn', destination: process.stderr });
      const reports: Awaited<ReturnType<typeof verifyTables>>[] = [];
      for (const regions of pairs) {
        reports.push(
          await verifyTables({ config, regions, tables, useLocal: Boolean(opts.local), maxDifferences: opts.maxDiffs, recheckDelayMs: opts.recheck, logger }),
        );
      }
      output(Boolean(opts.json), reports.length === 1 ? reports[0] : reports, () => reports.map(formatVerifyReport).join('\n'));
      const differing = reports.filter((r) => !r.identical);
      if (differing.length) {
        const total = differing.reduce((n, r) => n + r.differences.length, 0);
        throw new TandemError('TANDEM_ERR_VERIFY', `${total} difference(s) between ${differing.map((r) => r.regions.join(' and ')).join(', ')}`);
      }
    });
}
