"""Model operations: export (GGUF -> HF -> ONNX -> quantized/fused ONNX), quality gate, artefacts.

Only `artefacts` is imported by serving code; every other module needs the export venv
(`scripts/export_model`).
"""
