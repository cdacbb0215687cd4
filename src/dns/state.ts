/**
 * Operator state of one DNS server (drains and run-time weights), persisted
 * as JSON so it survives restarts. Writes are atomic: a temporary file in the
 * same directory, fsync, then rename over the old one.
 */
import { mkdirSync, readFileSync, writeFileSync, renameSync, openSync, fsyncSync, closeSync } from 'node:fs';
import path from 'node:path';
import { TandemError } from '../core/errors.ts';

/** One region's operator state. */
export interface DrainState {
  drained: boolean;
  drainedAt?: string;
  drainReason?: string;
  drainedBy?: string;
}

/** What is persisted. `weights["*"]` applies to every service; a service name narrows it. */
export interface OperatorState {
  version: 1;
  regions: Record<string, DrainState>;
  weights: Record<string, Record<string, number>>;
}

/** Load and save `OperatorState` at `file`. */
export class StateStore {
  readonly file: string;
  state: OperatorState;

  constructor(file: string) {
    this.file = file;
    this.state = StateStore.read(file);
  }

  /** Read the file; a missing file is an empty state, a corrupt one is an error naming the file. */
  static read(file: string): OperatorState {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return { version: 1, regions: {}, weights: {} };
      throw new TandemError('TANDEM_ERR_STATE', `cannot read DNS state file ${file}: ${(err as Error).message}`, { cause: err });
    }
    try {
      const doc = JSON.parse(text) as Partial<OperatorState>;
      return { version: 1, regions: doc.regions ?? {}, weights: doc.weights ?? {} };
    } catch (err) {
      throw new TandemError('TANDEM_ERR_STATE', `DNS state file ${file} is not valid JSON (move it aside to start clean): ${(err as Error).message}`, { cause: err });
    }
  }

  /** Persist atomically. */
  save(): void {
    mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    writeFileSync(tmp, `${JSON.stringify(this.state, null, 2)}\n`, { mode: 0o600 });
    const fd = openSync(tmp, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, this.file);
    // The rename itself must reach the disk too, or a power loss can bring the old file back.
    try {
      const dir = openSync(path.dirname(this.file), 'r');
      try {
        fsyncSync(dir);
      } finally {
        closeSync(dir);
      }
    } catch {
      // A filesystem that cannot fsync a directory: the file's own fsync is all there is.
    }
  }
}
