#!/usr/bin/env bash
# Runs every test of the project: the README's test command. Installs what the tests need
# first (scripts/install-test-deps.sh), so it works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-deps.sh
# Rust: unit, property and end-to-end tests of every workspace crate (the gateway, the
# MongoDB double, the bench's smoke test).
cargo test --workspace --locked
# The MongoDB double checked by a second, independent driver (pymongo).
bash tests/mongo-double/py/run.sh
