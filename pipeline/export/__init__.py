"""Export to the self-describing edge graph (ONNX), and quantize it for int8 targets."""
