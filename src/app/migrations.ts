/**
 * Schema migrations: numbered SQL steps per component, applied once each, in
 * order, under an advisory lock so that several workers (or `tandem app
 * migrate` run twice) never apply one twice. DDL is not replicated: every
 * region runs the same migrations against its own database.
 */
import type pg from 'pg';
import { TandemError } from '../core/errors.ts';

/** One migration step. `version`s of a component start at 1 and never change once released. */
export interface Migration {
  version: number;
  name: string;
  sql: string;
}

/** The result of `migrate`: what was applied now and what was already there. */
export interface MigrationResult {
  component: string;
  applied: number[];
  current: number;
}

/** Arbitrary but fixed: the advisory lock key that serialises migrations of all tandem components. */
const MIGRATION_LOCK_KEY = 7_346_224_501;

/**
 * The kit's own tables, in schema `tandem_app`:
 * - `idempotency_keys` and `sessions` are replicated across regions (primary
 *   keys, no sequences, ids derived deterministically or random uuids);
 * - `region_state` (the write fence) and `health_probe` are region-local.
 */
export const KIT_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'kit tables',
    sql: `
CREATE TABLE tandem_app.idempotency_keys (
  scope           text        NOT NULL,
  key             text        NOT NULL,
  fingerprint     text        NOT NULL,
  state           text        NOT NULL CHECK (state IN ('processing', 'completed')),
  claim_id        uuid        NOT NULL,
  method          text        NOT NULL,
  path            text        NOT NULL,
  response_status integer,
  response_headers jsonb,
  response_body   text,
  region          text        NOT NULL,
  correlation_id  text        NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  locked_until    timestamptz NOT NULL,
  expires_at      timestamptz NOT NULL,
  PRIMARY KEY (scope, key)
);
CREATE INDEX idempotency_keys_expires_at ON tandem_app.idempotency_keys (expires_at);

CREATE TABLE tandem_app.sessions (
  id             uuid        PRIMARY KEY,
  user_id        text        NOT NULL,
  data           jsonb       NOT NULL DEFAULT '{}'::jsonb,
  region         text        NOT NULL,
  correlation_id text        NOT NULL,
  created_at     timestamptz NOT NULL DEFAULT now(),
  expires_at     timestamptz NOT NULL,
  revoked_at     timestamptz
);
CREATE INDEX sessions_expires_at ON tandem_app.sessions (expires_at);

CREATE TABLE tandem_app.region_state (
  region     text        PRIMARY KEY,
  read_only  boolean     NOT NULL DEFAULT false,
  reason     text,
  updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tandem_app.health_probe (
  region     text        PRIMARY KEY,
  checked_at timestamptz NOT NULL
);
`,
  },
];

/** Apply the pending migrations of `component` in one transaction; idempotent. */
export async function migrate(client: pg.Client | pg.PoolClient, component: string, migrations: readonly Migration[]): Promise<MigrationResult> {
  const versions = migrations.map((m) => m.version);
  versions.forEach((v, i) => {
    if (v !== i + 1) throw new TandemError('TANDEM_ERR_INTERNAL', `migrations of ${component} must be numbered 1, 2, 3 ... (found ${versions.join(', ')})`);
  });
  await client.query('BEGIN');
  try {
    await client.query('SELECT pg_advisory_xact_lock($1)', [MIGRATION_LOCK_KEY]);
    await client.query('CREATE SCHEMA IF NOT EXISTS tandem_app');
    await client.query(`CREATE TABLE IF NOT EXISTS tandem_app.schema_migrations (
      component  text        NOT NULL,
      version    integer     NOT NULL,
      name       text        NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (component, version))`);
    const { rows } = await client.query<{ version: number }>('SELECT version FROM tandem_app.schema_migrations WHERE component = $1', [component]);
    const done = new Set(rows.map((r) => r.version));
    const newest = Math.max(0, ...done);
    if (newest > migrations.length) {
      throw new TandemError(
        'TANDEM_ERR_SCHEMA_DRIFT',
        `${component}: the database is at schema version ${newest}, newer than this build knows (${migrations.length}); run the newer tandem`,
      );
    }
    const applied: number[] = [];
    for (const m of migrations) {
      if (done.has(m.version)) continue;
      await client.query(m.sql);
      await client.query('INSERT INTO tandem_app.schema_migrations (component, version, name) VALUES ($1, $2, $3)', [component, m.version, m.name]);
      applied.push(m.version);
    }
    await client.query('COMMIT');
    return { component, applied, current: migrations.length };
  } catch (err) {
    await client.query('ROLLBACK').catch(() => {});
    throw err;
  }
}
