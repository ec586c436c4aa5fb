#!/usr/bin/env python3
"""Sign requests to Portcullis with the PyPI package http-message-signatures (RFC 9421), and verify
requests signed by portcullis-client with it.

Usage:
    python3 http_signatures.py CONFIG.json

CONFIG.json (written by the Rust integration test):
    {"base": "http://127.0.0.1:PORT",
     "hmac": {"keyid": "sig_…", "secret": "<base64>"},
     "ed25519": {"keyid": "sig_…", "private_pem": "-----BEGIN PRIVATE KEY-----…"},
     "client_signed": {"method", "url", "headers": {…}, "body_base64"}}

The scenario:
  1. GET /v1/me signed with hmac-sha256 (@method @authority @target-uri, a nonce) is accepted, and
     the server says the caller came by signature;
  2. POST /v1/keys with a JSON body, Content-Digest made and covered by the library, is accepted;
  3. the same signed POST with another body is refused: digest_mismatch; a signed GET sent to
     another path is refused: bad_signature; a signed request sent twice: replayed;
  4. the same with ed25519;
  5. a request signed by portcullis-client (RequestSigner, hmac-sha256) verifies with this
     library's HTTPMessageVerifier, body included, and fails once its body is changed.

Each passed step prints an "ok" line. Exit codes: 0 every check passed; 1 a check failed (the
mismatch on stderr); 3 the library is missing.
"""

import base64
import datetime
import json
import secrets
import sys

try:
    import requests
    from cryptography.hazmat.primitives.serialization import load_pem_private_key
    from http_message_signatures import (
        HTTPMessageSigner,
        HTTPMessageVerifier,
        HTTPSignatureKeyResolver,
        algorithms,
    )
except ImportError as e:  # pragma: no cover
    print(f"missing library: {e}", file=sys.stderr)
    sys.exit(3)


def fail(what):
    print(f"FAILED: {what}", file=sys.stderr)
    sys.exit(1)


class Keys(HTTPSignatureKeyResolver):
    def __init__(self, keys):
        self.keys = keys

    def resolve_public_key(self, key_id):
        key = self.keys[key_id]
        return key.public_key() if hasattr(key, "public_key") else key

    def resolve_private_key(self, key_id):
        return self.keys[key_id]


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        config = json.load(f)
    base = config["base"]
    hmac_id = config["hmac"]["keyid"]
    hmac_secret = base64.b64decode(config["hmac"]["secret"])
    ed_id = config["ed25519"]["keyid"]
    ed_private = load_pem_private_key(config["ed25519"]["private_pem"].encode(), password=None)
    resolver = Keys({hmac_id: hmac_secret, ed_id: ed_private})
    session = requests.Session()

    def signed(alg, key_id, method, path, body=None):
        req = requests.Request(method, base + path, data=body,
                               headers={"Content-Type": "application/json"} if body else {})
        prepared = req.prepare()
        signer = HTTPMessageSigner(signature_algorithm=alg, key_resolver=resolver)
        signer.sign(prepared, key_id=key_id, nonce=secrets.token_urlsafe(16),
                    created=datetime.datetime.now(datetime.timezone.utc),
                    covered_component_ids=("@method", "@authority", "@target-uri"),
                    body=body)
        return prepared

    def reason(response):
        try:
            return response.json().get("reason")
        except ValueError:
            return None

    for name, alg, key_id in [("hmac-sha256", algorithms.HMAC_SHA256, hmac_id),
                              ("ed25519", algorithms.ED25519, ed_id)]:
        r = session.send(signed(alg, key_id, "GET", "/v1/me"))
        if r.status_code != 200 or r.json()["auth"]["method"] != "signature":
            fail(f"{name}: signed GET /v1/me answered {r.status_code} {r.text}")
        print(f"ok {name}: GET /v1/me signed by http-message-signatures is accepted")

        body = json.dumps({"name": f"python {name}"}).encode()
        post = signed(alg, key_id, "POST", "/v1/keys", body)
        if "content-digest" not in post.headers.get("Signature-Input", "").lower():
            fail(f"{name}: the library did not cover content-digest: {post.headers}")
        r = session.send(post)
        if r.status_code != 201:
            fail(f"{name}: signed POST /v1/keys answered {r.status_code} {r.text}")
        print(f"ok {name}: POST with Content-Digest is accepted")

        tampered = signed(alg, key_id, "POST", "/v1/keys", body)
        tampered.body = json.dumps({"name": f"python {name}!"}).encode()
        tampered.headers["Content-Length"] = str(len(tampered.body))
        r = session.send(tampered)
        if r.status_code != 401 or reason(r) != "digest_mismatch":
            fail(f"{name}: a changed body answered {r.status_code} {r.text}")
        print(f"ok {name}: a changed body is refused (digest_mismatch)")

        moved = signed(alg, key_id, "GET", "/v1/me?x=1")
        moved.url = base + "/v1/me?x=2"
        r = session.send(moved)
        if r.status_code != 401 or reason(r) != "bad_signature":
            fail(f"{name}: a changed URL answered {r.status_code} {r.text}")
        print(f"ok {name}: a changed URL is refused (bad_signature)")

        once = signed(alg, key_id, "GET", "/v1/me")
        first, second = session.send(once), session.send(once)
        if first.status_code != 200 or second.status_code != 401 or reason(second) != "replayed":
            fail(f"{name}: a replay answered {first.status_code} then {second.status_code} {second.text}")
        print(f"ok {name}: a replayed request is refused (replayed)")

    # portcullis-client's signature, verified here.
    c = config["client_signed"]
    body = base64.b64decode(c["body_base64"])
    req = requests.Request(c["method"], c["url"], headers=c["headers"], data=body).prepare()
    verifier = HTTPMessageVerifier(signature_algorithm=algorithms.HMAC_SHA256, key_resolver=resolver)
    try:
        results = verifier.verify(req, body=body,
                                  require_components=("@method", "@target-uri", "content-digest"))
    except Exception as e:  # noqa: BLE001
        fail(f"portcullis-client's signature does not verify: {e!r}")
    if not results or results[0].parameters.get("keyid") != hmac_id:
        fail(f"unexpected verify result {results}")
    print("ok portcullis-client's signature verifies with http-message-signatures")
    changed = requests.Request(c["method"], c["url"], headers=c["headers"], data=body + b" ").prepare()
    try:
        verifier.verify(changed, body=body + b" ")
    except Exception:  # noqa: BLE001
        print("ok ... and fails once its body is changed")
    else:
        fail("a changed body verified")
    print("every check passed")


if __name__ == "__main__":
    main()
