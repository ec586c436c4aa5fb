#!/usr/bin/env node
// "Continue with …" in a real Chromium (playwright-core): Portcullis signs a person in through an
// upstream OpenID provider (node-oidc-provider, started by the test as upstream_op.mjs).
//
// Usage:
//   node browser_upstream.mjs --base-url URL --provider-id ID --login LOGIN
//                             --client-id ID --client-secret SECRET --out-dir DIR [--chromium PATH]
//
// The scenario:
//   1. /login shows "Continue with …"; clicking it leads to the provider's login form (screenshot
//      DIR/upstream-provider.png); logging in there as LOGIN and continuing lands on /account,
//      signed in as LOGIN@example.org (DIR/upstream-account.png), with the provider listed;
//   2. in a fresh browser, an OAuth client of Portcullis sends the browser to /oauth2/authorize;
//      at /login it continues with the provider, logs in there, comes back to Portcullis's consent
//      page, allows, and arrives at the application with a code that redeems for tokens naming
//      the same user.
//
// Exit codes: 0 every check passed, 1 a check failed (DIR/upstream-failure.png), 2 bad arguments,
// 3 playwright-core or Chromium is missing.

import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';

const STEP_TIMEOUT_MS = 20_000;
class CheckFailed extends Error {}
const expect = (cond, what) => {
  if (!cond) throw new CheckFailed(what);
};
const ok = (what) => process.stdout.write(`ok ${what}\n`);

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      'base-url': { type: 'string' },
      'provider-id': { type: 'string' },
      login: { type: 'string' },
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      'out-dir': { type: 'string' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
    },
  }));
} catch (e) {
  process.stderr.write(`${e.message}\n`);
  process.exit(2);
}
for (const name of ['base-url', 'provider-id', 'login', 'client-id', 'client-secret', 'out-dir']) {
  if (!args[name]) {
    process.stderr.write(`--${name} is required\n`);
    process.exit(2);
  }
}
const base = args['base-url'].replace(/\/+$/, '');
const outDir = path.resolve(args['out-dir']);
mkdirSync(outDir, { recursive: true });
const email = `${args.login}@example.org`;

let chromium;
try {
  ({ chromium } = await import('playwright-core'));
} catch (e) {
  process.stderr.write(`playwright-core is not installed: ${e.message}\n`);
  process.exit(3);
}
if (!existsSync(args.chromium)) {
  process.stderr.write(`no Chromium at ${args.chromium}\n`);
  process.exit(3);
}
let browser;
try {
  browser = await chromium.launch({ executablePath: args.chromium, headless: true, args: ['--no-sandbox'] });
} catch (e) {
  process.stderr.write(`Chromium did not start: ${e.message.split('\n')[0]}\n`);
  process.exit(3);
}

const app = http.createServer((req, res) => {
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end('<!doctype html><title>App</title><h1>Back at the app</h1>');
});
await new Promise((r) => app.listen(0, '127.0.0.1', r));
const redirectUri = `http://127.0.0.1:${app.address().port}/cb`;
const onBase = (u) => u.href.startsWith(`${base}/`);

// At the provider: its development login form, then its consent ("Continue").
async function throughProvider(page, shot) {
  await page.waitForSelector('input[name="login"]');
  expect(!onBase(new URL(page.url())), `the provider's login form is the provider's: ${page.url()}`);
  if (shot) await page.screenshot({ path: path.join(outDir, 'upstream-provider.png'), fullPage: true });
  await page.fill('input[name="login"]', args.login);
  await page.fill('input[name="password"]', 'any password will do');
  await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
  if (!onBase(new URL(page.url()))) {
    // The provider's consent for our client.
    await Promise.all([page.waitForURL(onBase), page.click('button[type="submit"]')]);
  }
}

let page;
async function run() {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  page = await context.newPage();
  await page.goto(`${base}/login`);
  const button = page.locator(`#upstream-${args['provider-id']}`);
  const label = (await button.textContent())?.trim();
  expect(label?.startsWith('Continue with '), `the login page has the provider's button: ${label}`);
  await button.click();
  await throughProvider(page, true);
  await page.waitForURL((u) => u.href === `${base}/account`);
  const shown = (await page.locator('#account-email').textContent())?.trim();
  expect(shown === email, `signed in as ${email}, the account page says ${shown}`);
  const linked = await page.locator(`tr.identity[data-provider="${args['provider-id']}"]`).count();
  expect(linked === 1, 'the account page lists the provider');
  await page.screenshot({ path: path.join(outDir, 'upstream-account.png'), fullPage: true });
  ok('1 continued with the provider, logged in there, landed on /account signed in');

  // An OAuth client of ours, in a fresh browser.
  const fresh = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  fresh.setDefaultTimeout(STEP_TIMEOUT_MS);
  page = await fresh.newPage();
  const verifier = randomBytes(32).toString('base64url');
  const challenge = createHash('sha256').update(verifier).digest('base64url');
  const state = randomBytes(12).toString('base64url');
  const u = new URL(`${base}/oauth2/authorize`);
  u.search = new URLSearchParams({
    response_type: 'code', client_id: args['client-id'], redirect_uri: redirectUri, scope: 'openid email',
    state, nonce: 'n-browser', code_challenge: challenge, code_challenge_method: 'S256',
  }).toString();
  await page.goto(u.href);
  expect(new URL(page.url()).pathname === '/login', `the authorization request lands on /login: ${page.url()}`);
  await page.locator(`#upstream-${args['provider-id']}`).click();
  await throughProvider(page, false);
  await page.waitForURL((x) => x.pathname === '/oauth2/authorize' && onBase(x));
  await Promise.all([page.waitForURL((x) => x.href.startsWith(redirectUri)), page.click('#consent-approve')]);
  const back = new URL(page.url());
  expect(back.searchParams.get('state') === state && back.searchParams.get('iss') === base, 'state and iss come back');
  const auth = 'Basic ' + Buffer.from(`${args['client-id']}:${args['client-secret']}`).toString('base64');
  const r = await fetch(`${base}/oauth2/token`, {
    method: 'POST',
    headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: back.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: verifier }),
  });
  const tokens = await r.json();
  expect(r.status === 200 && tokens.id_token, `the code redeems: ${r.status} ${JSON.stringify(tokens)}`);
  const claims = JSON.parse(Buffer.from(tokens.id_token.split('.')[1], 'base64url'));
  expect(claims.email === email && claims.email_verified === true, `the ID token names ${email} (verified): ${JSON.stringify(claims)}`);
  ok('2 an OAuth client of ours got upstream login through its unchanged authorization request');
}

let code = 0;
try {
  await run();
  process.stdout.write('ok browser_upstream.mjs: every check passed\n');
} catch (e) {
  code = 1;
  process.stderr.write(`browser_upstream.mjs: FAILED: ${e instanceof CheckFailed ? e.message : e.stack}\n`);
  try {
    await page?.screenshot({ path: path.join(outDir, 'upstream-failure.png'), fullPage: true, timeout: 5000 });
    process.stderr.write(`browser_upstream.mjs: the page was ${page?.url()}\n`);
  } catch {}
} finally {
  await browser.close().catch(() => {});
  app.close();
}
process.exit(code);
