#!/usr/bin/env node
// Walk the Portcullis API-key lifecycle over plain HTTP, with Node's built-ins only.
//
// Usage:
//   node api_keys.mjs --base-url URL --root-key KEY
//
// --base-url and --root-key may instead come from the environment variables
// PORTCULLIS_BASE_URL and PORTCULLIS_ROOT_KEY. The root key is an API key with
// scope "admin" and no owner (printed on first start, or made by
// `portcullis admin root-key create`).
//
// This is what a "curl-style" client in any language does: the global fetch
// (Node 18+) and JSON, no npm packages. The scenario (the same as
// interop/python/api_keys.py and the curl examples in README.md, section
// "API keys"):
//   1. the root key creates a service key with scope keys:verify (the verifier);
//   2. the root key creates a customer key (scopes, remaining, ratelimit, meta),
//      and the answer shows the key once, in the documented format, no-store;
//   3. reading and listing keys never shows the key again;
//   4. the verifier verifies it: VALID, INSUFFICIENT_SCOPE, MALFORMED;
//   5. spending every remaining use gives USAGE_EXCEEDED;
//   6. PATCH remaining makes it VALID again; a roll with a grace period gives
//      a new key, and the old one keeps working;
//   7. revoking the new key revokes both at once;
//   8. a credential in the URL query is refused, and no credential is a 401.
//
// Each passed step prints an "ok" line on stdout. Exit codes:
//   0  every check passed
//   1  a check failed; the first mismatch is described on stderr
//   2  bad command-line arguments
//   3  this Node has no global fetch (it needs Node 18 or later)
// Keys are never printed whole: only their first 12 characters.

import { parseArgs, isDeepStrictEqual } from 'node:util';

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_MISSING_DEPENDENCY = 3;

const KEY_FORMAT = /^[a-z0-9_]{2,20}_[0-9A-Za-z]{39}$/;
// Any key inside a message is cut to its displayable start before printing.
const KEY_ANYWHERE = /[a-z0-9_]{2,20}_[0-9A-Za-z]{39}/g;

class CheckFailed extends Error {}

function redact(text) {
  return text.replace(KEY_ANYWHERE, (k) => k.slice(0, 12) + '…');
}

function fail(message) {
  throw new CheckFailed(redact(message));
}

const show = (v) => (v === undefined ? 'undefined' : JSON.stringify(v));

if (typeof fetch !== 'function') {
  process.stderr.write(`api_keys.mjs: this Node (${process.version}) has no global fetch; it needs Node 18 or later\n`);
  process.exit(EXIT_MISSING_DEPENDENCY);
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      'base-url': { type: 'string', default: process.env.PORTCULLIS_BASE_URL },
      'root-key': { type: 'string', default: process.env.PORTCULLIS_ROOT_KEY },
    },
    strict: true,
    allowPositionals: false,
  }));
  for (const name of ['base-url', 'root-key']) {
    if (typeof args[name] !== 'string' || !args[name]) {
      throw new Error(`--${name} is required (or PORTCULLIS_${name.toUpperCase().replace('-', '_')})`);
    }
  }
} catch (err) {
  process.stderr.write(
    `api_keys.mjs: ${err.message}\n` + 'usage: node api_keys.mjs --base-url URL --root-key KEY\n',
  );
  process.exit(EXIT_USAGE);
}

const baseUrl = args['base-url'].replace(/\/+$/, '');
const root = args['root-key'];

async function call(method, path, { key, body, bearer = false } = {}) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (key !== undefined) {
    if (bearer) headers.authorization = `Bearer ${key}`;
    else headers['x-api-key'] = key;
  }
  let res;
  try {
    res = await fetch(baseUrl + path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      redirect: 'manual',
      signal: AbortSignal.timeout(10_000),
    });
  } catch (err) {
    const cause = err.cause && err.cause.message ? ` (${err.cause.message})` : '';
    fail(`${method} ${path}: request failed: ${err.message}${cause}`);
  }
  const raw = await res.text();
  let json = null;
  if (raw) {
    try {
      json = JSON.parse(raw);
    } catch {
      json = null;
    }
  }
  return {
    method,
    path,
    status: res.status,
    header: (name) => res.headers.get(name),
    raw,
    body: json,
    describe: () => `${method} ${path} -> ${res.status} ${raw || '(empty body)'}`,
  };
}

function expect(cond, what, res) {
  if (!cond) fail(what + (res === undefined ? '' : `\n  response: ${res.describe()}`));
}

function expectEq(label, got, want, res) {
  expect(isDeepStrictEqual(got, want), `${label}: expected ${show(want)}, got ${show(got)}`, res);
}

function mediaType(res) {
  return (res.header('content-type') || '').split(';')[0].trim();
}

function expectStatus(res, status) {
  expectEq(`${res.method} ${res.path} status`, res.status, status, res);
  if (status !== 204) {
    const isObject = res.body !== null && typeof res.body === 'object' && !Array.isArray(res.body);
    expect(isObject, `${res.method} ${res.path}: body is not a JSON object`, res);
  }
}

function expectJson(res, status) {
  expectStatus(res, status);
  expectEq(`${res.method} ${res.path} Content-Type`, mediaType(res), 'application/json', res);
}

function expectProblem(res, status, code) {
  expectStatus(res, status);
  expectEq(`${res.method} ${res.path} Content-Type`, mediaType(res), 'application/problem+json', res);
  expectEq(`${res.method} ${res.path} problem status`, res.body.status, status, res);
  if (code === undefined) {
    expect(typeof res.body.code === 'string' && res.body.code, `${res.method} ${res.path}: problem has no code`, res);
  } else {
    expectEq(`${res.method} ${res.path} problem code`, res.body.code, code, res);
  }
}

// A response that shows a key: 201, the documented format, `start`, no-store.
function expectNewKey(res, label) {
  expectJson(res, 201);
  const key = res.body.key;
  expect(typeof key === 'string', `${label}: no key in the 201 body`, res);
  expect(KEY_FORMAT.test(key), `${label}: key ${key.slice(0, 12)}… does not match ${KEY_FORMAT.source}`, res);
  expectEq(`${label}: start`, res.body.start, key.slice(0, 12), res);
  expect(typeof res.body.id === 'string' && res.body.id.startsWith('key_'), `${label}: id is not a key_… id`, res);
  expectEq(`${label}: Cache-Control`, res.header('cache-control'), 'no-store', res);
  return key;
}

function parseTime(value) {
  if (typeof value !== 'string') return null;
  const ms = Date.parse(value);
  return Number.isNaN(ms) ? null : ms / 1000;
}

function ok(step, text) {
  process.stdout.write(`ok ${step} ${text}\n`);
}

async function run() {
  let verifier;
  const verify = async (key, requiredScopes) => {
    const body = { key };
    if (requiredScopes !== undefined) body.required_scopes = requiredScopes;
    const res = await call('POST', '/v1/keys/verify', { key: verifier, body, bearer: true });
    expectJson(res, 200);
    return res;
  };
  const expectCode = (res, code, label) => {
    expectEq(`${label}: code`, res.body.code, code, res);
    expectEq(`${label}: valid`, res.body.valid, code === 'VALID', res);
  };

  // 1. The verifier: a service key (no owner) that may call /v1/keys/verify.
  let res = await call('POST', '/v1/keys', {
    key: root,
    body: { name: 'interop verifier', scopes: ['keys:verify'] },
  });
  verifier = expectNewKey(res, 'create verifier');
  expectEq('create verifier: scopes', res.body.scopes, ['keys:verify'], res);
  expectEq('create verifier: owner_id', res.body.owner_id, null, res);
  ok(1, `created the verifier ${res.body.start}… with scope keys:verify`);

  // 2. The customer key.
  res = await call('POST', '/v1/keys', {
    key: root,
    body: {
      name: 'interop customer',
      scopes: ['orders:read'],
      remaining: 3,
      ratelimit: { limit: 100, duration_ms: 60000 },
      meta: { plan: 'pro' },
    },
  });
  const key = expectNewKey(res, 'create customer key');
  expect(key.startsWith('pk_live_'), `create customer key: key ${key.slice(0, 12)}… lacks pk_live_`, res);
  const keyId = res.body.id;
  expectEq('create customer key: name', res.body.name, 'interop customer', res);
  expectEq('create customer key: scopes', res.body.scopes, ['orders:read'], res);
  expectEq('create customer key: remaining', res.body.remaining, 3, res);
  expectEq('create customer key: ratelimit', res.body.ratelimit, { limit: 100, duration_ms: 60000 }, res);
  expectEq('create customer key: meta', res.body.meta, { plan: 'pro' }, res);
  expect(parseTime(res.body.created_at) !== null, 'create customer key: created_at is not an RFC 3339 time', res);
  ok(2, `created ${keyId} (${res.body.start}…): pk_live_ format, start, Cache-Control: no-store`);

  // 3. The key is shown once: never when read or listed.
  res = await call('GET', `/v1/keys/${keyId}`, { key: root });
  expectJson(res, 200);
  expect(!('key' in res.body), `GET /v1/keys/${keyId} shows the key again`, res);
  expectEq('read: id', res.body.id, keyId, res);
  expectEq('read: start', res.body.start, key.slice(0, 12), res);
  expectEq('read: remaining', res.body.remaining, 3, res);
  expectEq('read: meta', res.body.meta, { plan: 'pro' }, res);
  let listed;
  let cursor;
  for (let page = 0; page < 100; page++) {
    const path = '/v1/keys' + (cursor === undefined ? '' : `?cursor=${encodeURIComponent(cursor)}`);
    res = await call('GET', path, { key: root });
    expectJson(res, 200);
    expect(Array.isArray(res.body.keys), 'list: no keys array', res);
    for (const item of res.body.keys) {
      expect(!('key' in item), 'list: an entry shows its key', res);
      if (item.id === keyId) listed = item;
    }
    cursor = res.body.next_cursor ?? undefined;
    if (cursor === undefined) break;
  }
  expect(listed !== undefined, `list: ${keyId} is not in GET /v1/keys`);
  expectEq('list: start', listed.start, key.slice(0, 12));
  ok(3, 'GET /v1/keys/{id} and GET /v1/keys show the key\'s start, never the key');

  // 4. Verify, with the verifier (this time as Authorization: Bearer).
  res = await verify(key, ['orders:read']);
  expectCode(res, 'VALID', 'verify');
  expectEq('verify: key_id', res.body.key_id, keyId, res);
  expectEq('verify: remaining', res.body.remaining, 2, res);
  expectEq('verify: meta.plan', (res.body.meta || {}).plan, 'pro', res);
  const rl = res.body.ratelimit || {};
  expectEq('verify: ratelimit.limit', rl.limit, 100, res);
  expectEq('verify: ratelimit.remaining', rl.remaining, 99, res);
  expect(Number.isInteger(rl.reset_ms) && rl.reset_ms >= 0, 'verify: ratelimit.reset_ms is not a count of milliseconds', res);
  ok(4, 'verify with required_scopes [orders:read]: VALID, remaining 2, meta.plan pro, ratelimit.limit 100');

  res = await verify(key, ['orders:write']);
  expectCode(res, 'INSUFFICIENT_SCOPE', 'verify orders:write');
  ok(4, 'verify with required_scopes [orders:write]: INSUFFICIENT_SCOPE');

  res = await verify('pk_live_this-is-not-a-key');
  expectCode(res, 'MALFORMED', 'verify malformed');
  expect(!('key_id' in res.body), 'verify malformed: names a key', res);
  ok(4, 'verify of a malformed key: MALFORMED');

  const changed = key.slice(0, -1) + (key.at(-1) !== 'A' ? 'A' : 'B');
  res = await verify(changed);
  expectCode(res, 'MALFORMED', 'verify with a changed last character');
  ok(4, 'verify of the key with its last character changed: MALFORMED (checksum)');

  // 5. Spend the remaining uses (2; INSUFFICIENT_SCOPE did not spend one).
  for (const left of [1, 0]) {
    res = await verify(key);
    expectCode(res, 'VALID', `verify (remaining ${left + 1})`);
    expectEq('verify: remaining', res.body.remaining, left, res);
  }
  res = await verify(key);
  expectCode(res, 'USAGE_EXCEEDED', 'verify after the last use');
  ok(5, 'spent the 2 remaining uses, then USAGE_EXCEEDED');

  // 6. PATCH remaining, then roll with a grace period.
  res = await call('PATCH', `/v1/keys/${keyId}`, { key: root, body: { remaining: 10 } });
  expectJson(res, 200);
  expectEq('patch: remaining', res.body.remaining, 10, res);
  expect(!('key' in res.body), 'patch: shows the key', res);
  res = await verify(key);
  expectCode(res, 'VALID', 'verify after PATCH remaining 10');
  expectEq('verify after PATCH: remaining', res.body.remaining, 9, res);
  ok(6, 'PATCH remaining 10: VALID again, remaining 9');

  const before = Date.now() / 1000;
  res = await call('POST', `/v1/keys/${keyId}/roll`, { key: root, body: { grace_period_s: 60 } });
  const newKey = expectNewKey(res, 'roll');
  const newId = res.body.id;
  expect(newKey !== key, 'roll: the new key is the old key', res);
  expect(newId !== keyId, 'roll: the new key has the old id', res);
  expect(newKey.startsWith('pk_live_'), 'roll: the new key lost the prefix', res);
  expectEq('roll: rolled_from', res.body.rolled_from, keyId, res);
  expectEq('roll: scopes', res.body.scopes, ['orders:read'], res);
  expectEq('roll: meta', res.body.meta, { plan: 'pro' }, res);
  const expires = parseTime(res.body.old_key_expires_at);
  expect(expires !== null, 'roll: old_key_expires_at is not an RFC 3339 time', res);
  expect(before + 30 <= expires && expires <= Date.now() / 1000 + 90, 'roll: old_key_expires_at is not about 60 s from now', res);
  res = await verify(newKey, ['orders:read']);
  expectCode(res, 'VALID', 'verify the rolled key');
  expectEq('verify the rolled key: key_id', res.body.key_id, newId, res);
  res = await verify(key, ['orders:read']);
  expectCode(res, 'VALID', 'verify the old key in its grace period');
  expectEq('verify the old key: key_id', res.body.key_id, keyId, res);
  ok(6, `rolled into ${newId} with grace_period_s 60: new key VALID, old key still VALID`);

  // 7. Revoke the new key: the old one, still in its grace period, goes with it.
  res = await call('DELETE', `/v1/keys/${newId}`, { key: root });
  expectEq(`DELETE /v1/keys/${newId} status`, res.status, 204, res);
  for (const [label, k] of [['new', newKey], ['old', key]]) {
    res = await verify(k);
    expectCode(res, 'REVOKED', `verify the ${label} key after DELETE`);
  }
  ok(7, 'DELETE the new key: 204; new and old key REVOKED at once');

  // 8. Credentials never go in a URL; no credential is a 401.
  res = await call('GET', `/v1/me?api_key=${encodeURIComponent(newKey)}`);
  expectProblem(res, 400, 'credential_in_query');
  ok(8, 'GET /v1/me?api_key=…: 400 credential_in_query');
  res = await call('GET', '/v1/keys');
  expectProblem(res, 401);
  expect(res.header('www-authenticate') !== null, '401 without WWW-Authenticate', res);
  ok(8, 'GET /v1/keys without credentials: 401 problem+json');
}

try {
  await run();
} catch (err) {
  if (err instanceof CheckFailed) {
    process.stderr.write(`api_keys.mjs: FAILED: ${err.message}\n`);
    process.exit(EXIT_FAILED);
  }
  throw err;
}
process.stdout.write('ok api_keys.mjs: every check passed\n');
process.exit(EXIT_OK);
