/**
 * The `tandem` command line. Each part registers its commands from its own
 * file; this file only composes them and turns errors into one clear line and
 * an exit code (0 ok, 1 runtime, 2 usage, 78 config).
 */
import { Command, CommanderError } from 'commander';
import { exitCodeFor, formatError, EXIT } from '../core/errors.ts';
import { readFileSync } from 'node:fs';

const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string };

const program = new Command('tandem')
  .description('Run one application active-active across regions, and prove it.')
  .version(pkg.version)
  .option('-c, --config <file>', 'tandem.yaml to use (env TANDEM_CONFIG)')
  .showHelpAfterError()
  .exitOverride();

const registrations: Array<() => Promise<{ register(program: Command): void }>> = [
  // One line per part; keep in DESIGN.md order.
  () => import('./dns.ts'),
  () => import('./replicate.ts'),
  () => import('./verify.ts'),
  () => import('./app.ts'),
  () => import('./control.ts'),
  () => import('./lab.ts'),
  () => import('./drill.ts'),
  () => import('./dashboard.ts'),
];

for (const load of registrations) (await load()).register(program);

try {
  await program.parseAsync(process.argv);
} catch (err) {
  if (err instanceof CommanderError) {
    // Commander already printed help or the usage error.
    process.exitCode = err.exitCode === 0 ? EXIT.OK : EXIT.USAGE;
  } else {
    process.stderr.write(`${formatError(err)}\n`);
    process.exitCode = exitCodeFor(err);
  }
}
