"""Pruning, quantization, ONNX/Triton export and the compression quality gate."""
