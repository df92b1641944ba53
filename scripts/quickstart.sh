#!/usr/bin/env bash
# README command 1: install lenet, fetch MNIST, train the fast recipe, evaluate, draw the grid.
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
# constraints.txt pins the local CPU torch wheel; the package itself asks only for a range.
python3 -m pip install -q -c constraints.txt -e ".[all]"
lenet data --verify
lenet train --name quickstart --overwrite
lenet eval runs/quickstart/best.pt
lenet show runs/quickstart/best.pt
echo "quickstart done: runs/quickstart/ holds best.pt, curves.png, confusion.png, errors.png, show.png"
