/**
 * The tables the lab replicates: those of the reference service and the app
 * kit, as the service declares them.
 */
export { REPLICATED_TABLES as LAB_REPLICATED_TABLES } from '../service/schema.ts';
