# Shared by scripts/quickstart.sh and scripts/test.sh (sourced, never run on its own): the
# project's virtual environment and the Debian packages the scripts need.
#
# A stock Python is "externally managed" on Debian and Ubuntu (PEP 668): `python3 -m pip install`
# into it stops with `error: externally-managed-environment`. So everything is installed into
# the project's own virtual environment, .venv at the repository root (reused when present), and
# the scripts run every command through it.
#
#   --python PATH  or  PYTHON=PATH   the interpreter that makes .venv (default: python3)
#   LENET_VENV=DIR                   another place for the environment (default: <repo>/.venv)
#
# Usage:  . "$(dirname "$0")/_env.sh"; env_parse_args "$@"; set -- "${ENV_REST[@]}"
#         env_setup; env_pip_install EXTRAS; ...; env_how_to_enter

ENV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_CALLER_PWD="$PWD"
ENV_NAME="$(basename "$0")"
ENV_PYTHON="${PYTHON:-}"
VENV="${LENET_VENV:-$ENV_ROOT/.venv}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

env_say() { echo "$ENV_NAME: $*"; }
env_die() {
  echo "$ENV_NAME: error: $*" >&2
  exit 2
}

# Takes --python PATH (or --python=PATH) out of the arguments; the rest go to ENV_REST.
env_parse_args() {
  ENV_REST=()
  while [ $# -gt 0 ]; do
    case "$1" in
      --python) [ $# -ge 2 ] || env_die "--python needs a path"; ENV_PYTHON="$2"; shift 2 ;;
      --python=*) ENV_PYTHON="${1#--python=}"; shift ;;
      *) ENV_REST+=("$1"); shift ;;
    esac
  done
}

# Debian packages, installed with apt-get when missing (sudo when not root).
apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    env_say "no apt-get here; install $* yourself"
    return 1
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ]; then
    if ! command -v sudo >/dev/null 2>&1; then
      env_say "not root and no sudo; install $* yourself (apt-get install $*)"
      return 1
    fi
    sudo="sudo"
  fi
  env_say "installing $* (apt-get)"
  $sudo apt-get update -qq &&
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

# Makes .venv when it is missing or unusable (no python or no pip inside), else reuses it; then
# puts it first on PATH so that `python` and `lenet` below are the environment's.
env_setup() {
  local py="${ENV_PYTHON:-python3}" want have
  if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
    have="$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    want=""
    if [ -n "$ENV_PYTHON" ]; then
      want="$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)" ||
        env_die "cannot run --python/PYTHON '$py'"
    fi
    if [ -z "$want" ] || [ "$want" = "$have" ]; then
      env_say "using $VENV (Python $have)"
      env_activate
      return
    fi
    env_say "$VENV has Python $have, asked for $want ($py): making it again"
  fi
  command -v "$py" >/dev/null 2>&1 ||
    env_die "no '$py' found: install Python 3.10 or newer, or pass --python PATH"
  "$py" -c 'import sys; sys.exit(sys.version_info < (3, 10))' ||
    env_die "$py is Python $("$py" -V 2>&1 | cut -d' ' -f2); lenet needs 3.10 or newer (--python PATH)"
  if ! "$py" -c 'import ensurepip, venv' >/dev/null 2>&1; then
    # Debian ships venv's pip bootstrap apart from Python itself: python3.X-venv.
    local pkg
    pkg="python$("$py" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv"
    apt_install "$pkg" || true
    "$py" -c 'import ensurepip, venv' >/dev/null 2>&1 ||
      env_die "$py cannot make a virtual environment (no ensurepip): install Debian's $pkg (apt-get install $pkg), or pass --python PATH"
  fi
  env_say "making $VENV with $py ($("$py" -V 2>&1))"
  "$py" -m venv --clear "$VENV" || env_die "'$py -m venv $VENV' failed (see above)"
  env_activate
}

env_activate() {
  export VIRTUAL_ENV="$VENV"
  export PATH="$VENV/bin:$PATH"
  unset PYTHONHOME
  hash -r
}

# Installs lenet (editable) with the given extras into .venv; constraints.txt pins the CPU torch.
env_pip_install() {
  env_say "installing lenet[$1] into $VENV"
  (cd "$ENV_ROOT" && python -m pip install -q -c constraints.txt -e ".[$1]")
}

# The one line that lets `lenet` work in the user's own shell afterwards.
env_how_to_enter() {
  local act="$VENV/bin/activate"
  if [ "$ENV_CALLER_PWD" = "$ENV_ROOT" ] && [ "$VENV" = "$ENV_ROOT/.venv" ]; then act=".venv/bin/activate"; fi
  env_say "to use lenet in your shell: . $act"
}
