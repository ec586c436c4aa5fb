#!/usr/bin/env node
// Verify a Portcullis access token with jose, an independent JWT library.
//
// Usage:
//   node verify_jwt.mjs --jwks-url URL --issuer ISS --audience AUD \
//       --token TOKEN --tampered TOKEN
//
// The script fetches the JWKS from --jwks-url with jose's createRemoteJWKSet,
// then verifies --token strictly:
//   * the key is chosen by kid. The algorithm must be the JWK's (its "alg", or
//     the one its kty/crv implies), must equal the token's alg, and must be in
//     the allow-list ES256 / RS256 / EdDSA;
//   * the signature is checked, iss and aud must match, and exp (plus the other
//     claims RFC 9068 requires) must be present. exp must hold;
//   * the header typ must be "at+jwt" (jwtVerify's typ option; it also accepts
//     "application/at+jwt", as RFC 9068 allows).
// It then checks that --tampered is rejected.
//
// It prints exactly one JSON line on stdout. Exit codes:
//   0  the token verified and the tampered token was rejected
//   1  something failed (the JSON line says what)
//   2  bad command-line arguments
//   3  jose is not installed (npm ci has not been run); the message goes to stderr

import { parseArgs } from 'node:util';

const EXIT_OK = 0;
const EXIT_FAILED = 1;
const EXIT_USAGE = 2;
const EXIT_MISSING_DEPENDENCY = 3;

const ALLOWED_ALGORITHMS = ['ES256', 'RS256', 'EdDSA'];
// RFC 9068 section 2.2: claims a JWT access token MUST carry.
const REQUIRED_CLAIMS = ['iss', 'exp', 'aud', 'sub', 'client_id', 'iat', 'jti'];
const EXPECTED_TYP = 'at+jwt';

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

function describe(err) {
  if (err && typeof err === 'object') {
    const name = err.code ? `${err.name} (${err.code})` : err.name;
    const cause = err.cause && err.cause.message ? ` (cause: ${err.cause.message})` : '';
    return `${name}: ${err.message}${cause}`;
  }
  return String(err);
}

let jose;
try {
  jose = await import('jose');
} catch (err) {
  if (err && (err.code === 'ERR_MODULE_NOT_FOUND' || err.code === 'MODULE_NOT_FOUND')) {
    process.stderr.write(
      `verify_jwt.mjs: dependency missing: the 'jose' package is not installed (${err.message}). ` +
        'Install it with: (cd interop/node && npm ci)\n',
    );
    process.exit(EXIT_MISSING_DEPENDENCY);
  }
  throw err;
}

let args;
try {
  ({ values: args } = parseArgs({
    options: {
      'jwks-url': { type: 'string' },
      issuer: { type: 'string' },
      audience: { type: 'string' },
      token: { type: 'string' },
      tampered: { type: 'string' },
    },
    strict: true,
    allowPositionals: false,
  }));
  for (const name of ['jwks-url', 'issuer', 'audience', 'token', 'tampered']) {
    if (typeof args[name] !== 'string') throw new Error(`--${name} is required`);
  }
} catch (err) {
  process.stderr.write(
    `verify_jwt.mjs: ${err.message}\n` +
      'usage: node verify_jwt.mjs --jwks-url URL --issuer ISS --audience AUD --token TOKEN --tampered TOKEN\n',
  );
  process.exit(EXIT_USAGE);
}

const library = `jose ${await joseVersion()}`;

async function joseVersion() {
  try {
    const { createRequire } = await import('node:module');
    const require = createRequire(import.meta.url);
    return require('jose/package.json').version;
  } catch {
    return 'unknown';
  }
}

// The algorithm a JWK is for: its "alg", or the one its kty/crv implies.
function jwkAlgorithm(jwk) {
  if (typeof jwk.alg === 'string') return jwk.alg;
  if (jwk.kty === 'EC' && jwk.crv === 'P-256') return 'ES256';
  if (jwk.kty === 'RSA') return 'RS256';
  if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') return 'EdDSA';
  return undefined;
}

let JWKS;
try {
  JWKS = jose.createRemoteJWKSet(new URL(args['jwks-url']), {
    timeoutDuration: 10_000,
    cooldownDuration: 0,
  });
} catch (err) {
  emit({ verified: false, library, stage: 'jwks', error: describe(err) });
  process.exit(EXIT_FAILED);
}

async function verify(token) {
  const { payload, protectedHeader } = await jose.jwtVerify(token, JWKS, {
    issuer: args.issuer,
    audience: args.audience,
    algorithms: ALLOWED_ALGORITHMS,
    typ: EXPECTED_TYP,
    requiredClaims: REQUIRED_CLAIMS,
  });
  // jose has already chosen a key that fits the header's kid and alg. Check
  // again, without relying on it, that the JWK named by kid is for this
  // algorithm.
  const set = JWKS.jwks();
  const matches = (set?.keys ?? []).filter((k) => k.kid === protectedHeader.kid);
  if (matches.length !== 1) {
    throw new Error(`expected exactly one JWK with kid ${JSON.stringify(protectedHeader.kid)}, found ${matches.length}`);
  }
  const alg = jwkAlgorithm(matches[0]);
  if (!ALLOWED_ALGORITHMS.includes(alg) || alg !== protectedHeader.alg) {
    throw new Error(
      `token alg ${JSON.stringify(protectedHeader.alg)} does not match the JWK's algorithm ${JSON.stringify(alg)}`,
    );
  }
  return { payload, protectedHeader };
}

let verified;
try {
  verified = await verify(args.token);
} catch (err) {
  emit({ verified: false, library, stage: 'token', error: describe(err) });
  process.exit(EXIT_FAILED);
}

const sub = verified.payload.sub;
try {
  await verify(args.tampered);
} catch (err) {
  if (err instanceof jose.errors.JWKSTimeout || (err && err.name === 'TypeError' && /fetch/i.test(err.message))) {
    // The JWKS could not be fetched, so nothing was checked.
    emit({
      verified: true,
      sub,
      library,
      stage: 'tampered',
      tampered_rejected: false,
      error: 'could not check the tampered token: ' + describe(err),
    });
    process.exit(EXIT_FAILED);
  }
  // The tampered token is well-formed with valid claims: only its signature is wrong, so a
  // signature failure is the one right rejection.
  if (!(err instanceof jose.errors.JWSSignatureVerificationFailed)) {
    emit({
      verified: true,
      sub,
      library,
      stage: 'tampered',
      tampered_rejected: false,
      error: 'the tampered token was rejected, but not for its signature: ' + describe(err),
    });
    process.exit(EXIT_FAILED);
  }
  emit({
    verified: true,
    sub,
    alg: verified.protectedHeader.alg,
    kid: verified.protectedHeader.kid,
    library,
    tampered_rejected: true,
    tampered_error: describe(err),
  });
  process.exit(EXIT_OK);
}

emit({
  verified: true,
  sub,
  library,
  stage: 'tampered',
  tampered_rejected: false,
  error: 'the tampered token was ACCEPTED',
});
process.exit(EXIT_FAILED);
