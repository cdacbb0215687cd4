/**
 * The tables the lab replicates: those of the reference service and the app
 * kit, as the service declares them.
 */
export async function labReplicatedTables(): Promise<readonly string[]> {
  const { REPLICATED_TABLES } = (await import('../service/index.ts' as string)) as { REPLICATED_TABLES: readonly string[] };
  return REPLICATED_TABLES;
}
