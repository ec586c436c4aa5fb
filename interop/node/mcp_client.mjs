#!/usr/bin/env node
// The MCP TypeScript SDK's client authorization (npm @modelcontextprotocol/sdk) against an MCP
// server that nginx protects with Portcullis's forward auth, as the MCP authorization specification
// (2025-11-25) has it: the SDK's first request gets the 401, reads resource_metadata from the
// WWW-Authenticate challenge (RFC 9728), discovers the authorization server (RFC 8414), registers
// with dynamic client registration (RFC 7591), runs the code flow with PKCE S256 and RFC 8707
// `resource`, and then calls a tool with the token; the MCP server sees who called through the
// gateway's X-Auth-Subject.
//
// This script is both ends: it starts the MCP server (the SDK's StreamableHTTPServerTransport) on
// --listen, which the gateway at --resource forwards to, and drives the person's half (the login and
// consent pages) with fetch.
//
// With --cimd PORT --tls-key FILE --tls-cert FILE it is a Client ID Metadata Document client
// instead: it serves its document at https://127.0.0.1:PORT/mcp-client.json and the SDK, seeing
// client_id_metadata_document_supported, uses that URL as its client_id without registering.
//
// Usage:
//   node mcp_client.mjs --resource URL --listen PORT --issuer URL --email E --password P --user-id ID
//                       [--cimd PORT --tls-key FILE --tls-cert FILE]
//
// Exit codes: 0 every check passed, 1 a check failed, 2 bad arguments, 3 the SDK missing.

import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { parseArgs } from 'node:util';

class CheckFailed extends Error {}

function check(cond, what) {
  if (!cond) throw new CheckFailed(what);
  console.log(`ok - ${what}`);
}

const { values: args } = parseArgs({
  options: {
    resource: { type: 'string' },
    listen: { type: 'string' },
    issuer: { type: 'string' },
    email: { type: 'string' },
    password: { type: 'string' },
    'user-id': { type: 'string' },
    cimd: { type: 'string' },
    'tls-key': { type: 'string' },
    'tls-cert': { type: 'string' },
  },
});
for (const name of ['resource', 'listen', 'issuer', 'email', 'password', 'user-id']) {
  if (!args[name]) {
    console.error(`missing --${name}`);
    process.exit(2);
  }
}

let sdk;
try {
  sdk = {
    ...(await import('@modelcontextprotocol/sdk/client/index.js')),
    ...(await import('@modelcontextprotocol/sdk/client/streamableHttp.js')),
    ...(await import('@modelcontextprotocol/sdk/client/auth.js')),
    ...(await import('@modelcontextprotocol/sdk/server/mcp.js')),
    ...(await import('@modelcontextprotocol/sdk/server/streamableHttp.js')),
  };
} catch (e) {
  console.error(`@modelcontextprotocol/sdk is not installed: run npm ci in interop/node (${e})`);
  process.exit(3);
}

// The MCP server behind the gateway: stateless Streamable HTTP, one tool that says who called.
const seen = [];
const upstream = http.createServer(async (req, res) => {
  seen.push({ method: req.method, subject: req.headers['x-auth-subject'] });
  const server = new sdk.McpServer({ name: 'orders', version: '1.0.0' });
  server.registerTool('whoami', { description: 'Who the gateway says is calling' }, async (extra) => {
    const headers = extra?.requestInfo?.headers ?? {};
    return {
      content: [{ type: 'text', text: String(headers['x-auth-subject'] ?? '') }],
    };
  });
  const transport = new sdk.StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  let body;
  if (req.method === 'POST') {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    body = JSON.parse(Buffer.concat(chunks).toString() || 'null');
  }
  await server.connect(transport);
  await transport.handleRequest(req, res, body);
});
await new Promise((ok) => upstream.listen(Number(args.listen), '127.0.0.1', ok));

const redirectUrl = 'http://127.0.0.1:9/callback';
const metadata = {
  client_name: 'MCP interop client',
  redirect_uris: [redirectUrl],
  grant_types: ['authorization_code', 'refresh_token'],
  response_types: ['code'],
  token_endpoint_auth_method: 'none',
};

// The metadata document, when the client is one (served over https, as the draft requires).
let documentUrl;
let documentServer;
let documentFetches = 0;
if (args.cimd) {
  documentUrl = `https://127.0.0.1:${args.cimd}/mcp-client.json`;
  documentServer = https.createServer(
    { key: fs.readFileSync(args['tls-key']), cert: fs.readFileSync(args['tls-cert']) },
    (req, res) => {
      if (req.url !== '/mcp-client.json') {
        res.writeHead(404).end();
        return;
      }
      documentFetches += 1;
      res.writeHead(200, { 'content-type': 'application/json', 'cache-control': 'max-age=300' });
      res.end(JSON.stringify({ client_id: documentUrl, ...metadata }));
    },
  );
  await new Promise((ok) => documentServer.listen(Number(args.cimd), '127.0.0.1', ok));
}
class Provider {
  constructor() {
    this.client = undefined;
    this.saved = undefined;
    this.verifier = undefined;
    this.authorizationUrl = undefined;
  }
  get redirectUrl() {
    return redirectUrl;
  }
  get clientMetadata() {
    return metadata;
  }
  get clientMetadataUrl() {
    return documentUrl;
  }
  clientInformation() {
    return this.client;
  }
  saveClientInformation(c) {
    this.client = c;
  }
  tokens() {
    return this.saved;
  }
  saveTokens(t) {
    this.saved = t;
  }
  redirectToAuthorization(url) {
    this.authorizationUrl = url;
  }
  saveCodeVerifier(v) {
    this.verifier = v;
  }
  codeVerifier() {
    return this.verifier;
  }
}

// The person: logs in on the Portcullis page, approves on the consent page; returns the code.
async function person(authorizationUrl) {
  const origin = new URL(args.issuer).origin;
  let r = await fetch(authorizationUrl, { redirect: 'manual' });
  check(r.status === 303, 'the authorization request sends the browser to log in');
  const login = new URL(r.headers.get('location'), origin);
  const returnTo = login.searchParams.get('return_to');
  r = await fetch(`${origin}/login`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin },
    body: new URLSearchParams({ email: args.email, password: args.password, return_to: returnTo }),
  });
  check(r.status === 303, 'the login form accepts the user');
  const cookie = r.headers.get('set-cookie').split(';')[0];
  r = await fetch(new URL(r.headers.get('location'), origin), {
    redirect: 'manual',
    headers: { cookie },
  });
  const html = await r.text();
  check(r.status === 200 && html.includes('consent-client'), 'the consent page names the client');
  check(html.includes('MCP interop client'), 'with the name it registered');
  if (documentUrl) {
    check(html.includes('consent-unverified') && html.includes('127.0.0.1'), 'marked unverified, with its host');
  }
  const field = (name) => {
    const m = html.match(new RegExp(`name="${name}" value="([^"]*)"`));
    return m[1]
      .replaceAll('&amp;', '&')
      .replaceAll('&#x2f;', '/')
      .replaceAll('&quot;', '"')
      .replaceAll('&#x27;', "'")
      .replaceAll('&lt;', '<')
      .replaceAll('&gt;', '>');
  };
  r = await fetch(`${origin}/consent`, {
    method: 'POST',
    redirect: 'manual',
    headers: { 'content-type': 'application/x-www-form-urlencoded', origin, cookie },
    body: new URLSearchParams({
      csrf_token: field('csrf_token'),
      request: field('request'),
      decision: 'approve',
    }),
  });
  check(r.status === 303, 'approving sends the browser back');
  const back = new URL(r.headers.get('location'));
  check(back.origin + back.pathname === redirectUrl, 'to the registered redirect URI');
  check(back.searchParams.get('iss') === args.issuer, 'with iss (RFC 9207)');
  return back.searchParams.get('code');
}

let failed = false;
try {
  const provider = new Provider();
  const resource = new URL(args.resource);
  const client = new sdk.Client({ name: 'interop', version: '1.0.0' });
  let transport = new sdk.StreamableHTTPClientTransport(resource, { authProvider: provider });
  let unauthorized = false;
  try {
    await client.connect(transport);
  } catch (e) {
    unauthorized = e instanceof sdk.UnauthorizedError;
    if (!unauthorized) throw e;
  }
  check(unauthorized, 'the first request is refused (401) and the SDK starts authorizing');
  if (documentUrl) {
    check(provider.client?.client_id === documentUrl, 'the SDK uses its metadata document URL as client_id');
  } else {
    check(provider.client?.client_id?.startsWith('cli_'), 'the SDK registered a client (RFC 7591)');
  }
  const url = provider.authorizationUrl;
  check(url?.origin === new URL(args.issuer).origin, 'it found the authorization server (RFC 9728, RFC 8414)');
  check(url.searchParams.get('code_challenge_method') === 'S256', 'PKCE with S256');
  check(url.searchParams.get('resource') === args.resource, 'RFC 8707 resource names the MCP server');
  const code = await person(url);
  await transport.finishAuth(code);
  const access = provider.tokens()?.access_token;
  check(typeof access === 'string', 'the code is redeemed for a token');
  const claims = JSON.parse(Buffer.from(access.split('.')[1], 'base64url').toString());
  const aud = [].concat(claims.aud);
  check(aud.includes(args.resource), 'the token is for the MCP server (aud)');
  check(claims.sub === args['user-id'], 'on behalf of the user');
  transport = new sdk.StreamableHTTPClientTransport(resource, { authProvider: provider });
  await client.connect(transport);
  const tools = await client.listTools();
  check(tools.tools.some((t) => t.name === 'whoami'), 'the authorized client lists the tools');
  const result = await client.callTool({ name: 'whoami', arguments: {} });
  check(result.content?.[0]?.text === args['user-id'], 'and the tool sees the user through the gateway');
  check(
    seen.every((s) => s.subject === args['user-id']),
    'nothing reached the MCP server without Portcullis saying who it was',
  );
  await client.close();
  if (documentUrl) {
    check(documentFetches >= 1, 'Portcullis fetched the metadata document');
  }
  console.log('every check passed');
} catch (e) {
  failed = true;
  console.log(`not ok - ${e instanceof CheckFailed ? e.message : e.stack}`);
} finally {
  upstream.close();
  upstream.closeAllConnections?.();
  documentServer?.close();
  documentServer?.closeAllConnections?.();
}
process.exit(failed ? 1 : 0);
