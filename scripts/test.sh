#!/usr/bin/env bash
# README command 2 (and CI): install lenet with its test tools, lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# The browser test drives Debian's Chromium (never a downloaded browser): install it when missing.
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "test.sh: installing chromium and chromium-driver (apt-get)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
      chromium chromium-driver >/dev/null
  else
    echo "test.sh: no apt-get here; install Chromium at /usr/bin/chromium for the browser test" >&2
  fi
fi

# The fused CPU kernels (src/lenet/kernels.c) are built with the system C compiler; CI tests them.
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    echo "test.sh: installing gcc (apt-get) for lenet's fused CPU kernels"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq gcc >/dev/null
  else
    echo "test.sh: no C compiler and no apt-get: the fused-kernel tests will fail under CI" >&2
  fi
fi

python3 -m pip install -q -c constraints.txt -e ".[all,test]"
python3 -m ruff format --check src tests scripts
python3 -m ruff check src tests scripts
python3 -m pytest "$@"
