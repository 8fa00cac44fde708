#!/bin/sh
# One parity test: generate the test vectors of one config with the PyTorch
# reference, then check the C engine against them (tests/parity/parity.c).
#
#   run_parity.sh PARITY_EXE PYTHON_DIR OUT_DIR CONFIG
#
# CONFIG f16 is a small model stored in half precision, written by
# gen_f16_vectors.py beside this script instead of the testvectors command.
#
# Exits 77 (skip) only when Debian's /usr/bin/python3 cannot import torch:
# the reference lives there (apt-get install python3-torch python3-numpy);
# the `python3` first on PATH may be another interpreter.
set -eu
exe=$1 pydir=$2 out=$3 cfg=$4
py=/usr/bin/python3
if ! [ -x "$py" ] || ! "$py" -c 'import torch, numpy' >/dev/null 2>&1; then
  echo "skip: $py cannot import torch and numpy"
  exit 77
fi
rm -rf "$out"
if [ "$cfg" = f16 ]; then
  PYTHONPATH="$pydir" "$py" "$(dirname "$0")/gen_f16_vectors.py" "$out"
else
  PYTHONPATH="$pydir" "$py" -m geoloc_train testvectors --out "$out" --configs "$cfg"
fi
sha=$(sha256sum "$out/models/$cfg.safetensors" | cut -d' ' -f1)
exec "$exe" "$out" "$sha"
