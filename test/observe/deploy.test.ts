/**
 * The Grafana dashboard and the Prometheus rules in deploy/ use metric and
 * label names the daemons really register (read from src/), and the rules use
 * the same thresholds as tandem's own alerts (the config defaults).
 * (`promtool test rules deploy/prometheus/alerts.test.yml` checks the rules'
 * behaviour where promtool is installed; see docs/observe.md.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { alerts as alertsSchema, replication as replicationSchema } from '../../src/core/config/index.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const DEFAULT_LABELS = ['component', 'region'];

/** Every tandem_* metric registered in src/, with its label names and type. */
function registeredMetrics(): Map<string, { labels: Set<string>; histogram: boolean }> {
  const out = new Map<string, { labels: Set<string>; histogram: boolean }>();
  const walk = (dir: string) => {
    for (const name of readdirSync(dir)) {
      const p = path.join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith('.ts') && !name.endsWith('.test.ts')) {
        const text = readFileSync(p, 'utf8');
        const re = /new (Counter|Gauge|Histogram|Summary)(?:<[^>]*>)?\(\{\s*name: '(tandem_[a-z0-9_]+)'([\s\S]*?)\}\)/g;
        for (let m = re.exec(text); m; m = re.exec(text)) {
          const labels = /labelNames: \[([^\]]*)\]/.exec(m[3]!.split(/\bname: '/)[0]!)?.[1] ?? '';
          out.set(m[2]!, { labels: new Set([...DEFAULT_LABELS, ...[...labels.matchAll(/'([a-z_]+)'/g)].map((x) => x[1]!)]), histogram: m[1] === 'Histogram' });
        }
      }
    }
  };
  walk(path.join(root, 'src'));
  return out;
}

const metrics = registeredMetrics();

/** The registered metric a series name belongs to (histogram suffixes stripped), or undefined. */
function baseMetric(series: string): string | undefined {
  if (metrics.has(series)) return series;
  const m = /^(.*)_(bucket|sum|count)$/.exec(series);
  if (m && metrics.get(m[1]!)?.histogram) return m[1];
  return undefined;
}

/** Check one PromQL expression: metric names exist, matchers and `by` labels are theirs. */
function checkExpr(expr: string, where: string): void {
  const names = [...expr.matchAll(/\b(tandem_[a-z0-9_]+)\b/g)].map((m) => m[1]!);
  assert.ok(names.length > 0, `${where}: no tandem metric in ${expr}`);
  const bases = names.map((n) => {
    const b = baseMetric(n);
    assert.ok(b, `${where}: ${n} is not registered by any daemon`);
    return b!;
  });
  for (const m of expr.matchAll(/\b(tandem_[a-z0-9_]+)\{([^}]*)\}/g)) {
    const base = baseMetric(m[1]!)!;
    for (const l of m[2]!.matchAll(/([a-z_]+)\s*(=~|!=|!~|=)/g)) {
      const ok = metrics.get(base)!.labels.has(l[1]!) || (l[1] === 'le' && metrics.get(base)!.histogram);
      assert.ok(ok, `${where}: ${m[1]} has no label "${l[1]}"`);
    }
  }
  for (const m of expr.matchAll(/\b(?:by|on)\s*\(([^)]*)\)/g)) {
    for (const label of m[1]!.split(',').map((s) => s.trim()).filter(Boolean)) {
      const ok = bases.some((b) => metrics.get(b)!.labels.has(label) || (label === 'le' && metrics.get(b)!.histogram));
      assert.ok(ok, `${where}: no metric of ${JSON.stringify(expr)} has the label "${label}"`);
    }
  }
}

test('the label parser of this test finds what the daemons register', () => {
  assert.ok(metrics.get('tandem_replication_lag_seconds')?.labels.has('peer'));
  assert.ok(metrics.get('tandem_http_request_duration_seconds')?.histogram);
  assert.ok(metrics.get('tandem_dns_queries_total')?.labels.has('answered'));
  assert.equal(baseMetric('tandem_http_request_duration_seconds_bucket'), 'tandem_http_request_duration_seconds');
  assert.equal(baseMetric('tandem_http_requests_total_bucket'), undefined);
  assert.throws(() => checkExpr('rate(tandem_no_such_metric[1m])', 'self-test'));
  assert.throws(() => checkExpr('tandem_replication_lag_seconds{target="x"}', 'self-test'));
  assert.throws(() => checkExpr('sum by (status) (tandem_replication_lag_seconds)', 'self-test'));
});

test('Prometheus rules: real metric names and labels, the thresholds of tandem.yaml defaults', () => {
  const doc = parseYaml(readFileSync(path.join(root, 'deploy/prometheus/alerts.yml'), 'utf8')) as { groups: { name: string; rules: { alert: string; expr: string; labels: { severity: string } }[] }[] };
  const rules = doc.groups.flatMap((g) => g.rules);
  for (const r of rules) {
    checkExpr(r.expr, r.alert);
    assert.ok(['warning', 'critical'].includes(r.labels.severity), `${r.alert}: severity`);
  }
  const rule = (name: string) => rules.find((r) => r.alert === name)!;
  const repl = replicationSchema.parse({});
  const a = alertsSchema.parse({});
  assert.match(rule('TandemReplicationLagWarning').expr, new RegExp(`tandem_replication_lag_seconds\\) > ${repl.lagWarnSec}$`));
  assert.match(rule('TandemReplicationLagCritical').expr, new RegExp(`tandem_replication_lag_seconds\\) > ${repl.lagCriticalSec}$`));
  assert.equal(rule('TandemReplicationLagCritical').labels.severity, 'critical');
  const err = rule('TandemErrorRateSpike').expr;
  assert.match(err, new RegExp(`\\) > ${a.errorRateThreshold}\\s`));
  assert.match(err, new RegExp(`>= ${a.errorRateMinRequests}\\s*$`));
  assert.equal([...err.matchAll(/\[(\d+)m\]/g)].every((m) => Number(m[1]) * 60 === a.errorRateWindowSec), true, 'window = errorRateWindowSec');
  for (const name of ['TandemProbeFailure', 'TandemRegionUnhealthyEverywhere', 'TandemRegionDrained', 'TandemReplicationTablePaused']) assert.ok(rule(name), name);
});

test('Grafana dashboard: valid layout, the datasource variable, real metric names and labels', () => {
  const d = JSON.parse(readFileSync(path.join(root, 'deploy/grafana/tandem.json'), 'utf8')) as {
    uid: string;
    panels: { id: number; type: string; title: string; gridPos: { x: number; y: number; w: number; h: number }; datasource?: { uid: string }; targets?: { expr: string; refId: string }[] }[];
    templating: { list: { name: string }[] };
  };
  assert.equal(d.uid, 'tandem-overview');
  assert.deepEqual(
    d.templating.list.map((v) => v.name),
    ['datasource', 'region'],
  );
  const ids = new Set<number>();
  const cells = new Set<string>();
  for (const p of d.panels) {
    assert.ok(!ids.has(p.id), `panel id ${p.id} twice`);
    ids.add(p.id);
    const g = p.gridPos;
    assert.ok(g.x >= 0 && g.w > 0 && g.x + g.w <= 24, `${p.title}: gridPos ${JSON.stringify(g)}`);
    for (let x = g.x; x < g.x + g.w; x++) {
      for (let y = g.y; y < g.y + g.h; y++) {
        assert.ok(!cells.has(`${x},${y}`), `${p.title} overlaps another panel at ${x},${y}`);
        cells.add(`${x},${y}`);
      }
    }
    if (p.type === 'row') continue;
    assert.equal(p.datasource?.uid, '${datasource}', p.title);
    assert.ok(p.targets?.length, `${p.title}: no queries`);
    for (const t of p.targets!) checkExpr(t.expr.replaceAll('$region', '.*'), `${p.title} (${t.refId})`);
  }
  const titles = d.panels.map((p) => p.title);
  for (const want of ['Replication lag (seconds)', 'Replication lag (bytes)', 'Conflicts by kind', 'DNS answers by geography', 'Served locally vs cross-region', 'Request latency p95 / p99', 'Failovers and DNS failover time']) {
    assert.ok(titles.includes(want), `missing panel ${want}`);
  }
});
