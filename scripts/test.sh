#!/usr/bin/env bash
# README command 2 (and CI): install lenet with its test tools, lint, run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

# Debian packages the tests need, installed with apt-get when missing (sudo when not root).
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: no apt-get here; install $* yourself (CI fails without them)" >&2
    return 0
  fi
  SUDO=""
  if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
  echo "test.sh: installing $* (apt-get)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

# The browser test drives Debian's Chromium (never a downloaded browser).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  apt_install chromium chromium-driver
fi
# The fused CPU kernels (src/lenet/kernels.c) are built with the system C compiler; CI tests them.
if ! command -v cc >/dev/null 2>&1 && ! command -v gcc >/dev/null 2>&1; then
  apt_install gcc
fi

python3 -m pip install -q -c constraints.txt -e ".[all,test]"
python3 -m ruff format --check src tests scripts
python3 -m ruff check src tests scripts
python3 -m pytest "$@"
