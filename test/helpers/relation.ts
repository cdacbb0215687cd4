/** The source relation of a table as a peer with the same schema would describe it (built from this database). */
import type pg from 'pg';
import { tableKey, type TableName } from '../../src/core/sql.ts';
import { asSourceRelation, describeTables, type SourceRelation } from '../../src/replication/catalog.ts';

export async function sourceRelationOf(db: pg.Client, t: TableName, relationId = 1): Promise<SourceRelation> {
  return asSourceRelation((await describeTables(db, [t])).get(tableKey(t))!, relationId);
}
