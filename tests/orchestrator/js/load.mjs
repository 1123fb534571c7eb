// Load one query with the official Cube client, as a front end does, and print what it got.
//   node load.mjs <apiUrl> <token> <query JSON>
// The client repeats the request by itself while the server answers Continue wait; each of
// those answers reaches progressCallback. Prints one JSON line: {rows, stages, lastRefreshTime,
// slowQuery, ms} on success, {error, status, ms} otherwise (exit status 1).
import cube from '@cubejs-client/core';

const [apiUrl, token, queryText] = process.argv.slice(2);
const api = cube(token, { apiUrl });
const stages = [];
const started = Date.now();
try {
  const resultSet = await api.load(JSON.parse(queryText), {
    progressCallback: (progress) => stages.push(progress.stage()),
  });
  const result = resultSet.loadResponse.results[0];
  console.log(JSON.stringify({
    rows: resultSet.rawData(),
    stages,
    lastRefreshTime: result.lastRefreshTime,
    slowQuery: resultSet.loadResponse.slowQuery ?? result.slowQuery,
    ms: Date.now() - started,
  }));
} catch (error) {
  console.log(JSON.stringify({ error: String(error.message || error), status: error.status ?? null, stages,
    ms: Date.now() - started }));
  process.exitCode = 1;
}
