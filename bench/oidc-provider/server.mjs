#!/usr/bin/env node
// node-oidc-provider as the bench's yardstick for client-credentials issuance:
//   node server.mjs ADDR
// serves the provider on ADDR (host:port) with one confidential client (`bench`, secret below,
// client_secret_basic, grant client_credentials, scope orders:read) whose access tokens are JWTs
// for https://api.example.com signed ES256, as Portcullis issues them; and GET /healthz → 200 for
// the harness's readiness poll. The secret is a benchmark fixture, not a credential.

import http from 'node:http';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const addr = process.argv[2];
if (!addr || !addr.includes(':')) {
  process.stderr.write('usage: node server.mjs HOST:PORT\n');
  process.exit(2);
}
const [host, port] = [addr.slice(0, addr.lastIndexOf(':')), Number(addr.slice(addr.lastIndexOf(':') + 1))];

const { privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
const jwk = { ...(await jose.exportJWK(privateKey)), alg: 'ES256', use: 'sig', kid: 'bench-es256' };
const rsa = (await jose.generateKeyPair('RS256', { extractable: true })).privateKey;
const rsaJwk = { ...(await jose.exportJWK(rsa)), alg: 'RS256', use: 'sig', kid: 'bench-rs256' };

export const CLIENT_ID = 'bench';
export const CLIENT_SECRET = 'bench-secret-0123456789abcdef0123456789abcdef';
const AUDIENCE = 'https://api.example.com';

const provider = new Provider(`http://${addr}`, {
  clients: [
    {
      client_id: CLIENT_ID,
      client_secret: CLIENT_SECRET,
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'orders:read',
    },
  ],
  jwks: { keys: [rsaJwk, jwk] },
  scopes: ['orders:read'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => AUDIENCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'orders:read',
        audience: AUDIENCE,
        accessTokenFormat: 'jwt',
        accessTokenTTL: 900,
        jwt: { sign: { alg: 'ES256' } },
      }),
    },
  },
});
provider.on('server_error', (_ctx, err) => process.stderr.write(`server_error: ${err.stack}\n`));

const callback = provider.callback();
const server = http.createServer((req, res) => {
  if (req.url === '/healthz') {
    res.writeHead(200, { 'content-type': 'text/plain' });
    res.end('ok');
    return;
  }
  callback(req, res);
});
server.keepAliveTimeout = 65_000;
server.listen(port, host);
process.on('SIGTERM', () => server.close(() => process.exit(0)));
