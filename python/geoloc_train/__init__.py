"""geoloc's PyTorch reference model: architecture (model.py, ops.py, config.py),
model files (safetensors.py), the TFLite MobileNetV2 import (tflite.py) and the
test vectors for the C engine (testvectors.py).  Run as `python -m geoloc_train`.
"""
