"""Shared by the python tests: paths, and running the package's CLI."""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON_DIR = os.path.join(REPO, "python")
BACKBONE = os.path.join(REPO, "data", "backbone")
TFLITE = os.path.join(BACKBONE, "mobilenet_v2_1.0_224_quant.tflite")
CAT = os.path.join(BACKBONE, "cat.bmp")
LABELS = os.path.join(BACKBONE, "imagenet_labels.txt")

# Run from a source checkout without installing: import the package from python/.
if PYTHON_DIR not in sys.path:
    sys.path.insert(0, PYTHON_DIR)


def run_cli(*args, check=True):
    """Run `python -m geoloc_train ARGS`; returns the CompletedProcess."""
    env = dict(os.environ, PYTHONPATH=PYTHON_DIR)
    p = subprocess.run([sys.executable, "-m", "geoloc_train", *args], env=env,
                       capture_output=True, text=True, timeout=240)
    if check and p.returncode != 0:
        raise AssertionError(f"geoloc_train {' '.join(args)} exited {p.returncode}:\n{p.stderr}")
    return p
