import { test } from 'node:test';
import assert from 'node:assert/strict';
import { canonicalJson, entityId, fingerprint, parseIdempotencyKey } from './idempotency.ts';
import { isProblem } from './problem.ts';

test('Idempotency-Key is a structured-field String of bounded length', () => {
  assert.equal(parseIdempotencyKey(undefined, 255), undefined);
  assert.equal(parseIdempotencyKey('"8e03978e-40d5-43e8-bc93-6894a57f9324"', 255), '8e03978e-40d5-43e8-bc93-6894a57f9324');
  assert.equal(parseIdempotencyKey('"with \\"escaped\\" quotes"', 255), 'with "escaped" quotes');
  assert.equal(parseIdempotencyKey('"k";param=1', 255), 'k', 'parameters are allowed and ignored');
  assert.equal(parseIdempotencyKey(`"${'a'.repeat(255)}"`, 255), 'a'.repeat(255));
  for (const bad of ['token', '42', '?1', ':Ynl0ZXM=:', '""', '"a", "b"', '"open', `"${'a'.repeat(256)}"`, '"tab\there"']) {
    assert.throws(() => parseIdempotencyKey(bad, 255), (e: unknown) => isProblem(e, 'idempotency-key-invalid') && e.status === 400, bad);
  }
  assert.throws(() => parseIdempotencyKey(['"a"', '"b"'], 255), (e: unknown) => isProblem(e, 'idempotency-key-invalid'));
});

test('the fingerprint ignores key order and whitespace, and sees method, path and values', () => {
  assert.equal(canonicalJson({ b: 1, a: [{ d: 2, c: null }], u: undefined }), '{"a":[{"c":null,"d":2}],"b":1}');
  const a = fingerprint('POST', '/v1/orders', JSON.parse('{"a":1,"b":{"y":2,"x":[1,2]}}'));
  const b = fingerprint('post', '/v1/orders', JSON.parse('{ "b": { "x": [1, 2], "y": 2 }, "a": 1 }'));
  assert.equal(a, b);
  assert.notEqual(a, fingerprint('POST', '/v1/orders', { a: 1, b: { y: 2, x: [2, 1] } }));
  assert.notEqual(a, fingerprint('POST', '/v1/orders?x=1', { a: 1, b: { y: 2, x: [1, 2] } }));
  assert.notEqual(a, fingerprint('PUT', '/v1/orders', { a: 1, b: { y: 2, x: [1, 2] } }));
  assert.notEqual(fingerprint('POST', '/p', undefined), fingerprint('POST', '/p', {}));
});

test('entity ids are UUIDv5, deterministic per (kind, scope, key) and distinct otherwise', () => {
  const id = entityId('client:c1', 'k1', 'order');
  assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
  assert.equal(entityId('client:c1', 'k1', 'order'), id);
  assert.notEqual(entityId('client:c2', 'k1', 'order'), id);
  assert.notEqual(entityId('client:c1', 'k2', 'order'), id);
  assert.notEqual(entityId('client:c1', 'k1', 'payment'), id);
  // The separator keeps ("a\nb", "c") apart from ("a", "b\nc").
  assert.notEqual(entityId('a\nb', 'c'), entityId('a', 'b\nc'));
});
