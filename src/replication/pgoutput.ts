/**
 * A pure decoder of PostgreSQL's pgoutput plugin messages, protocol versions
 * 1–4, as documented in "Logical Replication Message Formats":
 * https://www.postgresql.org/docs/17/protocol-logicalrep-message-formats.html
 *
 * tandem runs pgoutput without `streaming` and without `two_phase`, so the
 * optional transaction id that protocol 2+ puts into Relation, Type, Insert,
 * Update, Delete, Truncate and Message exists only inside a Stream Start /
 * Stream Stop block and never reaches us; the Stream* and prepared-transaction
 * messages are recognised and rejected with a clear error instead.
 *
 * No I/O. Every read is bounds-checked: malformed input raises
 * `TANDEM_ERR_PROTOCOL` naming the message and the byte offset, never a
 * RangeError, and a bogus count can never make the decoder loop or allocate
 * beyond the buffer it was given.
 */
import { TandemError } from '../core/errors.ts';

/** Message type bytes of pgoutput, named as the spec names the messages. */
export const PGOUTPUT_MESSAGE_TYPES = {
  Begin: 0x42, // 'B'
  Message: 0x4d, // 'M'
  Commit: 0x43, // 'C'
  Origin: 0x4f, // 'O'
  Relation: 0x52, // 'R'
  Type: 0x59, // 'Y'
  Insert: 0x49, // 'I'
  Update: 0x55, // 'U'
  Delete: 0x44, // 'D'
  Truncate: 0x54, // 'T'
  StreamStart: 0x53, // 'S'   protocol 2+, streaming only
  StreamStop: 0x45, // 'E'    protocol 2+, streaming only
  StreamCommit: 0x63, // 'c'  protocol 2+, streaming only
  StreamAbort: 0x41, // 'A'   protocol 2+, streaming only
  BeginPrepare: 0x62, // 'b'  protocol 3+, two_phase only
  Prepare: 0x50, // 'P'       protocol 3+, two_phase only
  CommitPrepared: 0x4b, // 'K' protocol 3+, two_phase only
  RollbackPrepared: 0x72, // 'r' protocol 3+, two_phase only
  StreamPrepare: 0x70, // 'p' protocol 3+, streaming + two_phase only
} as const;

/** TupleData column kinds ("Logical Replication Message Formats", TupleData). */
export const TUPLE_DATA_KINDS = {
  Null: 0x6e, // 'n'
  UnchangedToast: 0x75, // 'u'
  Text: 0x74, // 't'
  Binary: 0x62, // 'b'
} as const;

/** A column whose TOASTed value did not change; the real value is not in the message ('u'). */
export const UNCHANGED_TOAST: unique symbol = Symbol.for('tandem.pgoutput.unchangedToast');

/** One column value of a tuple: text ('t'), null ('n'), binary ('b') or unchanged TOAST ('u'). */
export type TupleValue = string | null | Buffer | typeof UNCHANGED_TOAST;

/** One column of a Relation message. */
export interface RelationColumn {
  /** Raw flags; bit 1 marks a column that is part of the replica identity key. */
  flags: number;
  isKey: boolean;
  name: string;
  typeOid: number;
  typeMod: number;
}

/** A decoded pgoutput message (Begin, Commit, Origin, Relation, Type, Insert, Update, Delete, Truncate, Message). */
export type PgOutputMessage =
  | { tag: 'begin'; finalLsn: bigint; commitTime: bigint; xid: number }
  | { tag: 'commit'; flags: number; commitLsn: bigint; endLsn: bigint; commitTime: bigint }
  | { tag: 'origin'; commitLsn: bigint; name: string }
  | { tag: 'relation'; relationId: number; schema: string; name: string; replicaIdentity: 'd' | 'n' | 'f' | 'i'; columns: RelationColumn[] }
  | { tag: 'type'; typeOid: number; schema: string; name: string }
  | { tag: 'insert'; relationId: number; newTuple: TupleValue[] }
  | { tag: 'update'; relationId: number; oldKind?: 'K' | 'O'; oldTuple?: TupleValue[]; newTuple: TupleValue[] }
  | { tag: 'delete'; relationId: number; oldKind: 'K' | 'O'; oldTuple: TupleValue[] }
  | { tag: 'truncate'; relationIds: number[]; cascade: boolean; restartIdentity: boolean }
  | { tag: 'message'; transactional: boolean; lsn: bigint; prefix: string; content: Buffer };

/** Truncate option bits. */
const TRUNCATE_CASCADE = 1;
const TRUNCATE_RESTART_IDENTITY = 2;

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** A bounds-checked big-endian reader over one message; errors name the message and the byte offset. */
class Reader {
  pos: number;
  message = 'pgoutput message';
  constructor(
    readonly buf: Buffer,
    start: number,
  ) {
    this.pos = start;
  }

  fail(what: string, at = this.pos): never {
    throw new TandemError('TANDEM_ERR_PROTOCOL', `${this.message}: ${what} at byte ${at}`, { details: { offset: at, length: this.buf.length } });
  }

  need(bytes: number, what: string): void {
    if (this.pos + bytes > this.buf.length) {
      this.fail(`truncated ${what} (needs ${bytes} bytes, ${Math.max(0, this.buf.length - this.pos)} left)`);
    }
  }

  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }

  i16(what: string): number {
    this.need(2, what);
    const v = this.buf.readInt16BE(this.pos);
    this.pos += 2;
    return v;
  }

  i32(what: string): number {
    this.need(4, what);
    const v = this.buf.readInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  u32(what: string): number {
    this.need(4, what);
    const v = this.buf.readUInt32BE(this.pos);
    this.pos += 4;
    return v;
  }

  /** Int64 (XLogRecPtr): unsigned. */
  lsn(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigUInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** Int64 (TimestampTz): signed µs since 2000-01-01. */
  time(what: string): bigint {
    this.need(8, what);
    const v = this.buf.readBigInt64BE(this.pos);
    this.pos += 8;
    return v;
  }

  /** A NUL-terminated UTF-8 string. */
  cstring(what: string): string {
    const start = this.pos;
    const end = this.buf.indexOf(0, start);
    if (end === -1) this.fail(`unterminated ${what} (no NUL byte before the end)`, start);
    this.pos = end + 1;
    return this.text(start, end, what);
  }

  text(start: number, end: number, what: string | (() => string)): string {
    // Buffer's own decoder is fast but replaces invalid bytes with U+FFFD: only text that contains one
    // (rare) goes through the validating decoder, which tells a real U+FFFD from invalid input.
    const s = this.buf.toString('utf8', start, end);
    if (!s.includes('\uFFFD')) return s;
    try {
      return utf8.decode(this.buf.subarray(start, end));
    } catch {
      return this.fail(`${typeof what === 'string' ? what : what()} is not valid UTF-8`, start);
    }
  }

  /** A copy of the next `n` bytes (the buffer may be a view into a reused network buffer). */
  bytes(n: number, what: string): Buffer {
    if (n < 0) this.fail(`negative length ${n} of ${what}`, this.pos - 4);
    this.need(n, what);
    const v = Buffer.from(this.buf.subarray(this.pos, this.pos + n));
    this.pos += n;
    return v;
  }
}

/**
 * TupleData: Int16 column count, then per column a kind byte and for 't'/'b' an Int32 length and the bytes.
 * The hot path of replication: bounds are checked inline and error texts are built only on failure.
 */
function readTuple(r: Reader, what: string): TupleValue[] {
  const buf = r.buf;
  const countAt = r.pos;
  const count = r.i16(`${what} column count`);
  if (count < 0) r.fail(`negative ${what} column count ${count}`, countAt);
  // Each column takes at least one byte: a count larger than what is left is bogus.
  if (count > buf.length - r.pos) r.fail(`${what} column count ${count} exceeds the ${buf.length - r.pos} bytes left`, countAt);
  const values: TupleValue[] = new Array<TupleValue>(count);
  for (let i = 0; i < count; i++) {
    const kindAt = r.pos;
    if (kindAt >= buf.length) r.need(1, `${what} column ${i} kind`);
    const kind = buf[kindAt]!;
    r.pos = kindAt + 1;
    switch (kind) {
      case TUPLE_DATA_KINDS.Null:
        values[i] = null;
        break;
      case TUPLE_DATA_KINDS.UnchangedToast:
        values[i] = UNCHANGED_TOAST;
        break;
      case TUPLE_DATA_KINDS.Text: {
        if (r.pos + 4 > buf.length) r.need(4, `${what} column ${i} length`);
        const len = buf.readInt32BE(r.pos);
        const start = r.pos + 4;
        r.pos = start;
        if (len < 0) r.fail(`negative length ${len} of ${what} column ${i} text value`, start - 4);
        if (start + len > buf.length) r.need(len, `${what} column ${i} text value`);
        r.pos = start + len;
        values[i] = r.text(start, r.pos, () => `${what} column ${i} text value`);
        break;
      }
      case TUPLE_DATA_KINDS.Binary: {
        const len = r.i32(`${what} column ${i} length`);
        values[i] = r.bytes(len, `${what} column ${i} binary value`);
        break;
      }
      default:
        r.fail(`unknown ${what} column ${i} kind ${describeByte(kind)} (expected 'n', 'u', 't' or 'b')`, kindAt);
    }
  }
  return values;
}

function describeByte(b: number): string {
  const ch = b >= 0x20 && b < 0x7f ? ` ${JSON.stringify(String.fromCharCode(b))}` : '';
  return `0x${b.toString(16).padStart(2, '0')}${ch}`;
}

function relationId(r: Reader): number {
  return r.u32('relation OID');
}

/** The body of each message type after its type byte. */
function decodeBody(r: Reader, type: number, typeAt: number): PgOutputMessage {
  switch (type) {
    case PGOUTPUT_MESSAGE_TYPES.Begin:
      r.message = 'pgoutput Begin';
      return { tag: 'begin', finalLsn: r.lsn('final LSN'), commitTime: r.time('commit timestamp'), xid: r.u32('xid') };

    case PGOUTPUT_MESSAGE_TYPES.Commit:
      r.message = 'pgoutput Commit';
      return { tag: 'commit', flags: r.u8('flags'), commitLsn: r.lsn('commit LSN'), endLsn: r.lsn('end LSN'), commitTime: r.time('commit timestamp') };

    case PGOUTPUT_MESSAGE_TYPES.Origin:
      r.message = 'pgoutput Origin';
      return { tag: 'origin', commitLsn: r.lsn('origin commit LSN'), name: r.cstring('origin name') };

    case PGOUTPUT_MESSAGE_TYPES.Relation: {
      r.message = 'pgoutput Relation';
      const id = relationId(r);
      const schema = r.cstring('namespace');
      const name = r.cstring('relation name');
      const identAt = r.pos;
      const ident = r.u8('replica identity');
      const replicaIdentity = String.fromCharCode(ident);
      if (replicaIdentity !== 'd' && replicaIdentity !== 'n' && replicaIdentity !== 'f' && replicaIdentity !== 'i') {
        r.fail(`unknown replica identity ${describeByte(ident)} (expected 'd', 'n', 'f' or 'i')`, identAt);
      }
      const countAt = r.pos;
      const count = r.i16('column count');
      if (count < 0) r.fail(`negative column count ${count}`, countAt);
      // A column takes at least 10 bytes (flags, empty name, type OID, typmod).
      if (count * 10 > r.buf.length - r.pos) r.fail(`column count ${count} exceeds the ${r.buf.length - r.pos} bytes left`, countAt);
      const columns: RelationColumn[] = [];
      for (let i = 0; i < count; i++) {
        const flags = r.u8(`column ${i} flags`);
        const colName = r.cstring(`column ${i} name`);
        const typeOid = r.u32(`column ${i} type OID`);
        const typeMod = r.i32(`column ${i} type modifier`);
        columns.push({ flags, isKey: (flags & 1) !== 0, name: colName, typeOid, typeMod });
      }
      return { tag: 'relation', relationId: id, schema, name, replicaIdentity, columns };
    }

    case PGOUTPUT_MESSAGE_TYPES.Type:
      r.message = 'pgoutput Type';
      return { tag: 'type', typeOid: r.u32('type OID'), schema: r.cstring('namespace'), name: r.cstring('type name') };

    case PGOUTPUT_MESSAGE_TYPES.Insert: {
      r.message = 'pgoutput Insert';
      const id = relationId(r);
      const markAt = r.pos;
      const mark = r.u8('new tuple marker');
      if (mark !== 0x4e) r.fail(`expected 'N' before the new tuple, found ${describeByte(mark)}`, markAt);
      return { tag: 'insert', relationId: id, newTuple: readTuple(r, 'new tuple') };
    }

    case PGOUTPUT_MESSAGE_TYPES.Update: {
      r.message = 'pgoutput Update';
      const id = relationId(r);
      const markAt = r.pos;
      let mark = r.u8('tuple marker');
      let oldKind: 'K' | 'O' | undefined;
      let oldTuple: TupleValue[] | undefined;
      if (mark === 0x4b || mark === 0x4f) {
        oldKind = mark === 0x4b ? 'K' : 'O';
        oldTuple = readTuple(r, oldKind === 'K' ? 'old key tuple' : 'old tuple');
        const nextAt = r.pos;
        mark = r.u8('new tuple marker');
        if (mark !== 0x4e) r.fail(`expected 'N' before the new tuple, found ${describeByte(mark)}`, nextAt);
      } else if (mark !== 0x4e) {
        r.fail(`expected 'K', 'O' or 'N', found ${describeByte(mark)}`, markAt);
      }
      const newTuple = readTuple(r, 'new tuple');
      return oldKind ? { tag: 'update', relationId: id, oldKind, oldTuple: oldTuple!, newTuple } : { tag: 'update', relationId: id, newTuple };
    }

    case PGOUTPUT_MESSAGE_TYPES.Delete: {
      r.message = 'pgoutput Delete';
      const id = relationId(r);
      const markAt = r.pos;
      const mark = r.u8('old tuple marker');
      if (mark !== 0x4b && mark !== 0x4f) r.fail(`expected 'K' or 'O', found ${describeByte(mark)}`, markAt);
      const oldKind = mark === 0x4b ? 'K' : 'O';
      return { tag: 'delete', relationId: id, oldKind, oldTuple: readTuple(r, oldKind === 'K' ? 'old key tuple' : 'old tuple') };
    }

    case PGOUTPUT_MESSAGE_TYPES.Truncate: {
      r.message = 'pgoutput Truncate';
      const countAt = r.pos;
      const count = r.i32('relation count');
      if (count < 0) r.fail(`negative relation count ${count}`, countAt);
      const options = r.u8('option bits');
      if (count * 4 > r.buf.length - r.pos) r.fail(`relation count ${count} exceeds the ${r.buf.length - r.pos} bytes left`, countAt);
      const relationIds: number[] = [];
      for (let i = 0; i < count; i++) relationIds.push(r.u32(`relation ${i} OID`));
      return { tag: 'truncate', relationIds, cascade: (options & TRUNCATE_CASCADE) !== 0, restartIdentity: (options & TRUNCATE_RESTART_IDENTITY) !== 0 };
    }

    case PGOUTPUT_MESSAGE_TYPES.Message: {
      r.message = 'pgoutput Message';
      const flagsAt = r.pos;
      const flags = r.u8('flags');
      if (flags > 1) r.fail(`unknown flags ${flags} (expected 0 or 1)`, flagsAt);
      const lsn = r.lsn('message LSN');
      const prefix = r.cstring('prefix');
      const len = r.i32('content length');
      return { tag: 'message', transactional: flags === 1, lsn, prefix, content: r.bytes(len, 'content') };
    }

    // Protocol 2+ streaming of in-progress transactions: we never ask for it.
    case PGOUTPUT_MESSAGE_TYPES.StreamStart: {
      r.message = 'pgoutput Stream Start';
      const xid = r.u32('xid');
      return rejectStreaming(r, `Stream Start of xid ${xid}`, typeAt);
    }
    case PGOUTPUT_MESSAGE_TYPES.StreamStop:
      r.message = 'pgoutput Stream Stop';
      return rejectStreaming(r, 'Stream Stop', typeAt);
    case PGOUTPUT_MESSAGE_TYPES.StreamCommit: {
      r.message = 'pgoutput Stream Commit';
      const xid = r.u32('xid');
      return rejectStreaming(r, `Stream Commit of xid ${xid}`, typeAt);
    }
    case PGOUTPUT_MESSAGE_TYPES.StreamAbort: {
      r.message = 'pgoutput Stream Abort';
      const xid = r.u32('xid');
      return rejectStreaming(r, `Stream Abort of xid ${xid}`, typeAt);
    }
    case PGOUTPUT_MESSAGE_TYPES.StreamPrepare:
      r.message = 'pgoutput Stream Prepare';
      return rejectStreaming(r, 'Stream Prepare', typeAt);

    // Protocol 3+ two-phase commit decoding: we never ask for it either.
    case PGOUTPUT_MESSAGE_TYPES.BeginPrepare:
    case PGOUTPUT_MESSAGE_TYPES.Prepare:
    case PGOUTPUT_MESSAGE_TYPES.CommitPrepared:
    case PGOUTPUT_MESSAGE_TYPES.RollbackPrepared: {
      const name = Object.entries(PGOUTPUT_MESSAGE_TYPES).find(([, v]) => v === type)![0].replace(/([a-z])([A-Z])/g, '$1 $2');
      throw new TandemError(
        'TANDEM_ERR_PROTOCOL',
        `pgoutput ${name} message at byte ${typeAt}: two-phase decoding was not requested (tandem never sets two_phase); check the slot was created without two_phase`,
        { details: { offset: typeAt } },
      );
    }

    default:
      throw new TandemError('TANDEM_ERR_PROTOCOL', `unknown pgoutput message type ${describeByte(type)} at byte ${typeAt}`, { details: { offset: typeAt } });
  }
}

function rejectStreaming(r: Reader, what: string, typeAt: number): never {
  throw new TandemError(
    'TANDEM_ERR_PROTOCOL',
    `${r.message} message at byte ${typeAt}: ${what} received, but streaming of in-progress transactions was not requested (tandem never sets the pgoutput "streaming" option)`,
    { details: { offset: typeAt } },
  );
}

/**
 * Decode one pgoutput message starting at `offset` and report where it ended,
 * for buffers holding several messages back to back. Returned Buffers
 * (binary values, Message content) are views into `buf`.
 */
export function decodePgOutputAt(buf: Buffer, offset = 0): { message: PgOutputMessage; end: number } {
  if (!Number.isInteger(offset) || offset < 0 || offset > buf.length) {
    throw new TandemError('TANDEM_ERR_PROTOCOL', `pgoutput message: offset ${offset} is outside the ${buf.length}-byte buffer`);
  }
  const r = new Reader(buf, offset);
  const type = r.u8('message type');
  const message = decodeBody(r, type, offset);
  return { message, end: r.pos };
}

/**
 * Decode the one pgoutput message in `buf` from `offset` to its end (one
 * XLogData payload carries exactly one message); trailing bytes are an error.
 * Returned Buffers (binary values, Message content) are views into `buf`.
 */
export function decodePgOutput(buf: Buffer, offset = 0): PgOutputMessage {
  const { message, end } = decodePgOutputAt(buf, offset);
  if (end !== buf.length) {
    throw new TandemError('TANDEM_ERR_PROTOCOL', `pgoutput ${message.tag} message: ${buf.length - end} unexpected trailing bytes at byte ${end}`, {
      details: { offset: end, length: buf.length },
    });
  }
  return message;
}

/** A growable big-endian writer for `encodePgOutput`. */
class Writer {
  #parts: Buffer[] = [];
  u8(v: number): this {
    this.#parts.push(Buffer.from([v]));
    return this;
  }
  i16(v: number): this {
    const b = Buffer.alloc(2);
    b.writeInt16BE(v);
    this.#parts.push(b);
    return this;
  }
  i32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeInt32BE(v);
    this.#parts.push(b);
    return this;
  }
  u32(v: number): this {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    this.#parts.push(b);
    return this;
  }
  u64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(v);
    this.#parts.push(b);
    return this;
  }
  i64(v: bigint): this {
    const b = Buffer.alloc(8);
    b.writeBigInt64BE(v);
    this.#parts.push(b);
    return this;
  }
  cstring(s: string): this {
    this.#parts.push(Buffer.from(s, 'utf8'), Buffer.from([0]));
    return this;
  }
  raw(b: Buffer): this {
    this.#parts.push(b);
    return this;
  }
  tuple(values: readonly TupleValue[]): this {
    this.i16(values.length);
    for (const v of values) {
      if (v === null) this.u8(TUPLE_DATA_KINDS.Null);
      else if (v === UNCHANGED_TOAST) this.u8(TUPLE_DATA_KINDS.UnchangedToast);
      else if (typeof v === 'string') {
        const b = Buffer.from(v, 'utf8');
        this.u8(TUPLE_DATA_KINDS.Text).i32(b.length).raw(b);
      } else this.u8(TUPLE_DATA_KINDS.Binary).i32(v.length).raw(v);
    }
    return this;
  }
  done(): Buffer {
    return Buffer.concat(this.#parts);
  }
}

/**
 * Encode a message exactly as pgoutput (without streaming) would send it.
 * The inverse of `decodePgOutput`; tests and fakes of a source use it.
 */
export function encodePgOutput(m: PgOutputMessage): Buffer {
  const w = new Writer();
  switch (m.tag) {
    case 'begin':
      return w.u8(PGOUTPUT_MESSAGE_TYPES.Begin).u64(m.finalLsn).i64(m.commitTime).u32(m.xid).done();
    case 'commit':
      return w.u8(PGOUTPUT_MESSAGE_TYPES.Commit).u8(m.flags).u64(m.commitLsn).u64(m.endLsn).i64(m.commitTime).done();
    case 'origin':
      return w.u8(PGOUTPUT_MESSAGE_TYPES.Origin).u64(m.commitLsn).cstring(m.name).done();
    case 'relation':
      w.u8(PGOUTPUT_MESSAGE_TYPES.Relation).u32(m.relationId).cstring(m.schema).cstring(m.name).u8(m.replicaIdentity.charCodeAt(0)).i16(m.columns.length);
      for (const c of m.columns) w.u8(c.flags).cstring(c.name).u32(c.typeOid).i32(c.typeMod);
      return w.done();
    case 'type':
      return w.u8(PGOUTPUT_MESSAGE_TYPES.Type).u32(m.typeOid).cstring(m.schema).cstring(m.name).done();
    case 'insert':
      return w.u8(PGOUTPUT_MESSAGE_TYPES.Insert).u32(m.relationId).u8(0x4e).tuple(m.newTuple).done();
    case 'update':
      w.u8(PGOUTPUT_MESSAGE_TYPES.Update).u32(m.relationId);
      if (m.oldKind && m.oldTuple) w.u8(m.oldKind.charCodeAt(0)).tuple(m.oldTuple);
      return w.u8(0x4e).tuple(m.newTuple).done();
    case 'delete':
      return w.u8(PGOUTPUT_MESSAGE_TYPES.Delete).u32(m.relationId).u8(m.oldKind.charCodeAt(0)).tuple(m.oldTuple).done();
    case 'truncate':
      w.u8(PGOUTPUT_MESSAGE_TYPES.Truncate).i32(m.relationIds.length).u8((m.cascade ? TRUNCATE_CASCADE : 0) | (m.restartIdentity ? TRUNCATE_RESTART_IDENTITY : 0));
      for (const id of m.relationIds) w.u32(id);
      return w.done();
    case 'message':
      return w.u8(PGOUTPUT_MESSAGE_TYPES.Message).u8(m.transactional ? 1 : 0).u64(m.lsn).cstring(m.prefix).i32(m.content.length).raw(m.content).done();
  }
}
