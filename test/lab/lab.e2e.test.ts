/**
 * The lab end to end, through the real CLI: up from a clean folder, health,
 * geo-DNS answers, an order replicated across regions within a second, a
 * region failed and recovered, and nothing left behind after `lab down`.
 * Then the same replication check with three regions.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import net from 'node:net';
import pg from 'pg';
import { readFileSync } from 'node:fs';
import { startLab, type TestLab } from '../helpers/lab.ts';
import { queryA } from '../../src/dns/client.ts';
import { GeoDb } from '../../src/dns/geo.ts';
import { LAB_PORTS, LAB_REGIONS, LAB_API } from '../../src/lab/topology.ts';

async function http(url: string, init: RequestInit = {}): Promise<{ status: number; body: Record<string, unknown>; region: string | null }> {
  const res = await fetch(url, { ...init, signal: AbortSignal.timeout(5_000) });
  const text = await res.text();
  return { status: res.status, body: text ? (JSON.parse(text) as Record<string, unknown>) : {}, region: res.headers.get('x-tandem-region') };
}

async function createOrder(address: string, key: string): Promise<string> {
  const r = await http(`http://${address}:${LAB_PORTS.app}/v1/orders`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'idempotency-key': `"${key}"`, 'x-client-id': 'e2e' },
    body: JSON.stringify({ customer: 'e2e', amountCents: 1234, currency: 'INR' }),
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.id as string;
}

/** Poll until the order is readable in `address`; returns how long it took. */
async function readableWithin(address: string, id: string, ms: number): Promise<number> {
  const t0 = Date.now();
  for (;;) {
    const r = await http(`http://${address}:${LAB_PORTS.app}/v1/orders/${id}`);
    if (r.status === 200) return Date.now() - t0;
    if (Date.now() - t0 > ms) assert.fail(`order ${id} not readable in ${address} within ${ms} ms (last status ${r.status})`);
    await new Promise((res) => setTimeout(res, 25));
  }
}

function refused(host: string, port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect({ host, port });
    s.once('connect', () => {
      s.destroy();
      resolve(false);
    });
    s.once('error', () => resolve(true));
  });
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Every process the lab recorded, and every port it listens on, are gone. */
async function assertNothingLeft(lab: TestLab): Promise<void> {
  const recorded = lab.status;
  const pids = [recorded.supervisorPid, ...recorded.regions.flatMap((r) => [r.postgres.pid, ...r.processes.map((p) => p.pid)])].filter((p): p is number => typeof p === 'number');
  for (const pid of pids) assert.equal(alive(pid), false, `process ${pid} of the lab is still alive`);
  for (const r of recorded.regions) {
    for (const port of [LAB_PORTS.app, LAB_PORTS.dns, LAB_PORTS.dnsAdmin, LAB_PORTS.agent, LAB_PORTS.control, LAB_PORTS.postgres, LAB_PORTS.postgresWan]) {
      assert.ok(await refused(r.address, port), `${r.address}:${port} still accepts connections`);
    }
  }
  assert.ok(await refused(LAB_API.host, LAB_API.port), 'the lab API still listens');
}

test('two-region lab: health, geo-DNS, cross-region replication, fail and recover, nothing left after down', { timeout: 300_000 }, async () => {
  const lab = await startLab({ regions: 2 });
  try {
    assert.equal(lab.status.state, 'running');
    const [south, west] = lab.status.regions;
    assert.deepEqual([south!.name, south!.address, west!.name, west!.address], ['aws-south', '127.0.1.1', 'azure-west', '127.0.2.1']);
    for (const r of lab.status.regions) {
      const h = await http(`http://${r.address}:${LAB_PORTS.app}/healthz`);
      assert.equal(h.status, 200, JSON.stringify(h.body));
      assert.equal(h.region, r.name);
    }

    // Geo-DNS: what the shipped database says about each client subnet decides the expected region.
    const geo = GeoDb.open('bundled');
    for (const region of LAB_REGIONS.slice(0, 2)) {
      const subnet = region.clientSubnets[0];
      const info = geo.lookup(subnet.split('/')[0]!).info;
      assert.ok(info && (region.states as readonly string[]).includes(info.subdivisionName ?? ''), `the database puts ${subnet} in ${info?.subdivisionName}; the lab expects one of ${region.states.join(', ')}`);
      const expected = lab.status.regions.find((r) => r.name === region.name)!.address;
      for (const server of lab.status.regions) {
        const a = await queryA({ host: server.address, port: LAB_PORTS.dns }, 'app.tandem.test', { ecs: subnet, timeoutMs: 2_000 });
        assert.deepEqual(a.addresses, [expected], `${server.name}'s DNS answers ${subnet} (${info?.subdivisionName})`);
        assert.ok((a.scopePrefix ?? 0) > 0, 'the ECS scope is echoed');
      }
    }

    // An order created in one region is readable in the other within a second, both ways.
    const idA = await createOrder(south!.address, `e2e-${Date.now()}-a`);
    const tookA = await readableWithin(west!.address, idA, 1_000);
    const idB = await createOrder(west!.address, `e2e-${Date.now()}-b`);
    const tookB = await readableWithin(south!.address, idB, 1_000);
    console.log(`# replicated aws-south → azure-west in ${tookA} ms, azure-west → aws-south in ${tookB} ms`);

    // Fail a whole region, PostgreSQL included; recover it on its data.
    const fail = await lab.cli(['lab', 'fail', 'aws-south', '--dir', lab.dir]);
    assert.equal(fail.code, 0, fail.stderr);
    assert.match(fail.stdout, /SIGKILLed \d+ processes/);
    await assert.rejects(http(`http://${south!.address}:${LAB_PORTS.app}/healthz`));
    assert.ok(await refused(south!.address, LAB_PORTS.postgres), 'PostgreSQL of the failed region is down');
    const again = await lab.cli(['lab', 'fail', 'aws-south', '--dir', lab.dir]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already failed/);
    const recover = await lab.cli(['lab', 'recover', 'aws-south', '--dir', lab.dir], 120_000);
    assert.equal(recover.code, 0, recover.stderr);
    const h = await http(`http://${south!.address}:${LAB_PORTS.app}/healthz`);
    assert.equal(h.status, 200);
    // The order written before the failure survived in its own region's data.
    assert.equal((await http(`http://${south!.address}:${LAB_PORTS.app}/v1/orders/${idA}`)).status, 200);

    const status = await lab.cli(['lab', 'status', '--json', '--dir', lab.dir]);
    assert.equal(status.code, 0);
    lab.status = JSON.parse(status.stdout);
    assert.ok(lab.status.regions.every((r) => r.state === 'up'));
  } finally {
    await lab.down();
  }
  await assertNothingLeft(lab);
});

test('three-region lab: a write in any region reaches the other two', { timeout: 300_000 }, async () => {
  const lab = await startLab({ regions: 3, traffic: false });
  try {
    const regions = lab.status.regions;
    assert.deepEqual(regions.map((r) => r.name), ['aws-south', 'azure-west', 'gcp-north']);
    for (const from of regions) {
      const id = await createOrder(from.address, `e2e3-${Date.now()}-${from.name}`);
      for (const to of regions) if (to !== from) await readableWithin(to.address, id, 1_000);
    }
    // Replication state is visible in every region's database.
    const password = readFileSync(`${lab.dir}/secrets/pg-password`, 'utf8').trim();
    const c = new pg.Client({ host: regions[2]!.address, port: LAB_PORTS.postgres, user: 'postgres', password, database: 'tandem' });
    await c.connect();
    try {
      const { rows } = await c.query<{ peer: string }>('SELECT peer FROM tandem.replication_status ORDER BY peer');
      assert.deepEqual(rows.map((r) => r.peer), ['aws-south', 'azure-west']);
    } finally {
      await c.end();
    }
  } finally {
    await lab.down();
  }
  await assertNothingLeft(lab);
});
