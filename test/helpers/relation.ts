/** The source relation of a table as a peer with the same schema would describe it (built from this database). */
import type pg from 'pg';
import { tableKey, type TableName } from '../../src/core/sql.ts';
import { describeTables, type SourceRelation } from '../../src/replication/catalog.ts';

export async function sourceRelationOf(db: pg.Client, t: TableName, relationId = 1): Promise<SourceRelation> {
  const d = (await describeTables(db, [t])).get(tableKey(t))!;
  return {
    relationId,
    schema: t.schema,
    name: t.table,
    replicaIdentity: 'd',
    columns: d.columns.map((c) => ({ flags: c.keyPosition !== null ? 1 : 0, isKey: c.keyPosition !== null, name: c.name, typeOid: c.typeOid, typeMod: c.typeMod })),
    userTypes: new Map(),
    key: tableKey(t),
  };
}
