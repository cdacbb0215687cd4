import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { chmodSync, chownSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type pg from 'pg';
import { PostgresServer, postgresUserIds } from '../lab/postgres.ts';
import { freePort } from '../../test/helpers/ports.ts';
import { parseConfig, type PgConnectionConfig } from '../core/config/index.ts';
import { isTandemError } from '../core/errors.ts';
import { client, startCluster, TEST_PG_PASSWORD, type TestCluster } from '../../test/helpers/pg.ts';
import type { PgOutputMessage } from './pgoutput.ts';
import { createLogicalSlot, createSlotWithSnapshot, currentWalLsn, dropSlot, readSlot } from './slot.ts';
import { ReplicationStream, startReplicationCommand, type ReplicationStreamOptions, type StreamItem } from './stream.ts';

const PUB = 'pub "odd"';
const PASSWORD_ENV = 'TANDEM_TEST_STREAM_PG_PASSWORD';

type Commit = Extract<PgOutputMessage, { tag: 'commit' }>;

/** A pulled iterator with a deadline per item, so a broken stream fails the test instead of hanging it. */
function reader(stream: ReplicationStream) {
  const it = stream.messages()[Symbol.asyncIterator]();
  return {
    async next(timeoutMs = 10_000): Promise<StreamItem> {
      let timer: NodeJS.Timeout | undefined;
      const r = await Promise.race([
        it.next(),
        new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`no item within ${timeoutMs} ms`)), timeoutMs))),
      ]).finally(() => clearTimeout(timer));
      if (r.done) throw new Error('stream ended');
      return r.value;
    },
    /** Read transactions until `count` commits; returns each transaction's changes and commit. */
    async transactions(count: number, timeoutMs = 20_000): Promise<Array<{ rows: string[]; commit: Commit; origin?: string }>> {
      const out: Array<{ rows: string[]; commit: Commit; origin?: string }> = [];
      let rows: string[] = [];
      let origin: string | undefined;
      const deadline = Date.now() + timeoutMs;
      const seen: string[] = [];
      while (out.length < count) {
        if (Date.now() > deadline) throw new Error(`only ${out.length} of ${count} transactions within ${timeoutMs} ms; saw ${seen.slice(-40).join(' ')}`);
        const item = await this.next();
        seen.push(item.keepalive ? `k(${item.walEnd.toString(16)}${item.replyRequested ? ',reply' : ''})` : `${item.message.tag}@${item.lsn.toString(16)}`);
        if (item.keepalive) continue;
        const m = item.message;
        if (m.tag === 'begin') {
          rows = [];
          origin = undefined;
        } else if (m.tag === 'origin') origin = m.name;
        else if (m.tag === 'insert') rows.push(String(m.newTuple[1]));
        else if (m.tag === 'commit') out.push({ rows, commit: m, ...(origin ? { origin } : {}) });
      }
      return out;
    },
  };
}

async function waitFor<T>(what: string, fn: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v !== undefined) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('ReplicationStream against PostgreSQL 17', () => {
  let cluster: TestCluster;
  let db: pg.Client;
  let source: PgConnectionConfig;
  const streams: ReplicationStream[] = [];

  function open(opts: Partial<ReplicationStreamOptions> & { slot: string; startLsn: bigint }): ReplicationStream {
    const s = new ReplicationStream({ connection: source, publication: PUB, ...opts });
    streams.push(s);
    return s;
  }

  before(async () => {
    cluster = await startCluster(1, {
      settings: { wal_sender_timeout: '2s', DateStyle: 'SQL, DMY', IntervalStyle: 'iso_8601', extra_float_digits: 0 },
    });
    const s = cluster.servers[0]!;
    process.env[PASSWORD_ENV] = TEST_PG_PASSWORD;
    source = parseConfig({
      regions: [
        {
          name: 'src',
          addresses: ['127.0.1.1'],
          healthUrl: 'http://127.0.1.1/healthz',
          database: { host: s.options.host, port: s.options.port, user: 'postgres', password: { env: PASSWORD_ENV } },
        },
      ],
    }).regions[0]!.database;
    db = await client(s);
    await db.query(`
      CREATE TABLE t (id int PRIMARY KEY, v text, ts timestamptz, iv interval, f float8);
      CREATE PUBLICATION ${'"pub ""odd"""'} FOR TABLE t;
      SELECT pg_replication_origin_create('tandem_other');
    `);
  });

  after(async () => {
    for (const s of streams) await s.stop().catch(() => {});
    await db?.end();
    await cluster?.stop();
    delete process.env[PASSWORD_ENV];
  });

  async function insertTx(ids: number[], tag: string): Promise<void> {
    for (const id of ids) await db.query('INSERT INTO t (id, v) VALUES ($1, $2)', [id, `${tag}${id}`]);
  }

  test('the START_REPLICATION command quotes names and values', () => {
    assert.equal(
      startReplicationCommand({ slot: 's1', startLsn: 0x16b3748n, protoVersion: 4, publications: ['a', "it's \"x\""], origin: 'none', messages: true }),
      `START_REPLICATION SLOT "s1" LOGICAL 0/16B3748 (proto_version '4', publication_names '"a","it''s ""x"""', messages 'true', origin 'none')`,
    );
  });

  test('streams transactions in order, acknowledges exactly, and a restart re-delivers exactly what follows', async () => {
    const created = await createLogicalSlot(db, 'exact');
    assert.equal(created.created, true);
    assert.deepEqual(await createLogicalSlot(db, 'exact', { ifNotExists: true }), { slot: 'exact', lsn: created.lsn, created: false });
    await insertTx([1, 2, 3, 4, 5], 'row');
    // A transaction applied by a replication agent (under an origin) is not streamed with origin 'none'.
    await db.query(`SELECT pg_replication_origin_session_setup('tandem_other')`);
    await db.query(`INSERT INTO t (id, v) VALUES (50, 'looped')`);
    await db.query(`SELECT pg_replication_origin_session_reset()`);
    await insertTx([6], 'row');

    const first = open({ slot: 'exact', startLsn: 0n, bindAddress: '127.0.9.1', applicationName: 'stream-test' });
    await first.start();
    assert.ok(first.serverVersion >= 170000, `server version ${first.serverVersion}`);
    assert.equal(first.protoVersion, 4);
    const r1 = reader(first);
    const txs = await r1.transactions(6);
    assert.deepEqual(
      txs.map((t) => t.rows),
      [['row1'], ['row2'], ['row3'], ['row4'], ['row5'], ['row6']],
      'every local transaction once, in commit order, without the looped one',
    );
    for (let i = 1; i < txs.length; i++) assert.ok(txs[i]!.commit.endLsn > txs[i - 1]!.commit.endLsn);
    const { rows: activity } = await db.query(`SELECT client_addr::text AS addr FROM pg_stat_replication WHERE application_name = 'stream-test'`);
    assert.equal(activity[0]?.addr, '127.0.9.1/32', 'connection bound to the given source address');

    // Acknowledge the end of the 2nd transaction: the slot's confirmed_flush_lsn is exactly that (not +1).
    const ack = txs[1]!.commit.endLsn;
    assert.equal(first.sendStatus({ written: ack, flushed: ack }), true);
    const confirmed = await waitFor('confirmed_flush_lsn', async () => {
      const s = await readSlot(db, 'exact');
      return s?.confirmedFlushLsn === ack ? s.confirmedFlushLsn : undefined;
    });
    assert.equal(confirmed, ack);
    assert.deepEqual(first.lastStatus, { written: ack, flushed: ack, applied: ack });
    await first.stop();
    assert.equal(first.state, 'stopped');
    assert.equal((await readSlot(db, 'exact'))?.active, false, 'the slot is released at stop');

    // Restart from the acknowledged LSN: exactly transactions 3..6 again, then what comes next.
    const second = open({ slot: 'exact', startLsn: ack });
    await second.start();
    await insertTx([7], 'row');
    const again = await reader(second).transactions(5);
    assert.deepEqual(
      again.map((t) => t.rows),
      [['row3'], ['row4'], ['row5'], ['row6'], ['row7']],
    );
    assert.deepEqual(
      again.slice(0, 4).map((t) => t.commit.endLsn),
      txs.slice(2).map((t) => t.commit.endLsn),
    );
    await second.stop();

    // From a later LSN than the slot confirmed (the target's origin is ahead): only what follows it.
    const third = open({ slot: 'exact', startLsn: txs[3]!.commit.endLsn });
    await third.start();
    assert.deepEqual(
      (await reader(third).transactions(3)).map((t) => t.rows),
      [['row5'], ['row6'], ['row7']],
    );
    await third.stop();

    // From an older LSN than confirmed: the server forwards to confirmed_flush_lsn, nothing before it comes back.
    const fourth = open({ slot: 'exact', startLsn: 0n });
    await fourth.start();
    assert.deepEqual((await reader(fourth).transactions(1)).map((t) => t.rows), [['row3']]);
    await fourth.stop();
    assert.equal(await dropSlot(db, 'exact'), true);
  });

  test('values far larger than a socket read, next to small ones, arrive whole and in order', async () => {
    await createLogicalSlot(db, 'big');
    // 3 MB and 200 kB values (many socket reads each) between small rows, in one transaction and alone.
    const big = 'x'.repeat(3_000_000) + 'é';
    const mid = '€'.repeat(70_000);
    await db.query('BEGIN');
    await db.query('INSERT INTO t (id, v) VALUES (101, $1), (102, $2), (103, $3)', ['small', big, mid]);
    await db.query('COMMIT');
    await db.query('INSERT INTO t (id, v) VALUES (104, $1)', [mid + 'end']);
    const st = open({ slot: 'big', startLsn: 0n });
    await st.start();
    const it = st.messages()[Symbol.asyncIterator]();
    const values: string[] = [];
    let commits = 0;
    while (commits < 2) {
      const r = await it.next();
      assert.equal(r.done, false);
      if (r.value.keepalive) continue;
      if (r.value.message.tag === 'insert') values.push(String(r.value.message.newTuple[1]));
      if (r.value.message.tag === 'commit') commits++;
    }
    assert.deepEqual(
      values.map((v) => [v.length, v.slice(-3)]),
      [
        [5, 'all'],
        [big.length, 'xxé'],
        [mid.length, '€€€'],
        [mid.length + 3, 'end'],
      ],
    );
    assert.equal(values[1], big);
    await st.stop();
    assert.equal(await dropSlot(db, 'big'), true);
  });

  test('startup options make text output stable whatever the server defaults', async () => {
    await createLogicalSlot(db, 'styles');
    await db.query(`INSERT INTO t VALUES (100, 'styles', '2024-03-05 06:07:08.5+00', '1 day 2 hours', 0.1::float8 + 0.2::float8)`);
    const s = open({ slot: 'styles', startLsn: 0n });
    await s.start();
    const r = reader(s);
    let insert: Extract<PgOutputMessage, { tag: 'insert' }> | undefined;
    while (!insert) {
      const item = await r.next();
      if (!item.keepalive && item.message.tag === 'insert') insert = item.message;
    }
    // Server defaults say DateStyle 'SQL, DMY', IntervalStyle iso_8601, extra_float_digits 0.
    const [, , ts, iv, f] = insert.newTuple;
    assert.match(String(ts), /^2024-03-05 \d\d:07:08\.5[+-]\d\d/, 'ISO datestyle');
    assert.equal(iv, '1 day 02:00:00', 'postgres intervalstyle');
    assert.equal(f, '0.30000000000000004', 'extra_float_digits 3: exact, not rounded to 15 digits ("0.3")');
    await s.stop();
    await dropSlot(db, 'styles');
  });

  test('keepalives: reply requested on demand, callback while busy, automatic replies keep the stream alive', async () => {
    await createLogicalSlot(db, 'alive');
    const seen: boolean[] = [];
    // Periodic status off: only the automatic reply answers the server (wal_sender_timeout is 2 s here).
    const s = open({ slot: 'alive', startLsn: 0n, statusIntervalMs: 0, onKeepalive: (k) => seen.push(k.replyRequested) });
    await s.start();
    const r = reader(s);
    const lsn = await currentWalLsn(db);
    s.sendStatus({ written: lsn, flushed: lsn, replyRequested: true });
    const k = await r.next();
    assert.equal(k.keepalive, true, 'the server answers a reply request with a keepalive');
    assert.ok(seen.length >= 1, 'the callback saw it');
    // The consumer is "busy" for 4.5 s (over twice wal_sender_timeout): nothing is read from the iterator.
    await new Promise((res) => setTimeout(res, 4_500));
    assert.equal(s.state, 'running', 'automatic replies kept the connection alive');
    assert.ok(seen.includes(true), 'the server asked for replies and got them');
    await insertTx([200], 'alive');
    let got: string | undefined;
    while (!got) {
      const item = await r.next();
      if (!item.keepalive && item.message.tag === 'insert') got = String(item.message.newTuple[1]);
    }
    assert.equal(got, 'alive200');
    await s.stop();
    await dropSlot(db, 'alive');
  });

  test('without replies the server times the stream out, and the iterator rejects', async () => {
    await createLogicalSlot(db, 'mute');
    const s = open({ slot: 'mute', startLsn: 0n, statusIntervalMs: 0, autoReply: false });
    await s.start();
    const r = reader(s);
    await assert.rejects(
      (async () => {
        for (;;) await r.next(15_000);
      })(),
      (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION') && /lost/.test((err as Error).message),
    );
    await assert.rejects(s.closed, (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION'));
    assert.equal(s.state, 'failed');
    await dropSlot(db, 'mute', { terminateActive: true });
  });

  test('a source that goes silent (walsender stopped, like a partition) fails the stream after receiveTimeoutMs', async () => {
    await createLogicalSlot(db, 'silent');
    const s = open({ slot: 'silent', startLsn: 0n, statusIntervalMs: 300, receiveTimeoutMs: 1_500, applicationName: 'silent-test' });
    await s.start();
    const r = reader(s);
    const { rows } = await db.query<{ pid: number }>(`SELECT pid FROM pg_stat_replication WHERE application_name = 'silent-test'`);
    const pid = rows[0]!.pid;
    // While the source answers, a quiet stream stays up: status updates ask for keepalives back.
    await new Promise((res) => setTimeout(res, 2_000));
    assert.equal(s.state, 'running');
    process.kill(pid, 'SIGSTOP');
    const t0 = Date.now();
    try {
      await assert.rejects(
        (async () => {
          for (;;) await r.next(10_000);
        })(),
        (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION') && /nothing received for \d+ ms/.test((err as Error).message),
      );
      const waited = Date.now() - t0;
      assert.ok(waited >= 1_000, `failed only after the timeout (${waited} ms)`);
    } finally {
      process.kill(pid, 'SIGCONT');
    }
    await dropSlot(db, 'silent', { terminateActive: true });
  });

  test('a slow consumer pauses reading (bounded queue) and gets everything once it catches up', async () => {
    await createLogicalSlot(db, 'slow');
    await db.query(`INSERT INTO t (id, v) SELECT g, 'bulk' || g FROM generate_series(1000, 20999) g`);
    // Periodic status every 500 ms keeps the connection alive while the socket is paused.
    const s = open({ slot: 'slow', startLsn: 0n, highWaterMark: 100, highWaterMarkBytes: 1 << 20, statusIntervalMs: 500 });
    await s.start();
    await waitFor('pause', async () => (s.paused ? true : undefined));
    await new Promise((res) => setTimeout(res, 2_500)); // longer than wal_sender_timeout
    const { queued } = s.stats;
    assert.ok(queued < 5_000, `queue bounded while paused: ${queued} of 20 000 rows`);
    assert.equal(s.state, 'running');
    const r = reader(s);
    const [tx] = await r.transactions(1);
    assert.equal(tx!.rows.length, 20_000);
    assert.equal(tx!.rows[0], 'bulk1000');
    assert.equal(tx!.rows[19_999], 'bulk20999');
    assert.ok(s.stats.pauses >= 1);
    assert.equal(s.paused, false, 'resumed once drained');
    console.log(`# backpressure: max queue observed ${queued} items, pauses ${s.stats.pauses}`);
    await s.stop();
    await dropSlot(db, 'slow');
  });

  test('a terminated walsender rejects the iterator after what was received; dropSlot can force it', async () => {
    await createLogicalSlot(db, 'killed');
    const s = open({ slot: 'killed', startLsn: 0n });
    await s.start();
    await insertTx([300], 'k');
    const r = reader(s);
    const [tx] = await r.transactions(1);
    assert.deepEqual(tx!.rows, ['k300']);
    await assert.rejects(dropSlot(db, 'killed'), (err: unknown) => isTandemError(err, 'TANDEM_ERR_STATE'));
    assert.equal(await dropSlot(db, 'killed', { terminateActive: true }), true);
    await assert.rejects(
      (async () => {
        for (;;) await r.next();
      })(),
      (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION'),
    );
    assert.equal(s.state, 'failed');
    assert.equal(await readSlot(db, 'killed'), undefined);
    assert.equal(await dropSlot(db, 'killed', { ifExists: true }), false);
  });

  test('a missing slot fails start with a clear error', async () => {
    const s = open({ slot: 'nope', startLsn: 0n });
    await assert.rejects(s.start(), (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION') && /does not exist.*replicate setup/.test((err as Error).message));
    await assert.rejects(open({ slot: 'Bad-Name', startLsn: 0n }).start(), (err: unknown) => isTandemError(err, 'TANDEM_ERR_USAGE'));
    // Slot helpers refuse what they cannot use, naming it.
    await db.query(`SELECT pg_create_physical_replication_slot('phys')`);
    await assert.rejects(createLogicalSlot(db, 'phys', { ifNotExists: true }), (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION') && /physical slot/.test((err as Error).message));
    await createLogicalSlot(db, 'twice');
    await assert.rejects(createLogicalSlot(db, 'twice'), (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION') && /already exists/.test((err as Error).message));
    await assert.rejects(createLogicalSlot(db, 'x'.repeat(64)), (err: unknown) => isTandemError(err, 'TANDEM_ERR_USAGE'));
    await dropSlot(db, 'twice');
    await dropSlot(db, 'phys');
  });

  test('a slot with an exported snapshot: the snapshot holds what came before, the stream what came after', async () => {
    await db.query(`INSERT INTO t (id, v) VALUES (400, 'before')`);
    const snap = await createSlotWithSnapshot(source, 'boot', { applicationName: 'boot-test' });
    try {
      await db.query(`INSERT INTO t (id, v) VALUES (401, 'after')`);
      const copier = await client(cluster.servers[0]!);
      try {
        await copier.query('BEGIN ISOLATION LEVEL REPEATABLE READ');
        await copier.query(`SET TRANSACTION SNAPSHOT '${snap.snapshotName.replaceAll("'", "''")}'`);
        const { rows } = await copier.query<{ v: string }>(`SELECT v FROM t WHERE id IN (400, 401) ORDER BY id`);
        assert.deepEqual(
          rows.map((x) => x.v),
          ['before'],
        );
        await copier.query('COMMIT');
      } finally {
        await copier.end();
      }
    } finally {
      await snap.release();
    }
    const s = open({ slot: 'boot', startLsn: snap.consistentPoint });
    await s.start();
    const [tx] = await reader(s).transactions(1);
    assert.deepEqual(tx!.rows, ['after']);
    await s.stop();
    await dropSlot(db, 'boot');
  });
});

describe('ReplicationStream over TLS (sslmode verify-full)', () => {
  let dir: string;
  let server: PostgresServer | undefined;

  after(async () => {
    await server?.stop().catch(() => server?.kill());
    if (dir) rmSync(dir, { recursive: true, force: true });
    delete process.env[PASSWORD_ENV];
  });

  test('streams and acknowledges through a verified TLS connection', async () => {
    dir = mkdtempSync(path.join(tmpdir(), 'tandem-tls-'));
    chmodSync(dir, 0o755);
    const host = '127.0.3.1';
    const cert = path.join(dir, 'server.crt');
    const key = path.join(dir, 'server.key');
    // A self-signed certificate for the server's address: its own CA.
    execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', `/CN=${host}`, '-addext', `subjectAltName=IP:${host}`], { stdio: 'ignore' });
    chmodSync(key, 0o600);
    const ids = postgresUserIds();
    if (ids) chownSync(key, ids.uid, ids.gid);
    server = new PostgresServer({ dataDir: path.join(dir, 'data'), host, port: await freePort(host), password: TEST_PG_PASSWORD, database: 'tandem', fsync: false, ssl: { certFile: cert, keyFile: key } });
    await server.start();
    const db = await server.connect('tandem');
    try {
      await db.query(`CREATE TABLE t (id int PRIMARY KEY, v text); CREATE PUBLICATION p FOR TABLE t`);
      await createLogicalSlot(db, 'tls');
      await db.query(`INSERT INTO t VALUES (1, 'secret')`);
      process.env[PASSWORD_ENV] = TEST_PG_PASSWORD;
      const connection = parseConfig({
        regions: [
          {
            name: 'tls',
            addresses: [host],
            healthUrl: `http://${host}/healthz`,
            database: { host, port: server.options.port, user: 'postgres', password: { env: PASSWORD_ENV }, ssl: { mode: 'verify-full', ca: cert } },
          },
        ],
      }).regions[0]!.database;
      const s = new ReplicationStream({ connection, slot: 'tls', publication: 'p', startLsn: 0n, applicationName: 'tls-test' });
      await s.start();
      try {
        const [tx] = await reader(s).transactions(1);
        assert.deepEqual(tx!.rows, ['secret']);
        const { rows } = await db.query<{ ssl: boolean }>(`SELECT s.ssl FROM pg_stat_ssl s JOIN pg_stat_replication r USING (pid) WHERE r.application_name = 'tls-test'`);
        assert.equal(rows[0]?.ssl, true, 'the walsender connection is encrypted');
        s.sendStatus({ written: tx!.commit.endLsn, flushed: tx!.commit.endLsn });
        await waitFor('ack over TLS', async () => ((await readSlot(db, 'tls'))?.confirmedFlushLsn === tx!.commit.endLsn ? true : undefined));
      } finally {
        await s.stop();
      }
      // A certificate for another name is refused by verify-full.
      const wrong = new ReplicationStream({ connection: { ...connection, host: '127.0.3.1', ssl: { mode: 'verify-full', ca: path.join(dir, 'other.crt') } }, slot: 'tls', publication: 'p', startLsn: 0n });
      execFileSync('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(dir, 'other.key'), '-out', path.join(dir, 'other.crt'), '-days', '1', '-subj', '/CN=other'], { stdio: 'ignore' });
      await assert.rejects(wrong.start(), (err: unknown) => isTandemError(err, 'TANDEM_ERR_REPLICATION') && /cannot open a replication connection/.test((err as Error).message));
    } finally {
      await db.end();
    }
  });
});
