/**
 * A two-region system without the lab, for the observe tests: two real DNS
 * servers (src/dns) probing two stand-in apps, two real controllers
 * (src/control) whose lag reader returns figures the test sets, a real
 * PostgreSQL holding tandem's conflicts table for aws-south (azure-west's
 * database is a port nobody listens on), a webhook receiver, a drill report,
 * and the dashboard (collector + routes on a real HTTP server).
 */
import { mkdtempSync, mkdirSync, rmSync, writeFileSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { parseConfig, type Config, type ConfigInput } from '../../src/core/config/index.ts';
import { ApiServer } from '../../src/core/http.ts';
import { createRegistry } from '../../src/core/metrics.ts';
import { silentLogger } from '../../src/core/log.ts';
import { DnsDaemon } from '../../src/dns/daemon.ts';
import { Controller, type LagReader } from '../../src/control/controller.ts';
import { SCHEMA_DDL } from '../../src/replication/schema.ts';
import { createDashboard } from '../../src/observe/dashboard.ts';
import type { Collector } from '../../src/observe/collector.ts';
import { startCluster, client, TEST_PG_PASSWORD, type TestCluster } from '../helpers/pg.ts';
import { freePort } from '../helpers/ports.ts';
import { startStandInApp, startWebhookReceiver, type StandInApp, type WebhookReceiver } from './helpers.ts';

export const TOKEN = 'observe-test-token';
export const REGIONS = ['aws-south', 'azure-west'] as const;

export interface Fixture {
  dir: string;
  config: Config;
  apps: StandInApp[];
  dns: DnsDaemon[];
  controllers: Controller[];
  hook: WebhookReceiver;
  collector: Collector;
  server: ApiServer;
  /** The dashboard's base URL. */
  base: string;
  /** Lag the controllers read, per target region and source region (seconds); change it freely. */
  lag: Record<string, Record<string, number>>;
  stop(): Promise<void>;
}

export async function startFixture(opts: { pollIntervalMs?: number } = {}): Promise<Fixture> {
  const dir = mkdtempSync(path.join(tmpdir(), 'tandem-observe-'));
  const apps: StandInApp[] = [];
  const dns: DnsDaemon[] = [];
  const controllers: Controller[] = [];
  let cluster: TestCluster | undefined;
  let hook: WebhookReceiver | undefined;
  let collector: Collector | undefined;
  let server: ApiServer | undefined;
  const stop = async () => {
    await collector?.stop();
    await server?.stop();
    await Promise.all(controllers.map((c) => c.stop()));
    await Promise.all(dns.map((d) => d.stop()));
    await Promise.all(apps.map((a) => a.stop()));
    await hook?.close();
    await cluster?.stop();
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    process.env.TANDEM_OBSERVE_TEST_PG = TEST_PG_PASSWORD;
    process.env.TANDEM_OBSERVE_TEST_TOKEN = TOKEN;
    cluster = await startCluster(1);
    const pg = cluster.servers[0]!;
    const c = await client(pg);
    for (const ddl of SCHEMA_DDL) await c.query(ddl);
    await c.query(
      `INSERT INTO tandem.conflicts (peer, relname, pk, kind, local_commit_ts, local_region, remote_commit_ts, remote_region, decision, reason)
       VALUES ('azure-west', 'public.orders', ARRAY['42'], 'update_update', now() - interval '1 second', 'aws-south', now(), 'azure-west', 'apply_remote', 'later commit wins')`,
    );
    await c.end();
    hook = await startWebhookReceiver();
    const ports = await Promise.all(
      REGIONS.map(async (_r, i) => {
        const host = `127.0.${i + 1}.1`;
        return { host, app: await freePort(host), dns: await freePort(host), admin: await freePort(host), control: await freePort(host), deadPg: await freePort(host) };
      }),
    );
    const input: ConfigInput = {
      dataDir: dir,
      adminToken: { env: 'TANDEM_OBSERVE_TEST_TOKEN' },
      regions: REGIONS.map((name, i) => {
        const p = ports[i]!;
        return {
          name,
          cloud: i === 0 ? 'aws' : 'azure',
          location: i === 0 ? 'ap-south-2 (Hyderabad)' : 'westindia (Mumbai)',
          addresses: [p.host],
          healthUrl: `http://${p.host}:${p.app}/healthz`,
          database:
            i === 0
              ? { host: pg.options.host, port: pg.options.port, user: 'postgres', password: { env: 'TANDEM_OBSERVE_TEST_PG' }, connectTimeoutSec: 1 }
              : { host: p.host, port: p.deadPg, connectTimeoutSec: 1 },
          dns: { listen: [`${p.host}:${p.dns}`], admin: `${p.host}:${p.admin}` },
          app: { listen: `${p.host}:${p.app}` },
          control: { listen: `${p.host}:${p.control}` },
        };
      }),
      health: { intervalMs: 150, timeoutMs: 120, failThreshold: 2, recoverThreshold: 2 },
      dns: { zone: 'tandem.test.', services: [{ name: 'app', ttlSec: 5 }] },
      geo: {
        rules: [
          { name: 'south', match: ['IN/Tamil Nadu', 'IN/Karnataka', 'IN/Kerala', 'IN/Telangana', 'IN/Andhra Pradesh', 'IN/Puducherry'], order: ['aws-south', 'azure-west'] },
          { name: 'west', match: ['IN/Maharashtra', 'IN/Gujarat', 'IN-GA', 'IN/Rajasthan'], order: ['azure-west', 'aws-south'] },
        ],
        overrides: [
          { cidr: '127.0.7.0/24', order: ['aws-south', 'azure-west'] },
          { cidr: '127.0.8.0/24', order: ['azure-west', 'aws-south'] },
        ],
      },
      control: { rpoSec: 5, rtoSec: 30, readinessLagSec: 2, waitPeriodSec: 0, autoDrain: true, autoFailback: true },
      alerts: { repeatIntervalSec: 3600, errorRateMinRequests: 20, pollIntervalMs: opts.pollIntervalMs ?? 250, webhooks: [{ url: hook.url }] },
    };
    const config = parseConfig(input);
    writeFileSync(path.join(dir, 'tandem.yaml'), JSON.stringify(input));
    for (const [i, r] of REGIONS.entries()) apps.push(await startStandInApp(ports[i]!.host, ports[i]!.app, r));
    for (const r of REGIONS) {
      const d = new DnsDaemon({ region: r, config, token: TOKEN, logger: silentLogger() });
      await d.start();
      dns.push(d);
    }
    const lag: Record<string, Record<string, number>> = { 'aws-south': { 'azure-west': 0.3 }, 'azure-west': { 'aws-south': 0.4 } };
    const reader: LagReader = async (region) => {
      const l = lag[region.name];
      return l ? Object.fromEntries(Object.entries(l).map(([peer, s]) => [peer, { lagSec: s, sourceCommitAt: Date.now() - s * 1000 }])) : undefined;
    };
    for (const r of REGIONS) {
      const ctl = new Controller({ config, region: r, token: TOKEN, logger: silentLogger(), lag: reader, tickMs: 200 });
      await ctl.start();
      controllers.push(ctl);
    }
    // A drill report, and a symlink that points out of the reports folder (must not be served).
    const reports = path.join(dir, 'reports');
    mkdirSync(path.join(reports, 'drill-1'), { recursive: true });
    writeFileSync(
      path.join(reports, 'drill-1', 'report.json'),
      // The fields of src/drill/report.ts DrillReport that the dashboard lists.
      JSON.stringify({ id: 'drill-1', scenario: 'failover', failedRegion: 'aws-south', startedAt: '2026-01-01T00:00:00.000Z', passed: true, results: { rtoSec: 12.34, rpo: { candidates: 40, missing: [], rpoSec: 0 } } }),
    );
    writeFileSync(path.join(reports, 'drill-1', 'report.html'), '<!doctype html><title>drill</title><h1>drill report</h1>');
    writeFileSync(path.join(dir, 'secret.txt'), 'not for the dashboard');
    symlinkSync(path.join(dir, 'secret.txt'), path.join(reports, 'drill-1', 'leak.txt'));
    const registry = createRegistry('observe', undefined, false);
    const dash = createDashboard({ config, token: TOKEN, logger: silentLogger(), reportsDir: reports, registry });
    collector = dash.collector;
    server = new ApiServer({ name: 'dashboard', listen: { host: '127.0.0.1', port: 0 }, token: TOKEN, routes: dash.routes, registry, logger: silentLogger() });
    await server.start();
    await collector.start();
    return { dir, config, apps, dns, controllers, hook, collector, server, base: server.url, lag, stop };
  } catch (err) {
    await stop().catch(() => {});
    throw err;
  }
}
