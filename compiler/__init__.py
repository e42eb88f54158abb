"""sparsec.compiler: the IR, the ONNX frontend and the passes. Knows nothing of codegen."""
