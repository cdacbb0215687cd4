import { startBed, waitFor } from './harness.ts';
import { sleep } from '../../src/core/lifecycle.ts';
const bed = await startBed({ regions: 2, ddl: [`CREATE TABLE ledger (id int PRIMARY KEY, payload text NOT NULL)`], tables: ['public.ledger'], replication: { batch: { maxTransactions: 200, maxRows: 5000 } } });
try {
  let id = 1;
  for (let i = 0; i < 1500; i++) { const ids = Array.from({length: 10}, () => id++); await bed.db[0]!.query(`INSERT INTO ledger SELECT id, repeat(md5(id::text), 4) FROM unnest($1::int[]) id`, [ids]); }
  for (let round = 0; round < 6; round++) {
    const a = await bed.startAgent(1);
    await sleep(50 + round * 60);
    bed.cluster.servers[1]!.kill(); await bed.cluster.servers[1]!.exited(); await bed.cluster.restart(1); await bed.reconnect(1);
    const ok = await waitFor('caught up', async () => (await bed.db[1]!.query('SELECT count(*)::int n FROM ledger')).rows[0].n === 15000, 20000).then(() => true, () => false);
    console.log('round', round, ok ? 'ok' : 'STUCK', JSON.stringify(a.status().peers[0]).slice(0, 400));
    await bed.stopAgent(1);
    await bed.db[1]!.query('TRUNCATE ledger'); await bed.db[1]!.query(`SELECT pg_replication_origin_advance('tandem_from_r_one', '0/0')`).catch(e => console.log(e.message));
    if (!ok) break;
  }
} finally { await bed.close(); }
