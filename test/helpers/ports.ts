/** Free TCP ports on loopback addresses for tests and the lab. */
import net from 'node:net';

/**
 * Ports below Linux's ephemeral range (32768–60999 by default). A port the OS hands out for listening
 * (port 0) comes from that range, where the kernel also picks the local ports of outgoing connections:
 * a server that is restarted on "its" port (an agent after kill -9) could then find it taken by a
 * client connection bound to the same address. Ports from here are never taken that way.
 */
const LOW = 20_000;
const HIGH = 32_768;

function tryListen(host: string, port: number): Promise<number | undefined> {
  return new Promise((resolve) => {
    const srv = net.createServer();
    srv.once('error', () => resolve(undefined));
    srv.listen(port, host, () => {
      const got = (srv.address() as net.AddressInfo).port;
      srv.close(() => resolve(got));
    });
  });
}

/** A port that was free on `host` a moment ago, outside the ephemeral range when one is free there. */
export async function freePort(host = '127.0.0.1'): Promise<number> {
  for (let i = 0; i < 50; i++) {
    const port = await tryListen(host, LOW + Math.floor(Math.random() * (HIGH - LOW)));
    if (port !== undefined) return port;
  }
  const port = await tryListen(host, 0);
  if (port === undefined) throw new Error(`no free TCP port on ${host}`);
  return port;
}
