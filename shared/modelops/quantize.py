"""Weight-only quantization: MatMul with a constant weight -> MatMulNBits (8-bit, block 32).

Measured (MODEL.md): 8-bit block 32 with accuracy_level 4 keeps next-token agreement >= 0.95
and takes the fast int8 kernels; accuracy_level 1 is ten times slower, 4-bit and dynamic int8
fall below the quality gate.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

log = logging.getLogger(__name__)

BITS = 8
BLOCK_SIZE = 32
ACCURACY_LEVEL = 4


def materialize_transposed_weights(model: onnx.ModelProto) -> int:
    """MatMul(x, Transpose(W)) with W an initializer (a tied output layer) -> MatMul(x, W.T),
    so that the weight-only quantizer sees a constant weight. Returns how many were rewritten."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, int] = {}
    for n in graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    count = 0
    for node in graph.node:
        if node.op_type != "MatMul":
            continue
        tr = producers.get(node.input[1])
        if tr is None or tr.op_type != "Transpose" or tr.input[0] not in inits:
            continue
        weight = numpy_helper.to_array(inits[tr.input[0]])
        if weight.ndim != 2:
            continue
        name = f"{tr.input[0]}.materialized_t"
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.T), name))
        node.input[1] = name
        if consumers.get(tr.output[0], 0) == 1:
            graph.node.remove(tr)
        count += 1
    return count


def quantize_matmuls(src: str | Path, dest: str | Path, bits: int = BITS, block_size: int = BLOCK_SIZE,
                     accuracy_level: int = ACCURACY_LEVEL, exclude: tuple[str, ...] = (),
                     precise: tuple[str, ...] = (), fine: tuple[str, ...] = (),
                     fine_block_size: int = BLOCK_SIZE, fine_bits: int | None = None) -> Path:
    """Writes a copy of `src` whose constant-weight MatMuls are MatMulNBits.

    `exclude`: MatMul node names left in fp32. `precise`: node names quantized with
    accuracy_level 1 (fp32 activations; slow on CPU). `fine`: substrings of node names that are
    quantized with `fine_block_size` and `fine_bits` instead of `block_size` and `bits`.
    """
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src))
    rewritten = materialize_transposed_weights(model)
    if rewritten:
        log.info("materialized %d transposed weight(s) before quantizing", rewritten)
    matmuls = [n.name for n in model.graph.node if n.op_type == "MatMul" and n.name not in exclude]
    fine_nodes = [n for n in matmuls if any(p in n for p in fine) and n not in precise]
    passes = [
        (fine_nodes, fine_block_size, accuracy_level, fine_bits or bits),
        (list(precise), block_size, 1, bits),
        ([n for n in matmuls if n not in fine_nodes and n not in precise], block_size, accuracy_level, bits),
    ]
    for nodes, block, level, nbits in passes:
        if not nodes:
            continue
        # nodes_to_include only adds to the op types quantized: restrict a pass by excluding the rest
        others = [n for n in matmuls if n not in nodes]
        quantizer = MatMulNBitsQuantizer(model, bits=nbits, block_size=block, is_symmetric=True,
                                         accuracy_level=level, nodes_to_exclude=[*exclude, *others])
        quantizer.process()
        model = quantizer.model.model
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _save(model, dest)
    return dest


def _save(model: onnx.ModelProto, dest: Path) -> None:
    """One file when it fits protobuf's 2 GB limit, else weights in `<name>.data`."""
    if model.ByteSize() < 2_000_000_000:
        onnx.save_model(model, str(dest))
    else:
        onnx.save_model(model, str(dest), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=dest.name + ".data")


def to_float16(src: str | Path, dest: str | Path) -> Path:
    """The whole graph in float16 (weights, activations, KV cache and logits), for GPUs.

    Uses onnxruntime's converter, which knows the contrib ops (GroupQueryAttention,
    SkipSimplifiedLayerNormalization) and keeps integer inputs (ids, lengths) as they are."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=False)
    _save(model, dest)
    log.info("float16 graph written to %s", dest)
    return dest
