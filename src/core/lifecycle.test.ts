import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BaseService } from './lifecycle.ts';

/** A service whose start waits for `gate`; it records what it built and tore down. */
class Gated extends BaseService {
  readonly name = 'gated';
  readonly events: string[] = [];
  #open!: () => void;
  #fail!: (err: Error) => void;
  readonly gate = new Promise<void>((resolve, reject) => {
    this.#open = resolve;
    this.#fail = reject;
  });
  release(): void {
    this.#open();
  }
  breakStart(err: Error): void {
    this.#fail(err);
  }
  protected async onStart(): Promise<void> {
    this.events.push('start begun');
    await this.gate;
    this.events.push('built');
  }
  protected async onStop(): Promise<void> {
    this.events.push('torn down');
  }
}

test('start, then stop: running, then stopped, closed resolves', async () => {
  const s = new Gated();
  s.release();
  await s.start();
  assert.equal(s.state, 'running');
  await s.stop();
  assert.equal(s.state, 'stopped');
  await s.closed;
  assert.deepEqual(s.events, ['start begun', 'built', 'torn down']);
});

/** Start a `Gated` and stop it while its start waits at the gate. */
async function stopWhileStarting(): Promise<{ s: Gated; started: Promise<void>; stopped: Promise<void> }> {
  const s = new Gated();
  const started = s.start();
  await new Promise((r) => setImmediate(r));
  return { s, started, stopped: s.stop() };
}

test('a stop during start tears down what the start built, after it is built', async () => {
  const { s, started, stopped } = await stopWhileStarting();
  assert.equal(s.state, 'stopping');
  s.release();
  await started;
  await stopped;
  await s.closed;
  assert.equal(s.state, 'stopped', 'it does not end up running');
  assert.deepEqual(s.events, ['start begun', 'built', 'torn down']);
});

test('a start that fails while a stop waits: failed, torn down once, closed rejects', async () => {
  const { s, started, stopped } = await stopWhileStarting();
  s.breakStart(new Error('database unreachable'));
  await assert.rejects(started, /database unreachable/);
  await stopped;
  await assert.rejects(s.closed, /database unreachable/);
  assert.equal(s.state, 'failed');
  assert.deepEqual(s.events, ['start begun', 'torn down']);
});

test('stop before start ends it; start after that is refused', async () => {
  const s = new Gated();
  await s.stop();
  assert.equal(s.state, 'stopped');
  await s.closed;
  await assert.rejects(s.start(), /start\(\) called in state stopped/);
});
