import { test } from 'node:test';
import assert from 'node:assert/strict';
import { isTandemError } from '../core/errors.ts';
import {
  PG_EPOCH_US,
  dateToPgTime,
  decodeCopyData,
  decodeStandbyStatusUpdate,
  encodeStandbyStatusUpdate,
  formatLsn,
  nowPgTime,
  parseLsn,
  pgTimeToDate,
  pgTimeToUnixUs,
  unixUsToPgTime,
} from './protocol.ts';

function protocolError(fn: () => unknown, pattern?: RegExp): void {
  assert.throws(fn, (err: unknown) => isTandemError(err, 'TANDEM_ERR_PROTOCOL') && (!pattern || pattern.test((err as Error).message)));
}

test('LSN text round-trips and rejects garbage', () => {
  assert.equal(parseLsn('0/16B3748'), 0x16b3748n);
  assert.equal(parseLsn('0/0'), 0n);
  assert.equal(parseLsn('1/0'), 1n << 32n);
  assert.equal(parseLsn('FFFFFFFF/FFFFFFFF'), (1n << 64n) - 1n);
  assert.equal(parseLsn('0/016b3748'), 0x16b3748n, 'zero-padded form of newer servers');
  assert.equal(formatLsn(0x16b3748n), '0/16B3748');
  assert.equal(formatLsn((0x2an << 32n) | 0xan), '2A/A');
  for (const v of [0n, 1n, 0xffff_ffffn, 1n << 32n, 0x1234_5678_9abc_def0n, (1n << 64n) - 1n]) assert.equal(parseLsn(formatLsn(v)), v);
  for (const bad of ['', '0', '0/', '/0', '0/1/2', 'G/0', '123456789/0', ' 0/1', '0/1 ', '-1/0']) protocolError(() => parseLsn(bad), /not an LSN/);
  protocolError(() => formatLsn(-1n));
  protocolError(() => formatLsn(1n << 64n));
});

test('PostgreSQL epoch is 2000-01-01 and time helpers agree with it', () => {
  assert.equal(PG_EPOCH_US, BigInt(Date.UTC(2000, 0, 1)) * 1000n);
  assert.equal(pgTimeToDate(0n).toISOString(), '2000-01-01T00:00:00.000Z');
  assert.equal(dateToPgTime(new Date('2000-01-01T00:00:00Z')), 0n);
  assert.equal(dateToPgTime(new Date('2024-01-01T00:00:00.123Z')), 757_382_400_123_000n);
  assert.equal(pgTimeToDate(757_382_400_123_999n).toISOString(), '2024-01-01T00:00:00.123Z', 'sub-millisecond part rounds down');
  assert.equal(pgTimeToDate(-1n).toISOString(), '1999-12-31T23:59:59.999Z', 'floor, not truncation, before the epoch');
  assert.equal(pgTimeToUnixUs(0n), 946_684_800_000_000n);
  assert.equal(unixUsToPgTime(946_684_800_000_001n), 1n);
  const before = BigInt(Date.now()) * 1000n - PG_EPOCH_US;
  const now = nowPgTime();
  const afterNow = BigInt(Date.now()) * 1000n - PG_EPOCH_US;
  assert.ok(now >= before && now <= afterNow);
  protocolError(() => dateToPgTime(new Date(Number.NaN)));
});

test('XLogData decodes its header and keeps the payload as a view', () => {
  const buf = Buffer.concat([
    Buffer.from('77', 'hex'),
    Buffer.from('0000000100000010', 'hex'), // walStart 1/10
    Buffer.from('0000000100000020', 'hex'), // walEnd 1/20
    Buffer.from('0002b0d5d4e94000', 'hex'), // sendTime 2024-01-01
    Buffer.from('B-payload'),
  ]);
  const m = decodeCopyData(buf);
  assert.equal(m.kind, 'XLogData');
  if (m.kind !== 'XLogData') return;
  assert.equal(m.walStart, parseLsn('1/10'));
  assert.equal(m.walEnd, parseLsn('1/20'));
  assert.equal(pgTimeToDate(m.sendTime).toISOString(), '2024-01-01T00:00:00.000Z');
  assert.equal(m.data.toString(), 'B-payload');
  assert.equal(m.data.buffer, buf.buffer, 'no copy');
  // An empty payload is legal at this layer; a short header is not.
  assert.equal((decodeCopyData(buf.subarray(0, 25)) as { data: Buffer }).data.length, 0);
  for (let n = 1; n < 25; n++) protocolError(() => decodeCopyData(buf.subarray(0, n)), /XLogData header: needs 25 bytes/);
});

test('PrimaryKeepaliveMessage decodes reply-requested exactly', () => {
  const buf = Buffer.concat([Buffer.from('6b', 'hex'), Buffer.from('00000000016b3748', 'hex'), Buffer.from('0000000000000001', 'hex'), Buffer.from([1])]);
  assert.deepEqual(decodeCopyData(buf), { kind: 'PrimaryKeepalive', walEnd: 0x16b3748n, sendTime: 1n, replyRequested: true });
  buf[17] = 0;
  assert.deepEqual(decodeCopyData(buf), { kind: 'PrimaryKeepalive', walEnd: 0x16b3748n, sendTime: 1n, replyRequested: false });
  buf[17] = 2;
  protocolError(() => decodeCopyData(buf), /reply flag at byte 17 is 2/);
  for (let n = 1; n < 18; n++) protocolError(() => decodeCopyData(buf.subarray(0, n)));
  protocolError(() => decodeCopyData(Buffer.concat([buf, Buffer.from([0])])), /expected 18 bytes/);
});

test('unknown CopyData types are protocol errors', () => {
  protocolError(() => decodeCopyData(Buffer.alloc(0)), /needs 1 bytes/);
  protocolError(() => decodeCopyData(Buffer.from('r')), /unexpected replication CopyData type 0x72 \("r"\)/);
  protocolError(() => decodeCopyData(Buffer.from([0])), /type 0x00/);
});

test('StandbyStatusUpdate is 34 bytes with the LSNs exactly as given (no +1)', () => {
  const buf = encodeStandbyStatusUpdate({ written: 0x16b3750n, flushed: 0x16b3748n, applied: 0x16b3740n, sendTime: 757_382_400_000_000n, replyRequested: true });
  assert.equal(
    buf.toString('hex'),
    '72' + '00000000016b3750' + '00000000016b3748' + '00000000016b3740' + '0002b0d5d4e94000' + '01',
  );
  assert.deepEqual(decodeStandbyStatusUpdate(buf), { written: 0x16b3750n, flushed: 0x16b3748n, applied: 0x16b3740n, sendTime: 757_382_400_000_000n, replyRequested: true });
  const defaults = decodeStandbyStatusUpdate(encodeStandbyStatusUpdate({ written: 1n, flushed: 1n, applied: 1n }));
  assert.equal(defaults.replyRequested, false);
  const ageUs = nowPgTime() - defaults.sendTime;
  assert.ok(ageUs >= 0n && ageUs < 5_000_000n, 'send time defaults to now on the PostgreSQL epoch');
  protocolError(() => encodeStandbyStatusUpdate({ written: -1n, flushed: 0n, applied: 0n }), /written LSN out of range/);
  protocolError(() => encodeStandbyStatusUpdate({ written: 0n, flushed: 1n << 64n, applied: 0n }), /flushed LSN out of range/);
  protocolError(() => decodeStandbyStatusUpdate(buf.subarray(0, 33)));
});
