// The cubed Playground: build a query from /v1/meta, run it, see its data, chart, SQL and code.
// Plain ES module, no build step; Chart.js (vendor/chart.umd.min.js) provides window.Chart.

const API_URL = document.querySelector('meta[name="cubed-api-url"]').content;
const API_ORIGIN_URL = new URL(API_URL, location.href).href.replace(/\/$/, '');
const GRANULARITIES = ['second', 'minute', 'hour', 'day', 'week', 'month', 'quarter', 'year'];
const DATE_RANGES = ['Today', 'Yesterday', 'This week', 'This month', 'This quarter', 'This year',
  'Last 7 days', 'Last 30 days', 'Last week', 'Last month', 'Last quarter', 'Last year'];
const OPERATORS = {
  string: ['equals', 'notEquals', 'contains', 'notContains', 'startsWith', 'notStartsWith', 'endsWith',
    'notEndsWith', 'set', 'notSet'],
  number: ['equals', 'notEquals', 'gt', 'gte', 'lt', 'lte', 'set', 'notSet'],
  boolean: ['equals', 'notEquals', 'set', 'notSet'],
  time: ['inDateRange', 'notInDateRange', 'onTheDate', 'beforeDate', 'beforeOrOnDate', 'afterDate',
    'afterOrOnDate', 'set', 'notSet'],
};
const NO_VALUES = new Set(['set', 'notSet']);
const POLL_DELAY_MS = 200;      // between a Continue wait answer and the next request
const TABLE_ROWS = 500;         // rows shown in the table (the chart uses them all)
const CHART_SERIES = 12;        // series drawn at most
const PALETTE = ['#4e79a7', '#f28e2b', '#e15759', '#76b7b2', '#59a14f', '#edc948', '#b07aa1', '#ff9da7',
  '#9c755f', '#bab0ac', '#1f77b4', '#d62728'];

const $ = (id) => document.getElementById(id);
const members = new Map();      // full name -> {name, title, shortTitle, type, kind, cube}
const state = {
  measures: [], dimensions: [], segments: [],
  time: { dimension: '', granularity: '', range: '', from: '', to: '' },
  filters: [],                  // {member, operator, values: 'comma, separated'}
  order: [],                    // {member, direction}
  limit: '',
};
let chart = null;
let lastSql = null;
let activeTab = 'json';
let running = null;             // AbortController of the query in flight
let metaLoaded = false;         // the URL's query is read once the members are known

// -- small DOM helpers -------------------------------------------------------------------
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else if (value === true) node.setAttribute(key, '');
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

function options(select, items, selected) {
  select.replaceChildren(...items.map(([value, label]) => el('option', { value, selected: value === selected }, label)));
}

function memberOptions(names, selected, placeholder) {
  const groups = new Map();
  for (const name of names) {
    const member = members.get(name);
    if (!member) continue;
    if (!groups.has(member.cube)) groups.set(member.cube, []);
    groups.get(member.cube).push(el('option', { value: name, selected: name === selected }, member.title));
  }
  return [el('option', { value: '', selected: !selected }, placeholder),
    ...[...groups].map(([cube, opts]) => el('optgroup', { label: cube }, opts))];
}

// -- the model -----------------------------------------------------------------------------
function headers(requestId) {
  const result = { 'Content-Type': 'application/json' };
  const token = $('token').value.trim();
  if (token) result.Authorization = token;
  if (requestId) result['x-request-id'] = requestId;
  return result;
}

class ApiError extends Error {
  constructor(message, status) { super(message); this.status = status; }
}

async function api(path, { body, requestId, signal } = {}) {
  const response = await fetch(`${API_URL}/${path}`, {
    method: body === undefined ? 'GET' : 'POST',
    headers: headers(requestId),
    body: body === undefined ? undefined : JSON.stringify(body),
    signal,
  });
  let payload;
  try {
    payload = await response.json();
  } catch {
    throw new ApiError(`${response.status} ${response.statusText}: the answer is not JSON`, response.status);
  }
  if (!response.ok) {
    const message = typeof payload.error === 'string' ? payload.error : JSON.stringify(payload.error ?? payload);
    throw new ApiError(message, response.status);
  }
  return payload;
}

async function loadMeta() {
  let meta;
  try {
    meta = await api('meta');
  } catch (error) {
    $('members').replaceChildren(el('p', { class: 'error' }, `Cannot read ${API_URL}/meta: ${error.message}`));
    return;
  }
  members.clear();
  const timeDimensions = [];
  for (const cube of meta.cubes || []) {
    const add = (kind) => (item) => {
      if (item.isVisible === false) return;
      members.set(item.name, { name: item.name, title: item.title || item.name, shortTitle: item.shortTitle || item.name,
        type: kind === 'measure' ? 'number' : (item.type || 'string'), kind, cube: cube.title || cube.name });
      if (kind === 'dimension' && item.type === 'time') timeDimensions.push(item.name);
    };
    (cube.measures || []).forEach(add('measure'));
    (cube.dimensions || []).forEach(add('dimension'));
    (cube.segments || []).forEach(add('segment'));
  }
  renderMembers(meta.cubes || []);
  $('time-dimension').replaceChildren(...memberOptions(timeDimensions, state.time.dimension, 'No time dimension'));
  readHash();
  metaLoaded = true;
  render();
}

function renderMembers(cubes) {
  const list = $('members');
  if (!cubes.length) {
    list.replaceChildren(el('p', { class: 'muted' }, 'The model has no cubes.'));
    return;
  }
  const sections = cubes.map((cube) => {
    const group = (kind, heading, items) => {
      const visible = (items || []).filter((item) => members.has(item.name));
      if (!visible.length) return null;
      return el('div', { class: 'group' }, el('h3', {}, heading), visible.map((item) => {
        const member = members.get(item.name);
        return el('label', { class: 'member', title: item.name, dataset: { search: `${item.name} ${member.title}`.toLowerCase() } },
          el('input', { type: 'checkbox', dataset: { member: item.name, kind }, onchange: (event) => toggle(kind, item.name, event.target.checked) }),
          el('span', { class: `type type-${member.type}` }, typeMark(member)),
          el('span', { class: 'name' }, member.shortTitle));
      }));
    };
    return el('details', { class: 'cube', open: true },
      el('summary', {}, cube.title || cube.name, cube.type === 'view' ? el('small', {}, ' view') : null),
      group('measure', 'Measures', cube.measures),
      group('dimension', 'Dimensions', cube.dimensions),
      group('segment', 'Segments', cube.segments));
  });
  list.replaceChildren(...sections);
}

function typeMark(member) {
  if (member.kind === 'measure') return 'Σ';
  if (member.kind === 'segment') return '⊂';
  return { number: '#', time: '◷', boolean: '✓' }[member.type] || 'Aa';
}

function searchMembers() {
  const needle = $('member-search').value.trim().toLowerCase();
  for (const label of document.querySelectorAll('#members .member')) {
    label.hidden = Boolean(needle) && !label.dataset.search.includes(needle);
  }
  for (const group of document.querySelectorAll('#members .group')) {
    group.hidden = ![...group.querySelectorAll('.member')].some((label) => !label.hidden);
  }
  for (const cube of document.querySelectorAll('#members .cube')) {
    cube.hidden = ![...cube.querySelectorAll('.group')].some((group) => !group.hidden);
  }
}

// -- the query -----------------------------------------------------------------------------
const LISTS = { measure: 'measures', dimension: 'dimensions', segment: 'segments' };

function toggle(kind, name, on) {
  const list = state[LISTS[kind]];
  const index = list.indexOf(name);
  if (on && index < 0) list.push(name);
  if (!on && index >= 0) list.splice(index, 1);
  render();
}

function splitValues(text) {
  return text.split(',').map((value) => value.trim()).filter((value) => value !== '');
}

function buildQuery() {
  const query = {};
  if (state.measures.length) query.measures = [...state.measures];
  if (state.dimensions.length) query.dimensions = [...state.dimensions];
  if (state.segments.length) query.segments = [...state.segments];
  const time = state.time;
  if (time.dimension) {
    const td = { dimension: time.dimension };
    if (time.granularity) td.granularity = time.granularity;
    if (time.range === 'custom') {
      if (time.from || time.to) td.dateRange = [time.from || time.to, time.to || time.from];
    } else if (time.range) {
      td.dateRange = time.range;
    }
    query.timeDimensions = [td];
  }
  const filters = state.filters
    .filter((f) => f.member && f.operator && (NO_VALUES.has(f.operator) || splitValues(f.values).length))
    .map((f) => (NO_VALUES.has(f.operator) ? { member: f.member, operator: f.operator }
      : { member: f.member, operator: f.operator, values: splitValues(f.values) }));
  if (filters.length) query.filters = filters;
  const order = state.order.filter((o) => o.member);
  if (order.length) query.order = Object.fromEntries(order.map((o) => [o.member, o.direction]));
  const limit = parseInt(state.limit, 10);
  if (Number.isFinite(limit) && limit > 0) query.limit = limit;
  return query;
}

function queryMembers() {
  return [...state.dimensions, ...(state.time.dimension ? [state.time.dimension] : []), ...state.measures];
}

// -- rendering the builder -------------------------------------------------------------------
function render() {
  // An order by a member the query no longer has goes with it.
  const inQuery = new Set(queryMembers());
  state.order = state.order.filter((o) => !o.member || inQuery.has(o.member));
  for (const box of document.querySelectorAll('#members input[data-member]')) {
    box.checked = state[LISTS[box.dataset.kind]].includes(box.dataset.member);
  }
  renderChips('measures');
  renderChips('dimensions');
  renderChips('segments');
  $('segments-row').hidden = !state.segments.length && ![...members.values()].some((m) => m.kind === 'segment');
  const time = state.time;
  $('time-dimension').value = time.dimension;
  options($('granularity'), [['', 'No granularity'], ...GRANULARITIES.map((g) => [g, `by ${g}`])], time.granularity);
  options($('date-range'), [['', 'All time'], ...DATE_RANGES.map((r) => [r, r]), ['custom', 'Custom range…']], time.range);
  $('granularity').disabled = $('date-range').disabled = !time.dimension;
  $('custom-range').hidden = !(time.dimension && time.range === 'custom');
  $('date-from').value = time.from;
  $('date-to').value = time.to;
  renderFilters();
  renderOrder();
  $('limit').value = state.limit;
  renderCode();
  writeHash();
}

function renderChips(list) {
  $(`chips-${list}`).replaceChildren(...(state[list].length ? state[list].map((name) => {
    const member = members.get(name);
    return el('span', { class: 'chip', title: name }, member ? member.title : name,
      el('button', { type: 'button', 'aria-label': `Remove ${name}`, onclick: () => { state[list] = state[list].filter((n) => n !== name); render(); } }, '×'));
  }) : [el('span', { class: 'muted small' }, list === 'segments' ? 'none' : 'pick them on the left')]));
}

function renderFilters() {
  const filterable = [...members.values()].filter((m) => m.kind !== 'segment').map((m) => m.name);
  $('filters').replaceChildren(...state.filters.map((filter, index) => {
    const member = members.get(filter.member);
    const operators = OPERATORS[member ? (member.kind === 'measure' ? 'number' : member.type) : 'string'] || OPERATORS.string;
    if (!operators.includes(filter.operator)) filter.operator = operators[0];
    const memberSelect = el('select', { 'aria-label': 'Filter member', class: 'filter-member',
      onchange: (event) => { filter.member = event.target.value; render(); } }, memberOptions(filterable, filter.member, 'Member…'));
    const operatorSelect = el('select', { 'aria-label': 'Filter operator', class: 'filter-operator',
      onchange: (event) => { filter.operator = event.target.value; render(); } },
    operators.map((op) => el('option', { value: op, selected: op === filter.operator }, op)));
    const values = el('input', { type: 'text', class: 'filter-values', 'aria-label': 'Filter values', value: filter.values,
      placeholder: member && member.type === 'time' ? '2024-01-01, 2024-12-31' : 'values, comma separated',
      hidden: NO_VALUES.has(filter.operator),
      oninput: (event) => { filter.values = event.target.value; renderCode(); writeHash(); } });
    return el('div', { class: 'line filter' }, memberSelect, operatorSelect, values,
      el('button', { type: 'button', class: 'remove', 'aria-label': 'Remove filter', onclick: () => { state.filters.splice(index, 1); render(); } }, '×'));
  }));
}

function renderOrder() {
  const candidates = [...new Set([...queryMembers(), ...state.order.map((o) => o.member).filter(Boolean)])];
  $('orders').replaceChildren(...state.order.map((order, index) => el('div', { class: 'line order' },
    el('select', { 'aria-label': 'Order member', class: 'order-member', onchange: (event) => { order.member = event.target.value; render(); } },
      memberOptions(candidates, order.member, 'Member…')),
    el('select', { 'aria-label': 'Order direction', class: 'order-direction', onchange: (event) => { order.direction = event.target.value; render(); } },
      el('option', { value: 'asc', selected: order.direction === 'asc' }, 'ascending'),
      el('option', { value: 'desc', selected: order.direction === 'desc' }, 'descending')),
    el('button', { type: 'button', class: 'remove', 'aria-label': 'Remove order', onclick: () => { state.order.splice(index, 1); render(); } }, '×'))));
}

// -- the URL keeps the query, so a reload or a shared link shows it again -------------------
function writeHash() {
  if (!metaLoaded) return;
  const query = buildQuery();
  const hash = Object.keys(query).length ? `#query=${encodeURIComponent(JSON.stringify(query))}` : '';
  if (hash !== location.hash) history.replaceState(null, '', hash || location.pathname + location.search);
}

function readHash() {
  const match = /^#query=(.*)$/.exec(location.hash);
  if (!match) return;
  let query;
  try {
    query = JSON.parse(decodeURIComponent(match[1]));
  } catch {
    return;
  }
  const known = (list) => (Array.isArray(list) ? list.filter((name) => members.has(name)) : []);
  state.measures = known(query.measures);
  state.dimensions = known(query.dimensions);
  state.segments = known(query.segments);
  const td = Array.isArray(query.timeDimensions) ? query.timeDimensions[0] : null;
  if (td && members.has(td.dimension)) {
    state.time.dimension = td.dimension;
    state.time.granularity = GRANULARITIES.includes(td.granularity) ? td.granularity : '';
    if (Array.isArray(td.dateRange)) Object.assign(state.time, { range: 'custom', from: td.dateRange[0] || '', to: td.dateRange[1] || '' });
    else if (DATE_RANGES.includes(td.dateRange)) state.time.range = td.dateRange;
  }
  state.filters = (Array.isArray(query.filters) ? query.filters : []).filter((f) => f && members.has(f.member))
    .map((f) => ({ member: f.member, operator: f.operator, values: (f.values || []).join(', ') }));
  const order = Array.isArray(query.order) ? query.order : Object.entries(query.order || {});
  state.order = order.filter((o) => members.has(o[0])).map(([member, direction]) => ({ member, direction: direction === 'desc' ? 'desc' : 'asc' }));
  state.limit = query.limit ? String(query.limit) : '';
}

// -- code: JSON query, SQL, curl, JavaScript ---------------------------------------------------
function shellQuote(text) {
  return `'${text.replaceAll("'", "'\\''")}'`;
}

function curlSnippet(query) {
  const lines = [`curl -X POST ${shellQuote(`${API_ORIGIN_URL}/load`)}`, `-H 'Content-Type: application/json'`];
  const token = $('token').value.trim();
  if (token) lines.push(`-H ${shellQuote(`Authorization: ${token}`)}`);
  lines.push(`-d ${shellQuote(JSON.stringify({ query }))}`);
  return lines.join(' \\\n  ');
}

function jsSnippet(query) {
  const token = $('token').value.trim();
  return [
    "import cube from '@cubejs-client/core';",
    '',
    `const cubeApi = cube(${JSON.stringify(token)}, { apiUrl: ${JSON.stringify(API_ORIGIN_URL)} });`,
    '',
    `const resultSet = await cubeApi.load(${JSON.stringify(query, null, 2)});`,
    'console.log(resultSet.tablePivot());',
    '',
  ].join('\n');
}

function formatSql(sql) {
  return sql.replace(/\s+(FROM|LEFT JOIN|INNER JOIN|JOIN|WHERE|GROUP BY|HAVING|ORDER BY|LIMIT|OFFSET|UNION ALL)\s+/g, '\n$1 ');
}

function renderCode() {
  const query = buildQuery();
  let text;
  if (activeTab === 'json') text = JSON.stringify(query, null, 2);
  else if (activeTab === 'curl') text = curlSnippet(query);
  else if (activeTab === 'js') text = jsSnippet(query);
  else text = lastSql ?? 'Run the query to see the SQL it generates.';
  $('code').textContent = text;
  $('code').dataset.tab = activeTab;
  for (const tab of document.querySelectorAll('[role=tab]')) tab.setAttribute('aria-selected', String(tab.dataset.tab === activeTab));
}

function selectTab(tab) {
  activeTab = tab;
  renderCode();
}

async function copy(button, tab) {
  selectTab(tab);
  const text = $('code').textContent;
  let done = false;
  try {
    await navigator.clipboard.writeText(text);
    done = true;
  } catch {
    const area = el('textarea', { class: 'offscreen' });
    area.value = text;
    document.body.append(area);
    area.select();
    done = document.execCommand('copy');
    area.remove();
  }
  const label = button.textContent;
  button.textContent = done ? 'Copied' : 'Copy failed: select the text';
  button.disabled = true;
  setTimeout(() => { button.textContent = label; button.disabled = false; }, 1500);
}

// -- running -----------------------------------------------------------------------------------
function requestIdBase() {
  if (crypto.randomUUID) return crypto.randomUUID();
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, '0')).join('');
}

function sleep(ms, signal) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => { clearTimeout(timer); reject(new DOMException('Aborted', 'AbortError')); }, { once: true });
  });
}

function setStatus(kind, parts, title = '') {
  const status = $('status');
  status.className = `status ${kind}`;
  status.title = title;
  status.replaceChildren(...parts);
}

function describeStage(stage) {
  if (!stage) return 'waiting';
  const elapsed = typeof stage.timeElapsed === 'number' ? ` · ${(stage.timeElapsed / 1000).toFixed(1)} s` : '';
  return `${stage.stage || 'waiting'}${elapsed}`;
}

async function run() {
  const query = buildQuery();
  if (!query.measures && !query.dimensions && !query.timeDimensions) {
    setStatus('error', ['Pick at least one measure or dimension first.']);
    return;
  }
  if (running) running.abort();
  const controller = new AbortController();
  running = controller;
  const { signal } = controller;
  const id = requestIdBase();
  let span = 1;
  const started = performance.now();
  const cancel = el('button', { type: 'button', class: 'link', id: 'cancel', onclick: () => controller.abort() }, 'Cancel');
  setStatus('busy', [el('span', { class: 'spinner' }), 'Loading…', cancel]);
  $('run').disabled = true;

  lastSql = null;
  const sqlDone = api('sql', { body: { query }, requestId: `${id}-span-${span++}`, signal })
    .then((answer) => {
      const sql = answer.sql && answer.sql.sql;
      lastSql = Array.isArray(sql) ? `${formatSql(sql[0])}\n\n-- parameters: ${JSON.stringify(sql[1])}` : JSON.stringify(answer, null, 2);
    })
    .catch((error) => { if (error.name !== 'AbortError') lastSql = `-- ${error.message}`; })
    .finally(() => { if (running === controller || !running) renderCode(); });

  let waits = 0;
  try {
    let answer;
    for (;;) {
      answer = await api('load', { body: { query }, requestId: `${id}-span-${span++}`, signal });
      if (answer.error !== 'Continue wait') break;
      waits += 1;
      setStatus('busy', [el('span', { class: 'spinner' }), el('strong', {}, 'Continue wait'),
        ` · ${describeStage(answer.stage)} · asking again (${waits})`, cancel], 'The query is queued or running; cubed asks to send it again.');
      $('status').dataset.waits = String(waits);
      await sleep(POLL_DELAY_MS, signal);
    }
    await sqlDone;
    const ms = Math.round(performance.now() - started);
    showResult(query, answer);
    const rows = (answer.data || []).length;
    setStatus('done', [`${rows} ${rows === 1 ? 'row' : 'rows'}`],
      `${ms} ms${waits ? `, after ${waits} Continue wait ${waits === 1 ? 'answer' : 'answers'}` : ''}`);
    $('status').dataset.waits = String(waits);
  } catch (error) {
    if (running !== controller) {
      // A newer run took over; it owns the status line and the results.
    } else if (error.name === 'AbortError') {
      setStatus('', ['Cancelled.']);
    } else {
      setStatus('error', [error.status ? `${error.status}: ` : '', error.message]);
      clearResult();
    }
  } finally {
    if (running === controller) {
      running = null;
      $('run').disabled = false;
    }
  }
}

// -- results: table and chart -------------------------------------------------------------------
function columnsOf(query, annotation) {
  const title = (group, key) => (annotation[group] && annotation[group][key] && annotation[group][key].title)
    || (members.get(key) && members.get(key).title) || key;
  const columns = (query.dimensions || []).map((key) => ({ key, title: title('dimensions', key), kind: 'dimension' }));
  for (const td of query.timeDimensions || []) {
    if (!td.granularity) continue;
    const key = `${td.dimension}.${td.granularity}`;
    columns.push({ key, title: `${title('timeDimensions', key)} (${td.granularity})`, kind: 'time', granularity: td.granularity });
  }
  for (const key of query.measures || []) columns.push({ key, title: title('measures', key), kind: 'measure' });
  return columns;
}

function formatTime(value, granularity) {
  if (typeof value !== 'string') return value;
  const [date, clock = ''] = value.split('T');
  switch (granularity) {
    case 'year': return date.slice(0, 4);
    case 'quarter': return `${date.slice(0, 4)} Q${Math.floor((Number(date.slice(5, 7)) - 1) / 3) + 1}`;
    case 'month': return date.slice(0, 7);
    case 'week': case 'day': return date;
    case 'hour': case 'minute': return `${date} ${clock.slice(0, 5)}`;
    default: return `${date} ${clock.slice(0, 8)}`;
  }
}

function formatCell(column, value) {
  if (value === null || value === undefined) return '∅';
  if (column.kind === 'time') return formatTime(value, column.granularity);
  if (column.kind === 'measure' && value !== '' && !Number.isNaN(Number(value))) {
    return Number(value).toLocaleString('en-US', { maximumFractionDigits: 2 });
  }
  return String(value);
}

function showResult(query, answer) {
  const rows = answer.data || [];
  const columns = columnsOf(query, answer.annotation || {});
  const table = $('result-table');
  const head = el('thead', {}, el('tr', {}, columns.map((c) => el('th', { title: c.key, class: c.kind === 'measure' ? 'num' : '' }, c.title))));
  const body = el('tbody', {}, rows.slice(0, TABLE_ROWS).map((row) => el('tr', {}, columns.map((c) => {
    const value = row[c.key];
    return el('td', { class: `${c.kind === 'measure' ? 'num' : ''} ${value === null ? 'null' : ''}`.trim() || null,
      title: value === null ? 'null' : null }, formatCell(c, value));
  }))));
  table.replaceChildren(head, body);
  $('table-note').textContent = rows.length > TABLE_ROWS ? `Showing the first ${TABLE_ROWS} of ${rows.length} rows.` : '';
  drawChart(columns, rows);
}

function clearResult() {
  $('result-table').replaceChildren();
  $('table-note').textContent = '';
  drawChart([], []);
}

function number(value) {
  if (value === null || value === undefined || value === '') return null;
  const n = Number(value);
  return Number.isNaN(n) ? null : n;
}

function drawChart(columns, rows) {
  const box = $('chart-box');
  const measures = columns.filter((c) => c.kind === 'measure');
  const dimensions = columns.filter((c) => c.kind === 'dimension');
  const time = columns.find((c) => c.kind === 'time');
  if (chart) { chart.destroy(); chart = null; }
  const empty = !rows.length ? (columns.length ? 'No rows.' : 'Pick a measure and run the query.')
    : !measures.length ? 'The chart needs a measure.' : null;
  $('chart-empty').textContent = empty || '';
  $('chart-empty').hidden = !empty;
  $('chart-note').textContent = '';
  box.dataset.chartType = '';
  if (empty || typeof window.Chart !== 'function') return;

  const keyOf = (row) => dimensions.map((d) => formatCell(d, row[d.key])).join(' · ');
  let type;
  let labels;
  let datasets;
  if (time) {
    // Line chart: one series per measure and combination of the other dimensions.
    type = 'line';
    const periods = [...new Set(rows.map((row) => row[time.key]))].sort();
    labels = periods.map((p) => formatTime(p, time.granularity));
    const position = new Map(periods.map((p, i) => [p, i]));
    const series = new Map();
    for (const row of rows) {
      for (const m of measures) {
        const key = keyOf(row);
        const label = key ? (measures.length > 1 ? `${key}, ${m.title}` : key) : m.title;
        if (!series.has(label)) series.set(label, new Array(periods.length).fill(null));
        series.get(label)[position.get(row[time.key])] = number(row[m.key]);
      }
    }
    datasets = [...series].sort(([a], [b]) => a.localeCompare(b)).map(([label, data]) => ({ label, data }));
  } else {
    type = 'bar';
    labels = rows.map((row) => keyOf(row) || 'Total');
    datasets = measures.map((m) => ({ label: m.title, data: rows.map((row) => number(row[m.key])) }));
  }
  const shown = datasets.slice(0, CHART_SERIES).map((d, i) => ({
    ...d, borderColor: PALETTE[i % PALETTE.length], backgroundColor: PALETTE[i % PALETTE.length] + (type === 'bar' ? 'cc' : ''),
    borderWidth: 2, pointRadius: labels.length > 60 ? 0 : 2, tension: 0.15,
  }));
  $('chart-note').textContent = datasets.length > CHART_SERIES ? `The chart shows ${CHART_SERIES} of ${datasets.length} series.` : '';
  box.dataset.chartType = type;
  chart = new window.Chart($('chart'), {
    type,
    data: { labels, datasets: shown },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      interaction: { mode: 'index', intersect: false },
      plugins: { legend: { position: 'bottom', display: shown.length > 1 || type === 'line' } },
      scales: { y: { beginAtZero: true } },
    },
  });
}

// -- wiring ---------------------------------------------------------------------------------------
function wire() {
  $('api-url').textContent = API_URL;
  $('token').value = sessionStorage.getItem('cubed.playground.token') || '';
  $('token').addEventListener('input', () => { sessionStorage.setItem('cubed.playground.token', $('token').value.trim()); renderCode(); });
  $('member-search').addEventListener('input', searchMembers);
  $('time-dimension').addEventListener('change', (event) => {
    state.time.dimension = event.target.value;
    if (state.time.dimension && !state.time.granularity) state.time.granularity = 'month';
    render();
  });
  $('granularity').addEventListener('change', (event) => { state.time.granularity = event.target.value; render(); });
  $('date-range').addEventListener('change', (event) => { state.time.range = event.target.value; render(); });
  $('date-from').addEventListener('change', (event) => { state.time.from = event.target.value; render(); });
  $('date-to').addEventListener('change', (event) => { state.time.to = event.target.value; render(); });
  $('limit').addEventListener('change', (event) => { state.limit = event.target.value; render(); });
  $('add-filter').addEventListener('click', () => { state.filters.push({ member: '', operator: 'equals', values: '' }); render(); });
  $('add-order').addEventListener('click', () => {
    const used = new Set(state.order.map((o) => o.member));
    state.order.push({ member: queryMembers().find((name) => !used.has(name)) || '', direction: 'asc' });
    render();
  });
  $('clear').addEventListener('click', () => {
    Object.assign(state, { measures: [], dimensions: [], segments: [], filters: [], order: [], limit: '',
      time: { dimension: '', granularity: '', range: '', from: '', to: '' } });
    lastSql = null;
    clearResult();
    setStatus('', []);
    render();
  });
  $('run').addEventListener('click', run);
  document.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && (event.ctrlKey || event.metaKey)) { event.preventDefault(); run(); }
  });
  for (const tab of document.querySelectorAll('[role=tab]')) tab.addEventListener('click', () => selectTab(tab.dataset.tab));
  $('copy-curl').addEventListener('click', (event) => copy(event.currentTarget, 'curl'));
  $('copy-js').addEventListener('click', (event) => copy(event.currentTarget, 'js'));
  render();
  loadMeta();
}

wire();
