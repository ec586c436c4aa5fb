#!/usr/bin/env node
// Email verification and password reset in a real Chromium (playwright-core), with real mail: the
// server sends through SMTP to the test suite's aiosmtpd, which writes each message as <n>.json into
// --mail-dir; this script reads the link from there and follows it like a person would.
//
// Usage:
//   node browser_accounts.mjs --base-url URL --email EMAIL --password PW --new-password PW2
//                             --mail-dir DIR --out-dir DIR [--chromium PATH]
//
// The scenario:
//   1. /login links to /register; a weak password is refused with the policy's reasons inline
//      (DIR/register-weak.png); a good one creates the account and signs in: /account says the
//      email is not verified yet;
//   2. the verification mail arrives; its link shows a button (DIR/verify.png) that verifies; the
//      account page then says it is;
//   3. logged out, "Forgot your password?" leads to /reset; the reset mail's link sets a new
//      password (DIR/reset.png); the old one no longer logs in, the new one does.
//
// Exit codes: 0 every check passed, 1 a check failed (DIR/accounts-failure.png), 2 bad arguments,
// 3 playwright-core or Chromium is missing.

import { existsSync, mkdirSync, readdirSync, readFileSync } from 'node:fs';
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
      email: { type: 'string' },
      password: { type: 'string' },
      'new-password': { type: 'string' },
      'mail-dir': { type: 'string' },
      'out-dir': { type: 'string' },
      chromium: { type: 'string', default: '/usr/bin/chromium' },
    },
  }));
} catch (e) {
  process.stderr.write(`${e.message}\n`);
  process.exit(2);
}
for (const name of ['base-url', 'email', 'password', 'new-password', 'mail-dir', 'out-dir']) {
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

// The link to `linkPath` in the first message with `subject`, waiting for it to arrive.
async function mailedLink(subject, linkPath) {
  for (let i = 0; i < 100; i++) {
    const files = readdirSync(args['mail-dir']).filter((f) => f.endsWith('.json')).sort((a, b) => parseInt(a) - parseInt(b));
    for (const f of files) {
      const m = JSON.parse(readFileSync(path.join(args['mail-dir'], f), 'utf8'));
      if (m.subject === subject && m.to.includes(args.email)) {
        const link = m.text.split(/\s+/).find((w) => w.startsWith(`${base}${linkPath}?token=`));
        expect(link, `the "${subject}" message has a ${linkPath} link: ${m.text}`);
        return link;
      }
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new CheckFailed(`no "${subject}" message arrived`);
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

  await page.goto(`${base}/login`);
  await Promise.all([page.waitForURL((u) => u.pathname === '/register'), page.click('#create-account')]);
  await page.fill('#email', args.email);
  await page.fill('#name', 'Browser Person');
  await page.fill('#password', 'password');
  await page.click('button[type="submit"]');
  const reasons = await page.locator('#password-reasons li').allTextContents();
  expect(reasons.some((r) => /at least/.test(r)) && reasons.some((r) => /commonly used/.test(r)), `the policy's reasons are shown: ${reasons}`);
  await page.screenshot({ path: path.join(outDir, 'register-weak.png'), fullPage: true });
  await page.fill('#password', args.password);
  await Promise.all([page.waitForURL((u) => u.pathname === '/account'), page.click('button[type="submit"]')]);
  const unverified = (await page.locator('#account-email-verified').textContent())?.trim();
  expect(unverified.startsWith('Not yet'), `a new account is not verified yet: ${unverified}`);
  ok('1 registered through /register (weak password refused with reasons), signed in, not verified');

  const verifyLink = await mailedLink('Verify your email address', '/verify');
  await page.goto(verifyLink);
  await page.screenshot({ path: path.join(outDir, 'verify.png'), fullPage: true });
  await page.click('#verify-confirm');
  await page.waitForSelector('text=Email verified');
  await page.goto(`${base}/account`);
  const verified = (await page.locator('#account-email-verified').textContent())?.trim();
  expect(verified === 'Yes', `the account page says verified: ${verified}`);
  ok('2 the mailed link verified the address');

  await Promise.all([page.waitForURL((u) => u.pathname === '/login'), page.click('button:has-text("Log out")')]);
  await Promise.all([page.waitForURL((u) => u.pathname === '/reset'), page.click('#forgot-password')]);
  await page.fill('#email', args.email);
  await page.click('button[type="submit"]');
  await page.waitForSelector('#reset-notice');
  const resetLink = await mailedLink('Reset your password', '/reset');
  await page.goto(resetLink);
  await page.fill('#new-password', args['new-password']);
  await page.screenshot({ path: path.join(outDir, 'reset.png'), fullPage: true });
  await page.click('#reset-confirm');
  await page.waitForSelector('text=Password changed');
  await page.goto(`${base}/login`);
  await page.fill('#email', args.email);
  await page.fill('#password', args.password);
  await page.click('button[type="submit"]');
  await page.waitForSelector('#login-error');
  await page.fill('#password', args['new-password']);
  await Promise.all([page.waitForURL((u) => u.pathname === '/account'), page.click('button[type="submit"]')]);
  ok('3 reset through the mailed link: the old password is refused, the new one logs in');
  expect(problems.length === 0, `browser errors on our pages: ${problems}`);
}

let code = 0;
try {
  await run();
  process.stdout.write('ok browser_accounts.mjs: every check passed\n');
} catch (e) {
  code = 1;
  process.stderr.write(`browser_accounts.mjs: FAILED: ${e instanceof CheckFailed ? e.message : e.stack}\n`);
  try {
    await page?.screenshot({ path: path.join(outDir, 'accounts-failure.png'), fullPage: true, timeout: 5000 });
    process.stderr.write(`browser_accounts.mjs: the page was ${page?.url()}\n`);
  } catch {}
} finally {
  await browser.close().catch(() => {});
}
process.exit(code);
