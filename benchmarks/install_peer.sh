#!/usr/bin/env bash
# Installs the PyTorch peer (learn2learn 0.2.0 on torch 2.13 CPU) into a venv OUTSIDE the repo,
# for benchmarks/l2l_peer.py and benchmarks/compare_l2l.py only. The library never imports torch.
#
#   bash benchmarks/install_peer.sh [VENV]        (default VENV=/tmp/l2lvenv)
#
# Snags handled here:
# - learn2learn 0.2.0's sdist ships C made by an old Cython that includes longintrepr.h (gone in
#   Python 3.11): the C is regenerated from the .pyx files with Cython 3, then built without
#   build isolation.
# - torchvision is NOT installed: PyPI's torchvision wheels are CUDA builds whose extension does not
#   load beside torch's CPU build ("operator torchvision::nms does not exist"). learn2learn's
#   package __init__ imports its datasets, which import torchvision, so l2l_peer.py imports only
#   learn2learn.algorithms and learn2learn.vision.models (see import_learn2learn there).
# - learn2learn imports gym (learn2learn.gym) at package import: the gym package is installed.
set -euo pipefail
VENV=${1:-/tmp/l2lvenv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
P="$VENV/bin/python"
"$P" -m pip install -q --upgrade pip setuptools wheel
# torch 2.13.0, CPU build: "+cpu" pins the CPU wheel (a local wheel directory where pip is set up
# with one; else add --index-url https://download.pytorch.org/whl/cpu), never a CUDA one.
"$P" -m pip install -q -r "$(dirname "$0")/requirements-peer.txt"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# learn2learn 0.2.0 is on PyPI as an sdist only; fetch it without building anything.
( cd "$WORK" && "$P" -m pip download -q --no-deps --no-build-isolation "learn2learn==0.2.0" )
tar -xzf "$WORK"/learn2learn-0.2.0.tar.gz -C "$WORK"
SRC="$WORK/learn2learn-0.2.0"
# Regenerate every C file from its .pyx with Cython 3 (the shipped C needs longintrepr.h).
find "$SRC/learn2learn" -name '*.pyx' | while read -r pyx; do
  rm -f "${pyx%.pyx}.c"
  "$VENV/bin/cython" -3 "$pyx" -o "${pyx%.pyx}.c"
done
"$P" -m pip install -q --no-build-isolation --no-deps "$SRC"
"$P" "$(dirname "$0")/l2l_peer.py" --check
