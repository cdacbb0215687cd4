/** Command-line options of a bench: `node:util`'s parseArgs, with a usage error instead of a stack trace. */
import { parseArgs, type ParseArgsConfig } from 'node:util';

export function benchArgs<T extends NonNullable<ParseArgsConfig['options']>>(bench: string, options: T) {
  try {
    return parseArgs({ options, allowPositionals: false, strict: true }).values;
  } catch (err) {
    console.error(`${bench}: ${(err as Error).message}`);
    process.exit(2);
  }
}
