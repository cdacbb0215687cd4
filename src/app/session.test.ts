import { test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { SessionKeyring, keyId } from './session.ts';
import { isProblem } from './problem.ts';
import { isTandemError } from '../core/errors.ts';

const OLD = 'old-key-0123456789abcdef';
const NEW = 'new-key-fedcba9876543210';
const claims = (over: Partial<{ sessionId: string; userId: string; expiresAt: Date }> = {}) => ({
  sessionId: randomUUID(),
  userId: 'asha',
  expiresAt: new Date(Date.now() + 60_000),
  ...over,
});

const rejects = (ring: SessionKeyring, token: string, why: RegExp) =>
  assert.throws(() => ring.verify(token), (err: unknown) => isProblem(err, 'unauthorized') && err.status === 401 && why.test(err.message));

test('a token round-trips with its claims, including user names with dots and unicode', () => {
  const ring = new SessionKeyring([OLD]);
  const c = claims({ userId: 'a.b@ex.ample ✓' });
  const v = ring.verify(ring.sign(c));
  assert.equal(v.sessionId, c.sessionId);
  assert.equal(v.userId, c.userId);
  assert.equal(v.expiresAt.getTime(), Math.floor(c.expiresAt.getTime() / 1000) * 1000);
  assert.equal(v.keyId, keyId(OLD));
});

test('rotation: the first key signs, every key verifies; a dropped key no longer verifies', () => {
  const before = new SessionKeyring([OLD]);
  const rotated = new SessionKeyring([NEW, OLD]);
  const dropped = new SessionKeyring([NEW]);
  const oldToken = before.sign(claims());
  const newToken = rotated.sign(claims());
  assert.equal(rotated.verify(oldToken).keyId, keyId(OLD));
  assert.equal(rotated.verify(newToken).keyId, keyId(NEW));
  assert.equal(dropped.verify(newToken).keyId, keyId(NEW));
  rejects(dropped, oldToken, /not signed by any current key/);
});

test('forged, tampered, expired and malformed tokens are 401', () => {
  const ring = new SessionKeyring([OLD]);
  const token = ring.sign(claims());
  const parts = token.split('.');
  const withPart = (i: number, v: string) => parts.map((p, j) => (j === i ? v : p)).join('.');
  rejects(ring, withPart(2, Buffer.from('admin').toString('base64url')), /signature/);
  rejects(ring, withPart(3, String(Number(parts[3]) + 3600)), /signature/);
  rejects(ring, withPart(5, parts[5]!.slice(0, -2) + (parts[5]!.endsWith('AA') ? 'BB' : 'AA')), /signature/);
  rejects(ring, withPart(5, ''), /signature/);
  // Signed with a key of the attacker's that happens to claim our key id.
  const forger = new SessionKeyring(['attacker-key-0123456789']);
  const forged = forger.sign(claims()).split('.');
  forged[4] = keyId(OLD);
  rejects(ring, forged.join('.'), /signature/);
  rejects(ring, ring.sign(claims({ expiresAt: new Date(Date.now() - 1000) })), /expired/);
  rejects(ring, 'garbage', /malformed/);
  rejects(ring, `ts2.${parts.slice(1).join('.')}`, /malformed/);
});

test('session keys must exist and be long enough; errors name the key', () => {
  assert.throws(() => new SessionKeyring([]), (e: unknown) => isTandemError(e, 'TANDEM_ERR_CONFIG'));
  assert.throws(() => new SessionKeyring([NEW, 'short']), (e: unknown) => isTandemError(e, 'TANDEM_ERR_CONFIG') && /app\.sessionKeys\[1\]/.test(e.message));
});
