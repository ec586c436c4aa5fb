#!/usr/bin/env node
// Drive the Portcullis pages (/login, /account) in a real Chromium, through
// playwright-core (the library only; it downloads no browser: the system's
// Chromium is used, /usr/bin/chromium unless --chromium says otherwise).
//
// Usage:
//   node browser.mjs --base-url URL --email EMAIL --password PASSWORD --out-dir DIR
//                    [--chromium PATH]
//
// The user must already exist. The server's issuer must be --base-url: its
// same-origin check compares the browser's Origin with the issuer. The
// session cookie is `__Host-portcullis` (Secure), which Chromium stores on
// http://127.0.0.1 because a loopback address is a potentially trustworthy
// origin.
//
// The scenario (browser context = device):
//   1. device A opens /account, lands on /login (screenshot DIR/login.png),
//      logs in through the form, and /account shows the email;
//   2. A creates an API key through the form (scopes "orders:read"); the
//      secret is shown once in code#new-key, and Node's fetch with it as
//      X-API-Key gets GET /v1/me 200 with the same email;
//   3. device B logs in; B's /account lists 2 sessions; B signs out A's
//      session; A's next /account goes to /login;
//   4. a page on another origin of the same site (a server this script
//      starts on 127.0.0.1, another port, so the SameSite=Lax cookie goes
//      along) auto-submits forms to /account/keys (name=evil) and to
//      /account/logout while B is logged in: both are refused with 403 and
//      x-portcullis-error: csrf_failed, B stays logged in, no key "evil";
//   5. B logs out with the header's "Log out" button: /login, and /account
//      goes to /login again;
//   6. the same page from another site (http://localhost:PORT, so the cookie
//      is not sent) while device C is logged in: C must keep its session
//      (cookie still stored, /account still works) and gain no key "evil".
//
// Each passed step prints "ok N ..." on stdout. Exit codes:
//   0  every check passed
//   1  a check failed; the first mismatch is described on stderr (and the
//      open pages are saved as DIR/failure-*.png)
//   2  bad command-line arguments
//   3  playwright-core or Chromium is missing or Chromium does not start
//      (the Rust test reports that as skipped)
// API keys are never printed whole: only their first 12 characters.

import { existsSync, mkdirSync, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_MISSING_DEPENDENCY = 3;

const COOKIE = '__Host-portcullis';
const KEY_FORMAT = /^[a-z0-9_]{2,20}_[0-9A-Za-z]{39}$/;
const KEY_ANYWHERE = /[a-z0-9_]{2,20}_[0-9A-Za-z]{39}/g;
const STEP_TIMEOUT_MS = 15_000;

class CheckFailed extends Error {}

const redact = (text) => String(text).replace(KEY_ANYWHERE, (k) => k.slice(0, 12) + '…');
const show = (v) => (v === undefined ? 'undefined' : JSON.stringify(v));

function fail(message) {
  throw new CheckFailed(redact(message));
}

function expect(cond, message) {
  if (!cond) fail(typeof message === 'function' ? message() : message);
}

function expectEq(what, got, want) {
  expect(got === want, () => `${what}: expected ${show(want)}, got ${show(got)}`);
}

function ok(n, message) {
  process.stdout.write(redact(`ok ${n} ${message}\n`));
}

function usage(message) {
  process.stderr.write(
    `browser.mjs: ${message}\n` +
      'usage: node browser.mjs --base-url URL --email EMAIL --password PASSWORD --out-dir DIR [--chromium PATH]\n',
  );
  process.exit(EXIT_USAGE);
}

function missing(message) {
  process.stderr.write(`browser.mjs: ${message}\n`);
  process.exit(EXIT_MISSING_DEPENDENCY);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      'base-url': { type: 'string' },
      email: { type: 'string' },
      password: { type: 'string' },
      'out-dir': { type: 'string' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
    },
    strict: true,
    allowPositionals: false,
  }));
} catch (err) {
  usage(err.message);
}
for (const name of ['base-url', 'email', 'password', 'out-dir']) {
  if (typeof args[name] !== 'string' || !args[name]) usage(`--${name} is required`);
}

const base = args['base-url'].replace(/\/+$/, '');
const email = args.email;
const password = args.password;
const outDir = path.resolve(args['out-dir']);
const executablePath = args.chromium;
try {
  new URL(base);
} catch {
  usage(`--base-url is not a URL: ${base}`);
}

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (err) {
  missing(`playwright-core is not installed (run npm ci in interop/node): ${err.message}`);
}
if (!existsSync(executablePath)) {
  missing(`no Chromium at ${executablePath} (apt-get install chromium, or pass --chromium PATH)`);
}
mkdirSync(outDir, { recursive: true });

let browser;
try {
  browser = await chromium.launch({ executablePath, headless: true, args: ['--no-sandbox'] });
} catch (err) {
  missing(`Chromium at ${executablePath} did not start: ${err.message.split('\n')[0]}`);
}

const url = (p) => base + p;
const pathOf = (page) => {
  const u = new URL(page.url());
  return u.origin === new URL(base).origin ? u.pathname + u.search : page.url();
};

async function newDevice(label) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 800 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  const page = await context.newPage();
  // Our pages have no script and a strict CSP: a CSP violation or an uncaught error is a bug.
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) problems.push(m.text());
  });
  page.on('pageerror', (e) => problems.push(`uncaught: ${e.message}`));
  return { label, context, page, problems };
}

async function sessionCookie(device) {
  return (await device.context.cookies(base)).find((c) => c.name === COOKIE);
}

/// Clicks and returns the response to the form post it makes (the first hop, before redirects), once the
/// page it leads to (the redirect's target, or the answer itself) has loaded.
async function submit(page, locator, method, p) {
  const [res] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === method && r.url() === url(p)),
    locator.click(),
  ]);
  const location = res.headers().location;
  await page.waitForURL(location ? new URL(location, res.url()).href : res.url(), { waitUntil: 'load' });
  return res;
}

async function expectAccountPage(device, what) {
  const { page } = device;
  expectEq(`${device.label}: ${what}: path`, new URL(page.url()).pathname, '/account');
  expectEq(`${device.label}: ${what}: #account-email`, (await page.locator('#account-email').textContent())?.trim(), email);
}

async function expectSentToLogin(device, what) {
  const res = await device.page.goto(url('/account'));
  expectEq(`${device.label}: ${what}: GET /account ends on`, pathOf(device.page), '/login?return_to=/account');
  expectEq(`${device.label}: ${what}: login page status`, res.status(), 200);
  expect(
    (await device.page.getByRole('button', { name: 'Log in', exact: true }).count()) === 1,
    `${device.label}: ${what}: /login has no "Log in" button`,
  );
}

async function logIn(device, screenshot) {
  const { page } = device;
  await page.goto(url('/account'));
  expectEq(`${device.label}: GET /account without a session ends on`, pathOf(page), '/login?return_to=/account');
  expectEq(
    `${device.label}: hidden return_to`,
    await page.locator('form[action="/login"] input[name="return_to"]').inputValue(),
    '/account',
  );
  if (screenshot) await page.screenshot({ path: screenshot, fullPage: true });
  await page.getByLabel('Email', { exact: true }).fill(email);
  await page.getByLabel('Password', { exact: true }).fill(password);
  const res = await submit(page, page.getByRole('button', { name: 'Log in', exact: true }), 'POST', '/login');
  expectEq(`${device.label}: POST /login status`, res.status(), 303);
  expectEq(`${device.label}: POST /login location`, res.headers().location, '/account');
  await expectAccountPage(device, 'after logging in');
  const c = await sessionCookie(device);
  expect(c, `${device.label}: Chromium did not store the ${COOKIE} cookie set by POST /login on ${base}`);
  expect(
    c.secure && c.httpOnly && c.sameSite === 'Lax' && c.path === '/' && !c.domain.startsWith('.'),
    () => `${device.label}: cookie attributes: ${show({ ...c, value: '…' })}`,
  );
}

async function currentSessionId(page) {
  const rows = page.locator('tr.session').filter({ hasText: 'This device' });
  expectEq('rows marked "This device"', await rows.count(), 1);
  return rows.getAttribute('data-session-id');
}

/// A page on another origin that posts a form to us as soon as it loads, like an attacker's page.
function startEvilServer() {
  const forms = {
    '/keys': { action: '/account/keys', fields: { name: 'evil', scopes: 'admin' } },
    '/logout': { action: '/account/logout', fields: {} },
  };
  const server = http.createServer((req, res) => {
    const form = forms[new URL(req.url, 'http://x').pathname];
    if (!form) {
      res.writeHead(404).end();
      return;
    }
    const inputs = Object.entries(form.fields)
      .map(([k, v]) => `<input type="hidden" name="${k}" value="${v}">`)
      .join('');
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(
      `<!doctype html><title>You won a prize</title>` +
        `<body onload="document.forms[0].submit()"><form method="post" action="${base}${form.action}">${inputs}</form>`,
    );
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

/// Opens the evil page in `device`, waits for its post to reach us and for the browser to settle on our
/// origin, and returns our answer, the request's headers as sent and the answer's Set-Cookie.
async function crossSitePost(device, evilOrigin, evilPath, target) {
  const { page } = device;
  const ours = new URL(base).origin;
  const [res] = await Promise.all([
    page.waitForResponse((r) => r.request().method() === 'POST' && r.url() === url(target)),
    page.goto(evilOrigin + evilPath),
  ]);
  await page.waitForURL((u) => u.origin === ours, { waitUntil: 'load' });
  const sent = await res.request().allHeaders();
  const setCookie = (await res.headerValue('set-cookie')) ?? null;
  const body = res.status() >= 300 && res.status() < 400 ? '' : await res.text();
  return { res, sent, setCookie, body };
}

const describePost = (r, sent, setCookie) =>
  `sec-fetch-site ${show(sent['sec-fetch-site'])}, cookie ${sent.cookie ? 'sent' : 'not sent'}; ` +
  `answer ${r.status()}, location ${show(r.headers().location)}, set-cookie ${show(setCookie)}`;

const devices = [];
let evil;

/// The attacker's pages (on the evil server) and where each one posts.
const FORGED = [
  ['/keys', '/account/keys'],
  ['/logout', '/account/logout'],
];

/// No key named "evil": asked by the browser itself (a fetch() from /account would be blocked by the
/// page's CSP, connect-src 'none'), and on the account page. Returns the names of the keys.
async function expectNoEvilKey(device) {
  const { page, label } = device;
  const keys = await page.goto(url('/v1/keys'));
  const body = await keys.text();
  expectEq(`${label}: GET /v1/keys with the session cookie: status (body ${body})`, keys.status(), 200);
  const names = JSON.parse(body).keys.map((k) => k.name);
  expect(!names.includes('evil'), `${label}: a key named "evil" exists: ${show(names)}`);
  await page.goto(url('/account'));
  await expectAccountPage(device, 'after GET /v1/keys');
  expectEq(`${label}: key rows named "evil" on /account`, await page.locator('tr.key').filter({ hasText: 'evil' }).count(), 0);
  return names;
}

async function run() {
  evil = await startEvilServer();
  // 1. Device A: /account sends to /login; log in through the form.
  const a = await newDevice('A');
  devices.push(a);
  const loginPng = path.join(outDir, 'login.png');
  await logIn(a, loginPng);
  expect(statSync(loginPng).size > 0, `${loginPng} is empty`);
  await a.page.screenshot({ path: path.join(outDir, 'account.png'), fullPage: true });
  ok(1, `A: /account -> /login?return_to=/account (screenshot ${loginPng}); form login -> 303 /account showing ${email}; ${COOKIE} stored (Secure, HttpOnly, SameSite=Lax) on ${base}`);

  // 2. A creates an API key through the form; Node uses it.
  expectEq('A: secret shown before creating a key', await a.page.locator('code#new-key').count(), 0);
  await a.page.locator('#key-name').fill('browser test');
  await a.page.locator('#key-scopes').fill('orders:read');
  let res = await submit(a.page, a.page.getByRole('button', { name: 'Create key', exact: true }), 'POST', '/account/keys');
  expectEq('A: POST /account/keys status', res.status(), 201);
  const key = (await a.page.locator('code#new-key').textContent())?.trim() ?? '';
  expect(KEY_FORMAT.test(key), () => `A: code#new-key does not hold a key: ${show(key)}`);
  const row = a.page.locator('tr.key').filter({ hasText: 'browser test' });
  expectEq('A: key rows named "browser test"', await row.count(), 1);
  const keyId = await row.getAttribute('data-key-id');
  expect((await row.textContent()).includes('orders:read'), 'A: the key row does not show scope orders:read');
  expect(!(await row.textContent()).includes(key), 'A: the key row shows the whole secret');
  const me = await fetch(url('/v1/me'), { headers: { 'x-api-key': key }, signal: AbortSignal.timeout(10_000) });
  const meBody = await me.text();
  expectEq(`GET /v1/me with the new key: status (body ${meBody})`, me.status, 200);
  const meJson = JSON.parse(meBody);
  expectEq('GET /v1/me with the new key: email', meJson.email, email);
  expectEq('GET /v1/me with the new key: auth.key_id', meJson.auth?.key_id, keyId);
  await a.page.goto(url('/account'));
  expectEq('A: secret shown again on the next GET /account', await a.page.locator('code#new-key').count(), 0);
  ok(2, `A: "Create key" -> 201, secret ${key} shown once in code#new-key (row ${keyId}, orders:read); Node fetch GET /v1/me with it -> 200 ${email}`);

  // 3. Device B logs in and signs A out.
  const aSession = await currentSessionId(a.page);
  const b = await newDevice('B');
  devices.push(b);
  await logIn(b);
  const bSession = await currentSessionId(b.page);
  expect(bSession !== aSession, `A and B have the same session ${aSession}`);
  const sessionIds = await b.page.locator('tr.session').evaluateAll((rows) => rows.map((r) => r.dataset.sessionId));
  expectEq(`B: sessions listed ${show(sessionIds)}: count`, sessionIds.length, 2);
  expect(sessionIds.includes(aSession), `B: A's session ${aSession} is not listed: ${show(sessionIds)}`);
  const aRow = b.page.locator(`tr.session[data-session-id="${aSession}"]`);
  expect(!(await aRow.textContent()).includes('This device'), 'B: A\'s row says "This device"');
  res = await submit(b.page, aRow.getByRole('button', { name: 'Sign out' }), 'POST', `/account/sessions/${aSession}/revoke`);
  expectEq("B: POST revoke A's session status", res.status(), 303);
  await expectAccountPage(b, "after signing A's session out");
  expectEq('B: path after the revoke', pathOf(b.page), '/account?done=session_revoked');
  expectEq('B: sessions listed after the revoke', await b.page.locator('tr.session').count(), 1);
  await expectSentToLogin(a, 'after B signed it out');
  expect(!(await sessionCookie(a)), `A: ${COOKIE} still stored after the server found its session revoked`);
  ok(3, `B: logged in, /account lists 2 sessions; "Sign out" on A's row (${aSession}) -> 303 /account?done=session_revoked, 1 left; A: GET /account -> /login?return_to=/account, cookie cleared`);

  // 4. Form posts from a page on another origin of the same site (127.0.0.1, another port: the
  // SameSite=Lax cookie goes along) while B is logged in are refused by the CSRF check.
  const evilPort = evil.address().port;
  const sameSite = `http://127.0.0.1:${evilPort}`;
  for (const [evilPath, target] of FORGED) {
    const { res: r, sent, setCookie, body } = await crossSitePost(b, sameSite, evilPath, target);
    const what = `B: POST ${target} from ${sameSite}${evilPath}`;
    const how = describePost(r, sent, setCookie);
    expectEq(`${what}: Origin sent`, sent.origin, sameSite);
    expectEq(`${what}: status (${how})`, r.status(), 403);
    expectEq(`${what}: x-portcullis-error (${how})`, r.headers()['x-portcullis-error'], 'csrf_failed');
    expect(body.includes('Request refused'), `${what}: the 403 page does not say "Request refused"`);
    if (evilPath === '/keys') await b.page.screenshot({ path: path.join(outDir, 'csrf-refused.png'), fullPage: true });
    await b.page.goto(url('/account'));
    await expectAccountPage(b, `after ${what}`);
    expectEq(`B: current session after ${what}`, await currentSessionId(b.page), bSession);
    ok(4, `${what} (sec-fetch-site ${sent['sec-fetch-site']}, cookie ${sent.cookie ? 'sent' : 'not sent'}) -> 403 csrf_failed; B still on /account`);
  }
  const names = await expectNoEvilKey(b);
  ok(4, `B: GET /v1/keys (cookie) -> 200, keys ${show(names)}: no "evil", none on /account either`);

  // 5. B logs out with the header's button.
  res = await submit(b.page, b.page.locator('header').getByRole('button', { name: 'Log out', exact: true }), 'POST', '/account/logout');
  expectEq('B: POST /account/logout status', res.status(), 303);
  expectEq('B: path after "Log out"', pathOf(b.page), '/login');
  expect(!(await sessionCookie(b)), `B: ${COOKIE} still stored after logging out`);
  await expectSentToLogin(b, 'after logging out');
  ok(5, 'B: "Log out" -> 303 /login, cookie cleared; GET /account -> /login?return_to=/account');

  // 6. The same forms from another site (http://localhost:PORT, where the SameSite=Lax cookie stays
  // home): device C, logged in, must neither gain a key nor lose its session.
  const c = await newDevice('C');
  devices.push(c);
  await logIn(c);
  const cSession = await currentSessionId(c.page);
  const crossSite = `http://localhost:${evilPort}`;
  for (const [evilPath, target] of FORGED) {
    const { res: r, sent, setCookie } = await crossSitePost(c, crossSite, evilPath, target);
    const what = `C: POST ${target} from ${crossSite}${evilPath} (${describePost(r, sent, setCookie)})`;
    expectEq(`${what}: Origin sent`, sent.origin, crossSite);
    expect(r.status() === 403 || r.status() === 303, `${what}: expected 403 or 303, got ${r.status()}`);
    expect(
      await sessionCookie(c),
      `${what}: Chromium no longer holds ${COOKIE}: another site logged C out. The post carried no ` +
        'cookie (so the server never saw the session, which stays live), yet its answer cleared the cookie',
    );
    await c.page.goto(url('/account'));
    await expectAccountPage(c, `after ${what}`);
    expectEq(`C: current session after ${what}`, await currentSessionId(c.page), cSession);
    ok(6, `${what}; C still on /account`);
  }
  await expectNoEvilKey(c);
  ok(6, 'C: no key "evil"');

  for (const d of devices) {
    expect(d.problems.length === 0, () => `${d.label}: browser errors on our pages: ${show(d.problems)}`);
  }
}

let code = EXIT_OK;
try {
  await run();
} catch (err) {
  code = EXIT_FAILED;
  const message = err instanceof CheckFailed ? err.message : redact(err.stack || err.message);
  process.stderr.write(`browser.mjs: FAILED: ${message}\n`);
  for (const d of devices) {
    const file = path.join(outDir, `failure-${d.label}.png`);
    try {
      await d.page.screenshot({ path: file, fullPage: true, timeout: 5_000 });
      process.stderr.write(`browser.mjs: device ${d.label} was on ${d.page.url()} (screenshot ${file})\n`);
    } catch {
      // The page may be gone; the message above is what matters.
    }
  }
} finally {
  await browser.close().catch(() => {});
  evil?.close();
}
if (code === EXIT_OK) process.stdout.write('ok browser.mjs: every check passed\n');
process.exit(code);
