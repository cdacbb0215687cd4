import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import { parseExposition, parseValue, sumBy, sumSamples } from './exposition.ts';

test('parses samples, labels, HELP and TYPE of the format', () => {
  const text = [
    '# HELP http_requests_total The total number of HTTP requests.',
    '# TYPE http_requests_total counter',
    'http_requests_total{method="post",code="200"} 1027 1395066363000',
    'http_requests_total{method="post",code="400"}    3 1395066363000',
    '',
    '# A plain comment',
    'msdos_file_access_time_seconds{path="C:\\\\DIR\\\\FILE.TXT",error="Cannot find file:\\n\\"FILE.TXT\\""} 1.458255915e9',
    'metric_without_timestamp_and_labels 12.47',
    'something_weird{problem="division by zero"} +Inf -3982045',
    '# TYPE rpc_duration_seconds summary',
    'rpc_duration_seconds{quantile="0.5"} 4773',
    'rpc_duration_seconds_sum 1.7560473e+07',
    'trailing_comma{a="1",} 2',
    'spaced { a = "x" , b="y" } 5',
  ].join('\n');
  const { samples, families, issues } = parseExposition(text);
  assert.deepEqual(issues, []);
  assert.equal(samples.length, 9);
  assert.deepEqual(samples[0], { name: 'http_requests_total', labels: { method: 'post', code: '200' }, value: 1027, timestampMs: 1395066363000 });
  assert.equal(samples[1]!.value, 3);
  assert.deepEqual(samples[2]!.labels, { path: 'C:\\DIR\\FILE.TXT', error: 'Cannot find file:\n"FILE.TXT"' });
  assert.equal(samples[2]!.value, 1458255915);
  assert.deepEqual(samples[3], { name: 'metric_without_timestamp_and_labels', labels: {}, value: 12.47 });
  assert.equal(samples[4]!.value, Infinity);
  assert.equal(samples[4]!.timestampMs, -3982045);
  assert.equal(samples[6]!.value, 17560473);
  assert.deepEqual(samples[7]!.labels, { a: '1' });
  assert.deepEqual(samples[8]!.labels, { a: 'x', b: 'y' });
  assert.deepEqual(families.get('http_requests_total'), { name: 'http_requests_total', type: 'counter', help: 'The total number of HTTP requests.' });
  assert.equal(families.get('rpc_duration_seconds')?.type, 'summary');
  assert.equal(sumSamples(samples, 'http_requests_total'), 1030);
  assert.equal(sumSamples(samples, 'http_requests_total', (l) => l.code!.startsWith('4')), 3);
  assert.equal(sumSamples(samples, 'absent'), undefined);
});

test('reports bad lines with their number and keeps the good ones', () => {
  const text = [
    'good 1',
    'bad{a="unterminated} 1',
    '9starts_with_digit 1',
    'no_value',
    'bad_value 0x10',
    'bad_escape{a="\\t"} 1',
    'dup{a="1",a="2"} 1',
    '# TYPE x wibble',
    'too many tokens 1 2',
    'also_good{x="y"} 2',
    'bad_ts 1 12.5',
  ].join('\r\n');
  const { samples, issues } = parseExposition(text);
  assert.deepEqual(
    samples.map((s) => s.name),
    ['good', 'also_good'],
  );
  assert.deepEqual(
    issues.map((i) => i.line),
    [2, 3, 4, 5, 6, 7, 8, 9, 11],
  );
  assert.match(issues[0]!.message, /unterminated/);
  assert.match(issues[3]!.message, /invalid value/);
  assert.match(issues[4]!.message, /invalid escape/);
  assert.match(issues[5]!.message, /twice/);
});

test('parseValue follows the Go float syntax and the special values', () => {
  assert.equal(parseValue('-Inf'), -Infinity);
  assert.ok(Number.isNaN(parseValue('NaN')));
  assert.equal(parseValue('1e3'), 1000);
  assert.equal(parseValue('-.5'), -0.5);
  assert.equal(parseValue('7.'), 7);
  assert.throws(() => parseValue(''));
  assert.throws(() => parseValue('1,5'));
});

test('reads what prom-client writes: counters, gauges, histograms, escaped labels', async () => {
  const registry = new Registry();
  registry.setDefaultLabels({ component: 'app', region: 'aws-south' });
  const requests = new Counter({ name: 'tandem_http_requests_total', help: 'requests with "quotes" and \\ backslash', labelNames: ['route', 'method', 'status'], registers: [registry] });
  const gauge = new Gauge({ name: 'g', help: 'a gauge', labelNames: ['odd'], registers: [registry] });
  const hist = new Histogram({ name: 'tandem_http_request_duration_seconds', help: 'latency', buckets: [0.1, 1], labelNames: ['route'], registers: [registry] });
  const seed = Number(process.env.TANDEM_TEST_SEED ?? Date.now() % 100_000);
  let x = seed;
  const rand = () => ((x = (x * 1103515245 + 12345) % 2 ** 31) / 2 ** 31);
  const expected = new Map<string, number>();
  for (let i = 0; i < 200; i++) {
    const status = ['200', '201', '404', '500', '503'][Math.floor(rand() * 5)]!;
    const n = 1 + Math.floor(rand() * 3);
    requests.inc({ route: '/v1/orders/:id', method: 'GET', status }, n);
    expected.set(status, (expected.get(status) ?? 0) + n);
    hist.observe({ route: '/v1/orders' }, rand() * 2);
  }
  gauge.set({ odd: 'line\nbreak "and" back\\slash' }, -2.5);
  const { samples, families, issues } = parseExposition(await registry.metrics());
  assert.deepEqual(issues, [], `seed ${seed}`);
  assert.equal(families.get('tandem_http_requests_total')?.type, 'counter');
  assert.equal(families.get('tandem_http_requests_total')?.help, 'requests with "quotes" and \\ backslash');
  assert.equal(families.get('tandem_http_request_duration_seconds')?.type, 'histogram');
  const byStatus = sumBy(samples, 'tandem_http_requests_total', 'status');
  assert.deepEqual(new Map([...byStatus].sort()), new Map([...expected].sort()), `seed ${seed}`);
  assert.equal(sumSamples(samples, 'tandem_http_request_duration_seconds_count'), 200);
  assert.equal(sumSamples(samples, 'tandem_http_request_duration_seconds_bucket', (l) => l.le === '+Inf'), 200);
  const g = samples.find((s) => s.name === 'g');
  assert.deepEqual(g?.labels, { odd: 'line\nbreak "and" back\\slash', component: 'app', region: 'aws-south' });
  assert.equal(g?.value, -2.5);
});
