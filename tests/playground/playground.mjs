// Click through the Playground in headless Chromium (Debian's /usr/bin/chromium, driven by
// playwright-core) and print one JSON line of what the page showed.
//   node playground.mjs <server URL> <output directory>
// Builds "Orders count by status per month of 2024, amount >= 50, ordered by month" by clicking
// members and choosing from the selects, runs it (the server answers Continue wait first), reads
// the chart, the table, the JSON query, the SQL and both copied snippets, saves playground.png,
// then drops the time dimension for a bar chart (playground-bar.png), reloads the page to check
// that the query comes back from the URL, and runs a query the API refuses.
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const [baseUrl, outDir] = process.argv.slice(2);
const executablePath = process.env.CUBED_CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync'];

const result = { consoleErrors: [], continueWaits: 0, loadRequests: 0, screenshots: [] };
// Never hang the test: give up (playwright closes the browser as node exits).
const WATCHDOG_MS = 100000;
const watchdog = setTimeout(() => {
  console.log(JSON.stringify({ ...result, error: `playground.mjs gave up after ${WATCHDOG_MS} ms` }));
  process.exit(1);
}, WATCHDOG_MS);
const userDataDir = await mkdtemp(join(tmpdir(), 'cubed-chromium-'));
let context;
try {
  // A new, empty profile every run (playwright passes it as --user-data-dir).
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath, headless: true, args: ARGS, viewport: { width: 1440, height: 1000 }, deviceScaleFactor: 1,
    locale: 'en-US', timezoneId: 'UTC',
  });
  await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: baseUrl });
  const page = context.pages()[0] || await context.newPage();
  page.setDefaultTimeout(20000);
  let consoleErrors = result.consoleErrors;
  page.on('console', (message) => { if (message.type() === 'error') consoleErrors.push(message.text()); });
  page.on('pageerror', (error) => consoleErrors.push(`pageerror: ${error.message}`));
  page.on('response', async (response) => {
    if (!response.url().includes('/v1/load')) return;
    result.loadRequests += 1;
    try {
      if ((await response.json()).error === 'Continue wait') result.continueWaits += 1;
    } catch { /* the page went on (aborted) */ }
  });

  await page.goto(`${baseUrl}/`);
  result.title = await page.title();
  await page.locator('input[data-member="Orders.count"]').waitFor();

  // Measures and dimensions: click them in the member tree.
  await page.locator('label.member[title="Orders.count"]').click();
  await page.locator('label.member[title="Orders.status"]').click();
  // Time dimension, granularity and a custom date range.
  await page.selectOption('#time-dimension', 'Orders.createdAt');
  await page.selectOption('#granularity', 'month');
  await page.selectOption('#date-range', 'custom');
  await page.locator('#date-from').fill('2024-01-01');
  await page.locator('#date-to').fill('2024-12-31');
  // A filter and an order.
  await page.click('#add-filter');
  await page.selectOption('.filter-member', 'Orders.amount');
  await page.selectOption('.filter-operator', 'gte');
  await page.locator('.filter-values').fill('50');
  await page.click('#add-order');
  await page.selectOption('.order-member', 'Orders.createdAt');
  await page.selectOption('.order-direction', 'asc');
  result.chips = await page.locator('.chip').allTextContents();

  // Run: the progress line shows Continue wait while the server asks to poll again.
  // Every text the status line shows, recorded as it changes (a Continue wait line may be brief).
  await page.evaluate(() => {
    window.statusTexts = [];
    const status = document.getElementById('status');
    new MutationObserver(() => window.statusTexts.push([status.className, status.textContent]))
      .observe(status, { childList: true, subtree: true, characterData: true, attributes: true });
  });
  await page.click('#run');
  await page.waitForSelector('#status.done');
  const statusTexts = await page.evaluate(() => window.statusTexts);
  result.progressText = (statusTexts.find(([kind, text]) => kind.includes('busy') && text.includes('Continue wait')) || [])[1] ?? null;
  result.status = await page.locator('#status').textContent();
  result.waitsShown = await page.locator('#status').getAttribute('data-waits');
  await page.waitForSelector('#chart-box[data-chart-type="line"]');
  result.line = await readChart(page);
  result.table = await readTable(page);

  await page.click('[role=tab][data-tab="json"]');
  result.json = JSON.parse(await page.locator('#code').textContent());
  await page.click('[role=tab][data-tab="sql"]');
  await page.waitForFunction(() => document.getElementById('code').textContent.includes('SELECT'));
  result.sql = await page.locator('#code').textContent();
  result.screenshots.push(await shot(page, 'playground.png'));

  await page.click('#copy-curl');
  result.curl = await page.evaluate(() => navigator.clipboard.readText());
  result.curlShown = await page.locator('#code').textContent();
  await page.click('#copy-js');
  result.js = await page.evaluate(() => navigator.clipboard.readText());
  // A pasted token goes into the snippets (and the requests); cleared again afterwards.
  await page.locator('#token').fill('pasted.jwt.token');
  await page.click('[role=tab][data-tab="curl"]');
  result.curlWithToken = await page.locator('#code').textContent();
  await page.locator('#token').fill('');

  // Without the time dimension the same data is a bar chart per status.
  await page.selectOption('#time-dimension', '');
  await page.click('#run');
  await page.waitForSelector('#chart-box[data-chart-type="bar"]');
  await page.waitForSelector('#status.done');
  result.bar = await readChart(page);
  result.barTable = await readTable(page);
  result.screenshots.push(await shot(page, 'playground-bar.png'));

  // The query lives in the URL: a reload shows it again.
  await page.reload();
  await page.locator('input[data-member="Orders.count"]').waitFor();
  await page.waitForFunction(() => document.querySelectorAll('.chip').length > 0);
  result.afterReload = {
    chips: await page.locator('.chip').allTextContents(),
    checked: await page.locator('#members input:checked').evaluateAll((boxes) => boxes.map((b) => b.dataset.member)),
    filterValues: await page.locator('.filter-values').inputValue(),
  };

  // An error of the API is shown with its status, and the old result goes.
  consoleErrors = result.errorStepConsole = [];
  await page.click('#add-filter');
  await page.locator('.filter-member').nth(1).selectOption('Orders.createdAt');
  await page.locator('.filter-operator').nth(1).selectOption('beforeDate');
  await page.locator('.filter-values').nth(1).fill('someday');
  await page.click('#run');
  await page.waitForSelector('#status.error');
  result.errorStatus = await page.locator('#status').textContent();
  result.rowsAfterError = await page.locator('#result-table tr').count();
} catch (error) {
  result.error = String(error && error.stack || error);
  process.exitCode = 1;
} finally {
  if (context) await context.close();
  await rm(userDataDir, { recursive: true, force: true });
  clearTimeout(watchdog);
}
console.log(JSON.stringify(result));

async function shot(page, name) {
  const path = join(outDir, name);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path, fullPage: true });
  return path;
}

async function readChart(page) {
  return page.evaluate(() => {
    const chart = window.Chart.getChart(document.getElementById('chart'));
    return {
      type: chart.config.type,
      labels: chart.data.labels,
      datasets: chart.data.datasets.map((d) => ({ label: d.label, data: d.data })),
      width: chart.width,
      height: chart.height,
    };
  });
}

async function readTable(page) {
  return page.evaluate(() => ({
    headers: [...document.querySelectorAll('#result-table th')].map((th) => th.textContent),
    rows: [...document.querySelectorAll('#result-table tbody tr')].map((tr) => [...tr.children].map((td) => td.textContent)),
  }));
}
