import { test } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { contextFromHeaders, currentContext, kitFetch, outgoingHeaders, parseTraceparent, runWithContext } from './correlation.ts';
import { silentLogger } from '../core/log.ts';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const SPAN = '00f067aa0ba902b7';

test('parseTraceparent accepts the W3C examples and rejects malformed values', () => {
  assert.deepEqual(parseTraceparent(`00-${TRACE}-${SPAN}-01`), { version: '00', traceId: TRACE, parentId: SPAN, flags: '01' });
  assert.ok(parseTraceparent(`00-${TRACE}-${SPAN}-00`));
  // A future version may append fields.
  assert.ok(parseTraceparent(`cc-${TRACE}-${SPAN}-01-what-the-future-holds`));
  const bad = [
    undefined,
    [`00-${TRACE}-${SPAN}-01`, `00-${TRACE}-${SPAN}-01`],
    '',
    `ff-${TRACE}-${SPAN}-01`, // version ff is forbidden
    `00-${'0'.repeat(32)}-${SPAN}-01`, // all-zero trace id
    `00-${TRACE}-${'0'.repeat(16)}-01`, // all-zero parent id
    `00-${TRACE.toUpperCase()}-${SPAN}-01`, // upper case
    `00-${TRACE}-${SPAN}-01-extra`, // version 00 has exactly four fields
    `00-${TRACE.slice(1)}-${SPAN}-01`,
    `00-${TRACE}-${SPAN}-1`,
    `0-${TRACE}-${SPAN}-01`,
    `00_${TRACE}_${SPAN}_01`,
    `00-${TRACE}-${SPAN}-0g`,
  ];
  for (const b of bad) assert.equal(parseTraceparent(b as string), undefined, JSON.stringify(b));
});

test('contextFromHeaders keeps a valid trace, replaces invalid headers and never trusts bad correlation ids', () => {
  const ok = contextFromHeaders({ traceparent: `00-${TRACE}-${SPAN}-01`, 'x-correlation-id': 'order-42', tracestate: 'vendor=abc' }, 'r1', silentLogger());
  assert.equal(ok.traceId, TRACE);
  assert.equal(ok.parentSpanId, SPAN);
  assert.notEqual(ok.spanId, SPAN);
  assert.equal(ok.correlationId, 'order-42');
  assert.equal(ok.tracestate, 'vendor=abc');
  assert.deepEqual(ok.replaced, []);
  const bad = contextFromHeaders({ traceparent: 'garbage', 'x-correlation-id': 'a b\nforged-log-line', tracestate: 'vendor=abc' }, 'r1', silentLogger());
  assert.match(bad.traceId, /^[0-9a-f]{32}$/);
  assert.equal(bad.correlationId, bad.traceId);
  assert.equal(bad.tracestate, undefined, 'tracestate without a valid traceparent is dropped');
  assert.deepEqual(bad.replaced, ['traceparent', 'x-correlation-id']);
  const long = contextFromHeaders({ 'x-correlation-id': 'x'.repeat(129) }, 'r1', silentLogger());
  assert.notEqual(long.correlationId, 'x'.repeat(129));
  const fresh = contextFromHeaders({}, 'r1', silentLogger());
  assert.equal(fresh.flags, '01');
  assert.equal(fresh.parentSpanId, undefined);
});

test('kitFetch carries the current request ids to a real HTTP server; explicit headers win', async (t) => {
  const seen: http.IncomingHttpHeaders[] = [];
  const server = http.createServer((req, res) => {
    seen.push(req.headers);
    res.end('ok');
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => new Promise<void>((r) => server.close(() => r())));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  const ctx = contextFromHeaders({ traceparent: `00-${TRACE}-${SPAN}-01`, 'x-correlation-id': 'cid-1' }, 'r1', silentLogger());
  await runWithContext(ctx, async () => {
    assert.equal(currentContext(), ctx);
    await (await kitFetch(url)).text();
    await (await kitFetch(url, { headers: { 'x-correlation-id': 'explicit' } })).text();
  });
  await (await kitFetch(url)).text();
  assert.equal(seen[0]!['x-correlation-id'], 'cid-1');
  const tp = parseTraceparent(seen[0]!.traceparent);
  assert.equal(tp?.traceId, TRACE);
  assert.match(tp?.parentId ?? '', /^[0-9a-f]{16}$/);
  assert.notEqual(tp?.parentId, SPAN, 'the caller span is not passed on: the outgoing call gets a span of its own');
  assert.equal(seen[1]!['x-correlation-id'], 'explicit');
  assert.equal(seen[2]!['x-correlation-id'], undefined, 'outside a request nothing is added');
  assert.deepEqual(outgoingHeaders(undefined), {});
});
