// Sign requests to Portcullis with the npm package http-message-signatures (RFC 9421).
//
// Usage: node http_signatures.mjs CONFIG.json
//   CONFIG.json (written by the Rust integration test):
//   {"base", "hmac": {"keyid", "secret"}, "ed25519": {"keyid", "private_pem"}}
//
// The scenario, for hmac-sha256 and for ed25519: GET /v1/me signed by the library (@method
// @target-uri, created, keyid, alg, nonce) is accepted; POST /v1/keys with a body and an RFC 9530
// Content-Digest (computed here: the library has no digest helper) covered is accepted; the same
// signed POST with another body is refused with digest_mismatch; a signed GET sent to another path
// with bad_signature; a signed request sent twice with replayed.
// Each passed step prints an "ok" line. Exit 0 when every check passed, 1 on the first failure,
// 3 when the library is missing.

import { createHash, createPrivateKey, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';

let httpbis, createSigner;
try {
  ({ httpbis, createSigner } = await import('http-message-signatures'));
} catch (e) {
  console.error(`missing library: ${e}`);
  process.exit(3);
}

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const base = config.base;

function fail(what) {
  console.error(`FAILED: ${what}`);
  process.exit(1);
}

const keys = [
  ['hmac-sha256', createSigner(Buffer.from(config.hmac.secret, 'base64'), 'hmac-sha256', config.hmac.keyid)],
  ['ed25519', createSigner(createPrivateKey(config.ed25519.private_pem), 'ed25519', config.ed25519.keyid)],
];

async function signed(key, method, path, body) {
  const headers = {};
  const fields = ['@method', '@target-uri'];
  if (body !== undefined) {
    headers['content-type'] = 'application/json';
    headers['content-digest'] = `sha-256=:${createHash('sha256').update(body).digest('base64')}:`;
    fields.push('content-digest', 'content-type');
  }
  const request = { method, url: base + path, headers };
  return httpbis.signMessage({
    key,
    fields,
    params: ['created', 'keyid', 'alg', 'nonce'],
    paramValues: { nonce: randomBytes(16).toString('base64url') },
  }, request);
}

async function send(req, body, url = req.url) {
  const r = await fetch(url, { method: req.method, headers: req.headers, body });
  let json = null;
  try { json = await r.json(); } catch { /* empty */ }
  return { status: r.status, json };
}

for (const [name, key] of keys) {
  let r = await send(await signed(key, 'GET', '/v1/me'));
  if (r.status !== 200 || r.json?.auth?.method !== 'signature') fail(`${name}: GET /v1/me answered ${r.status} ${JSON.stringify(r.json)}`);
  console.log(`ok ${name}: GET /v1/me signed by http-message-signatures is accepted`);

  const body = JSON.stringify({ name: `node ${name}` });
  r = await send(await signed(key, 'POST', '/v1/keys', body), body);
  if (r.status !== 201) fail(`${name}: POST /v1/keys answered ${r.status} ${JSON.stringify(r.json)}`);
  console.log(`ok ${name}: POST with Content-Digest is accepted`);

  r = await send(await signed(key, 'POST', '/v1/keys', body), JSON.stringify({ name: `node ${name}!` }));
  if (r.status !== 401 || r.json?.reason !== 'digest_mismatch') fail(`${name}: a changed body answered ${r.status} ${JSON.stringify(r.json)}`);
  console.log(`ok ${name}: a changed body is refused (digest_mismatch)`);

  r = await send(await signed(key, 'GET', '/v1/me?x=1'), undefined, `${base}/v1/me?x=2`);
  if (r.status !== 401 || r.json?.reason !== 'bad_signature') fail(`${name}: a changed URL answered ${r.status} ${JSON.stringify(r.json)}`);
  console.log(`ok ${name}: a changed URL is refused (bad_signature)`);

  const once = await signed(key, 'GET', '/v1/me');
  const first = await send(once);
  const second = await send(once);
  if (first.status !== 200 || second.status !== 401 || second.json?.reason !== 'replayed') fail(`${name}: a replay answered ${first.status} then ${second.status}`);
  console.log(`ok ${name}: a replayed request is refused (replayed)`);
}
console.log('every check passed');
