/**
 * `tandem dns ...`: serve, explain, drain/undrain, weight, status.
 * Heavy imports live inside the actions so `tandem --help` stays fast.
 */
import type { Command } from 'commander';
import { commandConfig, configPath, adminToken, output } from './common.ts';
import { TandemError } from '../core/errors.ts';
import type { Config } from '../core/config/index.ts';

/** Admin API base URLs of every region with a DNS server (or the one given by --server). */
function adminTargets(config: Config, server: string | undefined): { region: string; url: string }[] {
  if (server) return [{ region: server, url: server.replace(/\/$/, '') }];
  const targets = config.regions
    .filter((r) => r.dns?.admin)
    .map((r) => {
      const a = r.dns!.admin;
      const host = a.host.includes(':') ? `[${a.host}]` : a.host === '0.0.0.0' ? '127.0.0.1' : a.host;
      return { region: r.name, url: `http://${host}:${a.port}` };
    });
  if (!targets.length) throw new TandemError('TANDEM_ERR_CONFIG', 'no region has dns.admin configured; pass --server <url>');
  return targets;
}

/** Call every DNS server's admin API; each region's result or error is reported, and any failure fails the command. */
async function callAll<T>(config: Config, server: string | undefined, fn: (url: string, token: string | undefined) => Promise<T>): Promise<{ region: string; ok: boolean; result?: T; error?: string }[]> {
  const token = adminToken(config);
  const { isTandemError } = await import('../core/errors.ts');
  return Promise.all(
    adminTargets(config, server).map(async (t) => {
      try {
        return { region: t.region, ok: true, result: await fn(t.url, token) };
      } catch (err) {
        const code = isTandemError(err) ? ` [${err.code}]` : '';
        return { region: t.region, ok: false, error: `${(err as Error).message}${code}` };
      }
    }),
  );
}

function failIfAny(results: { ok: boolean; region: string; error?: string }[]): void {
  const bad = results.filter((r) => !r.ok);
  if (bad.length === results.length && bad.length) {
    const safety = bad.find((b) => /TANDEM_ERR_SAFETY/.test(b.error ?? ''));
    throw new TandemError(safety ? 'TANDEM_ERR_SAFETY' : 'TANDEM_ERR_HTTP', bad.map((b) => `${b.region}: ${b.error}`).join('; '));
  }
  if (bad.length) process.exitCode = 1;
}

/** Register `tandem dns`. */
export function register(program: Command): void {
  const dns = program.command('dns').description('Authoritative geo-DNS with health-checked failover');

  dns
    .command('serve')
    .description('Run the DNS server of one region (listeners from regions[].dns)')
    .requiredOption('--region <name>', 'the region this server runs in')
    .action(async (opts: { region: string }, cmd: Command) => {
      const { createLogger } = await import('../core/log.ts');
      const { DnsDaemon } = await import('../dns/daemon.ts');
      const file = configPath(cmd);
      const config = commandConfig(cmd);
      const logger = createLogger({ name: 'dns', region: opts.region });
      const daemon = new DnsDaemon({ region: opts.region, configPath: file, config, token: adminToken(config), logger });
      await daemon.start();
      const onHup = () => {
        try {
          daemon.reload();
        } catch {
          // Already logged with its errors; the old config keeps serving.
        }
      };
      const onStop = () => void daemon.stop();
      process.on('SIGHUP', onHup);
      process.once('SIGTERM', onStop);
      process.once('SIGINT', onStop);
      await daemon.closed;
      process.off('SIGHUP', onHup);
    });

  dns
    .command('explain <ip>')
    .description('What the geo database says about an address and which regions it gets (offline, from the config)')
    .option('--ecs <cidr>', 'explain an EDNS Client Subnet instead of a resolver address')
    .option('--json', 'print JSON')
    .action(async (ip: string, opts: { ecs?: string; json?: boolean }, cmd: Command) => {
      const { explainOffline } = await import('../dns/daemon.ts');
      const config = commandConfig(cmd);
      const e = explainOffline(config, ip, opts.ecs);
      output(Boolean(opts.json), e, () => {
        const g = e.geo;
        const place = g ? [g.country, g.subdivisionCode ? `${g.country}-${g.subdivisionCode}` : undefined, g.subdivisionName, g.city].filter(Boolean).join(' / ') : 'not in the database';
        const lines = [
          `address:   ${opts.ecs ?? ip}${opts.ecs ? ' (ECS)' : ''}`,
          `database:  ${e.database}`,
          `network:   ${e.network}`,
          `location:  ${place}`,
          `matched:   ${e.class.label} (${e.class.source})`,
          `order:     ${e.order.join(' > ')}`,
          `ECS scope: /${e.scopePrefix}`,
        ];
        for (const s of e.services) {
          const a = s.A.map((c) => `${c.region} ${c.addresses.join(', ')}${c.weight !== undefined ? ` (weight ${c.weight})` : ''}`).join(' | ');
          lines.push(`${s.name} A -> ${a || 'no A records'}  (ttl ${s.ttlSec}s, all regions assumed healthy)`);
        }
        return lines.join('\n');
      });
    });

  dns
    .command('drain <region>')
    .description('Take a region out of DNS answers on every DNS server')
    .option('--reason <text>', 'why (kept in the state and the log)')
    .option('--force', 'drain even the last serving region')
    .option('--server <url>', 'talk to this admin API only')
    .action(async (region: string, opts: { reason?: string; force?: boolean; server?: string }, cmd: Command) => {
      const { callApi } = await import('../core/http.ts');
      const config = commandConfig(cmd);
      const results = await callAll(config, opts.server, (url, token) =>
        callApi(`${url}/v1/regions/${encodeURIComponent(region)}/drain`, { method: 'POST', token, body: { reason: opts.reason, force: Boolean(opts.force) }, actor: 'cli' }),
      );
      output(false, results, () => results.map((r) => `${r.region}: ${r.ok ? `drained ${region}` : `FAILED ${r.error}`}`).join('\n'));
      failIfAny(results);
    });

  dns
    .command('undrain <region>')
    .description('Return a region to DNS answers on every DNS server')
    .option('--server <url>', 'talk to this admin API only')
    .action(async (region: string, opts: { server?: string }, cmd: Command) => {
      const { callApi } = await import('../core/http.ts');
      const config = commandConfig(cmd);
      const results = await callAll(config, opts.server, (url, token) => callApi(`${url}/v1/regions/${encodeURIComponent(region)}/undrain`, { method: 'POST', token, body: {}, actor: 'cli' }));
      output(false, results, () => results.map((r) => `${r.region}: ${r.ok ? `undrained ${region}` : `FAILED ${r.error}`}`).join('\n'));
      failIfAny(results);
    });

  dns
    .command('weight <region> <weight>')
    .description('Set a run-time weight (0..1000) for a region, or "clear" to remove it')
    .option('--service <name>', 'only for this service (default: all)')
    .option('--server <url>', 'talk to this admin API only')
    .action(async (region: string, weightText: string, opts: { service?: string; server?: string }, cmd: Command) => {
      const { callApi } = await import('../core/http.ts');
      let weight: number | null;
      if (weightText === 'clear') weight = null;
      else {
        weight = Number(weightText);
        if (!Number.isInteger(weight) || weight < 0 || weight > 1000) throw new TandemError('TANDEM_ERR_USAGE', `weight must be an integer 0..1000 or "clear", found ${JSON.stringify(weightText)}`);
      }
      const config = commandConfig(cmd);
      const results = await callAll(config, opts.server, (url, token) =>
        callApi(`${url}/v1/regions/${encodeURIComponent(region)}/weight`, { method: 'PUT', token, body: { weight, ...(opts.service ? { service: opts.service } : {}) }, actor: 'cli' }),
      );
      output(false, results, () => results.map((r) => `${r.region}: ${r.ok ? `weight of ${region} ${weight === null ? 'cleared' : `= ${weight}`}` : `FAILED ${r.error}`}`).join('\n'));
      failIfAny(results);
    });

  dns
    .command('status')
    .description('Health, drain and weights as every DNS server sees them')
    .option('--json', 'print JSON')
    .option('--server <url>', 'talk to this admin API only')
    .action(async (opts: { json?: boolean; server?: string }, cmd: Command) => {
      const { callApi } = await import('../core/http.ts');
      const config = commandConfig(cmd);
      type State = { region: string; zone: string; serial: number; regions: { name: string; health: { state: string; since: string; lastProbe?: { error?: string } }; drained: boolean; drainReason?: string; weight?: number; serving: boolean }[] };
      const results = await callAll(config, opts.server, (url, token) => callApi<State>(`${url}/v1/state`, { token }));
      output(Boolean(opts.json), results, () =>
        results
          .map((r) => {
            if (!r.ok || !r.result) return `${r.region}: UNREACHABLE ${r.error}`;
            const s = r.result;
            const rows = s.regions.map(
              (x) =>
                `  ${x.name.padEnd(16)} ${x.health.state.padEnd(9)} ${x.drained ? `drained${x.drainReason ? ` (${x.drainReason})` : ''}` : x.serving ? 'serving' : 'out'}${x.weight !== undefined ? ` weight ${x.weight}` : ''}${x.health.lastProbe?.error ? `  last error: ${x.health.lastProbe.error}` : ''}`,
            );
            return [`${r.region} (zone ${s.zone} serial ${s.serial}):`, ...rows].join('\n');
          })
          .join('\n'),
      );
      failIfAny(results);
    });
}
