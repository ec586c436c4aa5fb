#!/usr/bin/env python3
"""Walk the Portcullis API-key lifecycle over plain HTTP, with the standard library only.

Usage:
    python3 api_keys.py --base-url URL --root-key KEY

--base-url and --root-key may instead come from the environment variables
PORTCULLIS_BASE_URL and PORTCULLIS_ROOT_KEY. The root key is an API key with
scope "admin" and no owner (printed on first start, or made by
`portcullis admin root-key create`).

This is what a "curl-style" client in any language does: urllib.request and
json, nothing else. The scenario (the same as interop/node/api_keys.mjs and the
curl examples in README.md, section "API keys"):
  1. the root key creates a service key with scope keys:verify (the verifier);
  2. the root key creates a customer key (scopes, remaining, ratelimit, meta),
     and the answer shows the key once, in the documented format, no-store;
  3. reading and listing keys never shows the key again;
  4. the verifier verifies it: VALID, INSUFFICIENT_SCOPE, MALFORMED;
  5. spending every remaining use gives USAGE_EXCEEDED;
  6. PATCH remaining makes it VALID again; a roll with a grace period gives
     a new key, and the old one keeps working;
  7. revoking the new key revokes both at once;
  8. a credential in the URL query is refused, and no credential is a 401.

Each passed step prints an "ok" line on stdout. Exit codes:
  0  every check passed
  1  a check failed; the first mismatch is described on stderr
  2  bad command-line arguments
Keys are never printed whole: only their first 12 characters.
"""

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime

EXIT_OK = 0
EXIT_FAILED = 1

KEY_FORMAT = re.compile(r"^[a-z0-9_]{2,20}_[0-9A-Za-z]{39}$")
# Any key inside a message is cut to its displayable start before printing.
KEY_ANYWHERE = re.compile(r"[a-z0-9_]{2,20}_[0-9A-Za-z]{39}")


class CheckFailed(Exception):
    pass


def redact(text):
    return KEY_ANYWHERE.sub(lambda m: m.group(0)[:12] + "…", text)


def fail(message):
    raise CheckFailed(redact(message))


class Response:
    def __init__(self, method, path, status, headers, raw):
        self.method = method
        self.path = path
        self.status = status
        self.headers = headers
        self.raw = raw
        self.body = None
        if raw:
            try:
                self.body = json.loads(raw)
            except ValueError:
                self.body = None

    def header(self, name):
        return self.headers.get(name)

    def describe(self):
        text = self.raw.decode("utf-8", "replace") if self.raw else "(empty body)"
        return f"{self.method} {self.path} -> {self.status} {text}"


class Client:
    def __init__(self, base_url):
        self.base_url = base_url.rstrip("/")
        # No proxies: the server under test is local, and http_proxy must not reroute it.
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def call(self, method, path, key=None, body=None, bearer=False):
        data = None if body is None else json.dumps(body).encode("utf-8")
        req = urllib.request.Request(self.base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", "application/json")
        if key is not None:
            if bearer:
                req.add_header("Authorization", f"Bearer {key}")
            else:
                req.add_header("X-API-Key", key)
        try:
            with self.opener.open(req, timeout=10) as res:
                return Response(method, path, res.status, res.headers, res.read())
        except urllib.error.HTTPError as err:
            return Response(method, path, err.code, err.headers, err.read())
        except (urllib.error.URLError, OSError) as err:
            fail(f"{method} {path}: request failed: {err}")


def expect(cond, what, res=None):
    if not cond:
        fail(what + ("" if res is None else f"\n  response: {res.describe()}"))


def expect_eq(label, got, want, res=None):
    expect(got == want, f"{label}: expected {want!r}, got {got!r}", res)


def expect_status(res, status):
    expect_eq(f"{res.method} {res.path} status", res.status, status, res)
    if status != 204:
        expect(isinstance(res.body, dict), f"{res.method} {res.path}: body is not a JSON object", res)


def expect_json(res, status):
    expect_status(res, status)
    ct = (res.header("Content-Type") or "").split(";")[0].strip()
    expect_eq(f"{res.method} {res.path} Content-Type", ct, "application/json", res)


def expect_problem(res, status, code=None):
    expect_status(res, status)
    ct = (res.header("Content-Type") or "").split(";")[0].strip()
    expect_eq(f"{res.method} {res.path} Content-Type", ct, "application/problem+json", res)
    expect_eq(f"{res.method} {res.path} problem status", res.body.get("status"), status, res)
    if code is None:
        expect(isinstance(res.body.get("code"), str) and res.body["code"],
               f"{res.method} {res.path}: problem has no code", res)
    else:
        expect_eq(f"{res.method} {res.path} problem code", res.body.get("code"), code, res)


def expect_new_key(res, label):
    """A response that shows a key: 201, the documented format, `start`, no-store."""
    expect_json(res, 201)
    key = res.body.get("key")
    expect(isinstance(key, str), f"{label}: no key in the 201 body", res)
    expect(KEY_FORMAT.match(key) is not None,
           f"{label}: key {key[:12]}… does not match {KEY_FORMAT.pattern}", res)
    expect_eq(f"{label}: start", res.body.get("start"), key[:12], res)
    expect(isinstance(res.body.get("id"), str) and res.body["id"].startswith("key_"),
           f"{label}: id is not a key_… id", res)
    expect_eq(f"{label}: Cache-Control", res.header("Cache-Control"), "no-store", res)
    return key


def parse_time(value):
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def ok(step, text):
    print(f"ok {step} {text}", flush=True)


def run(client, root):
    def verify(key, required_scopes=None):
        body = {"key": key}
        if required_scopes is not None:
            body["required_scopes"] = required_scopes
        res = client.call("POST", "/v1/keys/verify", verifier, body, bearer=True)
        expect_json(res, 200)
        return res

    def expect_code(res, code, label):
        expect_eq(f"{label}: code", res.body.get("code"), code, res)
        expect_eq(f"{label}: valid", res.body.get("valid"), code == "VALID", res)

    # 1. The verifier: a service key (no owner) that may call /v1/keys/verify.
    res = client.call("POST", "/v1/keys", root,
                      {"name": "interop verifier", "scopes": ["keys:verify"]})
    verifier = expect_new_key(res, "create verifier")
    expect_eq("create verifier: scopes", res.body.get("scopes"), ["keys:verify"], res)
    expect_eq("create verifier: owner_id", res.body.get("owner_id"), None, res)
    ok(1, f"created the verifier {res.body['start']}… with scope keys:verify")

    # 2. The customer key.
    res = client.call("POST", "/v1/keys", root, {
        "name": "interop customer",
        "scopes": ["orders:read"],
        "remaining": 3,
        "ratelimit": {"limit": 100, "duration_ms": 60000},
        "meta": {"plan": "pro"},
    })
    key = expect_new_key(res, "create customer key")
    expect(key.startswith("pk_live_"), f"create customer key: key {key[:12]}… lacks pk_live_", res)
    key_id = res.body["id"]
    expect_eq("create customer key: name", res.body.get("name"), "interop customer", res)
    expect_eq("create customer key: scopes", res.body.get("scopes"), ["orders:read"], res)
    expect_eq("create customer key: remaining", res.body.get("remaining"), 3, res)
    expect_eq("create customer key: ratelimit", res.body.get("ratelimit"),
              {"limit": 100, "duration_ms": 60000}, res)
    expect_eq("create customer key: meta", res.body.get("meta"), {"plan": "pro"}, res)
    expect(parse_time(res.body.get("created_at")) is not None,
           "create customer key: created_at is not an RFC 3339 time", res)
    ok(2, f"created {key_id} ({res.body['start']}…): pk_live_ format, start, Cache-Control: no-store")

    # 3. The key is shown once: never when read or listed.
    res = client.call("GET", f"/v1/keys/{key_id}", root)
    expect_json(res, 200)
    expect("key" not in res.body, f"GET /v1/keys/{key_id} shows the key again", res)
    expect_eq("read: id", res.body.get("id"), key_id, res)
    expect_eq("read: start", res.body.get("start"), key[:12], res)
    expect_eq("read: remaining", res.body.get("remaining"), 3, res)
    expect_eq("read: meta", res.body.get("meta"), {"plan": "pro"}, res)
    listed = None
    cursor = None
    for _ in range(100):
        path = "/v1/keys" + ("" if cursor is None else "?cursor=" + urllib.parse.quote(cursor))
        res = client.call("GET", path, root)
        expect_json(res, 200)
        keys = res.body.get("keys")
        expect(isinstance(keys, list), "list: no keys array", res)
        for item in keys:
            expect("key" not in item, "list: an entry shows its key", res)
            if item.get("id") == key_id:
                listed = item
        cursor = res.body.get("next_cursor")
        if cursor is None:
            break
    expect(listed is not None, f"list: {key_id} is not in GET /v1/keys")
    expect_eq("list: start", listed.get("start"), key[:12])
    ok(3, "GET /v1/keys/{id} and GET /v1/keys show the key's start, never the key")

    # 4. Verify, with the verifier (this time as Authorization: Bearer).
    res = verify(key, ["orders:read"])
    expect_code(res, "VALID", "verify")
    expect_eq("verify: key_id", res.body.get("key_id"), key_id, res)
    expect_eq("verify: remaining", res.body.get("remaining"), 2, res)
    expect_eq("verify: meta.plan", (res.body.get("meta") or {}).get("plan"), "pro", res)
    rl = res.body.get("ratelimit") or {}
    expect_eq("verify: ratelimit.limit", rl.get("limit"), 100, res)
    expect_eq("verify: ratelimit.remaining", rl.get("remaining"), 99, res)
    expect(isinstance(rl.get("reset_ms"), int) and rl["reset_ms"] >= 0,
           "verify: ratelimit.reset_ms is not a count of milliseconds", res)
    ok(4, "verify with required_scopes [orders:read]: VALID, remaining 2, meta.plan pro, ratelimit.limit 100")

    res = verify(key, ["orders:write"])
    expect_code(res, "INSUFFICIENT_SCOPE", "verify orders:write")
    ok(4, "verify with required_scopes [orders:write]: INSUFFICIENT_SCOPE")

    res = verify("pk_live_this-is-not-a-key")
    expect_code(res, "MALFORMED", "verify malformed")
    expect("key_id" not in res.body, "verify malformed: names a key", res)
    ok(4, "verify of a malformed key: MALFORMED")

    changed = key[:-1] + ("A" if key[-1] != "A" else "B")
    res = verify(changed)
    expect_code(res, "MALFORMED", "verify with a changed last character")
    ok(4, "verify of the key with its last character changed: MALFORMED (checksum)")

    # 5. Spend the remaining uses (2; INSUFFICIENT_SCOPE did not spend one).
    for left in (1, 0):
        res = verify(key)
        expect_code(res, "VALID", f"verify (remaining {left + 1})")
        expect_eq("verify: remaining", res.body.get("remaining"), left, res)
    res = verify(key)
    expect_code(res, "USAGE_EXCEEDED", "verify after the last use")
    ok(5, "spent the 2 remaining uses, then USAGE_EXCEEDED")

    # 6. PATCH remaining, then roll with a grace period.
    res = client.call("PATCH", f"/v1/keys/{key_id}", root, {"remaining": 10})
    expect_json(res, 200)
    expect_eq("patch: remaining", res.body.get("remaining"), 10, res)
    expect("key" not in res.body, "patch: shows the key", res)
    res = verify(key)
    expect_code(res, "VALID", "verify after PATCH remaining 10")
    expect_eq("verify after PATCH: remaining", res.body.get("remaining"), 9, res)
    ok(6, "PATCH remaining 10: VALID again, remaining 9")

    before = time.time()
    res = client.call("POST", f"/v1/keys/{key_id}/roll", root, {"grace_period_s": 60})
    new_key = expect_new_key(res, "roll")
    new_id = res.body["id"]
    expect(new_key != key, "roll: the new key is the old key", res)
    expect(new_id != key_id, "roll: the new key has the old id", res)
    expect(new_key.startswith("pk_live_"), "roll: the new key lost the prefix", res)
    expect_eq("roll: rolled_from", res.body.get("rolled_from"), key_id, res)
    expect_eq("roll: scopes", res.body.get("scopes"), ["orders:read"], res)
    expect_eq("roll: meta", res.body.get("meta"), {"plan": "pro"}, res)
    expires = parse_time(res.body.get("old_key_expires_at"))
    expect(expires is not None, "roll: old_key_expires_at is not an RFC 3339 time", res)
    expect(before + 30 <= expires <= time.time() + 90,
           "roll: old_key_expires_at is not about 60 s from now", res)
    res = verify(new_key, ["orders:read"])
    expect_code(res, "VALID", "verify the rolled key")
    expect_eq("verify the rolled key: key_id", res.body.get("key_id"), new_id, res)
    res = verify(key, ["orders:read"])
    expect_code(res, "VALID", "verify the old key in its grace period")
    expect_eq("verify the old key: key_id", res.body.get("key_id"), key_id, res)
    ok(6, f"rolled into {new_id} with grace_period_s 60: new key VALID, old key still VALID")

    # 7. Revoke the new key: the old one, still in its grace period, goes with it.
    res = client.call("DELETE", f"/v1/keys/{new_id}", root)
    expect_eq(f"DELETE /v1/keys/{new_id} status", res.status, 204, res)
    for label, k in (("new", new_key), ("old", key)):
        res = verify(k)
        expect_code(res, "REVOKED", f"verify the {label} key after DELETE")
    ok(7, "DELETE the new key: 204; new and old key REVOKED at once")

    # 8. Credentials never go in a URL; no credential is a 401.
    res = client.call("GET", "/v1/me?api_key=" + urllib.parse.quote(new_key, safe=""))
    expect_problem(res, 400, "credential_in_query")
    ok(8, "GET /v1/me?api_key=…: 400 credential_in_query")
    res = client.call("GET", "/v1/keys")
    expect_problem(res, 401)
    expect(res.header("WWW-Authenticate") is not None, "401 without WWW-Authenticate", res)
    ok(8, "GET /v1/keys without credentials: 401 problem+json")


def main(argv=None):
    parser = argparse.ArgumentParser(
        description="Walk the Portcullis API-key lifecycle with urllib.request."
    )
    parser.add_argument("--base-url", default=os.environ.get("PORTCULLIS_BASE_URL"),
                        help="e.g. http://127.0.0.1:8787 (or PORTCULLIS_BASE_URL)")
    parser.add_argument("--root-key", default=os.environ.get("PORTCULLIS_ROOT_KEY"),
                        help="an API key with scope admin and no owner (or PORTCULLIS_ROOT_KEY)")
    args = parser.parse_args(argv)
    if not args.base_url or not args.root_key:
        parser.error("--base-url and --root-key are required "
                     "(or PORTCULLIS_BASE_URL and PORTCULLIS_ROOT_KEY)")

    try:
        run(Client(args.base_url), args.root_key)
    except CheckFailed as err:
        print(f"api_keys.py: FAILED: {err}", file=sys.stderr, flush=True)
        return EXIT_FAILED
    print("ok api_keys.py: every check passed", flush=True)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
