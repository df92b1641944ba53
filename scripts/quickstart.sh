#!/usr/bin/env bash
# README command 1: make .venv, install lenet into it, fetch MNIST, train the fast recipe,
# evaluate, draw the grid.
#   bash scripts/quickstart.sh [--python PATH]     (or PYTHON=PATH; default python3)
#   DATA_DIR=DIR: where MNIST is (or goes); default ./data in the repository
set -euo pipefail
. "$(dirname "$0")/_env.sh"
env_parse_args "$@"
[ ${#ENV_REST[@]} -eq 0 ] || env_die "unknown argument(s): ${ENV_REST[*]} (only --python PATH)"
env_setup
# constraints.txt pins the local CPU torch wheel; the package itself asks only for a range.
env_pip_install all
cd "$ENV_ROOT"
DATA_DIR="${DATA_DIR:-data}"
lenet data --verify --data-dir "$DATA_DIR"
lenet train --name quickstart --overwrite --data-dir "$DATA_DIR"
lenet eval runs/quickstart/best.pt --data-dir "$DATA_DIR"
lenet show runs/quickstart/best.pt --data-dir "$DATA_DIR"
env_say "done: $ENV_ROOT/runs/quickstart/ holds best.pt, curves.png, confusion.png, errors.png, show.png"
env_how_to_enter
