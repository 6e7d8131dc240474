"""Artefact writer: stages a variant's files, writes its manifest, uploads it to a blob store.

The manifest is uploaded last, so a reader never sees a manifest whose files are not there yet.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .artefacts import MANIFEST, sha256_file, variant_prefix
from shared.storage.blob import BlobStore

# Files copied from the HF folder next to the model, when present.
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json",
              "config.json", "special_tokens_map.json")


def onnx_io(model_path: Path) -> dict:
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)

    def describe(values):
        out = []
        for v in values:
            dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            out.append({"name": v.name, "type": onnx.TensorProto.DataType.Name(v.type.tensor_type.elem_type).lower(),
                        "shape": dims})
        return out

    return {
        "opset": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "ir_version": model.ir_version,
        "inputs": describe(model.graph.input),
        "outputs": describe(model.graph.output),
    }


def stage_variant(model_file: Path, hf_dir: Path, stage_dir: Path, manifest_fields: dict) -> Path:
    """Copies the model (+ external data) and side files into stage_dir and writes manifest.json."""
    shutil.rmtree(stage_dir, ignore_errors=True)
    stage_dir.mkdir(parents=True)
    shutil.copyfile(model_file, stage_dir / "model.onnx")
    data = model_file.with_name(model_file.name + ".data")
    if data.is_file():
        shutil.copyfile(data, stage_dir / data.name)
    for name in SIDE_FILES:
        if (hf_dir / name).is_file():
            shutil.copyfile(hf_dir / name, stage_dir / name)
    files = {p.name: {"sha256": sha256_file(p), "size": p.stat().st_size}
             for p in sorted(stage_dir.iterdir()) if p.name != MANIFEST}
    manifest = {
        "format": 1,
        **manifest_fields,
        "onnx": onnx_io(stage_dir / "model.onnx"),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
    }
    (stage_dir / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return stage_dir


def publish(stage_dir: Path, store: BlobStore, model: str, variant: str) -> str:
    prefix = variant_prefix(model, variant)
    store.delete(f"{prefix}/{MANIFEST}")  # readers see "not published" while files change
    manifest = json.loads((stage_dir / MANIFEST).read_text())
    for name in manifest["files"]:
        store.put_file(f"{prefix}/{name}", stage_dir / name)
    store.put_file(f"{prefix}/{MANIFEST}", stage_dir / MANIFEST)
    return prefix
