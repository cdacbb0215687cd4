import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { WanProxy, WanState } from './wan.ts';
import { freePort } from '../../test/helpers/ports.ts';

/** An echo server on 127.0.1.1 standing in for region a's database. */
async function echoServer(): Promise<{ port: number; close(): Promise<void> }> {
  const srv = net.createServer((s) => s.pipe(s));
  const port = await freePort('127.0.1.1');
  await new Promise<void>((r) => srv.listen(port, '127.0.1.1', r));
  return { port, close: () => new Promise((r) => srv.close(() => r())) };
}

function connectFrom(localAddress: string, port: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const s = net.connect({ host: '127.0.1.1', port, localAddress }, () => resolve(s));
    s.once('error', reject);
  });
}

/** Send one message and time its echo. */
function roundTrip(s: net.Socket, text: string): Promise<number> {
  const t0 = performance.now();
  return new Promise((resolve) => {
    let got = '';
    const onData = (d: Buffer) => {
      got += d.toString();
      if (got.length >= text.length) {
        s.off('data', onData);
        resolve(performance.now() - t0);
      }
    };
    s.on('data', onData);
    s.write(text);
  });
}

const regionOf = (addr: string) => ({ '127.0.1.1': 'a', '127.0.2.1': 'b', '127.0.3.1': 'c' })[addr.replace(/^::ffff:/, '')];

async function setup() {
  const echo = await echoServer();
  const state = new WanState();
  const listenPort = await freePort('127.0.1.1');
  const proxy = new WanProxy({ region: 'a', listen: { host: '127.0.1.1', port: listenPort }, upstream: { host: '127.0.1.1', port: echo.port }, state, regionOf });
  await proxy.start();
  return { echo, state, proxy, port: listenPort };
}

test('a cross-region connection pays the link latency both ways; a local one does not', async () => {
  const { echo, state, proxy, port } = await setup();
  after(async () => {
    await proxy.stop();
    await echo.close();
  });
  state.setShape({ latencyMs: 40, jitterMs: 0 });
  const remote = await connectFrom('127.0.2.1', port);
  const local = await connectFrom('127.0.1.1', port);
  const rtRemote = await roundTrip(remote, 'hello');
  const rtLocal = await roundTrip(local, 'hello');
  assert.ok(rtRemote >= 80, `remote round trip ${rtRemote.toFixed(1)} ms should include 2 x 40 ms`);
  assert.ok(rtLocal < 40, `local round trip ${rtLocal.toFixed(1)} ms should not be shaped`);
  remote.destroy();
  local.destroy();
});

test('a partition holds bytes and new connections until it heals; nothing is lost or reordered', async () => {
  const { echo, state, proxy, port } = await setup();
  after(async () => {
    await proxy.stop();
    await echo.close();
  });
  state.setShape({ latencyMs: 1, jitterMs: 3 });
  const s = await connectFrom('127.0.2.1', port);
  let received = '';
  s.on('data', (d: Buffer) => (received += d.toString()));
  state.partition('a', 'b');
  const sent: string[] = [];
  for (let i = 0; i < 200; i++) {
    sent.push(`m${i};`);
    s.write(`m${i};`);
  }
  await new Promise((r) => setTimeout(r, 150));
  assert.equal(received, '', 'nothing crosses a partition');
  // Another link is unaffected.
  const c = await connectFrom('127.0.3.1', port);
  assert.ok((await roundTrip(c, 'x')) < 100);
  c.destroy();
  // A connection opened during the partition, with bytes already sent, completes once it heals.
  const late = await connectFrom('127.0.2.1', port);
  let lateReceived = '';
  late.on('data', (d: Buffer) => (lateReceived += d.toString()));
  late.write('opened while partitioned');
  await new Promise((r) => setTimeout(r, 100));
  assert.equal(lateReceived, '');
  state.heal();
  const deadline = Date.now() + 2000;
  while ((received.length < sent.join('').length || lateReceived.length < 24) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
  assert.equal(received, sent.join(''));
  assert.equal(lateReceived, 'opened while partitioned');
  assert.equal(late.destroyed, false, 'the held connection survived the heal');
  s.destroy();
  late.destroy();
});

test('a bandwidth cap slows a bulk transfer', async () => {
  const { echo, state, proxy, port } = await setup();
  after(async () => {
    await proxy.stop();
    await echo.close();
  });
  state.setShape({ latencyMs: 0, jitterMs: 0, bandwidthBytesPerSec: 200_000 });
  const s = await connectFrom('127.0.2.1', port);
  const elapsed = await roundTrip(s, 'z'.repeat(40_000));
  // 40 kB each way at 200 kB/s is at least 0.2 s per direction.
  assert.ok(elapsed >= 300, `capped transfer took ${elapsed.toFixed(0)} ms`);
  s.destroy();
});
