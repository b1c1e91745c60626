#!/usr/bin/env bash
# Every test of the project, Rust and Python, in one command:
#   bash scripts/test.sh
# Installs the Python test dependencies from PyPI, runs the Rust workspace
# tests, builds and installs the `framewire` Python package from python/,
# then runs its pytest suite.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== python test dependencies"
python3 -m pip install -q -r python/requirements-test.txt

echo "== cargo test --workspace --all-features"
cargo test --workspace --all-features

echo "== build and install the Python package (python3 -m pip install ./python)"
# --force-reinstall: rebuild even when the version did not change; the
# dependency (numpy) comes with the test requirements above.
python3 -m pip install -q --force-reinstall --no-deps ./python

echo "== pytest python/tests"
python3 -m pytest python/tests -q
