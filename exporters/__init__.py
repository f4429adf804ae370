"""rnnquant.exporters: O(1) step-mode ONNX graphs with integer operators, .ort conversion, the ORT runner.

``runner`` imports no torch, so ``rnnquant run`` works where torch is absent.
"""
