/**
 * Fuzz: tens of thousands of random and mutated packets at the engine, then
 * over UDP and TCP at a running server; afterwards correct answers must still
 * come back. Seeded: set TANDEM_FUZZ_SEED to replay a run.
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import net from 'node:net';
import dnsPacket from 'dns-packet';
import { DnsDaemon } from '../../src/dns/daemon.ts';
import { queryA, buildQuery } from '../../src/dns/client.ts';
import { startHealthTarget, type HealthTargetServer } from './health-target.ts';
import { labConfigInput, writeConfig, expectedRegion, waitFor } from './helpers.ts';
import { prng as rng } from '../../src/core/random.ts';

const seed = Number(process.env.TANDEM_FUZZ_SEED ?? Math.floor(Math.random() * 2 ** 31));
console.log(`# fuzz seed ${seed} (rerun with TANDEM_FUZZ_SEED=${seed})`);

const rand = rng(seed);
const int = (n: number) => Math.floor(rand() * n);

const NAMES = ['app.tandem.test', 'tandem.test', 'www.tandem.test', 'missing.tandem.test', 'example.com', 'deep.sub.tandem.test', 'a.b.c.d.e.f.tandem.test'];
const TYPES = ['A', 'AAAA', 'NS', 'SOA', 'MX', 'TXT', 'CNAME', 'ANY'] as unknown as dnsPacket.RecordType[];
const ECS = ['49.204.1.0/24', '106.51.0.0/24', '115.96.0.0/24', '2401:4900::/32', '0.0.0.0/0', '1.2.3.4/32', '10.0.0.0/7'];

function validQuery(): Buffer {
  return buildQuery(NAMES[int(NAMES.length)]!, {
    type: TYPES[int(TYPES.length)]!,
    id: int(65536),
    ...(rand() < 0.6 ? { ecs: ECS[int(ECS.length)]! } : {}),
    ...(rand() < 0.2 ? { udpPayloadSize: false as const } : { udpPayloadSize: 512 + int(4000) }),
  });
}

/** Hand-made hostile shapes. */
function hostile(): Buffer {
  const header = (qd: number, an: number, ns: number, ar: number, flags = 0x0100) => {
    const h = Buffer.alloc(12);
    h.writeUInt16BE(int(65536), 0);
    h.writeUInt16BE(flags, 2);
    h.writeUInt16BE(qd, 4);
    h.writeUInt16BE(an, 6);
    h.writeUInt16BE(ns, 8);
    h.writeUInt16BE(ar, 10);
    return h;
  };
  switch (int(9)) {
    case 0: // compression pointer to itself
      return Buffer.concat([header(1, 0, 0, 0), Buffer.from([0xc0, 0x0c, 0, 1, 0, 1])]);
    case 1: // two pointers pointing at each other
      return Buffer.concat([header(1, 0, 0, 0), Buffer.from([0xc0, 0x0e, 0xc0, 0x0c, 0, 1, 0, 1])]);
    case 2: // label length runs past the end
      return Buffer.concat([header(1, 0, 0, 0), Buffer.from([0x3f, 0x61, 0x62, 0x63])]);
    case 3: // bogus counts
      return Buffer.concat([header(int(65536), int(65536), int(65536), int(65536)), Buffer.from([3, 0x61, 0x70, 0x70, 0, 0, 1, 0, 1])]);
    case 4: // unknown opcode
      return Buffer.concat([header(1, 0, 0, 0, (1 + int(15)) << 11), Buffer.from([0, 0, 1, 0, 1])]);
    case 5: {
      // ECS with a bad family or prefix
      const q = buildQuery('app.tandem.test', { ecs: '49.204.1.0/24' });
      const o = q.length - 7;
      if (rand() < 0.5) q.writeUInt16BE(int(65536), o);
      else q[o + 2] = 33 + int(200);
      return q;
    }
    case 6: {
      // unknown EDNS options, including a length that overruns
      const q = buildQuery('app.tandem.test', {});
      const opt = Buffer.alloc(4 + 6);
      opt.writeUInt16BE(int(65536), 0);
      opt.writeUInt16BE(rand() < 0.5 ? 6 : 600, 2);
      const out = Buffer.concat([q, opt]);
      out.writeUInt16BE(opt.length, q.length - 2);
      return out;
    }
    case 7: // oversized garbage
      return Buffer.from(Array.from({ length: 1000 + int(8000) }, () => int(256)));
    default: // extended label type 0x40 / 0x80
      return Buffer.concat([header(1, 0, 0, 0), Buffer.from([0x40 | int(64), 0x61, 0, 0, 1, 0, 1])]);
  }
}

function mutate(buf: Buffer): Buffer {
  const b = Buffer.from(buf);
  const n = 1 + int(4);
  for (let i = 0; i < n; i++) {
    switch (int(5)) {
      case 0:
        b[int(b.length)] = int(256);
        break;
      case 1:
        b[int(b.length)]! ^= 1 << int(8);
        break;
      case 2:
        return b.subarray(0, int(b.length));
      case 3:
        return Buffer.concat([b, Buffer.from(Array.from({ length: 1 + int(40) }, () => int(256)))]);
      default:
        if (b.length >= 12) b.writeUInt16BE(int(65536), 4 + 2 * int(4));
    }
  }
  return b;
}

function packet(): Buffer {
  const r = rand();
  if (r < 0.2) return Buffer.from(Array.from({ length: int(600) }, () => int(256)));
  if (r < 0.35) return hostile();
  if (r < 0.45) return validQuery();
  return mutate(validQuery());
}

let south: HealthTargetServer;
let west: HealthTargetServer;
let daemon: DnsDaemon;

before(async () => {
  south = await startHealthTarget('127.0.1.1');
  west = await startHealthTarget('127.0.2.1');
  const { file } = writeConfig(labConfigInput({ healthUrls: [south.url, west.url] }));
  daemon = new DnsDaemon({ region: 'aws-south', configPath: file, token: 't' });
  await daemon.start();
  await waitFor(() => daemon.health.snapshot().every((h) => h.state === 'healthy'), 5_000);
});

after(async () => {
  await daemon?.stop();
  await south?.close();
  await west?.close();
});

async function assertStillCorrect(): Promise<void> {
  const target = daemon.listeners[0]!;
  for (const [ip, subnet] of [
    ['106.51.0.1', '106.51.0.0/24'],
    ['115.96.0.1', '115.96.0.0/24'],
  ] as const) {
    const want = expectedRegion(ip)?.region === 'azure-west' ? '127.0.2.1' : '127.0.1.1';
    for (const tcp of [false, true]) {
      const r = await queryA(target, 'app.tandem.test', { ecs: subnet, timeoutMs: 2000, tcp });
      assert.deepEqual(r.addresses, [want]);
      assert.ok(r.scopePrefix !== undefined && r.scopePrefix > 0);
    }
  }
}

test('engine: 60k random and mutated packets never throw; every response is well-formed and carries the query id', () => {
  const engine = daemon.engine;
  let answered = 0;
  for (let i = 0; i < 60_000; i++) {
    const p = packet();
    const out = engine.answer(p, rand() < 0.5 ? '127.0.7.1' : '49.204.1.1', rand() < 0.3);
    if (!out) continue;
    answered++;
    assert.equal(out.readUInt16BE(0), p.readUInt16BE(0), 'response id = query id');
    assert.ok(out[2]! & 0x80, 'QR set');
    assert.notEqual(out[3]! & 0x0f, 2, 'no SERVFAIL (an exception inside the engine)');
    try {
      dnsPacket.decode(out);
    } catch (err) {
      assert.fail(`response does not decode (seed ${seed}, packet ${p.toString('hex')}): ${(err as Error).message}`);
    }
  }
  assert.ok(answered > 10_000, `answered ${answered}`);
});

test('UDP: 20k fuzz packets, the server keeps answering correctly', async () => {
  const target = daemon.listeners[0]!;
  const sock = dgram.createSocket('udp4');
  after(() => sock.close());
  let servfail = 0;
  sock.on('message', (m) => {
    if (m.length >= 4 && (m[3]! & 0x0f) === 2) servfail++;
  });
  await new Promise<void>((r) => sock.bind(0, '127.0.0.1', r));
  for (let i = 0; i < 20_000; i++) {
    sock.send(packet(), target.port, target.host);
    // Pace so the kernel queue never overflows, and check liveness as we go.
    if (i % 500 === 499) {
      const r = await queryA(target, 'app.tandem.test', { timeoutMs: 2000, ecs: '106.51.0.0/24' });
      assert.equal(r.rcode, 'NOERROR');
    }
  }
  await assertStillCorrect();
  assert.equal(servfail, 0);
});

test('TCP: 5k fuzz messages over many connections (including bad framing), then correct answers', async () => {
  const target = daemon.listeners[0]!;
  for (let c = 0; c < 50; c++) {
    const sock = net.connect(target.port, target.host);
    sock.on('error', () => {});
    sock.on('data', () => {});
    await new Promise<void>((r) => sock.once('connect', () => r()));
    const frames: Buffer[] = [];
    for (let i = 0; i < 100; i++) {
      const p = packet();
      const f = Buffer.alloc(2 + p.length);
      f.writeUInt16BE(rand() < 0.05 ? int(65536) : p.length, 0);
      p.copy(f, 2);
      frames.push(f);
    }
    const all = Buffer.concat(frames);
    // Send in random slices, as a slow or odd client would.
    for (let o = 0; o < all.length; ) {
      const n = 1 + int(2000);
      sock.write(all.subarray(o, o + n));
      o += n;
    }
    await new Promise<void>((r) => {
      sock.end(() => r());
      setTimeout(r, 200);
    });
    sock.destroy();
  }
  await assertStillCorrect();
});
