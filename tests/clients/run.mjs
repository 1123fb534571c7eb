// Runs a list of tasks with the official Cube JS client (@cubejs-client/core, installed at two
// versions under the aliases core1 and core032) and prints one JSON line: {"results": [...]}.
//
//   node run.mjs <job.json>
//
// job.json: {"apiUrl": "http://127.0.0.1:PORT/cubejs-api/v1", "token": "<jwt>", "tasks": [...]}
// Every task names its client ("core1" or "core032") and an op:
//   versions                      -> {"core1": "1.x.y", "core032": "0.32.z"}
//   load     {query, responseFormat?, instance?}
//            -> {queryType, results: [{query, data}], pivots, progress: [stage...]}
//   recorded {body}   a ResultSet built from a recorded /v1/load answer (a multi envelope, or a
//            single answer wrapped as the client receives it with queryType=multi) -> {queryType, pivots}
//   meta     {member?} -> {cubes: [names], resolved, membersForQuery}
//   sql      {query}   -> {sql: [text...], raw}
//   dryRun   {query}   -> the answer
// A task that throws gives {error, status, body}. `instance` shares one client object between
// tasks (its transport keeps state, e.g. the Content-Type it set for a POST).
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
const CLIENTS = ['core1', 'core032'];

const modules = {};
async function client(name) {
  if (!CLIENTS.includes(name)) throw new Error(`unknown client ${name}`);
  if (!modules[name]) {
    const mod = await import(name);
    // core1 is an ES module (default export: the factory); core032 is CommonJS, whose
    // module.exports holds the factory as its own `default`.
    const factory = typeof mod.default === 'function' ? mod.default : mod.default.default;
    const ResultSet = mod.ResultSet || mod.default.ResultSet;
    modules[name] = { factory, ResultSet };
  }
  return modules[name];
}

function version(name) {
  return JSON.parse(readFileSync(join(HERE, 'node_modules', name, 'package.json'), 'utf8')).version;
}

// The outcome of one ResultSet method: its value, or the error it threw.
function attempt(fn) {
  try {
    return { value: fn() };
  } catch (error) {
    return { error: String(error && error.message || error) };
  }
}

function pivots(resultSet) {
  return {
    tablePivot: attempt(() => resultSet.tablePivot()),
    chartPivot: attempt(() => resultSet.chartPivot()),
    seriesNames: attempt(() => resultSet.seriesNames()),
    tableColumns: attempt(() => resultSet.tableColumns()),
  };
}

function describe(resultSet) {
  return {
    queryType: resultSet.queryType,
    results: resultSet.loadResponses.map((r) => ({ query: r.query, data: r.data, annotation: r.annotation,
      total: r.total ?? null })),
    pivotQuery: resultSet.loadResponse.pivotQuery ?? null,
    pivots: pivots(resultSet),
  };
}

// What the client receives for a load it sent with queryType=multi: a single recorded answer
// (sent without queryType=multi) is wrapped in the envelope the server gives a regular query.
function envelope(body) {
  if (body.queryType != null && Array.isArray(body.results)) return body;
  return { queryType: 'regularQuery', results: [body], pivotQuery: { ...body.query, queryType: 'regularQuery' },
    slowQuery: Boolean(body.slowQuery) };
}

const instances = {};
async function api(job, task) {
  const { factory } = await client(task.client);
  const make = () => factory(job.token, { apiUrl: job.apiUrl });
  if (!task.instance) return make();
  const key = `${task.client}:${task.instance}`;
  instances[key] = instances[key] || make();
  return instances[key];
}

async function run(job, task) {
  if (task.op === 'versions') {
    return Object.fromEntries(CLIENTS.map((name) => [name, version(name)]));
  }
  const cube = await api(job, task);
  switch (task.op) {
    case 'load': {
      const progress = [];
      const options = { progressCallback: (p) => progress.push(p.stage()) };
      const resultSet = await cube.load(task.query, options, undefined, task.responseFormat || 'default');
      return { ...describe(resultSet), progress };
    }
    case 'recorded': {
      const { ResultSet } = await client(task.client);
      // loadResponseInternal is the client's own step from a /v1/load answer to a ResultSet
      // (compact rows to objects, then new ResultSet(...)).
      const body = envelope(JSON.parse(JSON.stringify(task.body)));
      const resultSet = cube.loadResponseInternal(body, {});
      if (!(resultSet instanceof ResultSet)) throw new Error('loadResponseInternal did not give a ResultSet');
      return describe(resultSet);
    }
    case 'meta': {
      const meta = await cube.meta();
      const member = task.member || null;
      return {
        cubes: meta.meta.cubes.map((c) => c.name),
        resolved: member ? meta.resolveMember(member, 'measures') : null,
        membersForQuery: meta.membersForQuery(null, 'measures').map((m) => m.name),
      };
    }
    case 'sql': {
      const answer = await cube.sql(task.query);
      const queries = Array.isArray(answer) ? answer : [answer];
      return { sql: queries.map((q) => q.sql()), raw: queries.map((q) => q.rawQuery()), multi: Array.isArray(answer) };
    }
    case 'dryRun':
      return await cube.dryRun(task.query);
    default:
      throw new Error(`unknown op ${task.op}`);
  }
}

const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const results = [];
for (const task of job.tasks) {
  try {
    results.push({ ok: await run(job, task) });
  } catch (error) {
    results.push({ error: String(error && error.message || error), status: error && error.status || null,
      body: error && error.response || null });
  }
}
process.stdout.write(`${JSON.stringify({ results })}\n`);
