/**
 * `regions[]`: the places the application runs. Nothing in tandem assumes two.
 */
import { z } from 'zod';
import { hostPort, ipAddress, pgConnection, pgConnectionOverride } from './common.ts';

/** Region names are DNS-label-like so they fit in metric labels, slot names and file names. */
export const regionName = z
  .string()
  .regex(/^[a-z][a-z0-9-]{0,30}[a-z0-9]$/, 'expected a lowercase name of 2-32 letters, digits and "-" (e.g. "aws-south")');

/** One region: its service addresses, database, and the listeners of its daemons. */
export const region = z
  .object({
    name: regionName,
    /** Informational: the cloud and its location (e.g. aws / ap-south-2). */
    cloud: z.string().default('other'),
    location: z.string().optional(),
    /** Addresses the service answers on in this region: what DNS hands out (A and AAAA). */
    addresses: z.array(ipAddress).min(1),
    /** The URL health probes request; 2xx with a body that does not say unhealthy means healthy. */
    healthUrl: z.url(),
    /** This region's PostgreSQL as peers reach it (replication streams from here). */
    database: pgConnection,
    /** The same database as processes inside the region reach it; defaults to `database`. */
    localDatabase: pgConnectionOverride.optional(),
    /**
     * Source address for this region's outgoing cross-region connections. Only
     * the lab needs it (its WAN emulator tells links apart by source address).
     */
    bindAddress: ipAddress.optional(),
    /** Listeners of this region's daemons. */
    dns: z
      .object({
        listen: z.array(hostPort).min(1),
        /** The DNS server's HTTP admin API (drain, weights, reload, metrics). */
        admin: hostPort,
      })
      .strict()
      .optional(),
    app: z
      .object({
        listen: hostPort,
        workers: z.number().int().min(1).max(64).default(2),
      })
      .strict()
      .optional(),
    agent: z
      .object({
        /** The replication agent's HTTP endpoint (status, metrics). */
        admin: hostPort,
      })
      .strict()
      .optional(),
    control: z
      .object({
        /** The controller's HTTP API (status, failover, failback, audit). */
        listen: hostPort,
      })
      .strict()
      .optional(),
  })
  .strict();
export type RegionConfig = z.output<typeof region>;
