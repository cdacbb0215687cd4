/**
 * `tandem drill <scenario>`: run a DR drill against the lab (default) or a
 * real deployment (`-c tandem.yaml --inject CMD --restore CMD`), write the
 * report (JSON, Markdown, HTML) and exit non-zero when a bound is missed.
 */
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { TandemError } from '../core/errors.ts';
import { loadConfig } from '../core/config/index.ts';
import { adminToken, configPath, intOption, output } from './common.ts';
import type { LabStatus } from '../lab/lab.ts';

function collect(value: string, previous: string[] = []): string[] {
  return [...previous, ...value.split(',').filter(Boolean)];
}

/** `south=49.204.1.0/24@aws-south` → a client geography. */
function parseClient(text: string): { geo: string; ecs: string; homeRegion?: string } {
  const m = /^([a-z0-9-]+)=([0-9a-f.:]+\/\d+)(?:@([a-z0-9-]+))?$/i.exec(text);
  if (!m) throw new TandemError('TANDEM_ERR_USAGE', `--client must look like south=49.204.1.0/24@aws-south, found ${JSON.stringify(text)}`);
  return { geo: m[1]!, ecs: m[2]!, ...(m[3] ? { homeRegion: m[3] } : {}) };
}

export function register(program: Command): void {
  program
    .command('drill')
    .description('measure RTO and RPO: inject a fault while synthetic clients write and read, then prove convergence')
    .argument('<scenario>', 'region-outage | partition | wan-degradation | failback')
    .option('--region <name>', 'region to fail (twice, or a,b, for partition)', collect)
    .option('--lab-dir <dir>', 'the lab to drill (env TANDEM_LAB_DIR; default .lab) unless --inject is given')
    .option('--inject <cmd>', 'shell command that injects the fault in a real deployment (with -c)')
    .option('--restore <cmd>', 'shell command that restores it')
    .option('--client <geo=cidr@region>', 'a client geography (repeatable); default: the lab geographies', (v: string, prev: string[] = []) => [...prev, v])
    .option('--rate <n>', 'operations per second per geography', intOption('--rate', 1), 5)
    .option('--warmup <sec>', 'traffic before the fault', intOption('--warmup', 0), 5)
    .option('--hold <sec>', 'how long the fault lasts after clients moved (outage) or in all (partition, WAN)', intOption('--hold', 0))
    .option('--settle <sec>', 'traffic after recovery', intOption('--settle', 0), 5)
    .option('--json <file>', 'write the JSON report to this file')
    .option('--report-dir <dir>', 'where report.json, report.md and report.html go (default <lab>/reports/<id>)')
    .option('--allow-remote', 'let the synthetic clients reach addresses outside loopback (drills against a real deployment)')
    .addOption(new Option('--quiet', 'no progress lines').default(false))
    .action(async (scenario: string, o, cmd: Command) => {
      const { Drill, SCENARIOS, labGeos } = await import('../drill/drill.ts');
      const { toHtml, toMarkdown } = await import('../drill/report.ts');
      const { createLogger } = await import('../core/log.ts');
      if (!(SCENARIOS as readonly string[]).includes(scenario)) {
        throw new TandemError('TANDEM_ERR_USAGE', `unknown scenario "${scenario}" (one of: ${SCENARIOS.join(', ')})`);
      }
      if (Boolean(o.inject) !== Boolean(o.restore)) throw new TandemError('TANDEM_ERR_USAGE', '--inject and --restore go together');
      const external = Boolean(o.inject);
      let config;
      let target;
      let reportRoot: string;
      let geos;
      if (external) {
        config = loadConfig(configPath(cmd));
        target = { kind: 'external' as const, inject: o.inject as string, restore: o.restore as string };
        reportRoot = path.resolve('reports');
        if (!o.client?.length) throw new TandemError('TANDEM_ERR_USAGE', 'against a real deployment, name the client geographies with --client geo=cidr@region');
      } else {
        const dir = path.resolve(o.labDir ?? process.env.TANDEM_LAB_DIR ?? '.lab');
        const stateFile = path.join(dir, 'lab.json');
        if (!existsSync(stateFile)) throw new TandemError('TANDEM_ERR_LAB', `no lab in ${dir}; start one with \`tandem lab up\` or pass --inject/--restore with -c`);
        const lab = JSON.parse(readFileSync(stateFile, 'utf8')) as LabStatus;
        config = loadConfig(lab.config);
        const token = readFileSync(path.join(dir, 'secrets', 'admin-token'), 'utf8').trim();
        target = { kind: 'lab' as const, api: lab.api, token };
        reportRoot = path.join(dir, 'reports');
        const { labRegions } = await import('../lab/topology.ts');
        geos = labGeos(config, labRegions(config.regions.length));
      }
      if (o.client?.length) geos = (o.client as string[]).map(parseClient).map((g) => ({ ...g, clientId: `drill-${g.geo}` }));
      const regions: string[] = o.region ?? (scenario === 'partition' ? config.regions.slice(0, 2).map((r) => r.name) : [config.regions[0]!.name]);
      const progress = (line: string) => {
        if (!o.quiet) process.stderr.write(`${line}\n`);
      };
      const ac = new AbortController();
      process.once('SIGINT', () => ac.abort(new TandemError('TANDEM_ERR_ABORTED', 'drill interrupted (Ctrl-C)')));
      const drill = new Drill({
        scenario: scenario as (typeof SCENARIOS)[number],
        config,
        target,
        regions,
        geos: geos!,
        ratePerSec: o.rate,
        warmupSec: o.warmup,
        holdSec: o.hold ?? (scenario === 'partition' || scenario === 'wan-degradation' ? 20 : 5),
        settleSec: o.settle,
        allowRemote: Boolean(o.allowRemote),
        token: adminToken(config),
        logger: createLogger({ name: 'drill', level: 'warn', destination: process.stderr }),
        onProgress: progress,
        signal: ac.signal,
      });
      progress(`drill ${scenario} ${regions.join(' | ')} (${drill.id})`);
      const report = await drill.run();
      const dir = path.resolve(o.reportDir ?? path.join(reportRoot, drill.id));
      mkdirSync(dir, { recursive: true });
      const json = JSON.stringify(report, null, 2);
      writeFileSync(path.join(dir, 'report.json'), json);
      writeFileSync(path.join(dir, 'report.md'), toMarkdown(report));
      writeFileSync(path.join(dir, 'report.html'), toHtml(report));
      if (o.json) writeFileSync(o.json, json);
      output(false, report, () => `${toMarkdown(report)}\nreport: ${path.join(dir, 'report.html')}`);
      if (!report.passed) {
        throw new TandemError('TANDEM_ERR_DRILL', `the drill missed ${report.bounds.filter((b) => !b.ok).map((b) => b.name).join('; ')}`);
      }
    });
}
