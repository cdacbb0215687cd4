import { test } from 'node:test';
import assert from 'node:assert/strict';
import { GeoDb, parseIPv4, parseIPv6, formatNetwork, normaliseRecord } from './geo.ts';
import { INDIA_SUBDIVISIONS, indianCode, indianCodeForName } from './india.ts';
import { openGeoDb } from './daemon.ts';

const seed = Number(process.env.TANDEM_GEO_SEED ?? Math.floor(Math.random() * 2 ** 31));

test('India table: current codes, old codes as aliases (Telangana TG and TS), names', () => {
  assert.equal(indianCode('TS'), 'TG');
  assert.equal(indianCode('tg'), 'TG');
  assert.equal(indianCode('OR'), 'OD');
  assert.equal(indianCode('CT'), 'CG');
  assert.equal(indianCode('UT'), 'UK');
  assert.equal(indianCode('XX'), undefined);
  assert.equal(indianCodeForName('Telangana'), 'TG');
  assert.equal(indianCodeForName('tamil  nadu'), 'TN');
  assert.equal(indianCodeForName('Andaman & Nicobar'), 'AN');
  assert.equal(indianCodeForName('Orissa'), 'OD');
  assert.equal(new Set(INDIA_SUBDIVISIONS.map((s) => s.code)).size, 36, '28 states and 8 union territories');
});

test('the bundled database names every Indian state we map, and we map every name it uses', () => {
  const db = openGeoDb('bundled');
  const names = [...(db.knownPlaces().namesByCountry.get('IN') ?? [])];
  console.log(`# bundled DB-IP knows ${names.length} Indian subdivisions: ${names.sort().join(', ')}`);
  const unmapped = names.filter((n) => !indianCodeForName(n));
  assert.deepEqual(unmapped, [], 'every state name in the database maps to an ISO code');
  for (const code of ['TN', 'KA', 'KL', 'TG', 'AP', 'MH', 'GJ', 'GA', 'RJ']) {
    assert.ok(db.knownPlaces().subdivisions.has(`IN-${code}`), `database knows IN-${code}`);
  }
});

test('the tree walker agrees with the maxmind reader on networks and records (seeded)', () => {
  console.log(`# geo seed ${seed} (TANDEM_GEO_SEED)`);
  const db = openGeoDb('bundled');
  let s = seed >>> 0;
  const next = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0);
  for (let i = 0; i < 2000; i++) {
    const ip = [next() >>> 24, next() >>> 24, next() >>> 24, next() >>> 24].join('.');
    const mine = db.lookup(ip);
    const [raw, prefix] = db.v4.reader.getWithPrefixLength(ip);
    assert.equal(mine.prefixLength, prefix, ip);
    assert.deepEqual(mine.info, raw ? normaliseRecord(raw, 'flat') : undefined, ip);
  }
  for (const ip of ['2401:4900::1', '2405:200::1', '2001:db8::1']) {
    const [raw, prefix] = db.v6!.reader.getWithPrefixLength(ip);
    const mine = db.lookup(ip);
    assert.equal(mine.prefixLength, prefix);
    assert.deepEqual(mine.info, raw ? normaliseRecord(raw, 'flat') : undefined);
  }
});

test('geoip2 layout records normalise to codes, names and continent', () => {
  const info = normaliseRecord(
    { continent: { code: 'AS' }, country: { iso_code: 'IN' }, subdivisions: [{ iso_code: 'TS', names: { en: 'Telangana' } }], city: { names: { en: 'Hyderabad' } } },
    'geoip2',
  );
  assert.deepEqual(info, { country: 'IN', continent: 'AS', subdivisionCode: 'TG', subdivisionName: 'Telangana', city: 'Hyderabad' });
  assert.equal(normaliseRecord({ city: {} }, 'geoip2'), undefined);
});

test('address parsing and network formatting', () => {
  assert.equal(parseIPv4('49.204.1.1'), 0x31cc0101);
  for (const bad of ['1.2.3', '1.2.3.256', '01234.1.1.1', 'a.b.c.d', '1..2.3', '']) assert.equal(parseIPv4(bad), -1, bad);
  assert.deepEqual([...parseIPv6('2001:db8::1')!], [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
  assert.deepEqual([...parseIPv6('::ffff:1.2.3.4')!].slice(10), [0xff, 0xff, 1, 2, 3, 4]);
  assert.equal(parseIPv6('1.2.3.4'), undefined);
  assert.equal(formatNetwork(Uint8Array.of(49, 204, 1, 77), 17), '49.204.0.0/17');
  assert.equal(formatNetwork(parseIPv6('2401:4900:1:2::5')!, 32), '2401:4900::/32');
});

test('a missing or non-mmdb file is a clear TANDEM_ERR_GEO_DB', () => {
  assert.throws(() => GeoDb.open({ layout: 'flat', ipv4: '/nonexistent.mmdb' }), /TANDEM_ERR_GEO_DB|cannot read geo database/);
  assert.throws(() => GeoDb.open({ layout: 'flat', ipv4: new URL(import.meta.url).pathname }), /not a MaxMind DB file/);
});
