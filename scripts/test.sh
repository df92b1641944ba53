#!/usr/bin/env bash
# README command 2 (and CI): install lenet with its test tools, lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
python3 -m pip install -q -c constraints.txt -e ".[all,test]"
python3 -m ruff check src tests
python3 -m pytest "$@"
