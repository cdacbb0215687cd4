import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import type pg from 'pg';
import { isTandemError } from '../core/errors.ts';
import { client, startCluster, type TestCluster } from '../../test/helpers/pg.ts';
import {
  UNCHANGED_TOAST,
  decodePgOutput,
  decodePgOutputAt,
  encodePgOutput,
  type PgOutputMessage,
  type TupleValue,
} from './pgoutput.ts';

// Hand-written big-endian pieces, independent of the module's own writer.
const u8 = (v: number) => Buffer.from([v]);
const ch = (c: string) => Buffer.from(c, 'latin1');
const i16 = (v: number) => {
  const b = Buffer.alloc(2);
  b.writeInt16BE(v);
  return b;
};
const i32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeInt32BE(v);
  return b;
};
const u32 = (v: number) => {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(v);
  return b;
};
const u64 = (v: bigint) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(v);
  return b;
};
const str = (s: string) => Buffer.concat([Buffer.from(s, 'utf8'), u8(0)]);
const cat = (...parts: Buffer[]) => Buffer.concat(parts);
const text = (s: string) => {
  const b = Buffer.from(s, 'utf8');
  return cat(ch('t'), i32(b.length), b);
};

function assertProtocolError(fn: () => unknown, pattern?: RegExp): void {
  let thrown: unknown;
  try {
    fn();
  } catch (err) {
    thrown = err;
  }
  assert.ok(thrown !== undefined, 'expected an error');
  assert.ok(isTandemError(thrown, 'TANDEM_ERR_PROTOCOL'), `expected TANDEM_ERR_PROTOCOL, got ${String(thrown)}`);
  if (pattern) assert.match((thrown as Error).message, pattern);
}

/** Hand-built messages of every kind and what they must decode to. */
const cases: Array<{ name: string; bytes: Buffer; expected: PgOutputMessage }> = [
  {
    name: 'Begin',
    // 'B', final LSN 0/16B3748, commit time 2024-01-01T00:00:00Z (757382400 s after 2000-01-01), xid 4000000000
    bytes: Buffer.from('42' + '00000000016b3748' + '0002b0d5d4e94000' + 'ee6b2800', 'hex'),
    expected: { tag: 'begin', finalLsn: 0x16b3748n, commitTime: 757_382_400_000_000n, xid: 4_000_000_000 },
  },
  {
    name: 'Commit',
    bytes: cat(ch('C'), u8(0), u64(0x1_0000_0010n), u64(0x1_0000_0040n), u64(123n)),
    expected: { tag: 'commit', flags: 0, commitLsn: 0x1_0000_0010n, endLsn: 0x1_0000_0040n, commitTime: 123n },
  },
  {
    name: 'Origin',
    bytes: cat(ch('O'), u64(0xabcdn), str('tandem_aws-south')),
    expected: { tag: 'origin', commitLsn: 0xabcdn, name: 'tandem_aws-south' },
  },
  {
    name: 'Relation with odd identifiers',
    bytes: cat(
      ch('R'),
      u32(16385),
      str('Mixed Case'),
      str('we"ird tbl'),
      ch('f'),
      i16(2),
      cat(u8(1), str('id'), u32(23), i32(-1)),
      cat(u8(0), str('we"ird col'), u32(1043), i32(36)),
    ),
    expected: {
      tag: 'relation',
      relationId: 16385,
      schema: 'Mixed Case',
      name: 'we"ird tbl',
      replicaIdentity: 'f',
      columns: [
        { flags: 1, isKey: true, name: 'id', typeOid: 23, typeMod: -1 },
        { flags: 0, isKey: false, name: 'we"ird col', typeOid: 1043, typeMod: 36 },
      ],
    },
  },
  {
    name: 'Relation in pg_catalog (empty namespace), no columns',
    bytes: cat(ch('R'), u32(0xffff_fff0), str(''), str('t'), ch('n'), i16(0)),
    expected: { tag: 'relation', relationId: 0xffff_fff0, schema: '', name: 't', replicaIdentity: 'n', columns: [] },
  },
  {
    name: 'Type',
    bytes: cat(ch('Y'), u32(16390), str('public'), str('mood')),
    expected: { tag: 'type', typeOid: 16390, schema: 'public', name: 'mood' },
  },
  {
    name: 'Insert with text, null, binary and unchanged TOAST values',
    bytes: cat(ch('I'), u32(16385), ch('N'), i16(5), text('42'), ch('n'), cat(ch('b'), i32(3), Buffer.from([0, 0xff, 7])), ch('u'), text('ünï')),
    expected: { tag: 'insert', relationId: 16385, newTuple: ['42', null, Buffer.from([0, 0xff, 7]), UNCHANGED_TOAST, 'ünï'] },
  },
  {
    name: 'Update without old tuple',
    bytes: cat(ch('U'), u32(7), ch('N'), i16(2), text('1'), ch('u')),
    expected: { tag: 'update', relationId: 7, newTuple: ['1', UNCHANGED_TOAST] },
  },
  {
    name: "Update with old key ('K')",
    bytes: cat(ch('U'), u32(7), ch('K'), i16(2), text('1'), ch('n'), ch('N'), i16(2), text('2'), text('x')),
    expected: { tag: 'update', relationId: 7, oldKind: 'K', oldTuple: ['1', null], newTuple: ['2', 'x'] },
  },
  {
    name: "Update with old full tuple ('O', REPLICA IDENTITY FULL)",
    bytes: cat(ch('U'), u32(7), ch('O'), i16(2), text('1'), text('old'), ch('N'), i16(2), text('1'), text('')),
    expected: { tag: 'update', relationId: 7, oldKind: 'O', oldTuple: ['1', 'old'], newTuple: ['1', ''] },
  },
  {
    name: "Delete with key ('K')",
    bytes: cat(ch('D'), u32(7), ch('K'), i16(2), text('1'), ch('n')),
    expected: { tag: 'delete', relationId: 7, oldKind: 'K', oldTuple: ['1', null] },
  },
  {
    name: "Delete with full old tuple ('O')",
    bytes: cat(ch('D'), u32(7), ch('O'), i16(1), text('1')),
    expected: { tag: 'delete', relationId: 7, oldKind: 'O', oldTuple: ['1'] },
  },
  {
    name: 'Truncate CASCADE RESTART IDENTITY',
    bytes: cat(ch('T'), i32(2), u8(3), u32(16385), u32(16386)),
    expected: { tag: 'truncate', relationIds: [16385, 16386], cascade: true, restartIdentity: true },
  },
  {
    name: 'Truncate without options',
    bytes: cat(ch('T'), i32(1), u8(0), u32(5)),
    expected: { tag: 'truncate', relationIds: [5], cascade: false, restartIdentity: false },
  },
  {
    name: 'transactional Message',
    bytes: cat(ch('M'), u8(1), u64(0x2000n), str('tandem'), i32(5), Buffer.from('hello')),
    expected: { tag: 'message', transactional: true, lsn: 0x2000n, prefix: 'tandem', content: Buffer.from('hello') },
  },
  {
    name: 'non-transactional Message with empty content',
    bytes: cat(ch('M'), u8(0), u64(1n), str('hb'), i32(0)),
    expected: { tag: 'message', transactional: false, lsn: 1n, prefix: 'hb', content: Buffer.alloc(0) },
  },
];

describe('pgoutput decoder: hand-built messages', () => {
  for (const c of cases) {
    test(c.name, () => {
      assert.deepEqual(decodePgOutput(c.bytes), c.expected);
      // Re-encoding gives the same bytes.
      assert.deepEqual(encodePgOutput(c.expected), c.bytes);
      // Decoding at an offset inside a larger buffer.
      const junk = Buffer.from([0xde, 0xad, 0xbe]);
      assert.deepEqual(decodePgOutput(cat(junk, c.bytes), 3), c.expected);
      const framed = decodePgOutputAt(cat(junk, c.bytes, junk), 3);
      assert.deepEqual(framed.message, c.expected);
      assert.equal(framed.end, 3 + c.bytes.length);
      // Every truncation is a protocol error naming a byte offset, never a RangeError.
      for (let n = 0; n < c.bytes.length; n++) assertProtocolError(() => decodePgOutput(c.bytes.subarray(0, n)), /byte \d+/);
      // Trailing bytes are an error for a single-message payload.
      assertProtocolError(() => decodePgOutput(cat(c.bytes, u8(0))), /trailing/);
    });
  }

  test('back-to-back messages decode one after another', () => {
    const all = cat(...cases.map((c) => c.bytes));
    let offset = 0;
    for (const c of cases) {
      const { message, end } = decodePgOutputAt(all, offset);
      assert.deepEqual(message, c.expected);
      offset = end;
    }
    assert.equal(offset, all.length);
  });

  test('text values keep multi-byte characters and a real U+FFFD', () => {
    const values = ['plain', 'é€😀', 'replacement \uFFFD character', ''];
    const m = decodePgOutput(cat(ch('I'), u32(7), ch('N'), i16(values.length), ...values.map(text)));
    assert.deepEqual(m, { tag: 'insert', relationId: 7, newTuple: values });
  });

  test('bogus counts and lengths raise TANDEM_ERR_PROTOCOL with the offset', () => {
    assertProtocolError(() => decodePgOutput(cat(ch('I'), u32(1), ch('N'), i16(32767), text('x'))), /column count 32767 exceeds .* at byte 6/);
    assertProtocolError(() => decodePgOutput(cat(ch('I'), u32(1), ch('N'), i16(-1))), /negative new tuple column count/);
    assertProtocolError(() => decodePgOutput(cat(ch('I'), u32(1), ch('N'), i16(1), ch('t'), i32(-5))), /negative length -5/);
    assertProtocolError(() => decodePgOutput(cat(ch('I'), u32(1), ch('N'), i16(1), ch('t'), i32(0x7fffffff), ch('x'))), /truncated new tuple column 0 text value/);
    assertProtocolError(() => decodePgOutput(cat(ch('I'), u32(1), ch('N'), i16(1), ch('z'))), /unknown new tuple column 0 kind 0x7a "z" .* at byte 8/);
    assertProtocolError(() => decodePgOutput(cat(ch('I'), u32(1), ch('X'), i16(0))), /expected 'N'/);
    assertProtocolError(() => decodePgOutput(cat(ch('T'), i32(0x7fffffff), u8(0), u32(1))), /relation count 2147483647 exceeds/);
    assertProtocolError(() => decodePgOutput(cat(ch('T'), i32(-2), u8(0))), /negative relation count/);
    assertProtocolError(() => decodePgOutput(cat(ch('R'), u32(1), str('s'), str('t'), ch('d'), i16(30000))), /column count 30000 exceeds/);
    assertProtocolError(() => decodePgOutput(cat(ch('R'), u32(1), str('s'), str('t'), ch('q'), i16(0))), /unknown replica identity 0x71 "q"/);
    assertProtocolError(() => decodePgOutput(cat(ch('O'), u64(1n), Buffer.from('no-nul'))), /unterminated origin name/);
    assertProtocolError(() => decodePgOutput(cat(ch('M'), u8(2), u64(1n), str('p'), i32(0))), /unknown flags 2/);
    assertProtocolError(() => decodePgOutput(cat(ch('O'), u64(1n), Buffer.from([0xc3, 0x28, 0]))), /not valid UTF-8/);
    const bad = Buffer.from([0x61, 0xc3, 0x28]);
    assertProtocolError(() => decodePgOutput(cat(ch('I'), u32(1), ch('N'), i16(2), text('ok'), ch('t'), i32(bad.length), bad)), /new tuple column 1 text value is not valid UTF-8 at byte 20/);
    assertProtocolError(() => decodePgOutput(cat(ch('U'), u32(1), ch('K'), i16(0), ch('K'), i16(0))), /expected 'N' before the new tuple/);
    assertProtocolError(() => decodePgOutput(cat(ch('D'), u32(1), ch('N'), i16(0))), /expected 'K' or 'O'/);
    assertProtocolError(() => decodePgOutput(Buffer.from('Z')), /unknown pgoutput message type 0x5a "Z" at byte 0/);
    assertProtocolError(() => decodePgOutput(Buffer.alloc(0)), /truncated message type .*at byte 0/);
    assertProtocolError(() => decodePgOutput(Buffer.from('B'), 5), /offset 5 is outside/);
  });

  test('streaming and two-phase messages are rejected clearly', () => {
    assertProtocolError(() => decodePgOutput(cat(ch('S'), u32(77), u8(1))), /Stream Start of xid 77 .*streaming .* was not requested/);
    assertProtocolError(() => decodePgOutput(ch('E')), /Stream Stop/);
    assertProtocolError(() => decodePgOutput(cat(ch('c'), u32(78), u8(0), u64(1n), u64(2n), u64(3n))), /Stream Commit of xid 78/);
    assertProtocolError(() => decodePgOutput(cat(ch('A'), u32(79), u32(80))), /Stream Abort of xid 79/);
    assertProtocolError(() => decodePgOutput(cat(ch('p'), u8(0))), /Stream Prepare/);
    for (const [c, name] of [['b', 'Begin Prepare'], ['P', 'Prepare'], ['K', 'Commit Prepared'], ['r', 'Rollback Prepared']] as const) {
      assertProtocolError(() => decodePgOutput(cat(ch(c), u8(0))), new RegExp(`${name} message at byte 0: two-phase`));
    }
  });

  test('seeded random corruption never escapes as anything but TANDEM_ERR_PROTOCOL', () => {
    const seed = Number(process.env.TANDEM_TEST_SEED ?? Math.floor(Math.random() * 2 ** 31));
    console.log(`# pgoutput fuzz seed ${seed} (rerun with TANDEM_TEST_SEED=${seed})`);
    let state = seed >>> 0 || 1;
    const rand = (n: number) => {
      // xorshift32: deterministic from the seed.
      state ^= state << 13;
      state >>>= 0;
      state ^= state >>> 17;
      state ^= state << 5;
      state >>>= 0;
      return state % n;
    };
    let decoded = 0;
    let rejected = 0;
    for (let i = 0; i < 5000; i++) {
      const base = cases[rand(cases.length)]!.bytes;
      const buf = Buffer.from(base);
      const edits = 1 + rand(4);
      for (let e = 0; e < edits; e++) buf[rand(buf.length)] = rand(256);
      const cut = rand(3) === 0 ? rand(buf.length + 1) : buf.length;
      try {
        decodePgOutput(buf.subarray(0, cut));
        decoded++;
      } catch (err) {
        assert.ok(isTandemError(err, 'TANDEM_ERR_PROTOCOL'), `seed ${seed} case ${i}: ${String(err)} for ${buf.toString('hex')}`);
        rejected++;
      }
    }
    assert.ok(decoded > 0 && rejected > 0, `both outcomes happen (decoded ${decoded}, rejected ${rejected})`);
  });
});

/** One decoded change captured from a real PostgreSQL through the SQL interface of a pgoutput slot. */
interface Captured {
  lsn: string;
  message: PgOutputMessage;
}

describe('pgoutput decoder: real messages from PostgreSQL 17', () => {
  let cluster: TestCluster;
  let db: pg.Client;

  before(async () => {
    cluster = await startCluster(1);
    db = await client(cluster.servers[0]!);
    await db.query(`
      CREATE SCHEMA "Mixed Case";
      CREATE TABLE "Mixed Case"."we""ird tbl" (id int PRIMARY KEY, "we""ird col" text);
      CREATE TYPE mood AS ENUM ('ok', 'meh');
      CREATE TABLE items (id int PRIMARY KEY, note text, big text, feeling mood, raw bytea, price numeric(10,2));
      ALTER TABLE items ALTER COLUMN big SET STORAGE EXTERNAL;
      CREATE TABLE full_t (id int PRIMARY KEY, v text);
      ALTER TABLE full_t REPLICA IDENTITY FULL;
      CREATE TABLE serials (id bigserial PRIMARY KEY, v text);
      CREATE PUBLICATION pub FOR TABLE "Mixed Case"."we""ird tbl", items, full_t, serials;
    `);
    await db.query(`SELECT pg_create_logical_replication_slot('cap', 'pgoutput')`);
  });

  after(async () => {
    await db?.end();
    await cluster?.stop();
  });

  async function capture(options: Record<string, string> = {}): Promise<Captured[]> {
    const opts = { proto_version: '2', publication_names: 'pub', messages: 'true', ...options };
    const args = Object.entries(opts).flat();
    const placeholders = args.map((_, i) => `$${i + 1}`).join(', ');
    const { rows } = await db.query<{ lsn: string; data: Buffer }>(`SELECT lsn::text, data FROM pg_logical_slot_get_binary_changes('cap', NULL, NULL, ${placeholders})`, args);
    return rows.map((r) => ({ lsn: r.lsn, message: decodePgOutput(r.data) }));
  }

  function tags(c: Captured[]): string[] {
    return c.map((x) => x.message.tag);
  }

  function only<T extends PgOutputMessage['tag']>(c: Captured[], tag: T): Array<Extract<PgOutputMessage, { tag: T }>> {
    return c.map((x) => x.message).filter((m): m is Extract<PgOutputMessage, { tag: T }> => m.tag === tag);
  }

  test('insert into odd identifiers, with a custom type, nulls and a numeric', async () => {
    await db.query(`INSERT INTO "Mixed Case"."we""ird tbl" VALUES (1, 'a "quoted" value')`);
    await db.query(`INSERT INTO items (id, note, feeling, price) VALUES (1, NULL, 'meh', 12.50)`);
    const c = await capture();
    assert.deepEqual(tags(c), ['begin', 'relation', 'insert', 'commit', 'begin', 'type', 'relation', 'insert', 'commit']);
    const [rel1, rel2] = only(c, 'relation');
    assert.equal(rel1!.schema, 'Mixed Case');
    assert.equal(rel1!.name, 'we"ird tbl');
    assert.equal(rel1!.replicaIdentity, 'd');
    assert.deepEqual(
      rel1!.columns.map((col) => [col.name, col.isKey, col.typeOid]),
      [
        ['id', true, 23],
        ['we"ird col', false, 25],
      ],
    );
    assert.equal(rel2!.columns.find((col) => col.name === 'price')!.typeMod, ((10 << 16) | 2) + 4);
    const type = only(c, 'type')[0]!;
    assert.equal(type.schema, 'public');
    assert.equal(type.name, 'mood');
    assert.equal(rel2!.columns.find((col) => col.name === 'feeling')!.typeOid, type.typeOid);
    const [ins1, ins2] = only(c, 'insert');
    assert.equal(ins1!.relationId, rel1!.relationId);
    assert.deepEqual(ins1!.newTuple, ['1', 'a "quoted" value']);
    assert.deepEqual(ins2!.newTuple, ['1', null, null, 'meh', null, '12.50']);
    // Begin's final LSN is the Commit's LSN; the end LSN lies after it; commit times are recent.
    const begins = only(c, 'begin');
    const commits = only(c, 'commit');
    for (let i = 0; i < 2; i++) {
      assert.equal(begins[i]!.finalLsn, commits[i]!.commitLsn);
      assert.ok(commits[i]!.endLsn > commits[i]!.commitLsn);
      assert.equal(begins[i]!.commitTime, commits[i]!.commitTime);
      const ageMs = Date.now() - (Number(commits[i]!.commitTime / 1000n) + 946_684_800_000);
      assert.ok(ageMs >= -5_000 && ageMs < 120_000, `commit time is now-ish (age ${ageMs} ms)`);
    }
  });

  test("update of a non-key column leaves a >2 kB TOASTed value unchanged ('u')", async () => {
    const big = randomBytes(6000).toString('base64'); // incompressible, stored out of line (STORAGE EXTERNAL)
    await db.query(`INSERT INTO items (id, note, big) VALUES (2, 'first', $1)`, [big]);
    await db.query(`UPDATE items SET note = 'second' WHERE id = 2`);
    const c = await capture();
    const [ins] = only(c, 'insert');
    assert.equal(ins!.newTuple[2], big);
    const [upd] = only(c, 'update');
    assert.equal(upd!.oldKind, undefined, 'key unchanged: no old tuple');
    assert.deepEqual(upd!.newTuple, ['2', 'second', UNCHANGED_TOAST, null, null, null]);
  });

  test("update of the key sends the old key ('K'); delete sends the key", async () => {
    await db.query(`UPDATE items SET id = 3 WHERE id = 1`);
    await db.query(`DELETE FROM items WHERE id = 3`);
    const c = await capture();
    const [upd] = only(c, 'update');
    assert.equal(upd!.oldKind, 'K');
    assert.deepEqual(upd!.oldTuple, ['1', null, null, null, null, null]);
    assert.equal(upd!.newTuple[0], '3');
    const [del] = only(c, 'delete');
    assert.equal(del!.oldKind, 'K');
    assert.deepEqual(del!.oldTuple, ['3', null, null, null, null, null]);
  });

  test("REPLICA IDENTITY FULL sends whole old tuples ('O')", async () => {
    await db.query(`INSERT INTO full_t VALUES (1, 'before')`);
    await db.query(`UPDATE full_t SET v = 'after' WHERE id = 1`);
    await db.query(`DELETE FROM full_t WHERE id = 1`);
    const c = await capture();
    assert.equal(only(c, 'relation')[0]!.replicaIdentity, 'f');
    const [upd] = only(c, 'update');
    assert.equal(upd!.oldKind, 'O');
    assert.deepEqual(upd!.oldTuple, ['1', 'before']);
    assert.deepEqual(upd!.newTuple, ['1', 'after']);
    const [del] = only(c, 'delete');
    assert.equal(del!.oldKind, 'O');
    assert.deepEqual(del!.oldTuple, ['1', 'after']);
  });

  test('truncate of several tables with CASCADE and RESTART IDENTITY', async () => {
    await db.query(`INSERT INTO serials (v) VALUES ('x')`);
    await db.query(`TRUNCATE full_t, serials RESTART IDENTITY CASCADE`);
    const c = await capture();
    const rels = only(c, 'relation');
    const [tr] = only(c, 'truncate');
    assert.equal(tr!.cascade, true);
    assert.equal(tr!.restartIdentity, true);
    const names = tr!.relationIds.map((id) => rels.find((r) => r.relationId === id)?.name).sort();
    assert.deepEqual(names, ['full_t', 'serials']);
  });

  test('transactional and non-transactional pg_logical_emit_message', async () => {
    await db.query(`BEGIN; SELECT pg_logical_emit_message(true, 'tandem', 'in-tx'); INSERT INTO full_t VALUES (9, 'z'); COMMIT`);
    await db.query(`SELECT pg_logical_emit_message(false, 'tandem-hb', '\\x00ff01'::bytea, true)`);
    const c = await capture();
    assert.deepEqual(tags(c), ['begin', 'message', 'relation', 'insert', 'commit', 'message']);
    const [tx, nontx] = only(c, 'message');
    assert.equal(tx!.transactional, true);
    assert.equal(tx!.prefix, 'tandem');
    assert.deepEqual(tx!.content, Buffer.from('in-tx'));
    assert.equal(nontx!.transactional, false);
    assert.equal(nontx!.prefix, 'tandem-hb');
    assert.deepEqual(nontx!.content, Buffer.from([0x00, 0xff, 0x01]));
    assert.ok(nontx!.lsn > 0n);
  });

  test('a transaction applied under a replication origin carries an Origin message', async () => {
    await db.query(`SELECT pg_replication_origin_create('tandem_peer')`);
    await db.query(`SELECT pg_replication_origin_session_setup('tandem_peer')`);
    try {
      await db.query(`BEGIN; SELECT pg_replication_origin_xact_setup('0/ABCDEF', now()); INSERT INTO full_t VALUES (10, 'from peer'); COMMIT`);
    } finally {
      await db.query(`SELECT pg_replication_origin_session_reset()`);
    }
    const c = await capture();
    // Each SQL-interface call is a new decoding session, so the Relation is sent again.
    assert.deepEqual(tags(c), ['begin', 'origin', 'relation', 'insert', 'commit']);
    const [origin] = only(c, 'origin');
    assert.equal(origin!.name, 'tandem_peer');
    assert.equal(origin!.commitLsn, 0xabcdefn);
    // With origin 'none' the same transaction is filtered out at the source (no loops).
    await db.query(`SELECT pg_replication_origin_session_setup('tandem_peer')`);
    try {
      await db.query(`INSERT INTO full_t VALUES (11, 'from peer again')`);
    } finally {
      await db.query(`SELECT pg_replication_origin_session_reset()`);
    }
    await db.query(`INSERT INTO full_t VALUES (12, 'local')`);
    const filtered = await capture({ origin: 'none' });
    const inserts = only(filtered, 'insert').map((m) => (m.newTuple as TupleValue[])[0]);
    assert.deepEqual(inserts, ['12']);
  });

  test("binary mode sends 'b' values", async () => {
    await db.query(`INSERT INTO full_t VALUES (258, NULL)`);
    const c = await capture({ binary: 'true' });
    const [ins] = only(c, 'insert');
    assert.deepEqual(ins!.newTuple[0], Buffer.from([0, 0, 1, 2]));
    assert.equal(ins!.newTuple[1], null);
  });
});
