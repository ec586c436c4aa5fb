#!/usr/bin/env python3
"""Soak: a steady churn of refresh rotations, browser sessions and API keys against a release server on
SQLite or PostgreSQL, with short lifetimes, while the janitor runs. Every SAMPLE_S seconds it records
each table's rows, the database's size (SQLite: file + WAL; PostgreSQL: `pg_database_size`, with the
dead tuples autovacuum has still to reclaim) and the p99 latency of each kind of request in that
window; at the end it writes a CSV and a two-panel PNG (rows and size over time; p99 over time).

    python3 bench/soak/soak.py --server-bin $CARGO_TARGET_DIR/release/portcullis --minutes 20
    createdb -h 127.0.0.1 -U postgres pc_soak    # empty; the run leaves its rows there
    python3 bench/soak/soak.py --server-bin … --minutes 20 --database-url postgres://postgres@127.0.0.1/pc_soak

PostgreSQL is sampled through `psql` (on PATH), so the script needs no driver.

Needs matplotlib (`pip install matplotlib`). Lifetimes: refresh tokens 60 s in families of 120 s,
sessions idle 60 s / absolute 120 s, API keys that expire after 60 s (half revoked at once), audit and
key retention 0 days, janitor every 30 s. With those, every table should level off within a few minutes
and stay level; the database file should stop growing once freed pages are being reused.
"""

import argparse
import csv
import http.client
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

SAMPLE_S = 15
TABLES = ["refresh_tokens", "refresh_families", "sessions", "api_keys", "audit_events"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Client:
    def __init__(self, port):
        self.port = port
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        headers = dict(headers or {})
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["content-type"] = "application/json"
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read(), r.getheader("set-cookie")
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt == 1:
                    raise
        raise RuntimeError("unreachable")


class Latencies:
    def __init__(self):
        self.lock = threading.Lock()
        self.window = {}
        self.errors = {}

    def add(self, kind, seconds, ok):
        with self.lock:
            if ok:
                self.window.setdefault(kind, []).append(seconds)
            else:
                self.errors[kind] = self.errors.get(kind, 0) + 1

    def take(self):
        with self.lock:
            w, e = self.window, self.errors
            self.window, self.errors = {}, {}
        out = {}
        for kind, xs in w.items():
            xs.sort()
            out[kind] = (len(xs), xs[min(len(xs) - 1, int(len(xs) * 0.99))] * 1000)
        return out, e


def timed(lat, kind, fn):
    t = time.perf_counter()
    try:
        status, body, cookie = fn()
    except Exception:
        lat.add(kind, 0, False)
        return None
    ok = 200 <= status < 300
    lat.add(kind, time.perf_counter() - t, ok)
    return (status, body, cookie) if ok else None


def paced(rate, stop, step):
    interval = 1.0 / rate
    next_at = time.monotonic()
    while not stop.is_set():
        step()
        next_at += interval
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        else:
            next_at = time.monotonic()


def refresh_chain(port, user, rate, lat, stop):
    c = Client(port)
    token = None

    def step():
        nonlocal token
        if token is None:
            r = timed(lat, "login", lambda: c.request("POST", "/v1/auth/login", user))
            token = json.loads(r[1])["refresh_token"] if r else None
            return
        r = timed(lat, "refresh", lambda: c.request("POST", "/v1/auth/refresh", {"refresh_token": token}))
        # A family ends after 120 s: the chain starts over with a login, as a client would.
        token = json.loads(r[1])["refresh_token"] if r else None

    paced(rate, stop, step)


def session_churn(port, users, rate, lat, stop):
    c = Client(port)

    def step():
        user = random.choice(users)
        r = timed(lat, "session_login", lambda: c.request("POST", "/v1/sessions", user))
        if r and r[2]:
            cookie = r[2].split(";")[0]
            timed(lat, "me_session", lambda: c.request("GET", "/v1/me", headers={"cookie": cookie}))

    paced(rate, stop, step)


def key_churn(port, root, rate, lat, stop):
    c = Client(port)
    auth = {"authorization": f"Bearer {root}"}
    n = 0

    def step():
        nonlocal n
        n += 1
        expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 60))
        r = timed(lat, "key_create", lambda: c.request(
            "POST", "/v1/keys", {"name": f"soak {n}", "expires_at": expires, "scopes": ["orders:read"]}, auth))
        if r and n % 2 == 0:
            key_id = json.loads(r[1])["id"]
            timed(lat, "key_revoke", lambda: c.request("DELETE", f"/v1/keys/{key_id}", headers=auth))

    paced(rate, stop, step)


def sample(db):
    size = sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = {t: conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
    finally:
        conn.close()
    return rows, size, free


def sample_postgres(url):
    counts = ", ".join(f"(SELECT COUNT(*) FROM {t})" for t in TABLES)
    sql = (f"SELECT {counts}, pg_database_size(current_database()), "
           "(SELECT COALESCE(SUM(n_dead_tup), 0) FROM pg_stat_user_tables)")
    out = subprocess.run(["psql", url, "-XAtqc", sql], capture_output=True, text=True, timeout=60, check=True)
    values = [int(v) for v in out.stdout.strip().split("|")]
    rows = dict(zip(TABLES, values))
    # The third figure is dead tuples here (freed pages on SQLite): what is waiting for (auto)vacuum.
    return rows, values[len(TABLES)], values[len(TABLES) + 1]


def plot(samples, kinds, path, title, size_label="database + WAL, MiB"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 8), sharex=True)
    for table in TABLES:
        top.plot(t, [s[table] for s in samples], label=f"{table} rows")
    top.set_ylabel("rows (log)")
    top.set_yscale("symlog", linthresh=10)
    top.legend(loc="upper left", fontsize=8)
    size_axis = top.twinx()
    size_axis.plot(t, [s["bytes"] / 2**20 for s in samples], "k--", label=size_label)
    size_axis.set_ylabel("MiB")
    size_axis.set_ylim(bottom=0)
    size_axis.legend(loc="upper right", fontsize=8)
    top.set_title(title)
    for kind in kinds:
        bottom.plot(t, [s.get(f"p99_{kind}") for s in samples], label=kind)
    bottom.set_ylabel("p99 latency, ms (per window)")
    bottom.set_xlabel("minutes")
    bottom.set_yscale("log")
    bottom.legend(loc="upper left", fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--server-bin", required=True)
    ap.add_argument("--minutes", type=float, default=20)
    ap.add_argument("--refresh-rate", type=float, default=300, help="refreshes/s over all chains")
    ap.add_argument("--session-rate", type=float, default=4, help="browser logins/s")
    ap.add_argument("--key-rate", type=float, default=10, help="API keys created/s (half revoked)")
    ap.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--replot", help="only draw the PNG again from this CSV of an earlier run")
    ap.add_argument("--database-url", help="soak PostgreSQL (an empty database) instead of SQLite")
    a = ap.parse_args()
    backend = "postgres" if a.database_url else "sqlite"
    name = "PostgreSQL" if a.database_url else "SQLite"
    size_label = "pg_database_size, MiB" if a.database_url else "database + WAL, MiB"
    kinds = ["refresh", "login", "session_login", "me_session", "key_create", "key_revoke"]
    if a.replot:
        with open(a.replot) as f:
            samples = [{k: (float(v) if v not in ("", "None") else None) for k, v in row.items()}
                       for row in csv.DictReader(f)]
        minutes = samples[-1]["t"] / 60 if samples else 0
        plot(samples, kinds, os.path.join(a.out, f"soak-{backend}.png"),
             f"{name} soak, {minutes:.0f} min: {a.refresh_rate:g} refresh/s, {a.session_rate:g} sessions/s, "
             f"{a.key_rate:g} keys/s; janitor every 30 s", size_label)
        return

    work = tempfile.mkdtemp(prefix="portcullis-soak-")
    data = os.path.join(work, "data")
    os.makedirs(data)
    port = free_port()
    env = dict(os.environ)
    env.update({
        "RUST_LOG": "warn",
        "PORTCULLIS_REFRESH_TOKEN_TTL_S": "60",
        "PORTCULLIS_REFRESH_FAMILY_TTL_S": "120",
        "PORTCULLIS_SESSION_IDLE_TIMEOUT_S": "60",
        "PORTCULLIS_SESSION_ABSOLUTE_TIMEOUT_S": "120",
        "PORTCULLIS_JANITOR_INTERVAL_S": "30",
        "PORTCULLIS_AUDIT_RETENTION_DAYS": "0",
        "PORTCULLIS_API_KEY_RETENTION_DAYS": "0",
        "PORTCULLIS_LOGIN_IP_LIMIT": "100000",
        "PORTCULLIS_LOGIN_FREE_FAILURES": "100000",
        "PORTCULLIS_LOGIN_ACCOUNT_FREE_FAILURES": "100000",
    })
    log = open(os.path.join(work, "server.stderr.log"), "w")
    store = ["--database-url", a.database_url] if a.database_url else []
    server = subprocess.Popen(
        [a.server_bin, "serve", "--data-dir", data, *store, "--listen", f"127.0.0.1:{port}",
         "--issuer", f"http://127.0.0.1:{port}"],
        env=env, stdout=subprocess.DEVNULL, stderr=log)
    try:
        c = Client(port)
        for _ in range(300):
            try:
                if c.request("GET", "/healthz")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        root = None
        for _ in range(50):
            path = os.path.join(data, "root-key.txt")
            if os.path.exists(path):
                root = open(path).read().split()[-1].strip()
                break
            time.sleep(0.1)
        if not root or not root.startswith("pk_"):
            sys.exit("no root key in root-key.txt")
        users = []
        for i in range(8):
            u = {"email": f"soak{i}@bench.invalid", "password": f"soak-{random.getrandbits(64):x}-pass"}
            status, body, _ = c.request("POST", "/v1/users", u, {"authorization": f"Bearer {root}"})
            if status != 201:
                sys.exit(f"POST /v1/users answered {status}: {body[:200]!r}")
            users.append(u)

        lat = Latencies()
        stop = threading.Event()
        chains = 8
        threads = [threading.Thread(target=refresh_chain, args=(port, users[i % 8], a.refresh_rate / chains, lat, stop))
                   for i in range(chains)]
        threads.append(threading.Thread(target=session_churn, args=(port, users, a.session_rate, lat, stop)))
        threads.append(threading.Thread(target=key_churn, args=(port, root, a.key_rate, lat, stop)))
        for t in threads:
            t.daemon = True
            t.start()
        db = os.path.join(data, "portcullis.db")
        samples = []
        start = time.monotonic()
        end = start + a.minutes * 60
        while time.monotonic() < end:
            time.sleep(SAMPLE_S)
            if server.poll() is not None:
                sys.exit("the server exited")
            rows, size, free = sample_postgres(a.database_url) if a.database_url else sample(db)
            window, errors = lat.take()
            s = {"t": time.monotonic() - start, "bytes": size, ("dead_tuples" if a.database_url else "free_pages"): free, **rows}
            for kind in kinds:
                n, p99 = window.get(kind, (0, None))
                s[f"n_{kind}"] = n
                s[f"p99_{kind}"] = p99
                s[f"errors_{kind}"] = errors.get(kind, 0)
            samples.append(s)
            print(f"[soak] {s['t']/60:5.1f} min: " + ", ".join(f"{t} {rows[t]}" for t in TABLES)
                  + f"; {size/2**20:.1f} MiB ({free} {'dead tuples' if a.database_url else 'free pages'}); refresh {window.get('refresh', (0, 0))[0]/SAMPLE_S:.0f}/s"
                  + f" p99 {window.get('refresh', (0, 0))[1] or 0:.1f} ms; errors {errors}", flush=True)
        stop.set()
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, f"soak-{backend}.csv"), "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(samples[0].keys()))
            w.writeheader()
            w.writerows(samples)
        plot(samples, kinds, os.path.join(a.out, f"soak-{backend}.png"),
             f"{name} soak, {a.minutes:g} min: {a.refresh_rate:g} refresh/s, {a.session_rate:g} sessions/s, "
             f"{a.key_rate:g} keys/s; janitor every 30 s", size_label)
        print(f"[soak] wrote {a.out}/soak-{backend}.png and .csv")
    finally:
        server.terminate()
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    main()
