#!/usr/bin/env python3
"""Run the OAuth 2.0 / OpenID Connect flows against Portcullis with Authlib (requests client).

Usage:
    python3 oauth_authlib.py --base-url URL --root-key KEY

The scenario: the root key registers a confidential web client and a machine client; a user signs
up; Authlib builds the authorization URL (PKCE S256, state, nonce); a requests session walks the
login and consent forms to the redirect with the code; Authlib redeems it (client_secret_basic),
and the ID token is decoded and validated with Authlib's JOSE against our JWKS (signature, iss,
aud, nonce, at_hash); then userinfo, refresh (rotation), introspection, revocation (inactive
after), and client credentials.

Each passed step prints an "ok" line. Exit codes: 0 every check passed, 1 a check failed (stderr
says which), 2 bad arguments, 3 Authlib or requests is not installed
(pip install -r interop/python/requirements.txt).
"""

import argparse
import html
import re
import sys
import time
import urllib.parse

EXIT_MISSING_DEPENDENCY = 3
REDIRECT = "http://127.0.0.1:9/cb"
PASSWORD = "cobalt lantern meadow 7"

try:
    import requests
    from authlib.integrations.requests_client import OAuth2Session
    import warnings

    warnings.filterwarnings("ignore", message=".*authlib.jose.*")
    from authlib.jose import JsonWebKey, jwt
    from authlib.oidc.core import CodeIDToken
    from authlib.common.security import generate_token
except ImportError as e:  # pragma: no cover
    print(f"missing dependency: {e}", file=sys.stderr)
    sys.exit(EXIT_MISSING_DEPENDENCY)


class CheckFailed(Exception):
    pass


def check(cond, what):
    if not cond:
        raise CheckFailed(what)
    print(f"ok - {what}", flush=True)


def field(page, name):
    m = re.search(rf'name="{name}" value="([^"]*)"', page)
    if not m:
        raise CheckFailed(f"no {name} field in the page")
    return html.unescape(m.group(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--root-key", required=True)
    a = p.parse_args()
    base = a.base_url.rstrip("/")
    admin = {"x-api-key": a.root_key}

    email = f"authlib-{int(time.time() * 1000)}@example.com"
    r = requests.post(f"{base}/v1/users", json={"email": email, "password": PASSWORD}, timeout=10)
    check(r.status_code == 201, "a user signs up")
    web = requests.post(f"{base}/admin/v1/clients", headers=admin, timeout=10, json={
        "name": "Authlib web app",
        "type": "confidential",
        "redirect_uris": [REDIRECT],
        "scopes": ["openid", "profile", "email", "offline_access", "orders:read"],
    }).json()
    machine = requests.post(f"{base}/admin/v1/clients", headers=admin, timeout=10, json={
        "name": "Authlib machine",
        "type": "confidential",
        "grant_types": ["client_credentials"],
        "scopes": ["orders:read"],
    }).json()
    check("client_secret" in web and "client_secret" in machine, "the root key registers two clients")

    meta = requests.get(f"{base}/.well-known/openid-configuration", timeout=10).json()
    check(meta["issuer"] == base, "discovery names the issuer")
    jwks = JsonWebKey.import_key_set(requests.get(meta["jwks_uri"], timeout=10).json())

    oauth = OAuth2Session(
        web["client_id"], web["client_secret"],
        scope="openid email offline_access orders:read",
        redirect_uri=REDIRECT,
        code_challenge_method="S256",
        token_endpoint_auth_method="client_secret_basic",
    )
    verifier = generate_token(64)
    nonce = generate_token(20)
    url, state = oauth.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier, nonce=nonce)

    browser = requests.Session()
    r = browser.get(url, allow_redirects=False, timeout=10)
    check(r.status_code == 303 and r.headers["location"].startswith("/login?"), "the authorization request sends the browser to log in")
    return_to = urllib.parse.parse_qs(urllib.parse.urlsplit(r.headers["location"]).query)["return_to"][0]
    r = browser.post(f"{base}/login", data={"email": email, "password": PASSWORD, "return_to": return_to},
                     headers={"origin": base}, allow_redirects=False, timeout=10)
    check(r.status_code == 303, "the login form signs in")
    # The session cookie is a __Host- cookie (Secure): a cookie jar keeps it for https only, so over
    # this test's plain http it is carried by hand, as a browser on https would.
    browser.headers["cookie"] = r.headers["set-cookie"].split(";")[0]
    r = browser.get(urllib.parse.urljoin(base, r.headers["location"]), allow_redirects=False, timeout=10)
    check(r.status_code == 200 and "Authlib web app" in r.text, "the consent page names the client")
    r = browser.post(f"{base}/consent", headers={"origin": base}, allow_redirects=False, timeout=10, data={
        "csrf_token": field(r.text, "csrf_token"), "request": field(r.text, "request"), "decision": "approve",
    })
    callback = r.headers.get("location", "")
    check(r.status_code == 303 and callback.startswith(REDIRECT), "approving sends the browser back with a code")
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(callback).query)
    check(query["state"] == [state] and query["iss"] == [base], "the redirect carries state and iss (RFC 9207)")

    token = oauth.fetch_token(meta["token_endpoint"], authorization_response=callback, code_verifier=verifier)
    check(token["token_type"] == "Bearer" and "refresh_token" in token, "Authlib redeems the code")
    claims = jwt.decode(
        token["id_token"], jwks, claims_cls=CodeIDToken,
        claims_options={"iss": {"essential": True, "value": base}},
        claims_params={"nonce": nonce, "client_id": web["client_id"], "access_token": token["access_token"]},
    )
    claims.validate(leeway=5)
    check(claims["email"] == email, "the ID token verifies against the JWKS: signature, iss, aud, nonce, at_hash")

    info = oauth.get(meta["userinfo_endpoint"], timeout=10).json()
    check(info["sub"] == claims["sub"] and info["email"] == email, "userinfo answers with the token")
    refreshed = oauth.refresh_token(meta["token_endpoint"], refresh_token=token["refresh_token"])
    check(refreshed["refresh_token"] != token["refresh_token"], "Authlib refreshes, and the refresh token rotates")
    r = oauth.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"])
    check(r.status_code == 200 and r.json()["active"] is True, "Authlib introspects the access token")
    r = oauth.revoke_token(meta["revocation_endpoint"], token=refreshed["access_token"])
    check(r.status_code == 200, "Authlib revokes it")
    r = oauth.introspect_token(meta["introspection_endpoint"], token=refreshed["access_token"])
    check(r.json()["active"] is False, "and it is inactive at once")

    m = OAuth2Session(machine["client_id"], machine["client_secret"], scope="orders:read",
                      token_endpoint_auth_method="client_secret_basic")
    cc = m.fetch_token(meta["token_endpoint"], grant_type="client_credentials")
    check(cc["scope"] == "orders:read" and "refresh_token" not in cc, "Authlib gets a client-credentials token")
    print("every check passed")


if __name__ == "__main__":
    try:
        main()
    except CheckFailed as e:
        print(f"FAILED: {e}", file=sys.stderr)
        sys.exit(1)
    except Exception as e:  # noqa: BLE001
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
