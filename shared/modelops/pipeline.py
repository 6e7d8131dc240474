"""The export pipeline proper (needs the export venv: torch, transformers, optimum, onnx)."""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from .convert import default_gguf_path, to_hf_folder
from .fused import build_fused
from .onnx_export import TASK, export_onnx
from .publish import publish, stage_variant
from .quality import MIN_AGREEMENT, QualityError, gate, measure
from .quantize import ACCURACY_LEVEL, BITS, BLOCK_SIZE, quantize_matmuls, to_float16

log = logging.getLogger("shared.modelops.pipeline")

QUANTIZATION = {"method": "MatMulNBits", "bits": BITS, "block_size": BLOCK_SIZE,
                "accuracy_level": ACCURACY_LEVEL, "symmetric": True, "lm_head": "quantized (untied)"}


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _source_info(source: Path) -> dict:
    if source.is_file():
        return {"kind": "gguf", "file": source.name, "sha256": _file_sha256(source)}
    return {"kind": "hf", "path": str(source)}


def _versions() -> dict:
    import onnxruntime
    import optimum.version
    import torch
    import transformers

    return {"onnxruntime": onnxruntime.__version__, "optimum": optimum.version.__version__,
            "torch": torch.__version__, "transformers": transformers.__version__}


def _build(variant: str, hf_dir: Path, reference: Path, work: Path) -> tuple[Path, dict]:
    """The variant's model file and its manifest fields that depend on the variant."""
    if variant == "fp32":
        return reference, {"graph": "optimum-kv", "exporter": f"optimum ({TASK})", "quantization": None}
    if variant == "int8-optimum":
        path = quantize_matmuls(reference, work / variant / "model.onnx")
        return path, {"graph": "optimum-kv", "exporter": f"optimum ({TASK})", "quantization": QUANTIZATION}
    if variant == "int8":
        fused = build_fused(hf_dir, work / "fused-fp32" / "model.onnx")
        path = quantize_matmuls(fused, work / variant / "model.onnx")
        return path, {"graph": "fused-gqa", "exporter": "shared.modelops.fused (weights of the optimum-exported model)",
                      "quantization": QUANTIZATION}
    if variant == "fp16":
        # For GPUs: onnxruntime's CUDA GroupQueryAttention has no float32 kernel, so only a float16
        # graph keeps attention and the KV cache on the device.
        fused = build_fused(hf_dir, work / "fused-fp32" / "model.onnx")
        path = to_float16(fused, work / variant / "model.onnx")
        return path, {"graph": "fused-gqa", "exporter": "shared.modelops.fused (weights of the optimum-exported model)",
                      "quantization": {"method": "float16"}}
    raise ValueError(f"unknown variant {variant!r}")


def _reference(src: Path, source_info: dict, work: Path) -> tuple[Path, Path]:
    """The fixed HF folder and the fp32 ONNX reference, reused from the work folder when they
    were made from the same source (a stamp holds the source's identity)."""
    stamp = work / "reference.json"
    hf_dir, reference = work / "hf", work / "onnx-fp32" / "model.onnx"
    if stamp.is_file() and json.loads(stamp.read_text()) == source_info and reference.is_file():
        log.info("reusing %s and %s", hf_dir, reference)
        return hf_dir, reference
    stamp.unlink(missing_ok=True)
    to_hf_folder(src, hf_dir)
    export_onnx(hf_dir, reference.parent)
    stamp.write_text(json.dumps(source_info))
    return hf_dir, reference


def export_variants(source: str | None, model: str, variants: list[str], store, work: Path,
                    min_agreement: float | None = None) -> list[str]:
    """Exports, gates and publishes each variant; returns the refused ones."""
    minimum = MIN_AGREEMENT if min_agreement is None else min_agreement
    src = Path(source) if source else default_gguf_path()
    work.mkdir(parents=True, exist_ok=True)
    source_info = _source_info(src)
    hf_dir, reference = _reference(src, source_info, work)
    config = json.loads((hf_dir / "config.json").read_text())
    common = {"model": model, "source": source_info, "tools": _versions(),
              "context_length": int(config.get("max_position_embeddings") or 2048)}
    refused = []
    for variant in variants:
        path, fields = _build(variant, hf_dir, reference, work)
        report = measure(reference, path, hf_dir)
        log.info("%s: agreement %.4f (teacher-forced %.4f, generating %.4f)", variant, report.agreement,
                 report.teacher_forced, report.generating)
        try:
            gate(report, variant, minimum)
        except QualityError as exc:
            log.error("%s", exc)
            refused.append(variant)
            continue
        stage = stage_variant(path, hf_dir, work / "stage" / variant,
                              {**common, "variant": variant, **fields, "quality": report.as_dict()})
        prefix = publish(stage, store, model, variant)
        shutil.rmtree(stage, ignore_errors=True)
        log.info("published %s (%s)", prefix, store)
    return refused
