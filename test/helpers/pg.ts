/**
 * Start and stop real PostgreSQL servers for tests: one per "region", each on
 * its own loopback address (127.0.N.1), logical decoding on, fsync off.
 */
import { chmodSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import pg from 'pg';
import { PostgresServer } from '../../src/lab/postgres.ts';
import { freePort } from './ports.ts';

export const TEST_PG_PASSWORD = 'tandem-test-pw';

/** A running test cluster of `count` servers and a way to tear it down. */
export interface TestCluster {
  servers: PostgresServer[];
  /** Restart server i on the same data directory (after kill() or stop()). */
  restart(i: number): Promise<PostgresServer>;
  stop(): Promise<void>;
}

const live = new Set<PostgresServer>();
process.once('exit', () => {
  for (const s of live) s.kill();
});

/** Start `count` servers with a `tandem` database each. */
export async function startCluster(count: number, opts: { database?: string; settings?: Record<string, string | number> } = {}): Promise<TestCluster> {
  const root = mkdtempSync(path.join(tmpdir(), 'tandem-pg-'));
  chmodSync(root, 0o755); // PostgreSQL runs as "postgres" when we are root
  const make = async (i: number, port?: number) => {
    const host = `127.0.${i + 1}.1`;
    const server = new PostgresServer({
      dataDir: path.join(root, `r${i + 1}`),
      host,
      port: port ?? (await freePort(host)),
      password: TEST_PG_PASSWORD,
      database: opts.database ?? 'tandem',
      fsync: false,
      settings: opts.settings,
    });
    await server.start();
    live.add(server);
    return server;
  };
  const servers = await Promise.all(Array.from({ length: count }, (_, i) => make(i)));
  return {
    servers,
    async restart(i) {
      const old = servers[i]!;
      live.delete(old);
      await old.stop().catch(() => {});
      await old.exited();
      const s = await make(i, old.options.port);
      servers[i] = s;
      return s;
    },
    async stop() {
      await Promise.all(
        servers.map(async (s) => {
          live.delete(s);
          await s.stop().catch(() => s.kill());
        }),
      );
      rmSync(root, { recursive: true, force: true });
    },
  };
}

/** A superuser client to server `s` on the test database. */
export async function client(s: PostgresServer, database = 'tandem'): Promise<pg.Client> {
  return s.connect(database);
}
