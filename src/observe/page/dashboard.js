// tandem dashboard page: plain browser JavaScript plus uPlot (served from
// /assets, no CDN). Data arrives as server-sent events from
// /v1/dashboard/stream, read with fetch so the admin token can go in a header
// when the server asks for one. Everything is built with DOM calls and
// textContent: nothing from the server is ever parsed as HTML.
(function () {
  'use strict';

  const TOKEN_KEY = 'tandem.adminToken';
  const PALETTE = ['#e07b00', '#0a6ed1', '#2e9e44', '#8e44ad', '#c0392b', '#16a085'];
  const state = {
    snap: null,
    t: [],
    cols: new Map(),
    capacity: 900,
    charts: {},
    sigs: {},
    token: sessionStorage.getItem(TOKEN_KEY) || '',
    armed: null,
    labPick: { a: '', b: '' },
    tokenWaiters: [],
    busy: false,
  };

  // ---------- small DOM helpers ----------
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'class') e.className = v;
      else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else if (k === 'style') for (const [p, x] of Object.entries(v)) e.style.setProperty(p, x);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat(Infinity)) if (c !== undefined && c !== null && c !== false) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return e;
  }
  const svg = (tag, attrs) => {
    const e = document.createElementNS('http://www.w3.org/2000/svg', tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
    return e;
  };
  const pill = (cls, text, title) => el('span', { class: `pill ${cls || ''}`, title }, text);
  const time = (iso) => {
    if (!iso) return '';
    const d = new Date(iso);
    return el('time', { datetime: iso, title: iso }, d.toLocaleTimeString([], { hour12: false }));
  };
  const fmtNum = (v, digits = 1) => (v === null || v === undefined || !Number.isFinite(v) ? '–' : v >= 100 ? v.toFixed(0) : v.toFixed(digits));
  const fmtSec = (s) => (s === undefined || s === null ? 'unknown' : s >= 120 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(1)} s`);
  const fmtBytes = (b) => (b === undefined ? '' : b >= 1048576 ? `${(b / 1048576).toFixed(1)} MB` : b >= 1024 ? `${(b / 1024).toFixed(0)} kB` : `${b} B`);
  function regionColor(name) {
    const regions = state.snap ? state.snap.regions.map((r) => r.name) : [];
    const i = regions.indexOf(name);
    return PALETTE[(i < 0 ? 0 : i) % PALETTE.length];
  }
  /** Rebuild `container` only when `data` changed since last time. */
  function patch(id, container, data, build) {
    const sig = JSON.stringify(data);
    if (state.sigs[id] === sig) return;
    state.sigs[id] = sig;
    container.replaceChildren(...[].concat(build()).filter(Boolean));
  }

  // ---------- messages and the token ----------
  function message(text, isError, extra) {
    const m = document.getElementById('message');
    m.replaceChildren(text, ...(extra ? [' ', extra] : []));
    m.className = isError ? 'error' : '';
    m.setAttribute('data-state', isError ? 'error' : /…$/.test(text) ? 'busy' : 'done');
    m.hidden = false;
    clearTimeout(message.timer);
    message.timer = setTimeout(() => (m.hidden = true), extra ? 30000 : isError ? 12000 : 5000);
  }
  function authHeaders() {
    return state.token ? { authorization: `Bearer ${state.token}` } : {};
  }
  function askToken(why) {
    const form = document.getElementById('token-form');
    form.hidden = false;
    if (why) message(why);
    document.getElementById('token-input').focus();
    return new Promise((resolve) => state.tokenWaiters.push(resolve));
  }
  function settleToken(ok) {
    document.getElementById('token-form').hidden = true;
    for (const w of state.tokenWaiters.splice(0)) w(ok);
  }
  function setupToken() {
    const form = document.getElementById('token-form');
    form.addEventListener('submit', (e) => {
      e.preventDefault();
      const v = document.getElementById('token-input').value.trim();
      if (!v) return;
      state.token = v;
      sessionStorage.setItem(TOKEN_KEY, v);
      document.getElementById('token-input').value = '';
      updateTokenButton();
      settleToken(true);
    });
    document.getElementById('token-cancel').addEventListener('click', () => settleToken(false));
    document.getElementById('token-forget').addEventListener('click', () => {
      state.token = '';
      sessionStorage.removeItem(TOKEN_KEY);
      updateTokenButton();
      settleToken(false);
    });
    document.getElementById('token-button').addEventListener('click', () => askToken());
    updateTokenButton();
  }
  function updateTokenButton() {
    document.getElementById('token-button').textContent = state.token ? 'admin token ✓' : 'admin token';
  }

  // ---------- actions ----------
  async function act(path, body, label) {
    if (state.busy) return;
    if (!state.token && !(await askToken('Actions need the admin token.'))) return;
    state.busy = true;
    message(`${label}…`);
    try {
      const res = await fetch(path, {
        method: 'POST',
        headers: { ...authHeaders(), 'content-type': 'application/json', 'x-tandem-actor': 'dashboard' },
        body: JSON.stringify(body || {}),
      });
      const out = await res.json().catch(() => ({}));
      if (res.status === 401) {
        state.token = '';
        sessionStorage.removeItem(TOKEN_KEY);
        updateTokenButton();
        message(`${label}: the admin token was refused; enter it again.`, true);
        return;
      }
      if (!res.ok) {
        // The RPO gate refused: the operator may accept the loss explicitly (the controller audits the force).
        const retry =
          out.code === 'TANDEM_ERR_RPO' && body && !body.force
            ? el('button', { type: 'button', class: 'act', 'data-action': `force:${path}`, onclick: () => act(path, { ...body, force: true }, `${label} (forced)`) }, 'Do it anyway (accept the loss)')
            : undefined;
        message(`${label} failed: ${out.error || res.status}${out.code ? ` [${out.code}]` : ''}`, true, retry);
        return;
      }
      message(`${label}: done${out.message ? ` — ${out.message}` : ''}`);
    } catch (err) {
      message(`${label} failed: ${err.message}`, true);
    } finally {
      state.busy = false;
    }
  }
  /** A button that needs a second click within 4 s to act. */
  function armedButton(id, label, confirmLabel, run) {
    const armed = state.armed && state.armed.id === id && state.armed.until > Date.now();
    return el(
      'button',
      {
        type: 'button',
        class: `act${armed ? ' armed' : ''}`,
        'data-action': id,
        onclick: () => {
          if (state.armed && state.armed.id === id && state.armed.until > Date.now()) {
            state.armed = null;
            run();
          } else {
            state.armed = { id, until: Date.now() + 4000 };
            render();
            setTimeout(() => {
              if (state.armed && state.armed.id === id && state.armed.until <= Date.now()) {
                state.armed = null;
                render();
              }
            }, 4100);
          }
        },
      },
      armed ? confirmLabel : label,
    );
  }

  // ---------- panels ----------
  function renderHeader(s) {
    document.getElementById('mode').textContent = s.mode === 'lab' ? `lab · ${s.regions.length} regions${s.lab ? ` · ${s.lab.state}` : ''}` : `${s.regions.length} regions`;
    document.getElementById('leader').textContent = s.leader ? `controller leader: ${s.leader}` : 'no controller answering';
    document.getElementById('updated').textContent = `updated ${new Date(s.at).toLocaleTimeString([], { hour12: false })}`;
    const crit = s.alerts.filter((a) => a.severity === 'critical').length;
    const warn = s.alerts.length - crit;
    patch('alert-summary', document.getElementById('alert-summary'), [crit, warn], () =>
      crit + warn === 0 ? [pill('ok', 'no alerts')] : [crit ? pill('critical', `${crit} critical`) : null, warn ? pill('warning', `${warn} warning`) : null],
    );
  }

  function renderRegions(s) {
    const body = document.querySelector('#regions .body');
    // Cards are kept; their info and their buttons are rebuilt separately, so a
    // button under the pointer is not replaced by the every-second refresh.
    patch('regions', body, s.regions.map((r) => r.name), () =>
      s.regions.map((r) => el('div', { class: 'region', 'data-region': r.name, style: { '--rc': regionColor(r.name) } }, el('div', { class: 'info' }), el('div', { class: 'actions' }))),
    );
    const armedKey = state.armed && state.armed.until > Date.now() ? state.armed.id : '';
    for (const r of s.regions) {
      const card = body.querySelector(`.region[data-region="${CSS.escape(r.name)}"]`);
      if (!card) continue;
      card.setAttribute('data-health', r.health);
      card.setAttribute('data-drained', String(r.drained));
      card.setAttribute('data-phase', r.phase || '');
      card.setAttribute('data-lab', r.lab ? r.lab.state : '');
      patch(`region-info:${r.name}`, card.querySelector('.info'), [r, s.thresholds], () => regionInfo(s, r));
      const drainedNow = Boolean(r.drained || (r.phase && (r.phase === 'drained' || r.phase === 'recovering')));
      patch(`region-actions:${r.name}`, card.querySelector('.actions'), [drainedNow, s.mode, r.lab && r.lab.state, armedKey], () => [
        drainedNow
          ? armedButton(`undrain:${r.name}`, 'Undrain', `Confirm undrain ${r.name}`, () => act('/v1/dashboard/undrain', { region: r.name, reason: 'undrained from the dashboard' }, `Undrain ${r.name}`))
          : armedButton(`drain:${r.name}`, 'Drain', `Confirm drain ${r.name}`, () => act('/v1/dashboard/drain', { region: r.name, reason: 'drained from the dashboard' }, `Drain ${r.name}`)),
        s.mode === 'lab' && r.lab
          ? r.lab.state === 'failed'
            ? armedButton(`recover:${r.name}`, 'Recover region', `Confirm recover ${r.name}`, () => act('/v1/dashboard/lab/recover', { region: r.name }, `Recover ${r.name}`))
            : armedButton(`fail:${r.name}`, 'Fail region', `Confirm SIGKILL ${r.name}`, () => act('/v1/dashboard/lab/fail', { region: r.name }, `Fail ${r.name}`))
          : null,
      ]);
    }
  }

  function regionInfo(s, r) {
    const http = r.http || {};
    return [
      el('div', { class: 'head' }, el('span', { class: 'name' }, r.name), el('span', { class: 'muted' }, `${r.cloud}${r.location ? ` · ${r.location}` : ''} · ${r.address}`), r.lab ? pill(r.lab.state === 'up' ? 'up' : r.lab.state === 'failed' ? 'failed' : 'warning', `lab: ${r.lab.state}`) : null),
      el(
        'div',
        { class: 'row' },
        el('span', { class: 'muted' }, 'health'),
        el('span', { class: `pill ${r.health}`, 'data-field': 'health', title: 'summary over every reachable vantage point' }, r.health),
        el('span', { class: 'muted' }, 'seen from'),
        r.vantages.length ? r.vantages.map((v) => pill(v.state, `${v.vantage}: ${v.state}`, v.since ? `since ${v.since}` : undefined)) : el('span', { class: 'muted' }, 'no DNS servers configured'),
      ),
      el(
        'div',
        { class: 'row' },
        el('span', { class: 'muted' }, 'DNS'),
        r.drained === undefined ? pill('unknown', 'unknown') : r.drained ? pill('drained', 'drained', r.drainReason) : pill('serving', 'in answers'),
        r.drained && r.drainReason ? el('span', { class: 'muted small' }, r.drainReason) : null,
        el('span', { class: 'muted' }, 'runbook'),
        r.phase ? pill(r.phase, r.phase, r.phaseSince ? `since ${r.phaseSince}` : undefined) : pill('unknown', 'unknown'),
        r.drainedBy ? el('span', { class: 'muted small' }, `by ${r.drainedBy}`) : null,
      ),
      el(
        'div',
        { class: 'row' },
        el('span', { class: 'muted' }, 'app'),
        r.app ? pill(r.app.status, r.app.status) : pill(r.up.app ? 'unknown' : 'down', r.up.app ? 'up' : 'down'),
        r.app && r.app.fenced ? pill('warning', 'fenced (read-only)', r.app.fenceReason) : null,
        el('span', {}, `${fmtNum(http.rps)} req/s`),
        el('span', { class: http.errorShare > s.thresholds.errorRateThreshold ? 'pill critical' : '' }, `${http.errorShare === null || http.errorShare === undefined ? '–' : (http.errorShare * 100).toFixed(1)} % 5xx (1 min)`),
        r.dnsAnswersPerSec !== undefined ? el('span', { class: 'muted' }, `· DNS ${fmtNum(r.dnsAnswersPerSec)} answers/s`) : null,
      ),
    ];
  }

  function renderGeo(s) {
    const body = document.querySelector('#geo .body');
    patch('geo', body, [s.geographies, s.tiles], () => {
      const cell = 25;
      const cols = Math.max(...s.tiles.map((t) => t.col)) + 1;
      const rows = Math.max(...s.tiles.map((t) => t.row)) + 1;
      const map = svg('svg', { width: cols * cell, height: rows * cell, viewBox: `0 0 ${cols * cell} ${rows * cell}`, role: 'img', 'aria-label': 'India: region answering each state' });
      for (const t of s.tiles) {
        const g = svg('g', { 'data-state': t.code, 'data-region': t.region || '' });
        const title = svg('title', {});
        title.textContent = `${t.name}: ${(s.geographies[t.geography] || {}).name || ''} → ${t.region || 'none'}`;
        const rect = svg('rect', { x: t.col * cell + 1, y: t.row * cell + 1, width: cell - 2, height: cell - 2, rx: 3, fill: t.region ? regionColor(t.region) : '#bbb', 'fill-opacity': s.geographies[t.geography] && s.geographies[t.geography].name === 'elsewhere' ? 0.45 : 1 });
        const text = svg('text', { x: t.col * cell + cell / 2, y: t.row * cell + cell / 2 + 3, 'text-anchor': 'middle' });
        text.textContent = t.code;
        g.append(title, rect, text);
        map.append(g);
      }
      const list = el(
        'ul',
        {},
        s.geographies.map((g) =>
          el(
            'li',
            { 'data-geography': g.name, 'data-serving': g.serving.join(',') },
            el('b', {}, g.name),
            ' → ',
            g.serving.map((r) => el('span', { class: 'pill', style: { background: regionColor(r), color: '#fff' } }, r)),
            g.failOpen ? pill('warning', 'fail-open', 'no region of this order is serving: DNS answers every undrained one') : null,
            g.byServer ? pill('warning', 'servers disagree', JSON.stringify(g.byServer)) : null,
            el('div', { class: 'places' }, `${g.places.map((p) => p.replace(/^IN\//, '')).join(', ')} · order ${g.order.join(' → ')}`),
          ),
        ),
      );
      return el('div', { class: 'geo' }, map, list);
    });
  }

  function renderLab(s) {
    const panel = document.getElementById('lab');
    panel.hidden = !s.lab;
    if (!s.lab) return;
    const names = s.regions.map((r) => r.name);
    if (!names.includes(state.labPick.a)) state.labPick.a = names[0] || '';
    if (!names.includes(state.labPick.b)) state.labPick.b = names[1] || names[0] || '';
    patch('lab', panel.querySelector('.body'), [s.lab, names, state.armed && state.armed.id], () => {
      const select = (key) =>
        el(
          'select',
          { 'data-pick': key, onchange: (e) => (state.labPick[key] = e.target.value) },
          names.map((n) => el('option', { value: n, selected: state.labPick[key] === n }, n)),
        );
      const w = s.lab.wan || {};
      return [
        el('div', {}, `WAN ${fmtNum(w.latencyMs, 0)} ms ± ${fmtNum(w.jitterMs, 0)} ms, loss ${fmtNum((w.loss || 0) * 100)} %, ${w.bandwidthBytesPerSec ? `${fmtBytes(w.bandwidthBytesPerSec)}/s` : 'no bandwidth cap'}`),
        el('div', {}, 'partitions: ', s.lab.partitions.length ? s.lab.partitions.map((p) => pill('critical', p.join(' ✕ '))) : el('span', { class: 'muted' }, 'none')),
        el(
          'div',
          { class: 'lab-controls' },
          select('a'),
          select('b'),
          armedButton('partition', 'Partition', 'Confirm partition', () => act('/v1/dashboard/lab/partition', { a: state.labPick.a, b: state.labPick.b }, `Partition ${state.labPick.a} | ${state.labPick.b}`)),
          el('button', { type: 'button', class: 'act', 'data-action': 'heal', onclick: () => act('/v1/dashboard/lab/heal', {}, 'Heal every partition') }, 'Heal all'),
        ),
      ];
    });
  }

  function renderDirections(s) {
    const t = s.thresholds;
    document.getElementById('lag-note').textContent = `warn > ${t.lagWarnSec} s, critical > ${t.lagCriticalSec} s · RPO ${t.rpoSec} s`;
    patch('dirs', document.getElementById('lag-dirs'), [s.directions, t], () =>
      s.directions.map((d) => {
        const cls = d.lagSec === undefined ? 'unknown' : d.lagSec > t.lagCriticalSec ? 'critical' : d.lagSec > t.lagWarnSec ? 'warning' : 'ok';
        const extra = [d.lagBytes !== undefined ? fmtBytes(d.lagBytes) : '', d.txPerSec !== undefined ? `${fmtNum(d.txPerSec)} tx/s` : '', d.conflicts ? `${d.conflicts} conflicts` : ''].filter(Boolean).join(' · ');
        return el(
          'span',
          { class: 'dir', 'data-direction': `${d.source}>${d.target}` },
          pill(cls, `${d.source} → ${d.target}: ${fmtSec(d.lagSec)}`, `from the ${d.from || 'no'} source${d.error ? `; ${d.error}` : ''}`),
          extra ? el('span', { class: 'muted' }, ` ${extra}`) : null,
          d.paused.map((p) => pill('critical', `paused ${p.table}`, p.reason)),
        );
      }),
    );
  }

  function renderAlerts(s) {
    patch('alerts', document.querySelector('#alerts .body'), s.alerts, () =>
      s.alerts.length
        ? s.alerts.map((a) =>
            el(
              'div',
              { class: 'alert', 'data-alert': a.key, 'data-severity': a.severity },
              pill(a.severity, a.severity),
              ' ',
              el('b', {}, a.title),
              a.stale ? pill('unknown', 'stale', 'its data cannot be read now') : null,
              ' ',
              el('span', { class: 'muted small' }, 'since '),
              time(a.since),
              el('div', { class: 'text' }, a.text),
            ),
          )
        : [el('span', { class: 'muted' }, 'Nothing firing.')],
    );
  }

  function renderTimeline(s) {
    patch('timeline', document.querySelector('#timeline .body'), s.timeline, () =>
      s.timeline.length
        ? s.timeline.map((e) =>
            el(
              'li',
              { 'data-kind': e.kind, 'data-region': e.region || '', 'data-source': e.source },
              time(e.at),
              ' ',
              pill(e.severity, e.source),
              ' ',
              e.region ? el('b', {}, e.region) : null,
              ' ',
              e.source === 'alert' ? null : [el('span', {}, e.kind), ': '],
              el('span', {}, e.message),
              e.actor ? el('span', { class: 'muted small' }, ` (${e.actor})`) : null,
            ),
          )
        : [el('li', { class: 'muted' }, 'No events yet.')],
    );
  }

  function table(head, rows) {
    return el('table', {}, el('thead', {}, el('tr', {}, head.map((h) => el('th', {}, h)))), el('tbody', {}, rows));
  }

  function renderAudit(s) {
    patch('audit', document.querySelector('#audit .body'), s.audit, () =>
      s.audit.length
        ? table(
            ['time', 'actor', 'action', 'region', 'reason'],
            s.audit.map((a) => el('tr', { 'data-action': a.action }, el('td', {}, time(a.at)), el('td', {}, a.actor), el('td', {}, a.action), el('td', {}, a.region), el('td', {}, a.reason))),
          )
        : el('span', { class: 'muted' }, 'No audited actions.'),
    );
  }

  function renderConflicts(s) {
    patch('conflicts', document.querySelector('#conflicts .body'), s.conflicts, () =>
      s.conflicts.length
        ? table(
            ['time', 'in', 'table', 'key', 'kind', 'decision'],
            s.conflicts.map((c) =>
              el(
                'tr',
                { title: `${c.localRegion || '?'} ${c.localCommitAt || ''} vs ${c.remoteRegion || '?'} ${c.remoteCommitAt || ''}${c.reason ? ` — ${c.reason}` : ''}` },
                el('td', {}, time(c.at)),
                el('td', {}, c.region),
                el('td', {}, c.table || ''),
                el('td', {}, c.key || ''),
                el('td', {}, c.kind || ''),
                el('td', {}, c.decision || ''),
              ),
            ),
          )
        : el('span', { class: 'muted' }, 'No conflicts recorded.'),
    );
  }

  function renderReports(s) {
    patch('reports', document.querySelector('#reports .body'), s.reports, () =>
      s.reports.length
        ? table(
            ['drill', 'when', 'outcome', 'figures', ''],
            s.reports.map((r) =>
              el(
                'tr',
                { 'data-report': r.id },
                el('td', {}, r.title),
                el('td', {}, r.at ? el('time', { datetime: r.at, title: r.at }, new Date(r.at).toLocaleString([], { hour12: false })) : ''),
                el('td', {}, r.outcome ? pill(/pass|ok|met/i.test(r.outcome) ? 'ok' : 'critical', r.outcome) : ''),
                el('td', {}, Object.entries(r.figures).map(([k, v]) => `${k} ${v}`).join(' · ')),
                el('td', {}, Object.entries(r.links).map(([k, href]) => [el('a', { href, target: '_blank', rel: 'noopener' }, k), ' '])),
              ),
            ),
          )
        : el('span', { class: 'muted' }, 'No drill reports yet (run `tandem drill`).'),
    );
  }

  function renderSources(s) {
    const down = s.sources.filter((x) => x.up === false).length;
    document.querySelector('#sources summary').textContent = `Sources (${s.sources.length - down} up, ${down} down)`;
    patch('sources', document.querySelector('#sources .body'), s.sources.map((x) => [x.id, x.up, x.error]), () =>
      table(
        ['source', 'state', 'error'],
        s.sources.map((x) => el('tr', {}, el('td', {}, x.id), el('td', {}, pill(x.up ? 'up' : x.up === false ? 'down' : 'unknown', x.up ? 'up' : x.up === false ? 'down' : '…')), el('td', { class: 'muted' }, x.error || ''))),
      ),
    );
  }

  // ---------- charts ----------
  function fold(history) {
    state.t = history.t.slice();
    state.cols = new Map(history.series.map((x) => [x.key, x.values.slice()]));
  }
  function append(point) {
    state.t.push(point.t);
    for (const [k, v] of Object.entries(point.values)) {
      if (!state.cols.has(k)) state.cols.set(k, new Array(state.t.length - 1).fill(null));
    }
    for (const [k, col] of state.cols) col.push(k in point.values ? point.values[k] : null);
    const drop = state.t.length - state.capacity;
    if (drop > 0) {
      state.t.splice(0, drop);
      for (const col of state.cols.values()) col.splice(0, drop);
    }
  }
  function renderChart(group, elId, yLabel) {
    const box = document.getElementById(elId);
    const metas = state.snap.series.filter((m) => m.group === group && state.cols.has(m.key));
    const sig = metas.map((m) => m.key).join('|');
    let c = state.charts[group];
    if (!window.uPlot) return;
    if (!c || c.sig !== sig) {
      if (c) c.plot.destroy();
      box.replaceChildren();
      if (!metas.length) {
        box.append(el('span', { class: 'muted' }, 'No data from any source yet.'));
        state.charts[group] = { sig, plot: { destroy() {}, setData() {} } };
        return;
      }
      const opts = {
        width: Math.max(200, box.clientWidth || 400),
        height: 150,
        legend: { show: true, live: false },
        cursor: { drag: { x: false, y: false } },
        scales: { x: { time: true }, y: { range: (u, min, max) => [0, Math.max(max || 0, group === 'lag' ? 1 : 1) * 1.1] } },
        axes: [{ size: 26, font: '10px system-ui' }, { size: 40, font: '10px system-ui', label: yLabel, labelSize: 12, labelFont: '10px system-ui', values: (u, vals) => vals.map((v) => (v >= 1000 ? `${(v / 1000).toFixed(1)}k` : String(+v.toFixed(2)))) }],
        series: [{}].concat(metas.map((m) => ({ label: m.label, stroke: regionColor(m.region), width: 1.5, dash: m.dashed ? [4, 3] : undefined, spanGaps: false, points: { show: false } }))),
      };
      c = state.charts[group] = { sig, keys: metas.map((m) => m.key), plot: new window.uPlot(opts, data(metas), box) };
    } else {
      c.plot.setData(data(metas));
    }
    box.setAttribute('data-points', String(state.t.length));
    box.setAttribute('data-last', String(state.t[state.t.length - 1] || 0));
    const last = {};
    for (const m of metas) {
      const col = state.cols.get(m.key);
      last[m.key] = col[col.length - 1];
    }
    box.setAttribute('data-latest', JSON.stringify(last));
  }
  function data(metas) {
    return [state.t.slice()].concat(metas.map((m) => state.cols.get(m.key).slice()));
  }
  function resizeCharts() {
    for (const [group, c] of Object.entries(state.charts)) {
      const box = document.getElementById(`chart-${group}`);
      if (box && c.plot.setSize) c.plot.setSize({ width: Math.max(200, box.clientWidth), height: 150 });
    }
  }

  function render() {
    const s = state.snap;
    if (!s) return;
    renderHeader(s);
    renderRegions(s);
    renderGeo(s);
    renderLab(s);
    renderDirections(s);
    renderAlerts(s);
    renderTimeline(s);
    renderAudit(s);
    renderConflicts(s);
    renderReports(s);
    renderSources(s);
    renderChart('lag', 'chart-lag', 'seconds');
    renderChart('http', 'chart-http', 'per second');
    renderChart('dns', 'chart-dns', 'per second');
  }

  // ---------- the stream ----------
  function setConn(cls, title) {
    const c = document.getElementById('conn');
    c.className = `conn ${cls}`;
    c.title = title || cls;
  }
  function onEvent(event, payload) {
    if (event === 'hello') {
      state.capacity = payload.capacity || state.capacity;
      fold(payload.history);
      state.snap = payload.snapshot;
    } else if (event === 'update') {
      append(payload.point);
      state.snap = payload.snapshot;
    } else {
      return;
    }
    render();
  }
  async function stream() {
    let backoff = 500;
    for (;;) {
      try {
        const res = await fetch('/v1/dashboard/stream', { headers: authHeaders(), cache: 'no-store' });
        if (res.status === 401) {
          setConn('down', 'the dashboard needs the admin token');
          await askToken('This dashboard needs the admin token to show data.');
          continue;
        }
        if (!res.ok || !res.body) throw new Error(`stream answered ${res.status}`);
        setConn('live', 'live updates');
        backoff = 500;
        const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += value;
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) {
            const block = buf.slice(0, i);
            buf = buf.slice(i + 2);
            let event = 'message';
            let payload = '';
            for (const line of block.split('\n')) {
              if (!line || line.startsWith(':')) continue;
              const c = line.indexOf(':');
              const field = c < 0 ? line : line.slice(0, c);
              let v = c < 0 ? '' : line.slice(c + 1);
              if (v.startsWith(' ')) v = v.slice(1);
              if (field === 'event') event = v;
              else if (field === 'data') payload += (payload ? '\n' : '') + v;
            }
            if (payload) onEvent(event, JSON.parse(payload));
          }
        }
      } catch (err) {
        setConn('down', `disconnected: ${err.message}`);
      }
      setConn('down', 'reconnecting');
      await new Promise((r) => setTimeout(r, backoff));
      backoff = Math.min(backoff * 2, 5000);
    }
  }

  document.addEventListener('DOMContentLoaded', () => {
    setupToken();
    window.addEventListener('resize', resizeCharts);
    stream();
  });
})();
