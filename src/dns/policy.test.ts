import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig, type ConfigInput } from '../core/config/index.ts';
import { isTandemError } from '../core/errors.ts';
import { GeoPolicy, AnswerTable, choose, parseCidr, parseMatch, CLASS_UNKNOWN, type RegionAnswerInput } from './policy.ts';
import { openGeoDb } from './daemon.ts';

const seed = Number(process.env.TANDEM_POLICY_SEED ?? Math.floor(Math.random() * 2 ** 31));

const base = (geo: ConfigInput['geo']): ConfigInput => ({
  regions: [
    { name: 'aws-south', addresses: ['127.0.1.1', '::1:1'], healthUrl: 'http://127.0.1.1/', database: { host: '127.0.1.1' } },
    { name: 'azure-west', addresses: ['127.0.2.1'], healthUrl: 'http://127.0.2.1/', database: { host: '127.0.2.1' } },
    { name: 'gcp-north', addresses: ['127.0.3.1'], healthUrl: 'http://127.0.3.1/', database: { host: '127.0.3.1' } },
  ],
  geo,
});

const geo = {
  rules: [
    { name: 'south', match: ['IN-TN', 'IN-KA', 'IN/Kerala', 'IN-TS', 'IN-AP'], order: ['aws-south', 'azure-west'] },
    { name: 'west', match: ['IN-MH', 'IN-GJ', 'IN-GA', 'IN-RJ'], order: ['azure-west', 'aws-south'] },
    { name: 'india', match: ['IN'], order: ['gcp-north'] },
  ],
  overrides: [
    { cidr: '49.204.1.128/25', order: ['gcp-north'] },
    { cidr: '10.0.0.0/8', order: ['azure-west'] },
  ],
};

test('match parsing: codes, names, aliases, continents, and clear errors', () => {
  assert.deepEqual(parseMatch('IN-TS'), { kind: 'subdivision', key: 'IN-TG', label: 'IN-TG', country: 'IN', byName: false, text: 'IN-TS' });
  assert.equal((parseMatch('IN/Telangana') as { key: string }).key, 'IN-TG');
  assert.equal((parseMatch('US/California') as { key: string }).key, 'US/california');
  assert.equal((parseMatch('continent:as') as { key: string }).key, 'AS');
  assert.match((parseMatch('IN-ZZ') as { error: string }).error, /not an ISO 3166-2:IN code/);
  assert.match((parseMatch('IN/Atlantis') as { error: string }).error, /not a state/);
  assert.ok('error' in parseMatch('India'));
});

test('rules naming places the database does not know are config errors naming the key path', () => {
  const db = openGeoDb('bundled');
  const bad = parseConfig(base({ rules: [{ match: ['IN-TN', 'US-CA', 'XX', 'continent:AS', 'US/Atlantis'], order: ['aws-south'] }] }));
  try {
    new GeoPolicy(bad, db);
    assert.fail('expected an error');
  } catch (err) {
    assert.ok(isTandemError(err, 'TANDEM_ERR_CONFIG'));
    assert.match(err.message, /geo\.rules\[0\]\.match\[1\]: .*names, not codes, for US: write "US\/<name>"/);
    assert.match(err.message, /geo\.rules\[0\]\.match\[2\]: .*knows no country XX/);
    assert.match(err.message, /geo\.rules\[0\]\.match\[3\]: .*no continents/);
    assert.match(err.message, /geo\.rules\[0\]\.match\[4\]: .*knows no subdivision US\/Atlantis/);
    assert.doesNotMatch(err.message, /match\[0\]/);
  }
  const badCidr = parseConfig(base({ overrides: [{ cidr: '10.0.0.1/8', order: ['aws-south'] }] }));
  assert.throws(() => new GeoPolicy(badCidr, db), /geo\.overrides\[0\]\.cidr: expected a CIDR with zero host bits/);
});

test('classes follow the database: subdivision rules beat the country rule; overrides beat both', () => {
  const db = openGeoDb('bundled');
  const p = new GeoPolicy(parseConfig(base(geo)), db);
  for (const ip of ['49.204.1.1', '27.54.160.1', '115.96.0.1', '106.51.0.1']) {
    const info = db.lookup(ip).info!;
    const e = p.explain(ip);
    const place = `IN-${info.subdivisionCode}`;
    const south = ['IN-TN', 'IN-KA', 'IN-KL', 'IN-TG', 'IN-AP'].includes(place);
    const west = ['IN-MH', 'IN-GJ', 'IN-GA', 'IN-RJ'].includes(place);
    assert.equal(e.order[0], south ? 'aws-south' : west ? 'azure-west' : 'gcp-north', `${ip} in ${place}`);
    assert.equal(e.order.length, 3, 'the full order lists every region (failover can reach any)');
  }
  assert.deepEqual(p.explain('49.204.1.200').order.slice(0, 1), ['gcp-north'], 'override /25');
  assert.equal(p.explain('49.204.1.200').class.label, 'override 49.204.1.128/25');
  assert.equal(p.explain('127.0.0.1').class.label, 'unknown');
  assert.equal(p.resolveText('127.0.0.1').classIdx, CLASS_UNKNOWN);
});

test('ECS scope is never wider than true: every address in the scope block gets the same order (seeded)', () => {
  console.log(`# policy seed ${seed} (TANDEM_POLICY_SEED)`);
  const db = openGeoDb('bundled');
  const p = new GeoPolicy(parseConfig(base(geo)), db);
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  // Bias towards Indian networks (and the override) where the answers differ.
  const prefixes = [0x31cc0000, 0x1b36a000, 0x73600000, 0x6a330000, 0x75c10000, 0x0a000000];
  let widened = 0;
  for (let i = 0; i < 400; i++) {
    const addr = i % 3 === 0 ? next() : (prefixes[i % prefixes.length]! + (next() & 0x3ffff)) >>> 0;
    const r = p.resolveV4(addr);
    const order = p.classes[r.classIdx]!.orderIdx;
    const scope = r.scope;
    const leaf = db.lookup([addr >>> 24, (addr >>> 16) & 255, (addr >>> 8) & 255, addr & 255].join('.')).prefixLength;
    if (scope < leaf) widened++;
    const size = scope === 0 ? 2 ** 32 : 2 ** (32 - scope);
    const start = scope === 0 ? 0 : ((addr >>> (32 - scope)) << (32 - scope)) >>> 0;
    for (let k = 0; k < 24; k++) {
      const probe = (start + Math.floor(((next() / 2 ** 32) * size))) >>> 0;
      const o = p.classes[p.resolveV4(probe).classIdx]!.orderIdx;
      assert.equal(o, order, `seed ${seed}: ${addr} scope /${scope} but ${probe} in it gets another order`);
    }
  }
  assert.ok(widened > 0, 'neighbouring networks with the same answer are merged');
});

test('override narrowing: an address next to an override gets a scope that excludes it', () => {
  const p = new GeoPolicy(parseConfig(base(geo)), openGeoDb('bundled'));
  const r = p.resolveText('49.204.1.1');
  assert.ok(r.scope >= 25, `49.204.1.0/25 must not cover 49.204.1.128/25 (scope ${r.scope})`);
  const o = p.resolveText('10.9.9.9');
  assert.equal(o.scope, 8);
  assert.deepEqual(parseCidr('2001:db8::/32')?.prefix, 32);
  assert.equal(parseCidr('2001:db8::1/32'), undefined);
});

const regions = (over: Partial<Record<string, Partial<RegionAnswerInput>>> = {}): RegionAnswerInput[] =>
  [
    { name: 'aws-south', healthy: true, drained: false, ipv4: ['127.0.1.1'], ipv6: ['::1:1'] },
    { name: 'azure-west', healthy: true, drained: false, ipv4: ['127.0.2.1'], ipv6: [] },
    { name: 'gcp-north', healthy: true, drained: false, ipv4: ['127.0.3.1'], ipv6: [] },
  ].map((r) => ({ ...r, ...over[r.name] }));

const svc = (weights: Record<string, number> = {}) => [{ name: 'app.tandem.test', ttlSec: 30, weights }];
const order = [[0, 1, 2]];
const pickA = (t: AnswerTable, id = 0) => choose(t.picks[0]![0]![0]!, id);

test('answers: first healthy undrained region; unhealthy and drained are skipped', () => {
  assert.deepEqual(pickA(new AnswerTable(order, regions(), svc())).addresses, ['127.0.1.1']);
  assert.equal(pickA(new AnswerTable(order, regions(), svc())).local, true);
  const c = pickA(new AnswerTable(order, regions({ 'aws-south': { healthy: false } }), svc()));
  assert.deepEqual([c.addresses, c.local, c.region], [['127.0.2.1'], false, 'azure-west']);
  assert.deepEqual(pickA(new AnswerTable(order, regions({ 'aws-south': { drained: true }, 'azure-west': { healthy: false } }), svc())).addresses, ['127.0.3.1']);
  // The RR bytes: owner pointer C00C, type A, class IN, TTL 30, 4 bytes of address.
  assert.equal(pickA(new AnswerTable(order, regions(), svc())).rr.toString('hex'), 'c00c000100010000001e00047f000101');
});

test('answers: fail open when every region is unhealthy; never empty; NODATA only without addresses of that family', () => {
  const down = { healthy: false };
  const all = pickA(new AnswerTable(order, regions({ 'aws-south': down, 'azure-west': down, 'gcp-north': down }), svc()));
  assert.deepEqual([all.addresses, all.failOpen, all.region], [['127.0.1.1', '127.0.2.1', '127.0.3.1'], true, 'all']);
  const drainedAndDown = pickA(new AnswerTable(order, regions({ 'aws-south': { drained: true }, 'azure-west': down, 'gcp-north': down }), svc()));
  assert.deepEqual(drainedAndDown.addresses, ['127.0.2.1', '127.0.3.1'], 'fail open keeps drained regions out');
  const aaaa = choose(new AnswerTable(order, regions({ 'aws-south': down }), svc()).picks[0]![1]![0]!, 0);
  assert.deepEqual(aaaa.addresses, ['::1:1'], 'AAAA falls open to the only region that has IPv6');
  const none = choose(new AnswerTable(order, regions({ 'aws-south': { ipv6: [] } }), svc()).picks[0]![1]![0]!, 0);
  assert.equal(none.count, 0);
});

test('answers: weights split by query id; zero or missing weight is out of the split; unhealthy leaves it', () => {
  const t = new AnswerTable(order, regions(), svc({ 'aws-south': 90, 'azure-west': 10 }));
  const counts: Record<string, number> = {};
  for (let id = 0; id < 1000; id++) counts[pickA(t, id).region] = (counts[pickA(t, id).region] ?? 0) + 1;
  assert.deepEqual(counts, { 'aws-south': 900, 'azure-west': 100 });
  const t2 = new AnswerTable(order, regions({ 'azure-west': { healthy: false } }), svc({ 'aws-south': 90, 'azure-west': 10 }));
  for (let id = 0; id < 100; id++) assert.equal(pickA(t2, id).region, 'aws-south');
  const t3 = new AnswerTable(order, regions(), svc({ 'gcp-north': 5 }));
  assert.equal(pickA(t3, 7).region, 'gcp-north', 'one weighted region takes all traffic');
});
