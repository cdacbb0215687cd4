import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  compareVersions,
  compareUnderPolicy,
  decide,
  priorityRank,
  runCustomResolver,
  squashWinner,
  type Decision,
  type IncomingChange,
  type LocalState,
  type Policy,
  type Version,
} from './resolve.ts';
import { prng as rng } from '../core/random.ts';

const lww: Policy = { kind: 'lww' };
const show = (x: unknown) => JSON.stringify(x, (_k, v: unknown) => (typeof v === 'bigint' ? `${v}n` : v));
const V = (tsUs: number, region: string): Version => ({ tsUs: BigInt(tsUs), region });

describe('version order', () => {
  test('timestamps first, then region names bytewise', () => {
    assert.equal(compareVersions(V(1, 'z'), V(2, 'a')), -1);
    assert.equal(compareVersions(V(2, 'a'), V(2, 'b')), -1);
    assert.equal(compareVersions(V(2, 'b'), V(2, 'b')), 0);
    // Bytewise, not locale order: "Z" (0x5a) sorts before "a" (0x61), "é" (0xc3 0xa9) after "z".
    assert.equal(compareVersions(V(2, 'Z'), V(2, 'a')), -1);
    assert.equal(compareVersions(V(2, 'é'), V(2, 'z')), 1);
    assert.equal(compareVersions(V(2, 'aws-south'), V(2, 'aws-south-2')), -1);
  });

  test('µs precision is kept beyond 2^53', () => {
    const big = 2n ** 60n;
    assert.equal(compareVersions({ tsUs: big, region: 'a' }, { tsUs: big + 1n, region: 'a' }), -1);
  });

  test('region-priority ranks the named region above all, and stays a total order', () => {
    const p: Policy = { kind: 'region-priority', region: 'b' };
    assert.equal(compareUnderPolicy(V(1, 'b'), V(100, 'a'), p), 1);
    assert.equal(compareUnderPolicy(V(100, 'a'), V(1, 'b'), p), -1);
    assert.equal(compareUnderPolicy(V(5, 'a'), V(6, 'c'), p), -1);
    assert.equal(compareUnderPolicy(V(5, 'b'), V(6, 'b'), p), -1);
    // A write that inherited the rank competes with the priority region on time.
    assert.equal(compareUnderPolicy({ ...V(7, 'a'), priority: true }, V(6, 'b'), p), 1);
    assert.equal(compareUnderPolicy({ ...V(7, 'a'), priority: true }, V(8, 'b'), p), -1);
    assert.equal(compareUnderPolicy({ ...V(7, 'a'), priority: true }, V(9, 'c'), p), 1);
  });
});

describe('decide: every operation against every local state', () => {
  const remote = V(100, 'a');
  const newer = V(90, 'b'); // local older → remote wins
  const older = V(110, 'b'); // local newer → remote loses
  const sameTsLowerRegion = V(100, '0'); // equal ts, local region sorts first → remote wins
  const equal = V(100, 'a');
  const row = (v: Version): LocalState => ({ kind: 'row', version: v });
  const tomb = (v: Version): LocalState => ({ kind: 'tombstone', version: v });
  const absent: LocalState = { kind: 'absent' };
  const ch = (op: IncomingChange['op'], complete = true): IncomingChange => ({ op, version: remote, complete });
  const cases: Array<[string, IncomingChange, LocalState, Decision]> = [
    ['insert, absent', ch('insert'), absent, { action: 'upsert' }],
    ['insert, row older', ch('insert'), row(newer), { action: 'upsert', conflict: 'insert_exists' }],
    ['insert, row newer', ch('insert'), row(older), { action: 'skip', conflict: 'insert_exists' }],
    ['insert, row same ts lower region', ch('insert'), row(sameTsLowerRegion), { action: 'upsert', conflict: 'insert_exists' }],
    ['insert, row equal version (re-applied)', ch('insert'), row(equal), { action: 'upsert', conflict: 'insert_exists' }],
    ['insert, tombstone older', ch('insert'), tomb(newer), { action: 'upsert' }],
    ['insert, tombstone newer', ch('insert'), tomb(older), { action: 'skip', conflict: 'insert_deleted' }],
    ['update, absent', ch('update'), absent, { action: 'upsert', conflict: 'update_missing' }],
    ['update, absent, incomplete', ch('update', false), absent, { action: 'skip', conflict: 'update_missing', reason: 'x' }],
    ['update, row of same region older', ch('update'), row(V(90, 'a')), { action: 'upsert' }],
    ['update, row of same region newer (clock stepped back)', ch('update'), row(V(110, 'a')), { action: 'skip', conflict: 'update_origin_differs', reason: 'x' }],
    ['update, row of other region older', ch('update'), row(newer), { action: 'upsert', conflict: 'update_origin_differs' }],
    ['update, row of other region newer', ch('update'), row(older), { action: 'skip', conflict: 'update_origin_differs' }],
    ['update, row incomplete (existing row fills it)', ch('update', false), row(newer), { action: 'upsert', conflict: 'update_origin_differs' }],
    ['update, tombstone older', ch('update'), tomb(newer), { action: 'upsert', conflict: 'update_deleted' }],
    ['update, tombstone newer', ch('update'), tomb(older), { action: 'skip', conflict: 'update_deleted' }],
    ['update, tombstone older, incomplete', ch('update', false), tomb(newer), { action: 'skip', conflict: 'update_deleted', reason: 'x' }],
    ['delete, absent', ch('delete'), absent, { action: 'tombstone', conflict: 'delete_missing' }],
    ['delete, tombstone older', ch('delete'), tomb(newer), { action: 'tombstone', conflict: 'delete_missing' }],
    ['delete, tombstone newer', ch('delete'), tomb(older), { action: 'skip', conflict: 'delete_missing' }],
    ['delete, row of same region older', ch('delete'), row(V(90, 'a')), { action: 'delete' }],
    ['delete, row of same region newer', ch('delete'), row(V(110, 'a')), { action: 'skip', conflict: 'delete_origin_differs', reason: 'x' }],
    ['delete, row of other region older', ch('delete'), row(newer), { action: 'delete', conflict: 'delete_origin_differs' }],
    ['delete, row of other region newer', ch('delete'), row(older), { action: 'skip', conflict: 'delete_origin_differs' }],
  ];
  for (const [name, change, local, want] of cases) {
    test(name, () => {
      const got = decide(change, local, lww);
      assert.equal(got.action, want.action);
      assert.equal(got.conflict, want.conflict);
      assert.equal(Boolean(got.reason), Boolean(want.reason));
    });
  }

  test('custom policy merges row/row conflicts only; deletes and tombstones stay last-writer-wins', () => {
    const custom: Policy = { kind: 'custom', name: 't', resolve: ({ remote }) => remote.row };
    assert.equal(decide(ch('update'), row(older), custom).action, 'merge');
    assert.equal(decide(ch('insert'), row(newer), custom).action, 'merge');
    assert.deepEqual(decide(ch('update'), row(V(90, 'a')), custom), { action: 'merge' }, 'same-region updates merge but are not conflicts');
    assert.equal(decide(ch('delete'), row(older), custom).action, 'skip');
    assert.equal(decide(ch('update'), tomb(older), custom).action, 'skip');
  });

  test('never applies a change older than the local state (all policies, all states)', () => {
    const policies: Policy[] = [lww, { kind: 'region-priority', region: 'a' }, { kind: 'region-priority', region: 'b' }];
    const versions = [V(1, 'a'), V(1, 'b'), V(2, 'a'), V(2, 'b'), V(3, 'c')];
    for (const p of policies) {
      for (const rv of versions) {
        for (const lv of versions) {
          for (const op of ['insert', 'update', 'delete'] as const) {
            for (const local of [row(lv), tomb(lv)]) {
              const d = decide({ op, version: rv, complete: true }, local, p);
              const remoteWins = compareUnderPolicy(rv, lv, p) >= 0;
              if (d.action !== 'skip') assert.ok(remoteWins, `${op} ${show([rv, local, p])} applied an older change`);
              else assert.ok(!remoteWins, `${op} ${show([rv, local, p])} skipped a newer change`);
            }
          }
        }
      }
    }
  });
});

describe('custom resolvers', () => {
  test('columns left out keep the value of the higher version; the result gets the higher version', () => {
    const p: Extract<Policy, { kind: 'custom' }> = { kind: 'custom', name: 'sum', resolve: ({ local, remote }) => ({ n: String(Number(local.row.n) + Number(remote.row.n)) }) };
    const out = runCustomResolver(p, 't', { row: { n: '1', s: 'L' }, commitTsUs: 5n, region: 'b' }, { row: { n: '2', s: 'R' }, commitTsUs: 7n, region: 'a' }, ['n', 's']);
    assert.deepEqual(out.row, { n: '3', s: 'R' });
    assert.deepEqual(out.version, { tsUs: 7n, region: 'a' });
  });

  test('bad resolver output is an error, not a silent write', () => {
    const p: Extract<Policy, { kind: 'custom' }> = { kind: 'custom', name: 'bad', resolve: () => ({ n: 5 as unknown as string }) };
    assert.throws(() => runCustomResolver(p, 't', { row: { n: '1' }, commitTsUs: 1n, region: 'a' }, { row: { n: '2' }, commitTsUs: 2n, region: 'b' }, ['n']), /must be text/);
    const q: Extract<Policy, { kind: 'custom' }> = { kind: 'custom', name: 'null', resolve: () => null as never };
    assert.throws(() => runCustomResolver(q, 't', { row: { n: '1' }, commitTsUs: 1n, region: 'a' }, { row: { n: '2' }, commitTsUs: 2n, region: 'b' }, ['n']), /expected a row/);
  });
});

/**
 * A model of the whole system for one key: regions write locally (versions
 * from one clock, so a write made after seeing a version is later than it)
 * and receive each other's changes in per-source FIFO order but in any
 * interleaving; every remote change goes through `decide`. After all
 * deliveries every region must hold the same thing: the highest version.
 */
interface Cell {
  value: string | null; // null = no row
  version: Version | null; // version of the row or of the tombstone
  tombstone: boolean;
}

function simulate(seed: number, regions: string[], policy: Policy, opts: { deletes: boolean; steps: number; inflationary?: boolean }): { states: Cell[]; writes: Array<{ v: Version; value: string | null }> } {
  const rand = rng(seed);
  const cells: Cell[] = regions.map(() => ({ value: null, version: null, tombstone: false }));
  // queues[src][dst]: changes in flight from src to dst
  const queues = regions.map(() => regions.map(() => [] as Array<{ op: 'insert' | 'update' | 'delete'; value: string | null; v: Version }>));
  const writes: Array<{ v: Version; value: string | null }> = [];
  let clock = 1;
  const localState = (c: Cell): LocalState =>
    c.value !== null ? { kind: 'row', version: c.version! } : c.tombstone ? { kind: 'tombstone', version: c.version! } : { kind: 'absent' };
  for (let step = 0; step < opts.steps; step++) {
    if (rand() < 0.45) {
      // A local write; sometimes two regions write in the same µs (equal timestamps).
      const r = Math.floor(rand() * regions.length);
      if (rand() < 0.7) clock++;
      const c = cells[r]!;
      // With one clock a write made after seeing version v commits later than v (time passes);
      // equal timestamps only happen between writes that have not seen each other.
      if (c.version && BigInt(clock) <= c.version.tsUs) clock = Number(c.version.tsUs) + 1;
      const v = V(clock, regions[r]!);
      // region-priority: a write over a priority-ranked version inherits the rank (the capture trigger marks it).
      if (policy.kind === 'region-priority' && c.version && priorityRank(c.version, policy.region) === 1) v.priority = true;
      let op: 'insert' | 'update' | 'delete';
      let value: string | null;
      if (c.value === null) {
        op = 'insert';
        value = `${regions[r]}${step}`;
      } else if (opts.deletes && rand() < 0.3) {
        op = 'delete';
        value = null;
      } else {
        op = 'update';
        // Custom resolvers converge only when local writes grow the row in the resolver's order (a CRDT join).
        value = opts.inflationary ? [...new Set([...c.value.split(','), `${regions[r]}${step}`])].sort().join(',') : `${regions[r]}${step}`;
      }
      // A local write always takes the row (the local session does not consult versions).
      cells[r] = { value, version: v, tombstone: op === 'delete' };
      writes.push({ v, value });
      for (let d = 0; d < regions.length; d++) if (d !== r) queues[r]![d]!.push({ op, value, v });
    } else {
      // Deliver the oldest change of a random link.
      const s = Math.floor(rand() * regions.length);
      const d = Math.floor(rand() * regions.length);
      const q = queues[s]![d]!;
      const ch = q.shift();
      if (!ch) continue;
      applyRemote(cells, d, ch, policy, localState);
    }
  }
  // Heal: drain every queue in random link order.
  for (;;) {
    const links: Array<[number, number]> = [];
    for (let s = 0; s < regions.length; s++) for (let d = 0; d < regions.length; d++) if (queues[s]![d]!.length > 0) links.push([s, d]);
    if (links.length === 0) break;
    const [s, d] = links[Math.floor(rand() * links.length)]!;
    applyRemote(cells, d, queues[s]![d]!.shift()!, policy, localState);
  }
  return { states: cells, writes };
}

function applyRemote(
  cells: Cell[],
  d: number,
  ch: { op: 'insert' | 'update' | 'delete'; value: string | null; v: Version },
  policy: Policy,
  localState: (c: Cell) => LocalState,
): void {
  const c = cells[d]!;
  const dec = decide({ op: ch.op, version: ch.v, complete: true }, localState(c), policy);
  switch (dec.action) {
    case 'upsert':
      cells[d] = { value: ch.value, version: ch.v, tombstone: false };
      break;
    case 'delete':
    case 'tombstone':
      cells[d] = { value: null, version: ch.v, tombstone: true };
      break;
    case 'merge': {
      const p = policy as Extract<Policy, { kind: 'custom' }>;
      const m = runCustomResolver(p, 't', { row: { v: c.value }, commitTsUs: c.version!.tsUs, region: c.version!.region }, { row: { v: ch.value }, commitTsUs: ch.v.tsUs, region: ch.v.region }, ['v']);
      cells[d] = { value: m.row.v ?? null, version: m.version, tombstone: false };
      break;
    }
    case 'skip':
      break;
  }
}

describe('convergence (model of N regions, seeded)', () => {
  const baseSeed = Number(process.env.TANDEM_SEED ?? 0) || 20_240_601;
  const runs = 400;
  for (const [name, regions, policy] of [
    ['lww, 2 regions', ['a', 'b'], lww],
    ['lww, 3 regions', ['aws-south', 'azure-west', 'gcp-x'], lww],
    ['region-priority, 3 regions', ['a', 'b', 'c'], { kind: 'region-priority', region: 'b' } as Policy],
  ] as const) {
    test(`${name}: every region ends with the highest-version write (seed ${baseSeed})`, () => {
      for (let i = 0; i < runs; i++) {
        const seed = baseSeed + i;
        const { states, writes } = simulate(seed, [...regions], policy, { deletes: true, steps: 60 });
        const first = show(states[0]);
        for (const s of states) assert.equal(show(s), first, `regions diverged (TANDEM_SEED=${seed})`);
        if (writes.length > 0) {
          const top = writes.reduce((m, w) => (compareUnderPolicy(w.v, m.v, policy) > 0 ? w : m));
          assert.equal(states[0]!.value, top.value, `final state is not the highest version (TANDEM_SEED=${seed})`);
        }
      }
    });
  }

  test(`custom resolver (commutative, associative, idempotent), no deletes, 3 regions (seed ${baseSeed})`, () => {
    const custom: Policy = {
      kind: 'custom',
      name: 'union',
      resolve: ({ local, remote }) => ({ v: [...new Set([...(local.row.v ?? '').split(','), ...(remote.row.v ?? '').split(',')].filter(Boolean))].sort().join(',') }),
    };
    for (let i = 0; i < runs; i++) {
      const seed = baseSeed + i;
      const { states } = simulate(seed, ['a', 'b', 'c'], custom, { deletes: false, steps: 40, inflationary: true });
      const first = show(states[0]);
      for (const s of states) assert.equal(show(s), first, `regions diverged (TANDEM_SEED=${seed})`);
    }
  });
});

describe('squash', () => {
  test('picks what sequential application would leave: the highest version, ties to the later change', () => {
    const mk = (ts: number, r = 'a') => ({ version: V(ts, r), item: ts });
    assert.equal(squashWinner([mk(1), mk(2), mk(3)], lww), 2);
    assert.equal(squashWinner([mk(1), mk(3), mk(2)], lww), 1, 'a clock step back: the later change has the lower version');
    assert.equal(squashWinner([mk(2), mk(2)], lww), 1, 'equal versions: the later one re-applies');
  });

  test('equals sequential application of decide() for random sequences (seeded)', () => {
    const rand = rng(7);
    for (let i = 0; i < 500; i++) {
      const n = 1 + Math.floor(rand() * 6);
      const seq = Array.from({ length: n }, (_, j) => ({ version: V(Math.floor(rand() * 5), 'a'), item: j }));
      let state: { v: Version; item: number } | undefined;
      for (const s of seq) if (!state || compareVersions(s.version, state.v) >= 0) state = { v: s.version, item: s.item };
      assert.equal(seq[squashWinner(seq, lww)]!.item, state!.item);
    }
  });
});
