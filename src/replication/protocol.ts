/**
 * Pure codecs of the streaming replication protocol's CopyData payloads
 * (PostgreSQL docs, "Streaming Replication Protocol", START_REPLICATION):
 * `XLogData` ('w') and `PrimaryKeepaliveMessage` ('k') from the server, and
 * the `StandbyStatusUpdate` ('r') we send back. Plus LSN text and the
 * PostgreSQL timestamp epoch. No I/O.
 *
 * https://www.postgresql.org/docs/17/protocol-replication.html
 */
import { TandemError } from '../core/errors.ts';

/** CopyData message type bytes of the streaming replication sub-protocol. */
export const COPY_DATA_TYPES = {
  XLogData: 0x77, // 'w'
  PrimaryKeepaliveMessage: 0x6b, // 'k'
  StandbyStatusUpdate: 0x72, // 'r'
  HotStandbyFeedbackMessage: 0x68, // 'h' (standby → primary; we never send it)
} as const;

/** Microseconds between the Unix epoch and PostgreSQL's epoch, 2000-01-01T00:00:00Z. */
export const PG_EPOCH_US = 946_684_800_000_000n;

const U64_MAX = (1n << 64n) - 1n;

/**
 * Parse an LSN as PostgreSQL prints it (`%X/%X`, e.g. `0/16B3748`; the
 * zero-padded `0/016B3748` of newer servers too) into a bigint.
 */
export function parseLsn(text: string): bigint {
  const m = /^([0-9A-Fa-f]{1,8})\/([0-9A-Fa-f]{1,8})$/.exec(text);
  if (!m) throw new TandemError('TANDEM_ERR_PROTOCOL', `not an LSN: ${JSON.stringify(text)} (expected two hex numbers like "0/16B3748")`);
  return (BigInt(`0x${m[1]}`) << 32n) | BigInt(`0x${m[2]}`);
}

/** Format an LSN the way PostgreSQL 17 prints it: `%X/%X`, upper-case hex. */
export function formatLsn(lsn: bigint): string {
  if (lsn < 0n || lsn > U64_MAX) throw new TandemError('TANDEM_ERR_PROTOCOL', `LSN out of range: ${lsn}`);
  return `${(lsn >> 32n).toString(16).toUpperCase()}/${(lsn & 0xffff_ffffn).toString(16).toUpperCase()}`;
}

/** Floor division for bigints (JavaScript's `/` truncates toward zero). */
function floorDiv(a: bigint, b: bigint): bigint {
  const q = a / b;
  return (a % b !== 0n && (a < 0n) !== (b < 0n)) ? q - 1n : q;
}

/** PostgreSQL time (µs since 2000-01-01 UTC) → Unix time in µs. */
export function pgTimeToUnixUs(us: bigint): bigint {
  return us + PG_EPOCH_US;
}

/** Unix time in µs → PostgreSQL time (µs since 2000-01-01 UTC). */
export function unixUsToPgTime(us: bigint): bigint {
  return us - PG_EPOCH_US;
}

/** PostgreSQL time (µs since 2000-01-01 UTC) → Date (millisecond precision, rounded down). */
export function pgTimeToDate(us: bigint): Date {
  return new Date(Number(floorDiv(us + PG_EPOCH_US, 1000n)));
}

/** Date → PostgreSQL time (µs since 2000-01-01 UTC). */
export function dateToPgTime(d: Date): bigint {
  const ms = d.getTime();
  if (!Number.isFinite(ms)) throw new TandemError('TANDEM_ERR_PROTOCOL', 'cannot convert an invalid Date to a PostgreSQL timestamp');
  return BigInt(ms) * 1000n - PG_EPOCH_US;
}

/** The current wall-clock time as PostgreSQL time (µs since 2000-01-01 UTC). */
export function nowPgTime(): bigint {
  return dateToPgTime(new Date());
}

/** A decoded CopyData payload from the server during START_REPLICATION. */
export type CopyDataMessage =
  | { kind: 'XLogData'; walStart: bigint; walEnd: bigint; sendTime: bigint; data: Buffer }
  | { kind: 'PrimaryKeepalive'; walEnd: bigint; sendTime: bigint; replyRequested: boolean };

function need(buf: Buffer, bytes: number, what: string): void {
  if (buf.length < bytes) {
    throw new TandemError('TANDEM_ERR_PROTOCOL', `${what}: needs ${bytes} bytes, CopyData has ${buf.length}`, { details: { length: buf.length } });
  }
}

/**
 * Decode one CopyData payload the server sends in CopyBoth mode.
 * `data` of XLogData is a view into `buf` (copy it to keep it past `buf`'s life).
 */
export function decodeCopyData(buf: Buffer): CopyDataMessage {
  need(buf, 1, 'replication CopyData');
  const type = buf[0]!;
  switch (type) {
    case COPY_DATA_TYPES.XLogData:
      // Byte1('w') Int64 dataStart, Int64 walEnd, Int64 sendTime, Byte(n) data.
      need(buf, 25, 'XLogData header');
      return {
        kind: 'XLogData',
        walStart: buf.readBigUInt64BE(1),
        walEnd: buf.readBigUInt64BE(9),
        sendTime: buf.readBigInt64BE(17),
        data: buf.subarray(25),
      };
    case COPY_DATA_TYPES.PrimaryKeepaliveMessage: {
      // Byte1('k') Int64 walEnd, Int64 sendTime, Byte1 replyRequested (1 = reply as soon as possible).
      need(buf, 18, 'PrimaryKeepaliveMessage');
      if (buf.length !== 18) {
        throw new TandemError('TANDEM_ERR_PROTOCOL', `PrimaryKeepaliveMessage: expected 18 bytes, CopyData has ${buf.length}`);
      }
      const reply = buf[17]!;
      if (reply > 1) throw new TandemError('TANDEM_ERR_PROTOCOL', `PrimaryKeepaliveMessage: reply flag at byte 17 is ${reply}, expected 0 or 1`);
      return { kind: 'PrimaryKeepalive', walEnd: buf.readBigUInt64BE(1), sendTime: buf.readBigInt64BE(9), replyRequested: reply === 1 };
    }
    default:
      throw new TandemError(
        'TANDEM_ERR_PROTOCOL',
        `unexpected replication CopyData type 0x${type.toString(16).padStart(2, '0')} (${JSON.stringify(String.fromCharCode(type))}) at byte 0; expected 'w' (XLogData) or 'k' (PrimaryKeepaliveMessage)`,
      );
  }
}

/** What a standby reports: the WAL positions it has written, flushed and applied. */
export interface StandbyStatus {
  /** Last WAL byte + 1 received and written. */
  written: bigint;
  /** Last WAL byte + 1 durably stored; for a logical slot this becomes `confirmed_flush_lsn`. */
  flushed: bigint;
  /** Last WAL byte + 1 applied. */
  applied: bigint;
  /** Client clock at send time, PostgreSQL time; default now. */
  sendTime?: bigint;
  /** Ask the server to answer immediately with a keepalive. */
  replyRequested?: boolean;
}

function checkLsn(value: bigint, what: string): void {
  if (value < 0n || value > U64_MAX) throw new TandemError('TANDEM_ERR_PROTOCOL', `StandbyStatusUpdate: ${what} LSN out of range: ${value}`);
}

/**
 * Encode a StandbyStatusUpdate: Byte1('r'), Int64 written, Int64 flushed,
 * Int64 applied, Int64 sendTime (µs since 2000-01-01), Byte1 replyRequested.
 * The LSNs are sent exactly as given: no "+1" (the caller passes a commit's end LSN).
 */
export function encodeStandbyStatusUpdate(u: StandbyStatus): Buffer {
  checkLsn(u.written, 'written');
  checkLsn(u.flushed, 'flushed');
  checkLsn(u.applied, 'applied');
  const buf = Buffer.alloc(34);
  buf[0] = COPY_DATA_TYPES.StandbyStatusUpdate;
  buf.writeBigUInt64BE(u.written, 1);
  buf.writeBigUInt64BE(u.flushed, 9);
  buf.writeBigUInt64BE(u.applied, 17);
  buf.writeBigInt64BE(u.sendTime ?? nowPgTime(), 25);
  buf[33] = u.replyRequested ? 1 : 0;
  return buf;
}

/** Decode a StandbyStatusUpdate (for tests and tools that sit in the middle of a stream). */
export function decodeStandbyStatusUpdate(buf: Buffer): Required<StandbyStatus> {
  if (buf.length !== 34 || buf[0] !== COPY_DATA_TYPES.StandbyStatusUpdate) {
    throw new TandemError('TANDEM_ERR_PROTOCOL', `StandbyStatusUpdate: expected 34 bytes starting with 'r', found ${buf.length} bytes starting with 0x${(buf[0] ?? 0).toString(16)}`);
  }
  return {
    written: buf.readBigUInt64BE(1),
    flushed: buf.readBigUInt64BE(9),
    applied: buf.readBigUInt64BE(17),
    sendTime: buf.readBigInt64BE(25),
    replyRequested: buf[33] === 1,
  };
}
