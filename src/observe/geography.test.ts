import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseConfig } from '../core/config/index.ts';
import { answerFor, geographySnapshot, INDIA_TILES, type DnsRegionView } from './geography.ts';
import { INDIA_SUBDIVISIONS } from '../dns/india.ts';

const config = parseConfig({
  regions: ['aws-south', 'azure-west', 'gcp-north'].map((name, i) => ({ name, addresses: [`127.0.${i + 1}.1`], healthUrl: `http://127.0.${i + 1}.1:8080/healthz`, database: { host: `127.0.${i + 1}.1` } })),
  geo: {
    rules: [
      { name: 'south', match: ['IN/Tamil Nadu', 'IN-KA', 'IN/Telangana'], order: ['aws-south', 'azure-west', 'gcp-north'] },
      { name: 'west', match: ['IN/Gujarat', 'IN-MH'], order: ['azure-west', 'aws-south', 'gcp-north'] },
      { name: 'india', match: ['IN'], order: ['gcp-north', 'azure-west', 'aws-south'] },
    ],
  },
});

const view = (drained: string[], unhealthy: string[]): DnsRegionView[] =>
  ['aws-south', 'azure-west', 'gcp-north'].map((name) => ({ name, drained: drained.includes(name), serving: !drained.includes(name) && !unhealthy.includes(name) }));

test('answerFor: first serving region of the order; fail-open to the undrained ones', () => {
  const order = ['aws-south', 'azure-west', 'gcp-north'];
  assert.deepEqual(answerFor(order, view([], [])), { serving: ['aws-south'], failOpen: false });
  assert.deepEqual(answerFor(order, view(['aws-south'], [])), { serving: ['azure-west'], failOpen: false });
  assert.deepEqual(answerFor(order, view([], ['aws-south', 'azure-west'])), { serving: ['gcp-north'], failOpen: false });
  assert.deepEqual(answerFor(order, view(['gcp-north'], ['aws-south', 'azure-west'])), { serving: ['aws-south', 'azure-west'], failOpen: true });
  assert.deepEqual(answerFor(order, view(['aws-south', 'azure-west', 'gcp-north'], [])), { serving: order, failOpen: true });
});

test('geographySnapshot: per rule, tiles by code or name, country rule for the rest, servers that disagree', () => {
  const s = geographySnapshot(config, new Map([['aws-south', view(['aws-south'], [])]]));
  assert.deepEqual(
    s.geographies.map((g) => [g.name, g.serving]),
    [
      ['south', ['azure-west']],
      ['west', ['azure-west']],
      ['india', ['gcp-north']],
      ['elsewhere', ['azure-west']],
    ],
  );
  const tile = (code: string) => s.tiles.find((t) => t.code === code)!;
  assert.equal(tile('TN').geography, 0);
  assert.equal(tile('KA').geography, 0, 'ISO code rule');
  assert.equal(tile('MH').geography, 1);
  assert.equal(tile('DL').geography, 2, 'the country rule covers the other states');
  assert.equal(tile('DL').region, 'gcp-north');
  // Two DNS servers with different health views answer differently.
  const split = geographySnapshot(config, new Map([['aws-south', view([], ['azure-west'])], ['azure-west', view([], [])]]));
  const west = split.geographies.find((g) => g.name === 'west')!;
  assert.deepEqual(west.serving, ['aws-south', 'azure-west']);
  assert.deepEqual(west.byServer, { 'aws-south': ['aws-south'], 'azure-west': ['azure-west'] });
  // No DNS server reachable: every region assumed serving.
  assert.deepEqual(geographySnapshot(config, new Map()).geographies[0]!.serving, ['aws-south']);
});

test('the tile map has one distinct square for every Indian state and union territory', () => {
  const codes = INDIA_SUBDIVISIONS.map((s) => s.code).sort();
  assert.deepEqual(Object.keys(INDIA_TILES).sort(), codes);
  const cells = new Set(Object.values(INDIA_TILES).map(([c, r]) => `${c},${r}`));
  assert.equal(cells.size, codes.length, 'no two states share a square');
});
