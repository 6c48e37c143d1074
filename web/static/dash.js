// servelab dashboard: the live page's websocket client, the compare page and the run list.
'use strict';

// The charts of a run's time series: one series per cell, x = simulated seconds.
const CHARTS = [
  {key: 'throughput', title: 'Request throughput (req/s)', field: 'request_throughput'},
  {key: 'output', title: 'Output throughput (tok/s)', field: 'output_throughput'},
  {key: 'waiting', title: 'Queue depth: waiting requests', field: 'num_requests_waiting'},
  {key: 'running', title: 'Running requests', field: 'num_requests_running'},
  {key: 'kv', title: 'KV cache usage (%)', field: 'kv_cache_usage_perc', scale: 100},
  {key: 'hit', title: 'Prefix-cache hit rate (%)', field: 'prefix_cache_hit_rate', scale: 100, needsPrefixes: true},
  {key: 'ttft', title: 'TTFT p50 (ms)', field: 'ttft_p50_ms', zeroIsGap: true},
];

// What tests and curious people can inspect: window.dash.
const dash = window.dash = {charts: {}, messages: 0, snapshots: 0, updates: 0, lastSeq: 0, status: '', ready: false};

const $ = (sel, root) => (root || document).querySelector(sel);
const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
const enc = encodeURIComponent;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'class') e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : String(c));
  return e;
}

function statusBadge(status) {
  return el('span', {class: 'status status-' + status}, status);
}

function fmt(x, digits) {
  if (x === null || x === undefined || Number.isNaN(x)) return '';
  return Number(x).toLocaleString(undefined, {maximumFractionDigits: digits === undefined ? 2 : digits});
}

async function fetchJSON(url, opts) {
  const resp = await fetch(url, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { /* not JSON */ }
  if (!resp.ok) throw new Error((body && body.error) || resp.status + ' ' + resp.statusText);
  return body;
}

// makeCharts puts one ECharts instance per chart definition into container.
function makeCharts(container) {
  const charts = {};
  for (const def of CHARTS) {
    const div = el('div', {class: 'chart', id: 'chart-' + def.key, 'data-chart': def.key});
    container.append(div);
    const chart = echarts.init(div);
    chart.setOption({
      animation: false,
      title: {text: def.title, left: 8, top: 4, textStyle: {fontSize: 13, fontWeight: 'normal'}},
      tooltip: {trigger: 'axis', valueFormatter: v => fmt(v)},
      legend: {type: 'scroll', bottom: 0, textStyle: {fontSize: 10}},
      grid: {left: 56, right: 16, top: 36, bottom: 56},
      xAxis: {type: 'value', name: 'simulated s', nameLocation: 'middle', nameGap: 22, min: 0},
      yAxis: {type: 'value'},
      series: [],
    });
    charts[def.key] = chart;
    // In its place when the workload carries no prefix hash ids (see showPrefixNote).
    if (def.needsPrefixes) {
      container.append(el('div', {class: 'chart chart-note', id: 'no-prefix', hidden: ''},
        el('div', {class: 'chart-title'}, def.title), el('p', {class: 'msg'})));
    }
  }
  window.addEventListener('resize', () => Object.values(charts).forEach(c => c.resize()));
  dash.charts = charts;
  return charts;
}

// point is a sample's [t, value] for a chart.
function point(def, t, v) {
  if (v === null || v === undefined || (def.zeroIsGap && v === 0)) return [t, null];
  return [t, def.scale ? v * def.scale : v];
}

// setSeries draws every chart from a list of {name, points: {chartKey: [[t, v], ...]}}.
// When the series are the ones already drawn only their data is replaced, which is much
// cheaper than rebuilding them.
function setSeries(charts, list) {
  const names = list.map(s => s.name).join('\n');
  for (const def of CHARTS) {
    const chart = charts[def.key];
    if (chart.__names === names) {
      chart.setOption({series: list.map(s => ({id: s.name, data: s.points[def.key]}))});
      continue;
    }
    chart.__names = names;
    chart.setOption({
      series: list.map(s => ({id: s.name, name: s.name, type: 'line', showSymbol: false, connectNulls: false,
        sampling: 'lttb', lineStyle: {width: 1.5}, data: s.points[def.key]})),
    }, {replaceMerge: ['series']});
  }
}

// setPolicySeries draws every chart from a list of policies {name, mean: {chartKey: [[t, v], ...]},
// lo, hi: likewise}: per policy its mean over seeds as a line (id = name) over a band from
// the lowest to the highest seed (id name + '#band'). The band is a polygon drawn by a custom
// series: ECharts stacks a band's width on its lower edge only on a category axis, and the
// x axis here is time. Both carry the policy's name, so its legend entry shows and hides them
// together.
function setPolicySeries(charts, list) {
  const names = 'policies\n' + list.map(s => s.name).join('\n');
  for (const def of CHARTS) {
    const chart = charts[def.key];
    const series = [];
    list.forEach((s, i) => {
      const color = PALETTE[i % PALETTE.length];
      const lo = s.lo[def.key], hi = s.hi[def.key];
      series.push(
        {id: s.name + '#band', name: s.name, type: 'custom', data: hi, encode: {x: 0, y: 1}, silent: true, clip: true,
          z: 1, tooltip: {show: false}, itemStyle: {color},
          renderItem: (params, api) => {
            if (params.dataIndex !== 0 || s.seeds < 2) return null;
            const pts = [];
            for (const p of hi) if (p[1] !== null) pts.push(api.coord(p));
            for (let k = lo.length - 1; k >= 0; k--) if (lo[k][1] !== null) pts.push(api.coord(lo[k]));
            return {type: 'polygon', shape: {points: pts}, style: {fill: color, opacity: 0.18}};
          }},
        {id: s.name, name: s.name, type: 'line', data: s.mean[def.key], showSymbol: false, connectNulls: false,
          sampling: 'lttb', z: 2, lineStyle: {width: 1.5, color}, itemStyle: {color}});
    });
    chart.__names = names;
    // Rebuilt whole: a custom series' polygon closes over its data.
    chart.setOption({series}, {replaceMerge: ['series']});
  }
}

// identicalText names the lines whose points are all the same in every chart (lru and lfu
// on a trace without shared prefixes, say): drawn on top of each other, they would look
// like one line. "" when there are none.
function identicalText(list) {
  const key = l => JSON.stringify(CHARTS.map(def => l.mean[def.key]));
  const groups = new Map();
  for (const l of list) {
    if (!l.mean[CHARTS[0].key].length) continue;
    const k = key(l);
    if (!groups.has(k)) groups.set(k, []);
    groups.get(k).push(l.name);
  }
  const same = Array.from(groups.values()).filter(g => g.length > 1).map(g => g.join(' = '));
  return same.length ? 'Identical results: ' + same.join('; ') + ' (their lines lie on top of each other).' : '';
}

function showIdentical(list) {
  const note = $('#identical');
  if (note) note.textContent = identicalText(list);
}

// NO_PREFIX_TEXT is what the page shows instead of a hit-rate chart of zeros.
const NO_PREFIX_TEXT = 'This trace carries no prefix information (hash ids), so there is no prefix-cache hit rate ' +
  'to show: every prompt has blocks of its own, and the prefix cache cannot hit under any policy.';

// showPrefixNote puts a note in place of the charts that need prefix hash ids (the hit
// rate) when text is not empty, and the charts back when it is.
function showPrefixNote(charts, text) {
  const note = $('#no-prefix');
  if (!note) return;
  for (const def of CHARTS) {
    if (!def.needsPrefixes) continue;
    const div = $('#chart-' + def.key);
    const hide = !!text;
    if (div.hidden !== hide) {
      div.hidden = hide;
      if (!hide) charts[def.key].resize();
    }
  }
  note.hidden = !text;
  $('p', note).textContent = text;
}

const PALETTE = ['#5470c6', '#91cc75', '#fac858', '#ee6666', '#73c0de', '#3ba272', '#fc8452', '#9a60b4', '#ea7ccc'];

// policyLabel is a cell's policies without its seed: the cells a policy line averages.
function policyLabel(id, cell) {
  if (!cell || !cell.router) return id.replace(/__s\d+(__x|$)/, '$1');
  let s = cell.router;
  if (cell.cluster) s = cell.cluster + ' · ' + s; // a spec of several clusters, as the report's PolicyResult.Name
  if (cell.batch && cell.batch !== 'vllm') s += ' / ' + cell.batch;
  s += ' / ' + cell.evict;
  if (id.includes('__x')) s += ' ×' + cell.rate_scale;
  return s;
}

// policyLines averages the cells' points of each policy over its seeds, sample by sample
// (a rate scale's cells share the sample interval, so sample i is at the same time in every
// seed; near the end the mean is over the seeds still running), with the lowest and highest
// seed as the band.
function policyLines(cells) {
  const groups = new Map();
  for (const c of cells) {
    const name = policyLabel(c.id, c.cell);
    if (!groups.has(name)) groups.set(name, []);
    groups.get(name).push(c);
  }
  const out = [];
  for (const [name, members] of groups) {
    const line = {name, seeds: members.length, mean: {}, lo: {}, hi: {}};
    for (const def of CHARTS) {
      const n = Math.max(0, ...members.map(c => c.points[def.key].length));
      const mean = [], lo = [], hi = [];
      for (let i = 0; i < n; i++) {
        let t = null, sum = 0, k = 0, min = Infinity, max = -Infinity;
        for (const c of members) {
          const p = c.points[def.key][i];
          if (!p) continue;
          if (t === null) t = p[0];
          if (p[1] === null) continue;
          sum += p[1]; k++;
          min = Math.min(min, p[1]); max = Math.max(max, p[1]);
        }
        mean.push([t, k ? sum / k : null]);
        lo.push([t, k ? min : null]);
        hi.push([t, k ? max : null]);
      }
      line.mean[def.key] = mean; line.lo[def.key] = lo; line.hi[def.key] = hi;
    }
    out.push(line);
  }
  return out;
}

// cellLabel is a cell's policies as people read them.
function cellLabel(id, cell) {
  if (!cell || !cell.router) return id;
  let s = cell.router;
  if (cell.batch && cell.batch !== 'vllm') s += ' / ' + cell.batch;
  s += ' / ' + cell.evict + ' / s' + cell.seed;
  if (id.includes('__x')) s += ' ×' + cell.rate_scale; // the spec sweeps load
  return s;
}

// ---- live page -------------------------------------------------------------------------

function livePage() {
  const runID = document.body.dataset.run;
  const charts = makeCharts($('#charts'));
  const cells = new Map(); // id -> {id, cell, status, progress, error, summary, points}
  let fields = [];
  let ws = null;
  let renderTimer = null;
  let lastRender = 0;
  let backoff = 500;

  function cellOf(id) {
    let c = cells.get(id);
    if (!c) {
      c = {id, cell: null, status: 'pending', progress: 0, error: '', summary: null, points: {}};
      for (const def of CHARTS) c.points[def.key] = [];
      cells.set(id, c);
    }
    return c;
  }

  function apply(m) {
    if (m.type === 'error') {
      $('#run-error').textContent = m.error;
      return;
    }
    if (m.type === 'snapshot') {
      fields = m.fields;
      cells.clear();
      dash.snapshots++;
    } else {
      dash.updates++;
      if (m.seq !== dash.lastSeq + 1 && ws) ws.send(JSON.stringify({type: 'resync'})); // a gap: start over
    }
    dash.lastSeq = m.seq;
    dash.messages++;
    dash.status = m.status;
    dash.progress = m.progress;
    dash.error = m.error || '';
    // Whether the workload carries prefix hash ids; undefined when the run has not said.
    dash.prefixHashes = m.prefix_hashes;
    for (const mc of m.cells) {
      const c = cellOf(mc.id);
      if (mc.cell) c.cell = mc.cell;
      c.status = mc.status;
      c.progress = mc.progress;
      c.error = mc.error || '';
      if (mc.summary) c.summary = mc.summary;
      // Absolute: keep the first `from` points, then append.
      for (const def of CHARTS) {
        const pts = c.points[def.key];
        pts.length = Math.min(pts.length, mc.from);
        const fi = fields.indexOf(def.field), ti = fields.indexOf('t');
        for (const row of mc.samples) pts.push(point(def, row[ti], row[fi]));
      }
    }
    scheduleRender();
  }

  // Redraw at most every 100 ms, and less often when drawing takes long (many points), so
  // the page stays responsive whatever the run's size.
  let renderCost = 0;
  function scheduleRender() {
    if (renderTimer) return;
    const wait = Math.max(0, Math.max(100, 2 * renderCost) - (Date.now() - lastRender));
    renderTimer = setTimeout(render, wait);
  }

  function render() {
    renderTimer = null;
    lastRender = Date.now();
    try { draw(); } finally {
      renderCost = Date.now() - lastRender;
      dash.renders = (dash.renders || 0) + 1;
      dash.renderCost = renderCost;
    }
  }

  function draw() {
    $('#run-status').replaceChildren(statusBadge(dash.status));
    $('#run-progress').value = dash.progress;
    $('#run-pct').textContent = Math.round(100 * dash.progress) + '%';
    $('#run-error').textContent = dash.error;
    const tbody = $('#cells tbody');
    for (const c of cells.values()) {
      let tr = $$('tr', tbody).find(r => r.dataset.cell === c.id);
      if (!tr) {
        tr = el('tr', {'data-cell': c.id}, el('td', {}, c.id), el('td', {class: 'st'}),
          el('td', {}, el('progress', {max: 1, value: 0})), el('td'), el('td'), el('td'), el('td'));
        tbody.append(tr);
      }
      const td = tr.children;
      td[0].textContent = cellLabel(c.id, c.cell);
      td[0].title = c.id;
      td[1].replaceChildren(statusBadge(c.status));
      if (c.error) td[1].append(el('div', {class: 'error small'}, c.error));
      $('progress', td[2]).value = c.progress;
      const s = c.summary;
      td[3].textContent = s ? fmt(s.request_throughput) : '';
      td[4].textContent = s ? fmt(s.request_goodput) : '';
      td[5].textContent = s ? fmt(s.p99_ttft_ms, 0) : '';
      td[6].textContent = s ? (dash.prefixHashes === false ? 'n/a' : fmt(100 * s.prefix_cache_hit_rate, 1) + '%') : '';
    }
    showPrefixNote(charts, dash.prefixHashes === false ? NO_PREFIX_TEXT : '');
    // One line per policy, the mean over its seeds in a band; every seed's own line on demand.
    const seeds = $('#show-seeds');
    dash.view = seeds && seeds.checked ? 'seeds' : 'policies';
    if (dash.view === 'seeds') {
      setSeries(charts, Array.from(cells.values()).map(c => ({name: cellLabel(c.id, c.cell), points: c.points})));
    } else {
      const lines = policyLines(cells.values());
      setPolicySeries(charts, lines);
      showIdentical(lines);
    }
    dash.ready = true;
  }

  function connect() {
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    ws = new WebSocket(proto + '//' + location.host + '/api/runs/' + enc(runID) + '/ws');
    ws.onopen = () => { $('#conn').textContent = 'live'; backoff = 500; };
    ws.onmessage = ev => apply(JSON.parse(ev.data));
    ws.onclose = () => {
      ws = null;
      $('#conn').textContent = 'disconnected, reconnecting…';
      setTimeout(connect, backoff);
      backoff = Math.min(backoff * 2, 10000);
    };
  }
  connect();

  const seeds = $('#show-seeds');
  if (seeds) seeds.addEventListener('change', () => scheduleRender());

  const cancel = $('#cancel');
  if (cancel) cancel.addEventListener('click', async () => {
    cancel.disabled = true;
    try { await fetchJSON('/api/runs/' + enc(runID) + '/cancel', {method: 'POST'}); } catch (e) { $('#run-error').textContent = e.message; }
  });
}

// ---- compare page ----------------------------------------------------------------------

const SUMMARY_COLUMNS = [
  ['request_goodput', 'goodput req/s', 2], ['request_throughput', 'req/s', 2], ['output_throughput', 'output tok/s', 0],
  ['mean_ttft_ms', 'mean TTFT ms', 0], ['p99_ttft_ms', 'p99 TTFT ms', 0], ['median_tpot_ms', 'median TPOT ms', 1],
  ['p99_tpot_ms', 'p99 TPOT ms', 1], ['prefix_cache_hit_rate', 'hit rate %', 1, 100], ['preemptions', 'preemptions', 1],
];

async function comparePage() {
  const picks = $$('.run-cells');
  if (picks.length === 0) { dash.ready = true; return; }
  const charts = makeCharts($('#charts'));
  const runs = []; // {id, cells: [{id, cell, label, points, on}], results}
  await Promise.all(picks.map(async (fs) => {
    const id = fs.dataset.run;
    const run = {id, cells: [], results: null, error: ''};
    runs.push(run);
    try {
      const info = await fetchJSON('/api/runs/' + enc(id));
      run.results = await fetchJSON('/api/runs/' + enc(id) + '/results').catch(() => null);
      // From its events, or from results.json; undefined when neither says (older runs).
      run.prefixHashes = info.prefix_hashes !== undefined ? info.prefix_hashes : (run.results || {}).prefix_hashes;
      await Promise.all(info.cell_list.map(async (ci) => {
        const c = {id: ci.id, cell: ci, label: cellLabel(ci.id, ci), points: {}, on: true};
        for (const def of CHARTS) c.points[def.key] = [];
        try {
          const ts = await fetchJSON('/api/runs/' + enc(id) + '/cells/' + enc(ci.id) + '/timeseries');
          for (const def of CHARTS) c.points[def.key] = ts.map(s => point(def, s.t, s[def.field]));
        } catch (e) { c.missing = e.message; }
        run.cells.push(c);
      }));
      run.cells.sort((a, b) => info.cell_list.findIndex(x => x.id === a.id) - info.cell_list.findIndex(x => x.id === b.id));
    } catch (e) {
      run.error = e.message;
    }
    fs.replaceChildren(el('legend', {}, id));
    if (run.error) fs.append(el('span', {class: 'error'}, run.error));
    for (const c of run.cells) {
      const box = el('input', {type: 'checkbox', 'data-cell': c.id});
      box.checked = true;
      box.addEventListener('change', () => { c.on = box.checked; draw(); });
      fs.append(el('label', {title: c.missing || c.id}, box, ' ' + c.label + (c.missing ? ' (no time series)' : '')));
    }
  }));
  runs.sort((a, b) => picks.findIndex(p => p.dataset.run === a.id) - picks.findIndex(p => p.dataset.run === b.id));

  // No hit-rate chart when no run's workload carries prefix hash ids; when some do not, a
  // line names them (their hit rates are 0 by construction).
  const without = runs.filter(r => r.prefixHashes === false).map(r => r.id);
  const allWithout = without.length > 0 && without.length === runs.length;
  showPrefixNote(charts, allWithout ? NO_PREFIX_TEXT.replace('This trace carries', runs.length > 1 ? 'These runs\' traces carry' : 'This trace carries') : '');
  const prefixLine = $('#prefix-runs');
  if (prefixLine) {
    const one = without.length === 1;
    prefixLine.textContent = without.length && !allWithout ? 'No prefix information (hash ids) in the trace' +
      (one ? '' : 's') + ' of ' + without.join(', ') + ': ' + (one ? 'its' : 'their') +
      ' prefix-cache hit rate is 0 under any policy.' : '';
  }

  // One line per run and policy (the mean over its picked seeds, in a band), or every
  // picked seed's own line.
  function draw() {
    const seeds = $('#show-seeds');
    dash.view = seeds && seeds.checked ? 'seeds' : 'policies';
    if (dash.view === 'seeds') {
      const list = [];
      for (const r of runs) for (const c of r.cells) if (c.on) list.push({name: r.id + ': ' + c.label, points: c.points});
      setSeries(charts, list);
      return;
    }
    const list = [];
    for (const r of runs) {
      for (const l of policyLines(r.cells.filter(c => c.on))) list.push(Object.assign(l, {name: r.id + ': ' + l.name}));
    }
    setPolicySeries(charts, list);
    showIdentical(list);
  }
  const seedsBox = $('#show-seeds');
  if (seedsBox) seedsBox.addEventListener('change', draw);
  draw();

  const table = el('table', {class: 'summary'});
  table.append(el('thead', {}, el('tr', {}, el('th', {}, 'run'), el('th', {}, 'policy'), el('th', {}, 'seeds'),
    ...SUMMARY_COLUMNS.map(([, name]) => el('th', {}, name)))));
  const body = el('tbody');
  for (const r of runs) {
    if (!r.results) {
      body.append(el('tr', {}, el('td', {}, r.id), el('td', {colspan: SUMMARY_COLUMNS.length + 2}, 'no results.json yet')));
      continue;
    }
    const sweep = new Set(r.results.policies.map(p => p.rate_scale)).size > 1;
    for (const p of r.results.policies) {
      const name = p.router + (p.batch !== 'vllm' ? ' / ' + p.batch : '') + ' / ' + p.evict + (sweep ? ' ×' + p.rate_scale : '');
      body.append(el('tr', {'data-run': r.id}, el('td', {}, r.id), el('td', {}, name),
        el('td', {}, p.seeds + (p.failed_cells ? ' (' + p.failed_cells + ' failed)' : '')),
        ...SUMMARY_COLUMNS.map(([key, , digits, scale]) => {
          if (key === 'prefix_cache_hit_rate' && r.prefixHashes === false) return el('td', {class: 'num'}, 'n/a');
          const st = p[key] || {mean: 0, ci95: 0};
          const k = scale || 1;
          return el('td', {class: 'num'}, fmt(st.mean * k, digits) + (st.ci95 ? ' ± ' + fmt(st.ci95 * k, digits) : ''));
        })));
    }
  }
  table.append(body);
  $('#summaries').replaceChildren(table);
  dash.runs = runs.map(r => r.id);
  dash.ready = true;
}

// ---- index page ------------------------------------------------------------------------

function indexPage() {
  const form = $('#start');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const msg = $('#start-msg');
    const req = {spec: form.spec.value.trim()};
    if (form.out.value.trim()) req.out = form.out.value.trim();
    if (form.sample_interval.value) req.sample_interval = Number(form.sample_interval.value);
    msg.textContent = 'starting…';
    msg.className = 'msg';
    try {
      const r = await fetchJSON('/api/runs', {method: 'POST', headers: {'Content-Type': 'application/json'}, body: JSON.stringify(req)});
      location.href = r.url;
    } catch (e) {
      msg.textContent = e.message;
      msg.className = 'msg error';
    }
  });
  $('#pick').addEventListener('submit', (ev) => {
    if ($$('#pick input[name=run]:checked').length === 0) {
      ev.preventDefault();
      $('#new-runs').textContent = 'select runs to compare';
    }
  });
  // Keep statuses fresh; offer a reload when new runs appear.
  setInterval(async () => {
    let data;
    try { data = await fetchJSON('/api/runs'); } catch (e) { return; }
    let unseen = 0;
    for (const exp of data.experiments) for (const r of exp.runs) {
      const tr = $$('tr[data-run]').find(t => t.dataset.run === r.id);
      if (!tr) { unseen++; continue; }
      $('.st', tr).replaceChildren(statusBadge(r.status));
      $('progress', tr).value = r.progress;
      $('.pg', tr).textContent = Math.round(100 * r.progress) + '%';
      $('.cells', tr).textContent = r.done_cells + '/' + r.cells;
      $('.failed', tr).textContent = r.failed_cells;
    }
    const note = $('#new-runs');
    note.replaceChildren();
    if (unseen) note.append(unseen + ' new run' + (unseen > 1 ? 's' : '') + ' — ', el('a', {href: '/'}, 'reload'));
  }, 2000);
  dash.ready = true;
}

document.addEventListener('DOMContentLoaded', () => {
  switch (document.body.dataset.page) {
    case 'live': livePage(); break;
    case 'compare': comparePage(); break;
    case 'index': indexPage(); break;
  }
});
