import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import { freePort } from '../../test/helpers/ports.ts';
import { WanEmulator } from './wan.ts';

const HOST = '127.0.0.1';

/** An echo server standing in for a region's PostgreSQL. */
async function echoServer(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
    s.pipe(s);
  });
  await new Promise<void>((resolve) => server.listen(0, HOST, resolve));
  return {
    port: (server.address() as net.AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Send one line and resolve the milliseconds until it comes back (undefined after `timeoutMs`). */
function roundTrip(sock: net.Socket, timeoutMs: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const timer = setTimeout(() => {
      sock.off('data', onData);
      resolve(undefined);
    }, timeoutMs);
    const onData = () => {
      clearTimeout(timer);
      sock.off('data', onData);
      resolve(performance.now() - t0);
    };
    sock.on('data', onData);
    sock.write('ping\n');
  });
}

test('the WAN emulator child delays both ways, holds bytes while partitioned and releases them on heal', async () => {
  const echo = await echoServer();
  after(() => echo.close());
  const port = await freePort(HOST);
  const wan = await WanEmulator.start([{ region: 'r-one', peer: 'r-two', listen: { host: HOST, port }, upstream: { host: HOST, port: echo.port } }], { latencyMs: 40, jitterMs: 0 });
  after(() => wan.stop());
  const sock = net.connect(port, HOST);
  sock.setNoDelay(true);
  after(() => sock.destroy());
  await new Promise<void>((resolve, reject) => sock.once('connect', resolve).once('error', reject));

  const rtt = await roundTrip(sock, 5_000);
  assert.ok(rtt !== undefined && rtt >= 78, `round trip ${rtt} ms, expected at least 2 × 40 ms`);

  await wan.partition('r-one', 'r-two');
  const held = roundTrip(sock, 10_000);
  const during = await Promise.race([held.then(() => 'answered'), new Promise((r) => setTimeout(() => r('held'), 400))]);
  assert.equal(during, 'held', 'bytes crossed a partitioned link');
  await wan.heal();
  const late = await held;
  assert.ok(late !== undefined && late >= 400, `the held bytes should arrive after the heal (${late} ms)`);
});
