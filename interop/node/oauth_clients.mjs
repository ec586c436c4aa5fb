#!/usr/bin/env node
// Run the OAuth 2.0 / OpenID Connect flows against Portcullis with a strict, certified client
// library: openid-client 6 or oauth4webapi 3 (both by panva, both OpenID certified RPs).
//
// Usage:
//   node oauth_clients.mjs --lib openid-client|oauth4webapi --base-url URL --root-key KEY
//
// The scenario:
//   1. the root key registers a confidential web client and a machine client, and a user signs up;
//   2. discovery through the library; the authorization URL it builds (PKCE S256, state, nonce);
//   3. the browser half over plain HTTP: the login form, the consent form, the redirect with the code;
//   4. the library redeems the code (checking iss, state, nonce, the ID token's claims), and the ID
//      token's signature is verified against our JWKS with jose;
//   5. userinfo, refresh (rotation), introspection, revocation (the token is inactive after);
//   6. client credentials with the machine client, and (oauth4webapi) RFC 9068 validation of the
//      access token against the JWKS.
//
// Each passed step prints an "ok" line. Exit codes: 0 every check passed, 1 a check failed (stderr
// says which), 2 bad arguments, 3 a library is not installed (npm ci in interop/node).

import { parseArgs } from 'node:util';

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_MISSING_DEPENDENCY = 3;
const REDIRECT = 'http://127.0.0.1:9/cb';
const PASSWORD = 'cobalt lantern meadow 7';

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
  console.log(`ok - ${what}`);
}

const { values: args } = parseArgs({
  options: {
    lib: { type: 'string' },
    'base-url': { type: 'string' },
    'root-key': { type: 'string' },
  },
});
if (!args.lib || !args['base-url'] || !args['root-key']) {
  console.error('usage: oauth_clients.mjs --lib openid-client|oauth4webapi --base-url URL --root-key KEY');
  process.exit(EXIT_USAGE);
}
const base = args['base-url'].replace(/\/$/, '');
const root = args['root-key'];

let client, oauth, jose;
try {
  jose = await import('jose');
  if (args.lib === 'openid-client') client = await import('openid-client');
  else if (args.lib === 'oauth4webapi') oauth = await import('oauth4webapi');
  else {
    console.error(`unknown --lib ${args.lib}`);
    process.exit(EXIT_USAGE);
  }
} catch (e) {
  console.error(`missing dependency: ${e.message} (run npm ci in interop/node)`);
  process.exit(EXIT_MISSING_DEPENDENCY);
}

async function admin(path, body) {
  const r = await fetch(`${base}${path}`, {
    method: 'POST',
    headers: { 'x-api-key': root, 'content-type': 'application/json' },
    body: JSON.stringify(body),
  });
  if (r.status !== 201) throw new CheckFailed(`${path} answered ${r.status}: ${await r.text()}`);
  return r.json();
}

function entities(s) {
  return s
    .replaceAll('&#x2f;', '/')
    .replaceAll('&quot;', '"')
    .replaceAll('&#x27;', "'")
    .replaceAll('&lt;', '<')
    .replaceAll('&gt;', '>')
    .replaceAll('&amp;', '&');
}

function field(html, name) {
  const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
  if (!m) throw new CheckFailed(`no ${name} field in the page`);
  return entities(m[1]);
}

/// The browser half: the authorization URL → login form → consent form → the redirect back.
async function browse(authorizationUrl, email) {
  let cookie = '';
  const get = (url) =>
    fetch(new URL(url, base), { redirect: 'manual', headers: cookie ? { cookie } : {} });
  const post = (path, form) =>
    fetch(new URL(path, base), {
      method: 'POST',
      redirect: 'manual',
      headers: { origin: base, 'content-type': 'application/x-www-form-urlencoded', ...(cookie ? { cookie } : {}) },
      body: new URLSearchParams(form),
    });
  let r = await get(authorizationUrl);
  check(r.status === 303 && r.headers.get('location').startsWith('/login?'), 'the authorization request sends the browser to log in');
  const returnTo = new URL(r.headers.get('location'), base).searchParams.get('return_to');
  r = await post('/login', { email, password: PASSWORD, return_to: returnTo });
  check(r.status === 303, 'the login form signs in');
  cookie = r.headers.get('set-cookie').split(';')[0];
  r = await get(r.headers.get('location'));
  check(r.status === 200, 'the consent page is shown');
  const html = await r.text();
  check(html.includes('Interop web app'), 'the consent page names the client');
  r = await post('/consent', { csrf_token: field(html, 'csrf_token'), request: field(html, 'request'), decision: 'approve' });
  check(r.status === 303 && r.headers.get('location').startsWith(REDIRECT), 'approving sends the browser back with a code');
  return r.headers.get('location');
}

async function verifyIdToken(idToken, clientId, nonce) {
  const jwks = jose.createRemoteJWKSet(new URL(`${base}/.well-known/jwks.json`));
  const { payload, protectedHeader } = await jose.jwtVerify(idToken, jwks, { issuer: base, audience: clientId, algorithms: ['RS256'] });
  check(protectedHeader.alg === 'RS256' && payload.nonce === nonce, 'the ID token signature verifies against the JWKS (jose)');
}

async function main() {
  const email = `interop-${Date.now()}-${Math.floor(Math.random() * 1e6)}@example.com`;
  let r = await fetch(`${base}/v1/users`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ email, password: PASSWORD }),
  });
  check(r.status === 201, 'a user signs up');
  const web = await admin('/admin/v1/clients', {
    name: 'Interop web app',
    type: 'confidential',
    redirect_uris: [REDIRECT],
    scopes: ['openid', 'profile', 'email', 'offline_access', 'orders:read'],
    audiences: ['https://api.example.com'],
  });
  const machine = await admin('/admin/v1/clients', {
    name: 'Interop machine',
    type: 'confidential',
    grant_types: ['client_credentials'],
    scopes: ['orders:read'],
  });
  check(web.client_secret && machine.client_secret, 'the root key registers two clients');
  const scope = 'openid email offline_access orders:read';
  if (client) await withOpenidClient(web, machine, email, scope);
  else await withOauth4webapi(web, machine, email, scope);
  console.log('every check passed');
}

async function withOpenidClient(web, machine, email, scope) {
  const insecure = { execute: [client.allowInsecureRequests] };
  const config = await client.discovery(new URL(base), web.client_id, undefined, client.ClientSecretBasic(web.client_secret), insecure);
  check(config.serverMetadata().issuer === base, 'openid-client discovers the issuer');
  const verifier = client.randomPKCECodeVerifier();
  const state = client.randomState();
  const nonce = client.randomNonce();
  const url = client.buildAuthorizationUrl(config, {
    redirect_uri: REDIRECT,
    scope,
    code_challenge: await client.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  });
  const callback = await browse(url.href, email);
  const tokens = await client.authorizationCodeGrant(config, new URL(callback), {
    pkceCodeVerifier: verifier,
    expectedState: state,
    expectedNonce: nonce,
    idTokenExpected: true,
  });
  const claims = tokens.claims();
  check(claims.iss === base && claims.aud === web.client_id && claims.email === email, 'openid-client redeems the code and validates the ID token');
  await verifyIdToken(tokens.id_token, web.client_id, nonce);
  const info = await client.fetchUserInfo(config, tokens.access_token, claims.sub);
  check(info.email === email, 'openid-client reads userinfo');
  const refreshed = await client.refreshTokenGrant(config, tokens.refresh_token);
  check(refreshed.refresh_token && refreshed.refresh_token !== tokens.refresh_token, 'openid-client refreshes, and the refresh token rotates');
  let intro = await client.tokenIntrospection(config, refreshed.access_token);
  check(intro.active === true && intro.client_id === web.client_id, 'openid-client introspects the access token');
  await client.tokenRevocation(config, refreshed.access_token);
  intro = await client.tokenIntrospection(config, refreshed.access_token);
  check(intro.active === false, 'openid-client revokes it, and it is inactive at once');
  await client.tokenRevocation(config, refreshed.refresh_token);
  let refused = false;
  try {
    await client.refreshTokenGrant(config, refreshed.refresh_token);
  } catch (e) {
    refused = e.error === 'invalid_grant';
  }
  check(refused, 'a revoked refresh token is invalid_grant');
  const m = await client.discovery(new URL(base), machine.client_id, undefined, client.ClientSecretBasic(machine.client_secret), insecure);
  const cc = await client.clientCredentialsGrant(m, { scope: 'orders:read' });
  check(cc.access_token && cc.scope === 'orders:read' && !cc.refresh_token, 'openid-client gets a client-credentials token');
}

async function withOauth4webapi(web, machine, email, scope) {
  const opts = { [oauth.allowInsecureRequests]: true };
  const issuer = new URL(base);
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer, { algorithm: 'oidc', ...opts }));
  check(as.issuer === base, 'oauth4webapi discovers the issuer');
  const c = { client_id: web.client_id };
  const auth = oauth.ClientSecretBasic(web.client_secret);
  const verifier = oauth.generateRandomCodeVerifier();
  const state = oauth.generateRandomState();
  const nonce = oauth.generateRandomNonce();
  const url = new URL(as.authorization_endpoint);
  url.search = new URLSearchParams({
    client_id: c.client_id,
    redirect_uri: REDIRECT,
    response_type: 'code',
    scope,
    code_challenge: await oauth.calculatePKCECodeChallenge(verifier),
    code_challenge_method: 'S256',
    state,
    nonce,
  }).toString();
  const callback = await browse(url.href, email);
  const params = oauth.validateAuthResponse(as, c, new URL(callback), state);
  const response = await oauth.authorizationCodeGrantRequest(as, c, auth, params, REDIRECT, verifier, opts);
  const result = await oauth.processAuthorizationCodeResponse(as, c, response, { expectedNonce: nonce, requireIdToken: true });
  const claims = oauth.getValidatedIdTokenClaims(result);
  check(claims.iss === base && claims.aud === web.client_id && claims.email === email, 'oauth4webapi redeems the code and validates the ID token');
  await verifyIdToken(result.id_token, web.client_id, nonce);
  // RFC 9068: the access token validated as a resource server would, against the JWKS.
  const request = new Request('https://api.example.com/orders', { headers: { authorization: `Bearer ${result.access_token}` } });
  const at = await oauth.validateJwtAccessToken(as, request, 'https://api.example.com', opts);
  check(at.sub === claims.sub && at.client_id === web.client_id, 'oauth4webapi validates the access token as RFC 9068');
  const info = await oauth.processUserInfoResponse(as, c, claims.sub, await oauth.userInfoRequest(as, c, result.access_token, opts));
  check(info.email === email, 'oauth4webapi reads userinfo');
  const refreshed = await oauth.processRefreshTokenResponse(as, c, await oauth.refreshTokenGrantRequest(as, c, auth, result.refresh_token, opts));
  check(refreshed.refresh_token && refreshed.refresh_token !== result.refresh_token, 'oauth4webapi refreshes, and the refresh token rotates');
  let intro = await oauth.processIntrospectionResponse(as, c, await oauth.introspectionRequest(as, c, auth, refreshed.access_token, opts));
  check(intro.active === true, 'oauth4webapi introspects the access token');
  await oauth.processRevocationResponse(await oauth.revocationRequest(as, c, auth, refreshed.access_token, opts));
  intro = await oauth.processIntrospectionResponse(as, c, await oauth.introspectionRequest(as, c, auth, refreshed.access_token, opts));
  check(intro.active === false, 'oauth4webapi revokes it, and it is inactive at once');
  const m = { client_id: machine.client_id };
  const cc = await oauth.processClientCredentialsResponse(
    as,
    m,
    await oauth.clientCredentialsGrantRequest(as, m, oauth.ClientSecretBasic(machine.client_secret), new URLSearchParams({ scope: 'orders:read' }), opts),
  );
  check(cc.access_token && cc.scope === 'orders:read', 'oauth4webapi gets a client-credentials token');
}

try {
  await main();
  process.exit(EXIT_OK);
} catch (e) {
  console.error(`FAILED: ${e instanceof CheckFailed ? e.message : e.stack || e}`);
  if (e.cause) console.error('cause:', e.cause);
  process.exit(EXIT_FAILED);
}
