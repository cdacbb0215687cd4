/**
 * `tandem dashboard`: the live dashboard and tandem's own alert evaluation,
 * standalone (the lab serves the same page on its API port).
 * Heavy imports live inside the action so `tandem --help` stays fast.
 */
import path from 'node:path';
import type { Command } from 'commander';
import { TandemError } from '../core/errors.ts';
import { adminToken, commandConfig, configPath, intOption } from './common.ts';

const LOOPBACK = /^(127\.\d+\.\d+\.\d+|::1|localhost)$/;

/** Parse `host:port` for --listen. */
function parseListen(v: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\]:(\d+)$/.exec(v) ?? /^([^:]+):(\d+)$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || !(port >= 0 && port <= 65535)) throw new TandemError('TANDEM_ERR_USAGE', `--listen must be host:port (e.g. 127.0.0.1:7070), found ${JSON.stringify(v)}`);
  return { host: m[1]!, port };
}

export function register(program: Command): void {
  program
    .command('dashboard')
    .description('serve the live dashboard and evaluate alerts (lag, error rate, probes, drains) from tandem.yaml')
    .option('--listen <host:port>', 'where to serve the page', '127.0.0.1:7070')
    .option('--reports <dir>', 'drill reports folder (default: reports/ beside tandem.yaml)')
    .option('--lab-api <url>', "a lab's API URL, for its status and the fault buttons")
    .option('--interval <ms>', 'poll every daemon this often (default alerts.pollIntervalMs)', intOption('--interval', 200))
    .option('--public', 'let anyone who reaches --listen view without the token (the default on loopback)')
    .option('--require-token', 'views need the admin token too (the default off loopback)')
    .option('--no-conflicts', "do not read recent conflicts from the regions' databases")
    .action(async (o: { listen: string; reports?: string; labApi?: string; interval?: number; public?: boolean; requireToken?: boolean; conflicts: boolean }, cmd: Command) => {
      const listen = parseListen(o.listen);
      const config = commandConfig(cmd);
      const token = adminToken(config);
      const { createLogger } = await import('../core/log.ts');
      const { createRegistry } = await import('../core/metrics.ts');
      const { ApiServer } = await import('../core/http.ts');
      const { createDashboard } = await import('../observe/dashboard.ts');
      const logger = createLogger({ name: 'dashboard' });
      const registry = createRegistry('observe');
      const viewerAuth = o.requireToken ? 'token' : o.public || LOOPBACK.test(listen.host) ? 'public' : 'token';
      const reportsDir = path.resolve(o.reports ?? path.join(path.dirname(path.resolve(configPath(cmd))), 'reports'));
      const { collector, routes } = createDashboard({
        config,
        token,
        logger,
        registry,
        viewerAuth,
        reportsDir,
        readConflicts: o.conflicts,
        ...(o.interval ? { intervalMs: o.interval } : {}),
        ...(o.labApi ? { lab: { api: o.labApi.replace(/\/+$/, '') } } : {}),
      });
      const api = new ApiServer({ name: 'dashboard', listen, token, routes, registry, logger });
      try {
        await api.start();
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        throw new TandemError('TANDEM_ERR_USAGE', `cannot listen on ${o.listen}: ${code ?? (err as Error).message}${code === 'EADDRINUSE' ? ' (a running lab serves its dashboard on 127.0.0.1:7070; pick another --listen)' : ''}`, { cause: err });
      }
      await collector.start();
      process.stderr.write(`tandem dashboard on ${api.url}/ (${viewerAuth === 'public' ? 'views are public' : 'views need the admin token'}; actions need the admin token)\n`);
      await new Promise<void>((resolve) => {
        process.once('SIGINT', () => resolve());
        process.once('SIGTERM', () => resolve());
      });
      await collector.stop();
      await api.stop();
    });
}
