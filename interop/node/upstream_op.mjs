#!/usr/bin/env node
// node-oidc-provider as a local upstream OpenID provider for the Portcullis tests.
//
// Usage: node upstream_op.mjs
//   Listens on 127.0.0.1:<free port> and prints "issuer <url>". Then reads one line from stdin,
//   "client <client_id> <client_secret> <redirect_uri>", configures that client, and prints "ready".
//   (The downstream server's callback URL is known only once it runs, and it needs the issuer to
//   start: hence the two steps.)
//
// Accounts: any login at the development login form signs in as that login; its claims are
// `email: <login>@example.org` (verified) and `name`. As node-oidc-provider does by default
// (conformIdTokenClaims), the email is released only at the UserInfo endpoint, not in the ID token.
//
// Exit codes: 0 stopped, 3 oidc-provider is not installed.

import http from 'node:http';
import readline from 'node:readline';

let Provider;
try {
  ({ default: Provider } = await import('oidc-provider'));
} catch (e) {
  process.stderr.write(`oidc-provider is not installed: ${e.message}\n`);
  process.exit(3);
}

let handler = (req, res) => {
  res.writeHead(503);
  res.end('not configured yet');
};
const server = http.createServer((req, res) => handler(req, res));
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const issuer = `http://127.0.0.1:${server.address().port}`;
process.stdout.write(`issuer ${issuer}\n`);

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  const [word, clientId, clientSecret, redirectUri] = line.trim().split(/\s+/);
  if (word !== 'client') continue;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [redirectUri],
        grant_types: ['authorization_code'],
        response_types: ['code'],
      },
    ],
    claims: { email: ['email', 'email_verified'], profile: ['name'] },
    scopes: ['openid', 'email', 'profile'],
    features: { devInteractions: { enabled: true } },
    pkce: { required: () => true },
    async findAccount(ctx, sub) {
      return {
        accountId: sub,
        async claims() {
          return { sub, email: `${sub}@example.org`, email_verified: true, name: `Node ${sub}` };
        },
      };
    },
  });
  provider.on('server_error', (ctx, err) => process.stderr.write(`server_error ${err.stack}\n`));
  handler = provider.callback();
  process.stdout.write('ready\n');
}
