"""ONNX export with dynamic axes, validation against PyTorch, and transformer graph fusion."""
