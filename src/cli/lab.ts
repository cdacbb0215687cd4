/**
 * `tandem lab ...`: bring the whole system up on one machine, break it, and
 * take it down again leaving nothing behind.
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, openSync, closeSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { Option, type Command } from 'commander';
import { TandemError } from '../core/errors.ts';
import { callApi } from '../core/http.ts';
import { sleep } from '../core/lifecycle.ts';
import { intOption, output } from './common.ts';
import type { LabStatus } from '../lab/lab.ts';

const DEFAULT_DIR = () => process.env.TANDEM_LAB_DIR ?? '.lab';

interface LabHandle {
  dir: string;
  status?: LabStatus;
  token: string | undefined;
  api: string;
}

/** Find the lab of a folder: its recorded state and admin token. */
function openLab(dir: string): LabHandle {
  const abs = path.resolve(dir);
  const stateFile = path.join(abs, 'lab.json');
  const tokenFile = path.join(abs, 'secrets', 'admin-token');
  const status = existsSync(stateFile) ? (JSON.parse(readFileSync(stateFile, 'utf8')) as LabStatus) : undefined;
  const token = existsSync(tokenFile) ? readFileSync(tokenFile, 'utf8').trim() : undefined;
  return { dir: abs, status, token, api: status?.api ?? 'http://127.0.0.1:7070' };
}

async function liveStatus(h: LabHandle): Promise<LabStatus | undefined> {
  try {
    return await callApi<LabStatus>(`${h.api}/v1/lab/status`, { timeoutMs: 2_000 });
  } catch {
    return undefined;
  }
}

function requireRunning(h: LabHandle, s: LabStatus | undefined): LabStatus {
  if (!s) throw new TandemError('TANDEM_ERR_LAB', `no lab is running for ${h.dir} (start one with \`tandem lab up\`)`);
  return s;
}

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** True when `pid` is still a process we started (guards against a recycled PID). */
function isOurs(pid: number, marker: RegExp): boolean {
  try {
    return marker.test(readFileSync(`/proc/${pid}/cmdline`, 'utf8').replaceAll('\0', ' '));
  } catch {
    return false;
  }
}

function elapsed(since: number): string {
  return `${((Date.now() - since) / 1000).toFixed(1)} s`;
}

function summary(s: LabStatus, readyIn: string): string {
  const rows = s.regions.map((r) => [r.name, r.address, r.endpoints.app, r.endpoints.dns, `${r.address}:${r.postgres.port}`, r.state]);
  const head = ['region', 'address', 'app', 'dns', 'postgres', 'state'];
  const widths = head.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cols: string[]) => `  ${cols.map((c, i) => c.padEnd(widths[i]!)).join('  ')}`;
  const rel = path.relative(process.cwd(), s.dir) || '.';
  const first = s.regions[0]!;
  return [
    `tandem lab is up: ${s.regions.length} regions, ready in ${readyIn}`,
    '',
    line(head),
    ...rows.map(line),
    '',
    `  dashboard  ${s.api}/   (actions need the admin token in ${rel}/secrets/admin-token)`,
    `  config     ${rel}/tandem.yaml        logs ${rel}/logs/`,
    '',
    'Try:',
    `  dig @${first.address} -p 5300 ${s.service} +subnet=49.204.1.0/24    # a client in Telangana`,
    `  dig @${first.address} -p 5300 ${s.service} +subnet=27.54.160.0/24   # a client in Gujarat`,
    `  curl -s ${first.endpoints.app}/healthz`,
    `  npx tandem lab fail ${first.name}        # SIGKILL a whole region, then watch the dashboard`,
    '  npx tandem drill failback               # measure RTO and RPO',
    '  npx tandem lab down',
  ].join('\n');
}

async function up(opts: { dir: string; regions: number; fresh?: boolean; detach?: boolean; traffic: boolean; json?: boolean; supervised?: boolean }): Promise<void> {
  const h = openLab(opts.dir);
  const running = await liveStatus(h);
  if (running) throw new TandemError('TANDEM_ERR_LAB', `a lab is already running (${running.dir}, API ${running.api}); \`tandem lab down\` first`);
  if (opts.detach) return upDetached(opts);
  const t0 = Date.now();
  const { Lab, labPaths } = await import('../lab/lab.ts');
  const { createLogger } = await import('../core/log.ts');
  const { LAB_REPLICATED_TABLES } = await import('../lab/tables.ts');
  mkdirSync(path.join(h.dir, 'logs'), { recursive: true });
  const quiet = opts.supervised || opts.json;
  const { createWriteStream } = await import('node:fs');
  // Detached, the supervisor's stdout already is the log file; in the foreground the terminal shows progress instead.
  const logger = createLogger({ name: 'lab', destination: opts.supervised ? process.stdout : createWriteStream(labPaths(h.dir).supervisorLog, { flags: 'a' }) });
  const lab = new Lab({
    dir: h.dir,
    regions: opts.regions,
    fresh: opts.fresh,
    parts: { traffic: opts.traffic },
    logger,
    replicatedTables: LAB_REPLICATED_TABLES,
    onProgress: (step) => {
      if (!quiet) process.stderr.write(`  ▸ ${step}  (${elapsed(t0)})\n`);
    },
  });
  const ac = new AbortController();
  let stopping = false;
  const shutdown = async (why: string) => {
    if (stopping) return;
    stopping = true;
    ac.abort(new TandemError('TANDEM_ERR_ABORTED', why));
    if (!quiet) process.stderr.write(`\nstopping the lab (${why})...\n`);
    await lab.stop().catch((err) => logger.error({ err }, 'lab stop failed'));
    if (!quiet) process.stderr.write('lab stopped; nothing left running\n');
  };
  process.once('SIGINT', () => void shutdown('Ctrl-C'));
  process.once('SIGTERM', () => void shutdown('SIGTERM'));
  if (!quiet) process.stderr.write(`starting the tandem lab in ${path.relative(process.cwd(), h.dir) || '.'} ...\n`);
  try {
    await lab.start(ac.signal);
  } catch (err) {
    await shutdown('start-up failed');
    throw err;
  }
  output(Boolean(opts.json), lab.status(), () => summary(lab.status(), elapsed(t0)));
  await Promise.race([lab.downRequested, lab.closed.catch(() => {})]);
  await shutdown('lab down requested');
}

async function upDetached(opts: { dir: string; regions: number; fresh?: boolean; traffic: boolean; json?: boolean }): Promise<void> {
  const t0 = Date.now();
  const dir = path.resolve(opts.dir);
  const { labPaths, wipeLab } = await import('../lab/lab.ts');
  if (opts.fresh) wipeLab(dir);
  mkdirSync(path.join(dir, 'logs'), { recursive: true });
  const logFile = labPaths(dir).supervisorLog;
  const fd = openSync(logFile, 'a');
  const args = [process.argv[1]!, 'lab', 'up', '--dir', dir, '--regions', String(opts.regions), '--supervised', ...(opts.traffic ? [] : ['--no-traffic'])];
  const child = spawn(process.execPath, args, { detached: true, stdio: ['ignore', fd, fd], env: process.env });
  closeSync(fd);
  child.unref();
  let exited: string | undefined;
  child.once('exit', (code, signal) => (exited = `code ${code ?? '-'}, signal ${signal ?? '-'}`));
  const h = openLab(dir);
  let shown = 0;
  const deadline = Date.now() + 180_000;
  for (;;) {
    const s = await liveStatus(h);
    if (s) {
      if (!opts.json) for (; shown < s.progress.length; shown++) process.stderr.write(`  ▸ ${s.progress[shown]!.step}  (${elapsed(t0)})\n`);
      if (s.state === 'running') {
        output(Boolean(opts.json), s, () => summary(s, elapsed(t0)));
        return;
      }
    }
    if (exited) {
      const tail = existsSync(logFile) ? readFileSync(logFile, 'utf8').trim().split('\n').slice(-10).join('\n') : '';
      throw new TandemError('TANDEM_ERR_LAB', `the lab supervisor exited while starting (${exited}); ${logFile}:\n${tail}`);
    }
    if (Date.now() > deadline) throw new TandemError('TANDEM_ERR_LAB', `the lab did not become ready within 180 s; see ${logFile}`);
    await sleep(300);
  }
}

async function down(dir: string): Promise<void> {
  const h = openLab(dir);
  const s = await liveStatus(h);
  const recorded = s ?? h.status;
  if (!recorded) {
    process.stdout.write(`no lab recorded in ${h.dir}; nothing to stop\n`);
    return;
  }
  if (s) {
    await callApi(`${h.api}/v1/lab/down`, { method: 'POST', token: h.token, actor: 'cli' }).catch(() => undefined);
    const deadline = Date.now() + 60_000;
    while (pidAlive(recorded.supervisorPid) && Date.now() < deadline) await sleep(200);
  }
  // Whatever is still alive of what the lab recorded (supervisor killed with -9, say) is ended by PID.
  let ended = 0;
  const kill = (pid: number | undefined, marker: RegExp, group = false) => {
    if (!pid || !pidAlive(pid) || !isOurs(pid, marker)) return;
    try {
      process.kill(group ? -pid : pid, 'SIGKILL');
    } catch {
      process.kill(pid, 'SIGKILL');
    }
    ended++;
  };
  kill(recorded.supervisorPid, /tandem/);
  for (const r of recorded.regions) {
    for (const p of r.processes) kill(p.pid, /tandem/, true);
    if (r.postgres.pid && pidAlive(r.postgres.pid) && isOurs(r.postgres.pid, /postgres/)) {
      const { childPids } = await import('../lab/postgres.ts');
      const children = childPids(r.postgres.pid);
      kill(r.postgres.pid, /postgres/);
      for (const c of children) kill(c, /postgres/);
    }
  }
  process.stdout.write(ended ? `lab stopped (ended ${ended} leftover processes by PID)\n` : 'lab stopped; nothing left running\n');
}

async function act(dir: string, method: string, route: string, body?: unknown): Promise<unknown> {
  const h = openLab(dir);
  requireRunning(h, await liveStatus(h));
  return callApi(`${h.api}${route}`, { method, token: h.token, body, actor: `cli:${process.env.USER ?? 'operator'}`, timeoutMs: 120_000 });
}

/** Parse "25ms", "25", "1s" into milliseconds. */
function parseMs(name: string) {
  return (v: string): number => {
    const m = /^(\d+(?:\.\d+)?)(ms|s)?$/.exec(v.trim());
    if (!m) throw new TandemError('TANDEM_ERR_USAGE', `${name} must be a duration like 15ms or 1s, found ${JSON.stringify(v)}`);
    return Number(m[1]) * (m[2] === 's' ? 1000 : 1);
  };
}

/** Parse "1mbit", "500kbit", "2MB" (bytes/s), "0" (no cap). */
function parseBandwidth(v: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*(kbit|mbit|gbit|kb|mb|gb|b)?(?:\/s|ps)?$/i.exec(v.trim());
  if (!m) throw new TandemError('TANDEM_ERR_USAGE', `--bandwidth must look like 10mbit, 500kbit or 2MB, found ${JSON.stringify(v)}`);
  const n = Number(m[1]);
  const unit = (m[2] ?? 'b').toLowerCase();
  const factor: Record<string, number> = { b: 1, kb: 1e3, mb: 1e6, gb: 1e9, kbit: 125, mbit: 125_000, gbit: 125_000_000 };
  return Math.round(n * factor[unit]!);
}

function parseLoss(v: string): number {
  const m = /^(\d+(?:\.\d+)?)%?$/.exec(v.trim());
  const n = m ? Number(m[1]) : NaN;
  if (!(n >= 0 && n <= 100)) throw new TandemError('TANDEM_ERR_USAGE', `--loss must be a percentage 0..100, found ${JSON.stringify(v)}`);
  return n / 100;
}

export function register(program: Command): void {
  const lab = program.command('lab').description('the whole system on one machine: regions on 127.0.N.1, WAN emulation, faults');
  const dirOption = () => new Option('--dir <dir>', 'lab folder (env TANDEM_LAB_DIR)').default(DEFAULT_DIR(), DEFAULT_DIR());

  lab
    .command('up')
    .description('start the lab (foreground; Ctrl-C stops it) or in the background with --detach')
    .addOption(dirOption())
    .option('--regions <n>', 'number of regions', intOption('--regions', 1), 2)
    .option('--fresh', 'wipe the lab folder first')
    .option('--detach', 'return once ready and leave the lab running')
    .option('--no-traffic', 'no synthetic load')
    .option('--json', 'print the status as JSON when ready')
    .addOption(new Option('--supervised').hideHelp())
    .action(async (o) => up({ dir: o.dir, regions: o.regions, fresh: o.fresh, detach: o.detach, traffic: o.traffic, json: o.json, supervised: o.supervised }));

  lab
    .command('status')
    .description('regions, processes, WAN and partitions of the running lab')
    .addOption(dirOption())
    .option('--json', 'machine-readable')
    .action(async (o) => {
      const h = openLab(o.dir);
      const s = requireRunning(h, await liveStatus(h));
      output(Boolean(o.json), s, () =>
        [
          `lab ${s.state} (${s.dir}), API ${s.api}`,
          ...s.regions.map(
            (r) =>
              `  ${r.name.padEnd(12)} ${r.address.padEnd(10)} ${r.state.padEnd(10)} ${r.processes.map((p) => `${p.kind}:${p.state}${p.restarts ? `(${p.restarts} restarts)` : ''}`).join(' ')}`,
          ),
          `  wan: ${s.wan.shape.latencyMs} ms ± ${s.wan.shape.jitterMs} ms, loss ${(s.wan.shape.loss * 100).toFixed(1)} %, ${s.wan.shape.bandwidthBytesPerSec ? `${s.wan.shape.bandwidthBytesPerSec} B/s` : 'no cap'}; partitions: ${s.wan.partitions.map((p) => p.join('|')).join(', ') || 'none'}`,
        ].join('\n'),
      );
    });

  lab
    .command('down')
    .description('stop everything the lab started')
    .addOption(dirOption())
    .action(async (o) => down(o.dir));

  lab
    .command('fail <region>')
    .description('SIGKILL every process of a region, PostgreSQL included')
    .addOption(dirOption())
    .action(async (region, o) => {
      const r = (await act(o.dir, 'POST', `/v1/lab/regions/${encodeURIComponent(region)}/fail`)) as { killed: number[] };
      process.stdout.write(`failed ${region}: SIGKILLed ${r.killed.length} processes (${r.killed.join(', ')})\n`);
    });

  lab
    .command('recover <region>')
    .description('restart a failed region on the same data')
    .addOption(dirOption())
    .action(async (region, o) => {
      await act(o.dir, 'POST', `/v1/lab/regions/${encodeURIComponent(region)}/recover`);
      process.stdout.write(`recovered ${region}\n`);
    });

  lab
    .command('partition <a> <b>')
    .description('cut the WAN link between two regions')
    .addOption(dirOption())
    .action(async (a, b, o) => {
      await act(o.dir, 'POST', '/v1/lab/partition', { a, b });
      process.stdout.write(`partitioned ${a} | ${b}\n`);
    });

  lab
    .command('heal [a] [b]')
    .description('heal one link, or every partition')
    .addOption(dirOption())
    .action(async (a, b, o) => {
      await act(o.dir, 'POST', '/v1/lab/heal', a && b ? { a, b } : {});
      process.stdout.write(a && b ? `healed ${a} | ${b}\n` : 'healed every partition\n');
    });

  lab
    .command('wan')
    .description('shape the WAN links (all, or one with --link a,b)')
    .addOption(dirOption())
    .option('--latency <ms>', 'one-way delay, e.g. 15ms', parseMs('--latency'))
    .option('--jitter <ms>', 'random extra delay, e.g. 5ms', parseMs('--jitter'))
    .option('--loss <pct>', 'share of chunks that need a retransmission, e.g. 1%', parseLoss)
    .option('--bandwidth <rate>', 'cap per direction, e.g. 10mbit; 0 = none', parseBandwidth)
    .option('--link <a,b>', 'only the link between these two regions')
    .option('--json', 'machine-readable')
    .action(async (o) => {
      const body: Record<string, unknown> = {};
      if (o.latency !== undefined) body.latencyMs = o.latency;
      if (o.jitter !== undefined) body.jitterMs = o.jitter;
      if (o.loss !== undefined) body.loss = o.loss;
      if (o.bandwidth !== undefined) body.bandwidthBytesPerSec = o.bandwidth;
      if (o.link) {
        const [a, b] = String(o.link).split(',');
        if (!a || !b) throw new TandemError('TANDEM_ERR_USAGE', `--link must be two regions like aws-south,azure-west, found ${JSON.stringify(o.link)}`);
        Object.assign(body, { a, b });
      }
      const shape = await act(o.dir, 'PUT', '/v1/lab/wan', body);
      output(Boolean(o.json), shape, () => `wan ${o.link ?? 'all links'}: ${JSON.stringify(shape)}`);
    });
}
