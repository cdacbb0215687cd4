/**
 * The controller's append-only audit log: one JSON line per action, automatic
 * or manual (who, what, why, when). Lines are only ever appended.
 */
import { appendFileSync, existsSync, mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

/** One audited action. */
export interface AuditEntry {
  at: string;
  /** Who: `controller:<region>` for automatic actions, the operator otherwise. */
  actor: string;
  /** What: drained, failed-back, drain-refused, rpo-breach, ... */
  action: string;
  region: string;
  /** Why, in words. */
  reason: string;
  details?: Record<string, unknown>;
}

/** Appends audit entries to a JSON-lines file and reads them back. */
export class AuditLog {
  readonly file: string;

  constructor(file: string) {
    this.file = file;
    mkdirSync(path.dirname(file), { recursive: true });
  }

  append(entry: AuditEntry): void {
    // One write per line with O_APPEND: concurrent writers never interleave within a line.
    appendFileSync(this.file, `${JSON.stringify(entry)}\n`, { flag: 'a' });
  }

  /** The last `limit` entries, oldest first. */
  read(limit = 200): AuditEntry[] {
    if (!existsSync(this.file)) return [];
    const lines = readFileSync(this.file, 'utf8').split('\n').filter(Boolean);
    return lines.slice(-limit).flatMap((l) => {
      try {
        return [JSON.parse(l) as AuditEntry];
      } catch {
        return [];
      }
    });
  }
}
