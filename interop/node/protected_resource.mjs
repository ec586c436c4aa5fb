#!/usr/bin/env node
// An RFC 9728 client (oauth4webapi 3, as MCP clients use) finds Portcullis from a protected
// resource's 401 and gets a token for that resource, which forward auth then accepts.
//
// Usage:
//   node protected_resource.mjs --base-url URL --root-key KEY
//
// The server must protect `<URL>/orders` with a route rule (path /orders/*, scope orders:read,
// resource <URL>/orders). The scenario:
//   1. /v1/authorize, asked about GET /orders/1 without a credential: 401 with a Bearer challenge
//      whose resource_metadata is the resource's RFC 9728 URL;
//   2. resource discovery (resourceDiscoveryRequest / processResourceDiscoveryResponse, which checks
//      the `resource` against the identifier): authorization_servers names the issuer;
//   3. authorization server discovery of that issuer;
//   4. a confidential client (registered with the root key, no audiences of its own) asks for a token
//      with RFC 8707 `resource` set to the resource;
//   5. /v1/authorize with that token: 200 with the client's identity headers.
//
// Exit codes: 0 every check passed, 1 a check failed, 2 bad arguments, 3 oauth4webapi missing.

import { parseArgs } from 'node:util';

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
  console.log(`ok - ${what}`);
}

const { values: args } = parseArgs({
  options: { 'base-url': { type: 'string' }, 'root-key': { type: 'string' } },
});
if (!args['base-url'] || !args['root-key']) {
  console.error('usage: node protected_resource.mjs --base-url URL --root-key KEY');
  process.exit(2);
}
const base = args['base-url'];
const root = args['root-key'];

let oauth;
try {
  oauth = await import('oauth4webapi');
} catch {
  console.error('oauth4webapi is not installed: run npm ci in interop/node');
  process.exit(3);
}
const insecure = { [oauth.allowInsecureRequests]: true };

async function authorize(uri, token) {
  const headers = {
    'x-forwarded-method': 'GET',
    'x-forwarded-proto': 'http',
    'x-forwarded-host': new URL(base).host,
    'x-forwarded-uri': uri,
  };
  if (token) headers.authorization = `Bearer ${token}`;
  return fetch(`${base}/v1/authorize`, { headers });
}

try {
  const resource = new URL(`${base}/orders`);

  const denied = await authorize('/orders/1');
  check(denied.status === 401, 'no credential: 401');
  // RFC 6750 §3 / RFC 9728 §5.1: Bearer with a quoted resource_metadata parameter.
  const challenge = denied.headers.get('www-authenticate') ?? '';
  check(/^Bearer\b/i.test(challenge), 'the 401 carries a Bearer challenge');
  const metadataUrl = /resource_metadata="([^"]*)"/.exec(challenge)?.[1];
  check(
    metadataUrl === `${base}/.well-known/oauth-protected-resource/orders`,
    `resource_metadata is the RFC 9728 URL of the resource (${metadataUrl})`,
  );

  const rs = await oauth.processResourceDiscoveryResponse(
    resource,
    await oauth.resourceDiscoveryRequest(resource, insecure),
  );
  check(rs.resource === resource.href, 'protected resource metadata names the resource');
  check(
    Array.isArray(rs.authorization_servers) && rs.authorization_servers[0] === base,
    'authorization_servers names Portcullis',
  );
  check(rs.scopes_supported?.includes('orders:read'), 'scopes_supported lists the rule\'s scope');
  check(rs.bearer_methods_supported?.includes('header'), 'bearer_methods_supported: header');

  const issuer = new URL(rs.authorization_servers[0]);
  const as = await oauth.processDiscoveryResponse(
    issuer,
    await oauth.discoveryRequest(issuer, { algorithm: 'oauth2', ...insecure }),
  );
  check(as.token_endpoint === `${base}/oauth2/token`, 'authorization server discovered');

  const reg = await fetch(`${base}/admin/v1/clients`, {
    method: 'POST',
    headers: { 'x-api-key': root, 'content-type': 'application/json' },
    body: JSON.stringify({
      name: 'mcp-like', type: 'confidential', grant_types: ['client_credentials'],
      scopes: ['orders:read'], token_endpoint_auth_method: 'client_secret_post',
    }),
  });
  check(reg.status === 201, 'client registered');
  const c = await reg.json();
  const client = { client_id: c.client_id };
  const response = await oauth.clientCredentialsGrantRequest(
    as,
    client,
    oauth.ClientSecretPost(c.client_secret),
    new URLSearchParams({ scope: 'orders:read', resource: resource.href }),
    insecure,
  );
  const tokens = await oauth.processClientCredentialsResponse(as, client, response);
  check(typeof tokens.access_token === 'string', 'a token for the resource (RFC 8707)');
  const payload = JSON.parse(Buffer.from(tokens.access_token.split('.')[1], 'base64url'));
  check(payload.aud === resource.href, 'its aud is the resource');

  const allowed = await authorize('/orders/1', tokens.access_token);
  check(allowed.status === 200, 'forward auth accepts it: 200');
  check(allowed.headers.get('x-auth-client-id') === c.client_id, 'X-Auth-Client-Id is the client');
  check(allowed.headers.get('x-auth-scopes') === 'orders:read', 'X-Auth-Scopes is the granted scope');
  console.log('every check passed');
} catch (e) {
  console.error(e instanceof CheckFailed ? `FAILED: ${e.message}` : e);
  process.exit(1);
}
