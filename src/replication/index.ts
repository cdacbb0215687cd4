/**
 * `tandem/replication`: the multi-master replication engine (agent, setup,
 * the pure resolution rule, lag) and the protocol layer it is built on.
 */
export { ReplicationAgent, loadPolicies, purgeTombstones } from './agent.ts';
export type { AgentOptions, AgentStatusReport } from './agent.ts';
export { PeerPipeline } from './peer.ts';
export type { PeerStatus } from './peer.ts';
export { Applier, usToTimestamp } from './apply.ts';
export type { Batch, Change, RowChange, TruncateChange, ApplyStats, PausedTable } from './apply.ts';
export { setupReplication, teardownReplication, installRegion, validateTables, ensureOrigin, ensurePublication, configuredTables } from './setup.ts';
export type { SetupReport, TeardownReport, SetupOptions } from './setup.ts';
export { checkPrerequisites } from './prereq.ts';
export type { PrereqReport, PrereqProblem, Platform } from './prereq.ts';
export { readLag, maxLagSec, replicationLagSec } from './status.ts';
export type { PeerLag } from './status.ts';
export { replicationStatus, formatStatus } from './report.ts';
export type { ReplicationStatus, RegionReplicationStatus } from './report.ts';
export { decide, compareVersions, compareUnderPolicy, CONFLICT_KINDS } from './resolve.ts';
export type { Version, Policy, CustomResolver, ConflictKind, TextRow, ResolverSide } from './resolve.ts';
export { describeTables, schemaDrift, typeProblems } from './catalog.ts';
export { SCHEMA_DDL, PUBLICATION, slotName, originName, HEARTBEAT_PREFIX } from './schema.ts';
export { ReplicationStream } from './stream.ts';
export type { ReplicationStreamOptions, StreamItem } from './stream.ts';
export { decodePgOutput, UNCHANGED_TOAST } from './pgoutput.ts';
export type { PgOutputMessage, TupleValue, RelationColumn } from './pgoutput.ts';
export { parseLsn, formatLsn, pgTimeToDate, dateToPgTime } from './protocol.ts';
export { bootstrapRegion, formatBootstrapProgress, formatBootstrapReport } from './bootstrap.ts';
export type { BootstrapOptions, BootstrapProgress, BootstrapReport } from './bootstrap.ts';
export { verifyTables, formatVerifyReport, formatKey } from './verify.ts';
export type { VerifyOptions, VerifyReport, VerifyDifference } from './verify.ts';
export { setupInterleavedSequences } from './sequences.ts';
