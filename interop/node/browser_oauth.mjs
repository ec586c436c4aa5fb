#!/usr/bin/env node
// Walk the OAuth authorization code flow through the Portcullis pages in a real Chromium, through
// playwright-core (the system's Chromium, /usr/bin/chromium unless --chromium says otherwise).
//
// Usage:
//   node browser_oauth.mjs --base-url URL --client-id ID --client-secret SECRET
//                          --email EMAIL --password PASSWORD --out-dir DIR [--chromium PATH]
//
// The client must be registered with the loopback redirect URI http://127.0.0.1:9/cb; this script
// serves the "application" on another loopback port, which RFC 8252 §7.3 lets a native app use.
//
// The scenario:
//   1. the app sends the browser to /oauth2/authorize (PKCE S256, state, nonce); the browser lands
//      on /login (screenshot DIR/oauth-login.png) and logs in through the form;
//   2. the consent page names the client, the redirect host and each scope (DIR/oauth-consent.png);
//      the user allows;
//   3. the browser arrives at the app with code, state and iss (DIR/oauth-callback.png); the app
//      redeems the code (client_secret_basic) for an access token and an ID token;
//   4. a second authorization for the same scopes goes straight back to the app: the consent is
//      remembered.
//
// Exit codes: 0 every check passed, 1 a check failed (stderr says which; the page is saved as
// DIR/oauth-failure.png), 2 bad arguments, 3 playwright-core or Chromium is missing.

import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';

const STEP_TIMEOUT_MS = 15_000;
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
      'client-id': { type: 'string' },
      'client-secret': { type: 'string' },
      email: { type: 'string' },
      password: { type: 'string' },
      'out-dir': { type: 'string' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
    },
  }));
} catch (e) {
  process.stderr.write(`${e.message}\n`);
  process.exit(2);
}
for (const name of ['base-url', 'client-id', 'client-secret', 'email', 'password', 'out-dir']) {
  if (!args[name]) {
    process.stderr.write(`--${name} is required\n`);
    process.exit(2);
  }
}
const base = args['base-url'].replace(/\/+$/, '');
const outDir = path.resolve(args['out-dir']);
mkdirSync(outDir, { recursive: true });

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

// The application: shows what it received at /cb.
const app = http.createServer((req, res) => {
  const u = new URL(req.url, 'http://127.0.0.1');
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>App</title><h1>Signed in</h1><p id="code">${u.searchParams.has('code') ? 'received a code' : 'no code'}</p>`);
});
await new Promise((r) => app.listen(0, '127.0.0.1', r));
const redirectUri = `http://127.0.0.1:${app.address().port}/cb`;

const b64url = (buf) => buf.toString('base64url');
function authorizationUrl(state, nonce, challenge) {
  const u = new URL(`${base}/oauth2/authorize`);
  u.search = new URLSearchParams({
    response_type: 'code',
    client_id: args['client-id'],
    redirect_uri: redirectUri,
    scope: 'openid email orders:read',
    state,
    nonce,
    code_challenge: challenge,
    code_challenge_method: 'S256',
  }).toString();
  return u.href;
}

let page;
async function run() {
  const context = await browser.newContext({ viewport: { width: 1000, height: 760 } });
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error' && /Content Security Policy/i.test(m.text())) problems.push(m.text());
  });
  const verifier = b64url(randomBytes(32));
  const challenge = b64url(createHash('sha256').update(verifier).digest());
  const state = b64url(randomBytes(12));
  const nonce = b64url(randomBytes(12));

  await page.goto(authorizationUrl(state, nonce, challenge));
  expect(new URL(page.url()).pathname === '/login', `the authorization request should land on /login, not ${page.url()}`);
  await page.screenshot({ path: path.join(outDir, 'oauth-login.png'), fullPage: true });
  await page.fill('#email', args.email);
  await page.fill('#password', args.password);
  await Promise.all([page.waitForURL((u) => u.pathname === '/oauth2/authorize'), page.click('button[type="submit"]')]);
  ok('1 logged in through the form, back at the authorization request');

  const client = (await page.locator('#consent-client').textContent())?.trim();
  expect(client === 'Browser app', `the consent page names the client: ${client}`);
  const host = (await page.locator('#consent-host').textContent())?.trim();
  expect(host === `127.0.0.1:${app.address().port}`, `the consent page names the redirect host: ${host}`);
  const scopes = await page.locator('#consent-scopes li').evaluateAll((els) => els.map((e) => e.dataset.scope));
  expect(JSON.stringify(scopes) === JSON.stringify(['openid', 'email', 'orders:read']), `each scope is listed: ${scopes}`);
  await page.screenshot({ path: path.join(outDir, 'oauth-consent.png'), fullPage: true });
  await Promise.all([page.waitForURL((u) => u.href.startsWith(redirectUri)), page.click('#consent-approve')]);
  ok('2 the consent page names client, host and scopes; allowed');

  const back = new URL(page.url());
  expect(back.searchParams.get('state') === state, 'state comes back');
  expect(back.searchParams.get('iss') === base, 'iss comes back (RFC 9207)');
  await page.screenshot({ path: path.join(outDir, 'oauth-callback.png'), fullPage: true });
  const auth = 'Basic ' + Buffer.from(`${args['client-id']}:${args['client-secret']}`).toString('base64');
  const r = await fetch(`${base}/oauth2/token`, {
    method: 'POST',
    headers: { authorization: auth, 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ grant_type: 'authorization_code', code: back.searchParams.get('code'), redirect_uri: redirectUri, code_verifier: verifier }),
  });
  const tokens = await r.json();
  expect(r.status === 200 && tokens.access_token && tokens.id_token, `the code redeems: ${r.status} ${JSON.stringify(tokens.error)}`);
  const idClaims = JSON.parse(Buffer.from(tokens.id_token.split('.')[1], 'base64url'));
  expect(idClaims.nonce === nonce && idClaims.email === args.email, 'the ID token carries the nonce and the email');
  ok('3 back at the app with code, state and iss; the code redeems');

  const again = b64url(randomBytes(12));
  await page.goto(authorizationUrl(again, nonce, challenge));
  const second = new URL(page.url());
  expect(second.href.startsWith(redirectUri) && second.searchParams.get('state') === again, `a remembered consent goes straight back: ${page.url()}`);
  ok('4 the consent is remembered');
  expect(problems.length === 0, `browser errors on our pages: ${problems}`);
}

let code = 0;
try {
  await run();
  process.stdout.write('ok browser_oauth.mjs: every check passed\n');
} catch (e) {
  code = 1;
  process.stderr.write(`browser_oauth.mjs: FAILED: ${e instanceof CheckFailed ? e.message : e.stack}\n`);
  try {
    await page?.screenshot({ path: path.join(outDir, 'oauth-failure.png'), fullPage: true, timeout: 5000 });
    process.stderr.write(`browser_oauth.mjs: the page was ${page?.url()}\n`);
  } catch {}
} finally {
  await browser.close().catch(() => {});
  app.close();
}
process.exit(code);
