#!/usr/bin/env bash
# README command 2 (and CI, through .ci/run): make .venv, install lenet with its test tools into
# it, lint, run the test suite.
#   bash scripts/test.sh [--python PATH] [PYTEST ARGS...]   (or PYTHON=PATH; default python3)
# Without pytest arguments it runs the whole suite, slow tests included.
set -euo pipefail
. "$(dirname "$0")/_env.sh"
env_parse_args "$@"
set -- ${ENV_REST[@]+"${ENV_REST[@]}"}

# The browser test drives Debian's Chromium (never a downloaded browser).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install chromium chromium-driver || env_say "CI fails without chromium and chromium-driver"
fi
# The fused CPU kernels (src/lenet/kernels.c) are built with the system C compiler; CI tests them.
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  apt_install gcc || env_say "CI fails without a C compiler"
fi

env_setup
env_pip_install all,test
cd "$ENV_ROOT"
python -m ruff format --check src tests scripts
python -m ruff check src tests scripts
status=0
python -m pytest "$@" || status=$?
env_how_to_enter
exit "$status"
