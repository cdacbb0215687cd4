import { test } from 'node:test';
import assert from 'node:assert/strict';
import dnsPacket from 'dns-packet';
import { parseQuery, writeResponse, Query, PARSE, RCODE, nameKey } from './wire.ts';
import { buildQuery } from './client.ts';

const header = (qd: number, an = 0, ns = 0, ar = 0, flags = 0x0100) => {
  const h = Buffer.alloc(12);
  h.writeUInt16BE(0x1234, 0);
  h.writeUInt16BE(flags, 2);
  h.writeUInt16BE(qd, 4);
  h.writeUInt16BE(an, 6);
  h.writeUInt16BE(ns, 8);
  h.writeUInt16BE(ar, 10);
  return h;
};

test('parses a query with ECS: name key, type, EDNS size, ECS fields', () => {
  const q = new Query();
  assert.equal(parseQuery(buildQuery('App.Tandem.Test', { type: 'AAAA', ecs: '49.204.0.0/15', udpPayloadSize: 4096 }), q), PARSE.OK);
  assert.equal(q.key, nameKey('app.tandem.test'));
  assert.equal(q.nameBuf.toString('latin1', 1, 4), 'App', 'case kept for the echo');
  assert.equal(q.qtype, 28);
  assert.deepEqual([q.edns, q.udpSize, q.ecs, q.ecsFamily, q.ecsSource, q.ecsAddrLen], [true, 4096, true, 1, 15, 2]);
  assert.deepEqual([...q.ecsAddr.subarray(0, 2)], [49, 204]);
});

test('every prefix of a valid query (fed byte by byte) is dropped or FORMERR, never a throw', () => {
  const full = buildQuery('app.tandem.test', { ecs: '2401:4900::/32' });
  const q = new Query();
  for (let n = 0; n < full.length; n++) {
    const st = parseQuery(full.subarray(0, n), q);
    assert.ok(st === PARSE.DROP || st === PARSE.FORMERR, `prefix ${n}: ${st}`);
  }
  assert.equal(parseQuery(full, q), PARSE.OK);
});

test('hostile shapes: pointer loops, forward pointers, label overrun, extended labels, bogus counts, bad ECS', () => {
  const q = new Query();
  const cases: [string, Buffer, number][] = [
    ['self pointer', Buffer.concat([header(1), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]), PARSE.FORMERR],
    ['pointer ping-pong', Buffer.concat([header(1), Buffer.from([0xc0, 0x0e, 0xc0, 0x0c, 0, 1, 0, 1])]), PARSE.FORMERR],
    ['label overrun', Buffer.concat([header(1), Buffer.from([0x3f, 0x61])]), PARSE.FORMERR],
    ['extended label', Buffer.concat([header(1), Buffer.from([0x41, 0x61, 0, 0, 1, 0, 1])]), PARSE.FORMERR],
    ['two questions', Buffer.concat([header(2), Buffer.from([0, 0, 1, 0, 1, 0, 0, 1, 0, 1])]), PARSE.FORMERR],
    ['bogus additional count', Buffer.concat([header(1, 0, 0, 65535), Buffer.from([0, 0, 1, 0, 1])]), PARSE.FORMERR],
    ['response', Buffer.concat([header(1, 0, 0, 0, 0x8100), Buffer.from([0, 0, 1, 0, 1])]), PARSE.DROP],
    ['NOTIFY', Buffer.concat([header(1, 0, 0, 0, 4 << 11), Buffer.from([0, 0, 1, 0, 1])]), PARSE.NOTIMP],
    ['runt', Buffer.alloc(11), PARSE.DROP],
  ];
  // A name longer than 255 bytes.
  const long = Buffer.concat([header(1), ...Array.from({ length: 5 }, () => Buffer.concat([Buffer.from([63]), Buffer.alloc(63, 0x61)])), Buffer.from([0, 0, 1, 0, 1])]);
  cases.push(['name > 255', long, PARSE.FORMERR]);
  const ecs = buildQuery('a.tandem.test', { ecs: '49.204.1.0/24' });
  const badFamily = Buffer.from(ecs);
  badFamily.writeUInt16BE(7, ecs.length - 7);
  cases.push(['ECS family 7', badFamily, PARSE.FORMERR]);
  const badPrefix = Buffer.from(ecs);
  badPrefix[ecs.length - 5] = 40;
  cases.push(['ECS /40 for IPv4', badPrefix, PARSE.FORMERR]);
  const hostBits = buildQuery('a.tandem.test', { ecs: '49.204.0.0/15' });
  hostBits[hostBits.length - 1] = 0x01; // a bit beyond /15
  cases.push(['ECS host bits set', hostBits, PARSE.FORMERR]);
  const twoOpt = Buffer.concat([ecs.subarray(0, ecs.length), ecs.subarray(ecs.length - 22)]);
  twoOpt.writeUInt16BE(2, 10);
  cases.push(['two OPT records', twoOpt, PARSE.FORMERR]);
  for (const [name, buf, want] of cases) assert.equal(parseQuery(buf, q), want, name);
  // A backward pointer is fine.
  const ok = Buffer.concat([header(1), Buffer.from([0, 0, 1, 0, 1])]);
  assert.equal(parseQuery(ok, q), PARSE.OK);
});

test('responses decode with dns-packet: flags, echoed question, answer, OPT with ECS scope, TC when too big', () => {
  const q = new Query();
  parseQuery(buildQuery('App.tandem.test', { id: 4242, ecs: '106.51.0.0/24' }), q);
  const rr = Buffer.from('c00c000100010000003c00047f000101', 'hex');
  const out = writeResponse(q, { rcode: RCODE.NOERROR, aa: true, answer: rr, answerCount: 1, scope: 19 }, 1232, 1232);
  const d = dnsPacket.decode(out) as dnsPacket.DecodedPacket & { rcode: string };
  assert.deepEqual([d.id, d.flag_qr, d.flag_aa, d.flag_rd, d.flag_ra, d.flag_tc, d.rcode], [4242, true, true, true, false, false, 'NOERROR']);
  assert.equal(d.questions?.[0]?.name, 'App.tandem.test');
  assert.equal((d.answers?.[0] as { data: string }).data, '127.0.1.1');
  const opt = d.additionals?.find((a) => a.type === 'OPT') as unknown as { udpPayloadSize: number; options: { code: number; sourcePrefixLength: number; scopePrefixLength: number; ip: string }[] };
  assert.equal(opt.udpPayloadSize, 1232);
  assert.deepEqual([opt.options[0]!.sourcePrefixLength, opt.options[0]!.scopePrefixLength, opt.options[0]!.ip], [24, 19, '106.51.0.0']);
  const big = Buffer.concat(Array.from({ length: 100 }, () => rr));
  const t = dnsPacket.decode(writeResponse(q, { rcode: RCODE.NOERROR, aa: true, answer: big, answerCount: 100 }, 512, 1232));
  assert.equal((t as dnsPacket.DecodedPacket).flag_tc, true);
  assert.equal(t.answers?.length, 0);
  assert.ok(t.additionals?.some((a) => a.type === 'OPT'), 'OPT survives truncation');
});
