/**
 * The dashboard's map: which region serves each geography right now, and a
 * tile map of India (one square per state or union territory, placed roughly
 * where it lies) coloured by that region.
 *
 * The region serving a geography follows the DNS policy's rule: the first
 * region of the geography's order that its DNS server reports as serving
 * (healthy or not yet probed, and not drained); when none is, DNS fails open
 * to every undrained region. Each reachable DNS server answers from its own
 * health view, so the answer is computed per server and shown once when they
 * agree.
 */
import type { Config } from '../core/config/index.ts';
import { INDIA_SUBDIVISIONS, indianCode, indianCodeForName } from '../dns/india.ts';

/** Grid position (column, row) of each Indian state / UT on the tile map. */
export const INDIA_TILES: Readonly<Record<string, readonly [number, number]>> = {
  JK: [3, 0], LA: [4, 0],
  PB: [3, 1], HP: [4, 1], CH: [2, 1],
  RJ: [2, 2], HR: [3, 2], DL: [4, 2], UK: [5, 2], SK: [7, 2], AR: [9, 2],
  GJ: [1, 3], MP: [3, 3], UP: [4, 3], BR: [6, 3], AS: [8, 3], NL: [9, 3],
  DH: [1, 4], MH: [2, 4], CG: [4, 4], JH: [5, 4], WB: [6, 4], ML: [8, 4], MN: [9, 4],
  GA: [2, 5], TG: [3, 5], OD: [5, 5], TR: [8, 5], MZ: [9, 5],
  LD: [0, 6], KA: [2, 6], AP: [3, 6], AN: [7, 6],
  KL: [2, 7], TN: [3, 7], PY: [4, 7],
};

/** What one DNS server says about one region. */
export interface DnsRegionView {
  name: string;
  drained: boolean;
  /** Healthy (or unknown) and not drained, as the server computes it. */
  serving: boolean;
}

/** One geography (a `geo.rules` entry, or the default order). */
export interface GeographyView {
  name: string;
  /** The `match` entries as written. */
  places: string[];
  order: string[];
  /** The region(s) answered now; more than one when DNS fails open or servers disagree. */
  serving: string[];
  /** No region of the order is serving: DNS fails open to every undrained one. */
  failOpen: boolean;
  /** Reachable DNS servers disagree; per server what it answers. */
  byServer?: Record<string, string[]>;
}

/** One tile of the India map. */
export interface TileView {
  code: string;
  name: string;
  col: number;
  row: number;
  /** Index into `geographies`. */
  geography: number;
  /** First region of the serving list (the colour). */
  region: string | undefined;
}

export interface GeographySnapshot {
  geographies: GeographyView[];
  tiles: TileView[];
}

/** The regions answered for `order` by a DNS server with these region views. */
export function answerFor(order: readonly string[], regions: readonly DnsRegionView[]): { serving: string[]; failOpen: boolean } {
  const byName = new Map(regions.map((r) => [r.name, r]));
  const known = order.filter((n) => byName.has(n));
  const first = known.find((n) => byName.get(n)!.serving);
  if (first) return { serving: [first], failOpen: false };
  const undrained = known.filter((n) => !byName.get(n)!.drained);
  return { serving: undrained.length ? undrained : known, failOpen: true };
}

/** Which geography a tile falls in: subdivision rules first, then a country rule, else the default. */
function geographyOfTile(code: string, rules: Config['geo']['rules']): number {
  const sub = rules.findIndex((r) =>
    r.match.some((m) => {
      const dash = /^IN-([A-Za-z]{2})$/i.exec(m.trim());
      if (dash) return indianCode(dash[1]!) === code;
      const slash = /^IN\/(.+)$/i.exec(m.trim());
      return slash ? indianCodeForName(slash[1]!) === code : false;
    }),
  );
  if (sub >= 0) return sub;
  const country = rules.findIndex((r) => r.match.some((m) => m.trim().toUpperCase() === 'IN' || m.trim().toUpperCase() === 'CONTINENT:AS'));
  return country >= 0 ? country : rules.length;
}

/**
 * The map for the current DNS views (per reachable DNS server, its region
 * list). With no DNS server reachable, every region is assumed serving.
 */
export function geographySnapshot(config: Config, views: ReadonlyMap<string, readonly DnsRegionView[]>): GeographySnapshot {
  const names = config.regions.map((r) => r.name);
  const defaultOrder = config.geo.defaultOrder ?? names;
  const servers: [string, readonly DnsRegionView[]][] = views.size
    ? [...views]
    : [['(assumed)', names.map((name) => ({ name, drained: false, serving: true }))]];
  const geos: { name: string; places: string[]; order: string[] }[] = [
    ...config.geo.rules.map((r, i) => ({ name: r.name ?? `rule ${i + 1}`, places: [...r.match], order: [...r.order] })),
    { name: 'elsewhere', places: ['everything else'], order: [...defaultOrder] },
  ];
  const geographies = geos.map((g): GeographyView => {
    const per = servers.map(([server, regions]) => [server, answerFor(g.order, regions)] as const);
    const keys = new Set(per.map(([, a]) => a.serving.join(',')));
    const head = per[0]![1];
    const view: GeographyView = { ...g, serving: head.serving, failOpen: per.some(([, a]) => a.failOpen) };
    if (keys.size > 1) {
      view.serving = [...new Set(per.flatMap(([, a]) => a.serving))];
      view.byServer = Object.fromEntries(per.map(([s, a]) => [s, a.serving]));
    }
    return view;
  });
  const tiles: TileView[] = INDIA_SUBDIVISIONS.flatMap((s) => {
    const pos = INDIA_TILES[s.code];
    if (!pos) return [];
    const geography = geographyOfTile(s.code, config.geo.rules);
    return [{ code: s.code, name: s.names[0]!, col: pos[0], row: pos[1], geography, region: geographies[geography]?.serving[0] }];
  });
  return { geographies, tiles };
}
