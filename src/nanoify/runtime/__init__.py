"""The ground floor every layer may use: the ONNX Runtime session every module opens (``ort``) and what this
CPU's INT8 kernels do (``cpu``). It imports nothing of nanoify but ``errors``."""
