import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { ERROR_CODES, TandemError, exitCodeFor, formatError, EXIT } from './errors.ts';

test('docs/errors.md lists exactly the codes in the table', () => {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const documented = new Set([...doc.matchAll(/`(TANDEM_ERR_[A-Z_]+)`/g)].map((m) => m[1]));
  const defined = new Set(Object.keys(ERROR_CODES));
  assert.deepEqual([...defined].filter((c) => !documented.has(c)), [], 'codes missing from docs/errors.md');
  assert.deepEqual([...documented].filter((c) => !defined.has(c!)), [], 'codes documented but not defined');
});

test('errors map to the CLI exit codes and one clear line', () => {
  assert.equal(exitCodeFor(new TandemError('TANDEM_ERR_CONFIG', 'x')), EXIT.CONFIG);
  assert.equal(exitCodeFor(new TandemError('TANDEM_ERR_USAGE', 'x')), EXIT.USAGE);
  assert.equal(exitCodeFor(new TandemError('TANDEM_ERR_SAFETY', 'x')), EXIT.RUNTIME);
  assert.equal(exitCodeFor(new Error('boom')), EXIT.RUNTIME);
  const line = formatError(new TandemError('TANDEM_ERR_SCHEMA_DRIFT', 'public.t: column "b" missing on target'));
  assert.match(line, /^tandem: public\.t: column "b" missing on target \[TANDEM_ERR_SCHEMA_DRIFT\]\n  hint: /);
});
