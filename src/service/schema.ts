/**
 * The reference service's schema (`shop`) and the list of tables tandem must
 * replicate for the kit and the service to survive a region failure.
 *
 * Replication rules these tables follow: every table has a primary key; keys
 * are uuids derived from idempotency keys (UUIDv5) or random, never sequences;
 * no foreign keys and no unique constraints besides the primary key, so that
 * changes applied out of order across regions never trip a constraint; every
 * row records the correlation id and the region of the write that made it.
 */
import pg from 'pg';
import type { PgConnectionConfig } from '../core/config/common.ts';
import { pgClientConfig } from '../core/pg.ts';
import { TandemError } from '../core/errors.ts';
import { KIT_MIGRATIONS, migrate, type Migration, type MigrationResult } from '../app/migrations.ts';

/** Tables to put in `replication.tables` (kit tables first). */
export const REPLICATED_TABLES = ['tandem_app.idempotency_keys', 'tandem_app.sessions', 'shop.orders', 'shop.payments'] as const;

/** The service's migrations (component `shop`). */
export const SHOP_MIGRATIONS: readonly Migration[] = [
  {
    version: 1,
    name: 'orders and payments',
    sql: `
CREATE SCHEMA IF NOT EXISTS shop;

CREATE TABLE shop.orders (
  id                     uuid        PRIMARY KEY,
  customer               text        NOT NULL,
  items                  jsonb,
  amount_cents           bigint      NOT NULL CHECK (amount_cents >= 0),
  currency               text        NOT NULL,
  status                 text        NOT NULL CHECK (status IN ('pending', 'paid')),
  idempotency_key        text        NOT NULL,
  client_scope           text        NOT NULL,
  correlation_id         text        NOT NULL,
  region                 text        NOT NULL,
  created_at             timestamptz NOT NULL DEFAULT now(),
  updated_at             timestamptz NOT NULL DEFAULT now(),
  updated_correlation_id text        NOT NULL,
  updated_region         text        NOT NULL
);
CREATE INDEX orders_customer_created ON shop.orders (customer, created_at DESC);

CREATE TABLE shop.payments (
  id              uuid        PRIMARY KEY,
  order_id        uuid        NOT NULL,
  amount_cents    bigint      NOT NULL CHECK (amount_cents >= 0),
  currency        text        NOT NULL,
  status          text        NOT NULL CHECK (status IN ('captured')),
  idempotency_key text        NOT NULL,
  client_scope    text        NOT NULL,
  correlation_id  text        NOT NULL,
  region          text        NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_order_id ON shop.payments (order_id);
`,
  },
];

/** Create or update the kit's and the service's tables; idempotent. */
export async function migrateAll(client: pg.Client | pg.PoolClient): Promise<MigrationResult[]> {
  return [await migrate(client, 'kit', KIT_MIGRATIONS), await migrate(client, 'shop', SHOP_MIGRATIONS)];
}

/** Connect to a region's database and migrate it. */
export async function migrateDatabase(conn: PgConnectionConfig, what = 'database'): Promise<MigrationResult[]> {
  const client = new pg.Client(pgClientConfig(conn, { applicationName: 'tandem-app-migrate' }, what));
  client.on('error', () => {});
  try {
    await client.connect();
  } catch (cause) {
    await client.end().catch(() => {});
    throw new TandemError('TANDEM_ERR_DB_UNAVAILABLE', `cannot connect to ${what} at ${conn.host}:${conn.port}/${conn.database}: ${(cause as Error).message}`, { cause });
  }
  try {
    return await migrateAll(client);
  } finally {
    await client.end().catch(() => {});
  }
}
