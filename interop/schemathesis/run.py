"""Fuzzes a running Portcullis from its own OpenAPI document with schemathesis.

Every check (`--checks all`: no server errors, every status code, content type and header as
documented, schema-valid requests accepted, schema-violating ones refused, the stateful links), the
root key as X-API-Key, the allowances in schemathesis.toml next to this file. Bounded: a fixed seed and
a fixed number of examples per operation, so a run takes the same cases every time (pass --seed to
explore others).

Exit status: schemathesis's own (0 when every check passed), 3 when schemathesis is missing or not
the pinned version (the caller skips, or fails under PORTCULLIS_REQUIRE_INTEROP=1).
"""

import argparse
import os
import sys

PINNED = "4.32.5"

try:
    from importlib.metadata import version

    installed = version("schemathesis")
    from schemathesis.cli import schemathesis as cli
except Exception as e:  # noqa: BLE001 - any import problem means "not installed here"
    print(f"schemathesis {PINNED} is not installed ({e})", file=sys.stderr)
    sys.exit(3)

if installed != PINNED:
    print(f"schemathesis {installed} is installed; this run is pinned to {PINNED}", file=sys.stderr)
    sys.exit(3)

parser = argparse.ArgumentParser()
parser.add_argument("--base-url", required=True)
parser.add_argument("--root-key", required=True)
parser.add_argument("--max-examples", default="25")
parser.add_argument("--seed", default="20261201")
args = parser.parse_args()

# schemathesis reads schemathesis.toml from the working directory.
os.chdir(os.path.dirname(os.path.abspath(__file__)))
sys.argv = [
    "schemathesis",
    "run",
    f"{args.base_url}/openapi.json",
    "--checks",
    "all",
    "--header",
    f"X-API-Key: {args.root_key}",
    # One worker: hypothesis's lambda-source reader is not thread-safe on Python 3.11
    # ("AST constructor recursion depth mismatch").
    "--workers",
    "1",
    "--max-examples",
    args.max_examples,
    "--seed",
    args.seed,
    "--no-color",
]
sys.exit(cli())
