/**
 * `tandem control run` (the failover controller daemon), and the operator's
 * commands `tandem failover`, `tandem failback`, `tandem status`.
 */
import type { Command } from 'commander';
import { TandemError } from '../core/errors.ts';
import { callApi } from '../core/http.ts';
import type { Config } from '../core/config/index.ts';
import { adminToken, commandConfig, output } from './common.ts';
import type { ControllerStatus } from '../control/controller.ts';

/** The status of the first controller that answers, or a clear error. */
async function anyControllerStatus(config: Config): Promise<{ url: string; status: ControllerStatus }> {
  const errors: string[] = [];
  for (const r of config.regions) {
    if (!r.control) continue;
    const url = `http://${r.control.listen.host}:${r.control.listen.port}`;
    try {
      return { url, status: await callApi<ControllerStatus>(`${url}/v1/status`, { timeoutMs: 3_000 }) };
    } catch (err) {
      errors.push(`${r.name}: ${(err as Error).message}`);
    }
  }
  throw new TandemError('TANDEM_ERR_HTTP', `no controller answered (${errors.join('; ') || 'none configured: set regions[].control.listen'})`);
}

function actor(): string {
  return `operator:${process.env.TANDEM_ACTOR ?? process.env.USER ?? 'unknown'}`;
}

async function operatorAction(cmd: Command, what: 'failover' | 'failback', region: string, o: { force?: boolean; reason?: string; json?: boolean }): Promise<void> {
  const config = commandConfig(cmd);
  const { url, status } = await anyControllerStatus(config);
  const leader = config.regions.find((r) => r.name === status.leader)?.control;
  const target = leader ? `http://${leader.listen.host}:${leader.listen.port}` : url;
  const event = await callApi<{ message: string; details?: { dnsErrors?: Record<string, string> } }>(`${target}/v1/${what}`, {
    method: 'POST',
    token: adminToken(config),
    body: { region, force: Boolean(o.force), reason: o.reason },
    actor: actor(),
    timeoutMs: 15_000,
  });
  output(Boolean(o.json), event, () => event.message);
  // Decided, but not (yet) in effect on every DNS server: not a success to script on.
  if (event.details?.dnsErrors && Object.keys(event.details.dnsErrors).length > 0) process.exitCode = 1;
}

export function register(program: Command): void {
  const control = program.command('control').description('the failover controller (the runbook as code)');
  control
    .command('run')
    .description('run the controller of one region')
    .requiredOption('--region <name>', 'the region this controller runs in')
    .action(async (o, cmd: Command) => {
      const config = commandConfig(cmd);
      const { runControllerDaemon } = await import('../control/daemon.ts');
      await runControllerDaemon(config, o.region);
    });

  program
    .command('failover')
    .description('drain a region from DNS (refused for the last serving region, or toward a lagging region without --force)')
    .requiredOption('--drain <region>', 'the region to take out of DNS answers')
    .option('--force', 'override the RPO and last-region safety rules')
    .option('--reason <text>', 'why (goes to the audit log)')
    .option('--json', 'machine-readable')
    .action(async (o, cmd: Command) => operatorAction(cmd, 'failover', o.drain, o));

  program
    .command('failback <region>')
    .description('return a drained region to DNS once its replication has caught up')
    .option('--force', 'return it even if it lags')
    .option('--reason <text>', 'why (goes to the audit log)')
    .option('--json', 'machine-readable')
    .action(async (region, o, cmd: Command) => operatorAction(cmd, 'failback', region, o));

  program
    .command('status')
    .description('regions, health, drain state, replication lag, recent events (controllers) and active alerts (dashboard)')
    .option('--dashboard <url>', 'where `tandem dashboard` (or the lab) serves alerts (env TANDEM_DASHBOARD_URL)', process.env.TANDEM_DASHBOARD_URL ?? 'http://127.0.0.1:7070')
    .option('--json', 'machine-readable')
    .action(async (o, cmd: Command) => {
      const config = commandConfig(cmd);
      const { status } = await anyControllerStatus(config);
      const { fetchAlerts } = await import('../observe/collector.ts');
      const alerts = await fetchAlerts(String(o.dashboard), { token: adminToken(config), timeoutMs: 2_000 }).catch(() => undefined);
      output(Boolean(o.json), { ...status, alerts: alerts ?? null }, () =>
        [
          `leader ${status.leader ?? 'none'} (asked ${status.region}); RPO ${status.rpoSec} s, RTO ${status.rtoSec} s`,
          ...status.regions.map(
            (r) =>
              `  ${r.name.padEnd(12)} ${`${r.phase}${r.drainedBy ? `(${r.drainedBy})` : ''}`.padEnd(18)} unhealthy votes ${r.votesUnhealthy}/${r.votesUnhealthy + r.votesHealthy}  lag ${
                r.lagFrom ? Object.entries(r.lagFrom).map(([p, l]) => `${p} ${l.toFixed(1)} s`).join(', ') : 'unknown'
              }`,
          ),
          'recent events:',
          ...status.events.slice(-10).map((e) => `  ${e.iso}  ${e.region}  ${e.kind}: ${e.message}`),
          alerts === undefined
            ? `alerts: no dashboard answered at ${o.dashboard} (run \`tandem dashboard\` or pass --dashboard)`
            : alerts.length === 0
              ? 'alerts: none firing'
              : ['alerts:', ...alerts.map((a) => `  ${a.severity.toUpperCase().padEnd(8)} ${a.title} (since ${a.since})`)].join('\n'),
        ].join('\n'),
      );
    });
}
