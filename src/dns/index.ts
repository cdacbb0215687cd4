/**
 * `tandem/dns`: the authoritative geo-DNS server, its policy and a small
 * resolver client.
 */
export { DnsDaemon, compile, openGeoDb } from './daemon.ts';
export type { DnsDaemonOptions, RegionStateView } from './daemon.ts';
export { DnsServer } from './server.ts';
export { DnsEngine } from './engine.ts';
export type { EngineState } from './engine.ts';
export { GeoDb, bundledDatabase } from './geo.ts';
export type { GeoInfo, GeoLookup } from './geo.ts';
export { GeoPolicy, AnswerTable, parseCidr } from './policy.ts';
export { buildZone } from './zone.ts';
export { queryA, query, exchange, buildQuery } from './client.ts';
export type { DnsTarget, QueryOptions, QueryAResult } from './client.ts';
export { INDIA_SUBDIVISIONS, indianCode, indianCodeForName } from './india.ts';
