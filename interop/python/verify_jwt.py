#!/usr/bin/env python3
"""Verify a Portcullis access token with PyJWT, an independent JWT library.

Usage:
    python3 verify_jwt.py --jwks-url URL --issuer ISS --audience AUD \
        --token TOKEN --tampered TOKEN

The script fetches the JWKS from --jwks-url with PyJWKClient, then verifies
--token strictly:
  * the key is chosen by the header's kid, and the algorithm comes from the
    JWK. The token's alg must match it and be in the allow-list
    ES256 / RS256 / EdDSA;
  * the signature is checked, iss and aud must match, and exp (plus the other
    claims RFC 9068 requires) must be present. exp and iat must hold;
  * the header typ must be "at+jwt" (RFC 9068 also allows
    "application/at+jwt").
It then checks that --tampered is rejected for its signature (and for nothing else).

It prints exactly one JSON line on stdout. Exit codes:
  0  the token verified and the tampered token was rejected
  1  something failed (the JSON line says what)
  2  bad command-line arguments (argparse)
  3  PyJWT (with its crypto extra) is not installed; the message goes to stderr
"""

import argparse
import json
import sys

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_MISSING_DEPENDENCY = 3

try:
    import jwt
    from jwt import PyJWKClient
    from jwt.algorithms import has_crypto
except ImportError as exc:  # pragma: no cover - exercised when deps are absent
    print(
        f"verify_jwt.py: dependency missing: PyJWT is not installed ({exc}). "
        "Install it with: python3 -m pip install -r interop/python/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(EXIT_MISSING_DEPENDENCY)

if not has_crypto:  # PyJWT without the [crypto] extra cannot do ES256/RS256/EdDSA
    print(
        "verify_jwt.py: dependency missing: PyJWT is installed but 'cryptography' "
        "is not (need PyJWT[crypto]). Install it with: "
        "python3 -m pip install -r interop/python/requirements.txt",
        file=sys.stderr,
    )
    sys.exit(EXIT_MISSING_DEPENDENCY)

ALLOWED_ALGORITHMS = ["ES256", "RS256", "EdDSA"]
# RFC 9068 section 2.2: claims a JWT access token MUST carry.
REQUIRED_CLAIMS = ["iss", "exp", "aud", "sub", "client_id", "iat", "jti"]
EXPECTED_TYP = "at+jwt"


def emit(obj):
    print(json.dumps(obj), flush=True)


def describe(exc):
    return f"{type(exc).__name__}: {exc}"


def normalized_typ(typ):
    # Media type comparison is case-insensitive and "application/" may be
    # left out (RFC 7515 section 4.1.9, RFC 9068 section 4).
    if not isinstance(typ, str):
        return None
    typ = typ.lower()
    if typ.startswith("application/"):
        typ = typ[len("application/"):]
    return typ


def verify(client, token, issuer, audience):
    """Return (header, claims) of a verified token; raise on any failure."""
    header = jwt.get_unverified_header(token)
    typ = header.get("typ")
    if normalized_typ(typ) != EXPECTED_TYP:
        raise jwt.InvalidTokenError(
            f"header typ is {typ!r}, expected {EXPECTED_TYP!r}"
        )

    kid = header.get("kid")
    if not isinstance(kid, str) or not kid:
        raise jwt.InvalidTokenError(f"header kid is {kid!r}, expected a key id")
    # Picks the key from the JWKS by the header's kid. The PyJWK is bound to
    # the algorithm in the JWK's "alg" (or the one its kty/crv implies).
    # Looking it up by the header's kid, rather than with
    # get_signing_key_from_jwt, keeps the unverified payload unparsed until
    # the signature has been checked.
    signing_key = client.get_signing_key(kid)
    if signing_key.algorithm_name not in ALLOWED_ALGORITHMS:
        raise jwt.InvalidAlgorithmError(
            f"JWK kid={signing_key.key_id!r} has algorithm "
            f"{signing_key.algorithm_name!r}, not one of {ALLOWED_ALGORITHMS}"
        )
    if header.get("alg") != signing_key.algorithm_name:
        raise jwt.InvalidAlgorithmError(
            f"token alg {header.get('alg')!r} does not match the JWK's "
            f"algorithm {signing_key.algorithm_name!r}"
        )

    # Passing the PyJWK (not a raw key) makes PyJWT verify with the JWK's
    # algorithm. The header alg must also be in the explicit allow-list.
    decoded = jwt.decode_complete(
        token,
        key=signing_key,
        algorithms=ALLOWED_ALGORITHMS,
        issuer=issuer,
        audience=audience,
        options={
            "require": REQUIRED_CLAIMS,
            "verify_signature": True,
            "verify_exp": True,
            "verify_iat": True,
            "verify_nbf": True,
            "verify_iss": True,
            "verify_aud": True,
        },
    )
    return decoded["header"], decoded["payload"]


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Verify a Portcullis access token with PyJWT."
    )
    parser.add_argument("--jwks-url", required=True)
    parser.add_argument("--issuer", required=True)
    parser.add_argument("--audience", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--tampered", required=True)
    args = parser.parse_args(argv)

    library = f"PyJWT {jwt.__version__}"
    try:
        client = PyJWKClient(args.jwks_url, timeout=10, cache_jwk_set=True)
    except Exception as exc:  # noqa: BLE001 - report any failure as JSON
        emit({"verified": False, "library": library, "stage": "jwks",
              "error": describe(exc)})
        return EXIT_FAILED

    try:
        header, claims = verify(client, args.token, args.issuer, args.audience)
    except Exception as exc:  # noqa: BLE001
        emit({"verified": False, "library": library, "stage": "token",
              "error": describe(exc)})
        return EXIT_FAILED

    try:
        verify(client, args.tampered, args.issuer, args.audience)
    except jwt.PyJWKClientConnectionError as exc:
        # If the JWKS could not be fetched, nothing was checked.
        emit({"verified": True, "sub": claims.get("sub"), "library": library,
              "stage": "tampered", "tampered_rejected": False,
              "error": "could not check the tampered token: " + describe(exc)})
        return EXIT_FAILED
    except jwt.InvalidSignatureError as exc:
        # The tampered token is well-formed with valid claims: only its signature is wrong, so a
        # signature error is the one right rejection.
        emit({
            "verified": True,
            "sub": claims.get("sub"),
            "alg": header.get("alg"),
            "kid": header.get("kid"),
            "library": library,
            "tampered_rejected": True,
            "tampered_error": describe(exc),
        })
        return EXIT_OK
    except Exception as exc:  # noqa: BLE001
        emit({"verified": True, "sub": claims.get("sub"), "library": library,
              "stage": "tampered", "tampered_rejected": False,
              "error": "the tampered token was rejected, but not for its signature: "
                       + describe(exc)})
        return EXIT_FAILED

    emit({"verified": True, "sub": claims.get("sub"), "library": library,
          "stage": "tampered", "tampered_rejected": False,
          "error": "the tampered token was ACCEPTED"})
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
