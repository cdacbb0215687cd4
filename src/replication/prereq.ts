/**
 * Prerequisite checks for a region's PostgreSQL, each with the exact fix for
 * self-managed PostgreSQL, Amazon RDS / Aurora (parameter groups) and Azure
 * Database for PostgreSQL Flexible Server (server parameters).
 */
import type { Queryable } from './slot.ts';

/** Where a database runs; the fixes differ. */
export type Platform = 'postgres' | 'rds' | 'azure';

/** One unmet prerequisite. */
export interface PrereqProblem {
  what: string;
  found: string;
  want: string;
  fix: string;
}

/** The result of checking one database. */
export interface PrereqReport {
  platform: Platform;
  serverVersion: number;
  user: string;
  problems: PrereqProblem[];
  /** Optional improvements: replication works without them (setup reports them and goes on). */
  advice: PrereqProblem[];
}

/** What the checks need to know. */
export interface PrereqNeeds {
  /** Slots this region serves (one per peer). */
  slots: number;
  /** Walsenders this region serves (one per peer). */
  senders: number;
  /** Run as setup (needs to create schema, publication, triggers) or as the agent. */
  role: 'setup' | 'agent';
}

/** The exact fix for a setting or privilege on each platform (exported for tests and docs). */
export const fixFor = {
  setting(platform: Platform, name: string, value: string, restart: boolean): string {
    switch (platform) {
      case 'rds':
        if (name === 'wal_level') return 'in the DB parameter group set rds.logical_replication = 1 (this sets wal_level = logical), then reboot the instance';
        return `in the DB parameter group set ${name} = ${value === 'on' ? '1' : value}${restart ? ', then reboot the instance' : ''}`;
      case 'azure':
        return `set the server parameter ${name} = ${value} (portal "Server parameters", or az postgres flexible-server parameter set --name ${name} --value ${value})${restart ? ', then restart the server' : ''}`;
      default:
        return `ALTER SYSTEM SET ${name} = '${value}';${restart ? ' then restart PostgreSQL' : ' then SELECT pg_reload_conf()'}`;
    }
  },
  replication(platform: Platform, user: string): string {
    switch (platform) {
      case 'rds':
        return `GRANT rds_replication TO "${user}" (as the master user)`;
      case 'azure':
        return `ALTER ROLE "${user}" WITH REPLICATION (as a member of azure_pg_admin)`;
      default:
        return `ALTER ROLE "${user}" WITH REPLICATION`;
    }
  },
};

/** Check one database against what tandem needs. */
export async function checkPrerequisites(db: Queryable, needs: PrereqNeeds): Promise<PrereqReport> {
  const { rows: settings } = await db.query<{ name: string; setting: string }>(
    `SELECT name, setting FROM pg_settings
      WHERE name IN ('server_version_num', 'wal_level', 'track_commit_timestamp', 'max_replication_slots', 'max_wal_senders', 'rds.logical_replication')
         OR name LIKE 'azure.%'`,
  );
  const s = new Map(settings.map((r) => [r.name, r.setting]));
  const platform: Platform = s.has('rds.logical_replication') ? 'rds' : [...s.keys()].some((k) => k.startsWith('azure.')) ? 'azure' : 'postgres';
  const serverVersion = Number(s.get('server_version_num') ?? 0);
  const { rows: me } = await db.query<{ user: string; rolsuper: boolean; rolreplication: boolean; rds_replication: boolean | null; can_create: boolean }>(
    `SELECT current_user AS user, r.rolsuper, r.rolreplication,
            CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'rds_replication') THEN pg_has_role('rds_replication', 'member') END AS rds_replication,
            has_database_privilege(current_database(), 'CREATE') AS can_create
       FROM pg_roles r WHERE r.rolname = current_user`,
  );
  const role = me[0]!;
  const problems: PrereqProblem[] = [];
  const advice: PrereqProblem[] = [];
  if (serverVersion < 160000) {
    problems.push({
      what: 'server version',
      found: String(serverVersion),
      want: '160000 or later',
      fix: 'upgrade to PostgreSQL 16 or later (pgoutput `origin none`, which keeps applied changes from looping back, arrived in 16)',
    });
  }
  if (s.get('wal_level') !== 'logical') {
    problems.push({ what: 'wal_level', found: s.get('wal_level') ?? '?', want: 'logical', fix: fixFor.setting(platform, 'wal_level', 'logical', true) });
  }
  if (s.get('track_commit_timestamp') !== 'on') {
    problems.push({
      what: 'track_commit_timestamp',
      found: s.get('track_commit_timestamp') ?? '?',
      want: 'on',
      fix: fixFor.setting(platform, 'track_commit_timestamp', 'on', true),
    });
  }
  const { rows: used } = await db.query<{ slots: number; senders: number }>(
    `SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name NOT LIKE 'tandem\\_%')::int AS slots,
            (SELECT count(*) FROM pg_stat_replication WHERE application_name NOT LIKE 'tandem%')::int AS senders`,
  );
  const maxSlots = Number(s.get('max_replication_slots') ?? 0);
  const maxSenders = Number(s.get('max_wal_senders') ?? 0);
  const wantSlots = used[0]!.slots + needs.slots;
  // Walsenders: one per peer, plus one spare for a reconnect that overlaps the old connection's exit.
  const wantSenders = used[0]!.senders + needs.senders + 1;
  if (maxSlots < wantSlots) {
    problems.push({ what: 'max_replication_slots', found: String(maxSlots), want: `${wantSlots} or more`, fix: fixFor.setting(platform, 'max_replication_slots', String(wantSlots + 2), true) });
  }
  if (maxSenders < wantSenders) {
    problems.push({ what: 'max_wal_senders', found: String(maxSenders), want: `${wantSenders} or more`, fix: fixFor.setting(platform, 'max_wal_senders', String(wantSenders + 2), true) });
  }
  if (!role.rolsuper && !role.rolreplication && !role.rds_replication) {
    problems.push({ what: `role "${role.user}" replication privilege`, found: 'none', want: 'REPLICATION', fix: fixFor.replication(platform, role.user) });
  }
  if (!role.rolsuper) {
    const fns = [
      'pg_replication_origin_create(text)',
      'pg_replication_origin_drop(text)',
      'pg_replication_origin_session_setup(text)',
      'pg_replication_origin_xact_setup(pg_lsn, timestamp with time zone)',
      'pg_replication_origin_progress(text, boolean)',
    ];
    const { rows: fx } = await db.query<{ fn: string; ok: boolean }>(
      `SELECT fn, has_function_privilege(fn, 'EXECUTE') AS ok FROM unnest($1::text[]) AS fn`,
      [fns],
    );
    const missing = fx.filter((r) => !r.ok).map((r) => r.fn);
    if (missing.length > 0) {
      problems.push({
        what: `role "${role.user}" replication origin functions`,
        found: `no EXECUTE on ${missing.join(', ')}`,
        want: 'EXECUTE',
        fix: missing.map((f) => `GRANT EXECUTE ON FUNCTION ${f} TO "${role.user}";`).join(' ') + (platform === 'rds' ? ' (as the master user)' : ''),
      });
    }
    if (serverVersion >= 150000) {
      const { rows: sp } = await db.query<{ ok: boolean }>(`SELECT has_parameter_privilege('session_replication_role', 'SET') AS ok`);
      if (!sp[0]?.ok) {
        problems.push({
          what: `role "${role.user}" may SET session_replication_role`,
          found: 'no',
          want: 'yes (apply must not fire user triggers or FK checks for replicated rows)',
          fix: `GRANT SET ON PARAMETER session_replication_role TO "${role.user}";`,
        });
      }
    }
    if (serverVersion >= 160000) {
      const { rows: snap } = await db.query<{ ok: boolean }>(`SELECT has_function_privilege('pg_catalog.pg_log_standby_snapshot()', 'EXECUTE') AS ok`);
      if (!snap[0]?.ok) {
        advice.push({
          what: `role "${role.user}" has no EXECUTE on pg_log_standby_snapshot()`,
          found: 'no EXECUTE',
          want: 'optional: with it the agent logs a running-transactions snapshot every second, so a peer that reconnects does not first re-decode up to 15 s of WAL',
          fix: `GRANT EXECUTE ON FUNCTION pg_log_standby_snapshot() TO "${role.user}";`,
        });
      }
    }
    if (needs.role === 'setup' && !role.can_create) {
      problems.push({
        what: `role "${role.user}" may create schema "tandem"`,
        found: 'no CREATE on the database',
        want: 'CREATE',
        fix: `GRANT CREATE ON DATABASE <db> TO "${role.user}";`,
      });
    }
  }
  return { platform, serverVersion, user: role.user, problems, advice };
}

/** The problems of one region as lines for an error message. */
export function formatProblems(region: string, report: PrereqReport, list: 'problems' | 'advice' = 'problems'): string[] {
  if (list === 'advice') return report.advice.map((p) => `${region}: ${p.what} (${p.want}) — fix: ${p.fix}`);
  return report.problems.map((p) => `${region}: ${p.what} is ${p.found}, needs ${p.want} — fix: ${p.fix}`);
}
