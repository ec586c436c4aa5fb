#!/usr/bin/env node
// Issue 14's outside clients, each driving Portcullis as its own documentation says:
//   1. oauth4webapi 3 with private_key_jwt (RFC 7523) pushes the authorization request (PAR,
//      RFC 9126), runs the code flow through the real login and consent pages with DPoP
//      (RFC 9449) on the token request, gets DPoP-bound tokens, calls userinfo and /v1/me with
//      proofs (a bound token as Bearer is refused) and refreshes, still bound;
//   2. the npm `dpop` package makes a proof of its own that /v1/me accepts;
//   3. openid-client 6 runs the device authorization grant (RFC 8628) while the person approves on
//      the /device page.
//
// Usage:
//   node oauth_advanced.mjs --base-url URL --root-key KEY --email E --password P --user-id ID
//
// Exit codes: 0 every check passed, 1 a check failed, 2 bad arguments, 3 a library missing.

import { parseArgs } from 'node:util';

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
  console.log(`ok - ${what}`);
}

const { values: args } = parseArgs({
  options: {
    'base-url': { type: 'string' },
    'root-key': { type: 'string' },
    email: { type: 'string' },
    password: { type: 'string' },
    'user-id': { type: 'string' },
  },
});
for (const name of ['base-url', 'root-key', 'email', 'password', 'user-id']) {
  if (!args[name]) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
}
const base = args['base-url'];

let oauth;
let client;
let dpop;
try {
  oauth = await import('oauth4webapi');
  client = await import('openid-client');
  dpop = await import('dpop');
} catch (e) {
  console.error(`oauth4webapi, openid-client or dpop is not installed: run npm ci in interop/node (${e})`);
  process.exit(3);
}
const insecure = { [oauth.allowInsecureRequests]: true };
const redirectUri = 'http://127.0.0.1:9/cb';

async function register(body) {
  const r = await fetch(`${base}/admin/v1/clients`, {
    method: 'POST',
    headers: { 'x-api-key': args['root-key'], 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  check(r.status === 201, `client "${body.name}" registered`);
  return r.json();
}

/// Logs in through the /login form; the session cookie.
async function logIn() {
  const r = await fetch(`${base}/login`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base },
    body: new URLSearchParams({ email: args.email, password: args.password, return_to: '/account' }),
  });
  check(r.status === 303, 'the person logs in on /login');
  return r.headers.get('set-cookie').split(';')[0];
}

function field(html, name) {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  return m[1].replaceAll('&amp;', '&').replaceAll('&#x2f;', '/').replaceAll('&quot;', '"');
}

try {
  const issuer = new URL(base);
  const as = await oauth.processDiscoveryResponse(
    issuer,
    await oauth.discoveryRequest(issuer, insecure),
  );
  check(as.pushed_authorization_request_endpoint === `${base}/oauth2/par`, 'metadata names the PAR endpoint');
  check(as.dpop_signing_alg_values_supported?.includes('ES256'), 'metadata names the DPoP algorithms');
  check(as.token_endpoint_auth_methods_supported?.includes('private_key_jwt'), 'metadata offers private_key_jwt');
  const cookie = await logIn();

  // 1. private_key_jwt + PAR + DPoP with oauth4webapi.
  const clientKeys = await crypto.subtle.generateKey(
    { name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify'],
  );
  const publicJwk = await crypto.subtle.exportKey('jwk', clientKeys.publicKey);
  const kid = 'interop-1';
  const registered = await register({
    name: 'oauth4webapi high-security client',
    type: 'confidential',
    token_endpoint_auth_method: 'private_key_jwt',
    jwks: { keys: [{ kty: publicJwk.kty, crv: publicJwk.crv, x: publicJwk.x, y: publicJwk.y, kid, alg: 'ES256', use: 'sig' }] },
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code', 'refresh_token'],
    scopes: ['openid', 'offline_access', 'orders:read'],
    require_pushed_authorization_requests: true,
  });
  const c = { client_id: registered.client_id };
  const clientAuth = oauth.PrivateKeyJwt({ key: clientKeys.privateKey, kid });
  const dpopKeys = await oauth.generateKeyPair('ES256');
  const DPoP = oauth.DPoP(c, dpopKeys);
  const verifier = oauth.generateRandomCodeVerifier();
  const challenge = await oauth.calculatePKCECodeChallenge(verifier);
  const state = oauth.generateRandomState();
  const par = await oauth.processPushedAuthorizationResponse(
    as, c,
    await oauth.pushedAuthorizationRequest(as, c, clientAuth, {
      redirect_uri: redirectUri,
      scope: 'openid offline_access orders:read',
      code_challenge: challenge,
      code_challenge_method: 'S256',
      state,
      response_type: 'code',
    }, { DPoP, ...insecure }),
  );
  check(par.request_uri.startsWith('urn:ietf:params:oauth:request_uri:'), 'PAR answers a request_uri');
  check(par.expires_in === 60, 'good for 60 s');
  const authorize = new URL(as.authorization_endpoint);
  authorize.searchParams.set('client_id', c.client_id);
  authorize.searchParams.set('request_uri', par.request_uri);
  let r = await fetch(authorize, { redirect: 'manual', headers: { cookie } });
  const html = await r.text();
  check(r.status === 200 && html.includes('consent-client'), 'the pushed request reaches the consent page');
  r = await fetch(`${base}/consent`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base, cookie },
    body: new URLSearchParams({ csrf_token: field(html, 'csrf_token'), request: field(html, 'request'), decision: 'approve' }),
  });
  check(r.status === 303, 'approved');
  const callback = new URL(r.headers.get('location'));
  const params = oauth.validateAuthResponse(as, c, callback, state);
  const tokenResponse = async () => {
    const req = () => oauth.authorizationCodeGrantRequest(as, c, clientAuth, params, redirectUri, verifier, { DPoP, ...insecure });
    let res = await req();
    return oauth.processAuthorizationCodeResponse(as, c, res);
  };
  const tokens = await tokenResponse();
  check(tokens.token_type === 'dpop', 'the token endpoint binds the tokens to the DPoP key');
  const claims = JSON.parse(Buffer.from(tokens.access_token.split('.')[1], 'base64url'));
  check(claims.cnf?.jkt === await DPoP.calculateThumbprint(), 'cnf.jkt is the key\'s thumbprint');
  check(claims.sub === args['user-id'], 'for the user');

  const me = await oauth.protectedResourceRequest(tokens.access_token, 'GET', new URL(`${base}/v1/me`), new Headers(), null, { DPoP, ...insecure });
  check(me.status === 200, '/v1/me accepts the bound token with a proof');
  const bearer = await fetch(`${base}/v1/me`, { headers: { authorization: `Bearer ${tokens.access_token}` } });
  check(bearer.status === 401, 'and refuses it as Bearer');
  const info = await oauth.processUserInfoResponse(as, c, claims.sub,
    await oauth.userInfoRequest(as, c, tokens.access_token, { DPoP, ...insecure }));
  check(info.sub === args['user-id'], 'userinfo answers with a proof');
  const refreshed = await oauth.processRefreshTokenResponse(as, c,
    await oauth.refreshTokenGrantRequest(as, c, clientAuth, tokens.refresh_token, { DPoP, ...insecure }));
  check(refreshed.token_type === 'dpop', 'a refresh with a proof stays bound');

  // 2. A proof by the npm dpop package.
  const own = await dpop.generateKeyPair('ES256');
  const machine = await register({
    name: 'dpop machine', type: 'confidential', grant_types: ['client_credentials'], scopes: ['orders:read'],
  });
  const mc = { client_id: machine.client_id };
  const tokenUrl = `${base}/oauth2/token`;
  const ccProof = await dpop.generateProof(own, tokenUrl, 'POST');
  r = await fetch(tokenUrl, {
    method: 'POST',
    headers: {
      'content-type': 'application/x-www-form-urlencoded',
      authorization: `Basic ${Buffer.from(`${machine.client_id}:${machine.client_secret}`).toString('base64')}`,
      dpop: ccProof,
    },
    body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'orders:read' }),
  });
  const cc = await r.json();
  check(r.status === 200 && cc.token_type === 'DPoP', 'a dpop-package proof binds a client-credentials token');
  const forward = await fetch(`${base}/v1/authorize`, {
    headers: {
      'x-forwarded-method': 'GET',
      'x-forwarded-proto': 'https',
      'x-forwarded-host': 'api.example.test',
      'x-forwarded-uri': '/orders/1',
      authorization: `DPoP ${cc.access_token}`,
      dpop: await dpop.generateProof(own, 'https://api.example.test/orders/1', 'GET', undefined, cc.access_token),
    },
  });
  check(forward.status === 200, '/v1/authorize accepts it with a proof for the original request');
  check(mc.client_id === forward.headers.get('x-auth-client-id'), 'and names the client');

  // 3. The device flow with openid-client.
  const tv = await register({
    name: 'openid-client TV', type: 'public',
    grant_types: ['urn:ietf:params:oauth:grant-type:device_code', 'refresh_token'],
    scopes: ['openid', 'offline_access', 'orders:read'],
  });
  const config = await client.discovery(issuer, tv.client_id, undefined, client.None(), {
    execute: [client.allowInsecureRequests],
  });
  const device = await client.initiateDeviceAuthorization(config, { scope: 'openid orders:read' });
  check(/^[BCDFGHJKLMNPQRSTVWXZ]{4}-[BCDFGHJKLMNPQRSTVWXZ]{4}$/.test(device.user_code), `a user code like ${device.user_code}`);
  const polling = client.pollDeviceAuthorizationGrant(config, device);
  r = await fetch(device.verification_uri_complete, { headers: { cookie } });
  const page = await r.text();
  check(r.status === 200 && page.includes('openid-client TV'), 'the /device page names the device\'s client');
  r = await fetch(`${base}/device`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin: base, cookie },
    body: new URLSearchParams({ csrf_token: field(page, 'csrf_token'), user_code: field(page, 'user_code'), decision: 'approve' }),
  });
  check(r.status === 200, 'the person allows it');
  const deviceTokens = await polling;
  check(typeof deviceTokens.access_token === 'string', 'the polling device gets its tokens');
  check(deviceTokens.claims()?.sub === args['user-id'], 'with an ID token for the user');
  console.log('every check passed');
} catch (e) {
  console.log(`not ok - ${e instanceof CheckFailed ? e.message : e.stack}`);
  process.exit(1);
}
