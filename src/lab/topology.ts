/**
 * The lab's topology on one machine: region N lives on 127.0.N.1 with fixed
 * ports, and the lab's tandem.yaml (fast settings so drills finish in
 * minutes) is generated from it. Nothing here assumes two regions.
 */
import type { ConfigInput } from '../core/config/index.ts';
import { TandemError } from '../core/errors.ts';

/** Region names in the order `--regions N` takes them, with their geography. */
export const LAB_REGIONS = [
  {
    name: 'aws-south',
    cloud: 'aws',
    location: 'ap-south-2 (Hyderabad)',
    geo: 'south',
    states: ['Tamil Nadu', 'Karnataka', 'Kerala', 'Telangana', 'Andhra Pradesh', 'Puducherry'],
    // Client subnets the synthetic clients of this geography send as ECS. Which
    // state each is in is whatever the shipped geo database says; the drill
    // reports it and checks where the requests land instead of assuming.
    clientSubnets: ['49.204.1.0/24', '14.141.1.0/24', '1.186.1.0/24'],
  },
  { name: 'azure-west', cloud: 'azure', location: 'westindia (Mumbai)', geo: 'west', states: ['Maharashtra', 'Gujarat', 'Goa', 'Rajasthan'], clientSubnets: ['27.54.160.0/24', '1.6.1.0/24'] },
  { name: 'gcp-north', cloud: 'gcp', location: 'asia-south2 (Delhi)', geo: 'north', states: ['Delhi', 'Punjab', 'Haryana', 'Uttar Pradesh', 'Chandigarh'], clientSubnets: ['14.140.64.0/24', '1.22.1.0/24'] },
  { name: 'aws-east', cloud: 'aws', location: 'lab', geo: 'east', states: ['West Bengal', 'Odisha', 'Bihar', 'Assam'], clientSubnets: ['49.136.1.0/24', '27.48.1.0/24'] },
] as const;

/** Fixed ports on every region address. */
export const LAB_PORTS = {
  /** The real PostgreSQL (what processes inside the region use). */
  postgres: 15432,
  /** The WAN emulator in front of it (what other regions use). */
  postgresWan: 15433,
  app: 8080,
  dns: 5300,
  dnsAdmin: 5380,
  agent: 9480,
  control: 9580,
} as const;

/** The lab API and dashboard. */
export const LAB_API = { host: '127.0.0.1', port: 7070 } as const;

/** The zone and service name the lab serves. */
export const LAB_ZONE = 'tandem.test.';
export const LAB_SERVICE = 'app';

/** One lab region: its name, loopback address and geography. */
export interface LabRegion {
  name: string;
  index: number;
  address: string;
  cloud: string;
  location: string;
  /** The geography whose users this region serves first (a label for synthetic clients). */
  geo: string;
  states: readonly string[];
  clientSubnets: readonly string[];
}

/** The regions of an N-region lab. */
export function labRegions(count: number): LabRegion[] {
  if (!Number.isInteger(count) || count < 1 || count > LAB_REGIONS.length) {
    throw new TandemError('TANDEM_ERR_USAGE', `--regions must be between 1 and ${LAB_REGIONS.length}, found ${count}`);
  }
  return LAB_REGIONS.slice(0, count).map((r, i) => ({ ...r, index: i + 1, address: `127.0.${i + 1}.1` }));
}

/** Which lab region a loopback address belongs to (127.0.N.x → region N). */
export function regionOfAddress(regions: readonly LabRegion[], address: string): string | undefined {
  const m = /^(?:::ffff:)?127\.0\.(\d+)\.\d+$/.exec(address);
  if (!m) return undefined;
  return regions.find((r) => r.index === Number(m[1]))?.name;
}

/** Paths of the lab's secrets, referenced from the generated config. */
export interface LabSecrets {
  adminTokenFile: string;
  pgPasswordFile: string;
  sessionKeyFile: string;
}

/** Options of the generated config. */
export interface LabConfigOptions {
  regions: LabRegion[];
  dataDir: string;
  secrets: LabSecrets;
  replicatedTables: readonly string[];
}

/**
 * The lab's tandem.yaml: the blueprint's shape with the lab's fast settings
 * (TTL 10 s, probes every 2 s × 3, readiness lag 2 s) and lab bounds
 * (RTO 30 s, RPO 1 s).
 */
export function labConfig(o: LabConfigOptions): ConfigInput {
  const names = o.regions.map((r) => r.name);
  const orderFor = (first: string) => [first, ...names.filter((n) => n !== first)];
  return {
    version: 1,
    dataDir: o.dataDir,
    adminToken: { file: o.secrets.adminTokenFile },
    regions: o.regions.map((r) => ({
      name: r.name,
      cloud: r.cloud,
      location: r.location,
      addresses: [r.address],
      healthUrl: `http://${r.address}:${LAB_PORTS.app}/healthz`,
      database: {
        host: r.address,
        port: LAB_PORTS.postgresWan,
        database: 'tandem',
        user: 'postgres',
        password: { file: o.secrets.pgPasswordFile },
      },
      localDatabase: { port: LAB_PORTS.postgres },
      bindAddress: r.address,
      dns: { listen: [`${r.address}:${LAB_PORTS.dns}`], admin: `${r.address}:${LAB_PORTS.dnsAdmin}` },
      app: { listen: `${r.address}:${LAB_PORTS.app}`, workers: 2 },
      agent: { admin: `${r.address}:${LAB_PORTS.agent}` },
      control: { listen: `${r.address}:${LAB_PORTS.control}` },
    })),
    health: { intervalMs: 2_000, timeoutMs: 1_000, failThreshold: 3, recoverThreshold: 2 },
    dns: {
      zone: LAB_ZONE,
      ttlSec: 10,
      services: [{ name: LAB_SERVICE, ttlSec: 10 }],
      records: [{ name: 'www', type: 'CNAME', value: `${LAB_SERVICE}.${LAB_ZONE}` }],
    },
    geo: {
      database: 'bundled',
      rules: o.regions.map((r) => ({ name: r.name, match: r.states.map((s) => `IN/${s}`), order: orderFor(r.name) })),
      defaultOrder: names,
    },
    replication: {
      tables: [...o.replicatedTables],
      heartbeatIntervalMs: 500,
      tombstoneRetentionSec: 86_400,
    },
    app: {
      sessionKeys: [{ file: o.secrets.sessionKeyFile }],
      shutdownGraceMs: 3_000,
    },
    control: {
      rpoSec: 1,
      rtoSec: 30,
      readinessLagSec: 2,
      waitPeriodSec: 10,
      autoDrain: true,
      autoFailback: true,
    },
  };
}
