"""Builds the fused decoder graph for Llama-architecture weights.

The graph is what onnxruntime's contrib kernels run fastest on CPU and CUDA:
GroupQueryAttention (rotary inside, packed QKV, past and present sharing one pre-allocated
buffer per layer), SimplifiedLayerNormalization / SkipSimplifiedLayerNormalization (RMSNorm
fused with the residual add) and plain MatMuls (QKV and gate/up packed) that the quantizer then turns into
MatMulNBits. Logits are computed for the last position only: prefill never pays for
[prompt_len, vocab] logits it would throw away.

I/O (consumed by the engine's SharedBufferRunner):
  inputs  input_ids int64 [batch, seq], seqlens_k int32 [batch] (total length - 1 per row),
          total_sequence_length int32 [] (max total length in the batch),
          past_key_values.{i}.{key,value} float32 [batch, kv_heads, max_seq, head_dim]
  outputs logits float32 [batch, 1, vocab], present.{i}.{key,value} (same buffers as past)
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def load_llama_weights(hf_dir: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(config, fp32 numpy weights) from an HF folder of safetensors."""
    from safetensors.numpy import load_file

    hf_dir = Path(hf_dir)
    config = json.loads((hf_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError(f"the fused builder supports Llama models, not {config.get('model_type')!r}")
    if config.get("rope_scaling"):
        raise ValueError("rope scaling is not supported by the fused builder")
    weights: dict[str, np.ndarray] = {}
    for f in sorted(hf_dir.glob("*.safetensors")):
        weights.update({k: v.astype(np.float32) for k, v in load_file(str(f)).items()})
    if "lm_head.weight" not in weights:  # tied output layer: give it its own (quantizable) copy
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    return config, weights


def rotary_caches(config: dict, max_positions: int) -> tuple[np.ndarray, np.ndarray]:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    inv_freq = 1.0 / (config.get("rope_theta", 10000.0) ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    angles = np.outer(np.arange(max_positions, dtype=np.float64), inv_freq)
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


class _Graph:
    def __init__(self):
        self.nodes: list = []
        self.inits: list = []
        self._n = 0

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], n_out: int = 1, domain: str = "", name: str | None = None,
             outputs: list[str] | None = None, **attrs) -> list[str]:
        self._n += 1
        name = name or f"{op}_{self._n}"
        outputs = outputs or [f"{name}/out{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, domain=domain, **attrs))
        return outputs


def build_fused_model(config: dict, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    layers = config["num_hidden_layers"]
    vocab = config["vocab_size"]
    eps = float(config.get("rms_norm_eps", 1e-6))
    max_pos = int(config.get("max_position_embeddings", 2048))

    g = _Graph()
    cos, sin = rotary_caches(config, max_pos)
    g.init("cos_cache", cos)
    g.init("sin_cache", sin)
    g.init("slice_start", np.array([-1], np.int64))
    g.init("slice_end", np.array([np.iinfo(np.int64).max], np.int64))
    g.init("slice_axis", np.array([1], np.int64))
    g.init("mlp_split", np.array([config["intermediate_size"]] * 2, np.int64))

    w = lambda k: weights[k]  # noqa: E731
    x = g.node("Gather", [g.init("embed_tokens", w("model.embed_tokens.weight")), "input_ids"], name="embed")[0]
    residual = x
    pending = None  # output of the previous MLP, added to the residual by the next norm
    for i in range(layers):
        p = f"model.layers.{i}"
        ln1 = g.init(f"{p}.input_layernorm", w(f"{p}.input_layernorm.weight"))
        if pending is None:
            h = g.node("SimplifiedLayerNormalization", [x, ln1], name=f"{p}/ln1", axis=-1, epsilon=eps, stash_type=1)[0]
        else:
            h, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [pending, residual, ln1], n_out=4,
                                       domain="com.microsoft", name=f"{p}/ln1", epsilon=eps)
        qkv_w = np.concatenate([w(f"{p}.self_attn.{k}_proj.weight") for k in "qkv"], axis=0).T
        qkv = g.node("MatMul", [h, g.init(f"{p}.qkv_proj", qkv_w)], name=f"{p}/qkv_proj")[0]
        attn = g.node(
            "GroupQueryAttention",
            [qkv, "", "", f"past_key_values.{i}.key", f"past_key_values.{i}.value", "seqlens_k",
             "total_sequence_length", "cos_cache", "sin_cache"],
            outputs=[f"{p}/attn", f"present.{i}.key", f"present.{i}.value"],
            domain="com.microsoft", name=f"{p}/gqa",
            num_heads=heads, kv_num_heads=kv_heads, do_rotary=1, rotary_interleaved=0,
            scale=float(1.0 / np.sqrt(head_dim)),
        )[0]
        o = g.node("MatMul", [attn, g.init(f"{p}.o_proj", w(f"{p}.self_attn.o_proj.weight").T)], name=f"{p}/o_proj")[0]
        ln2 = g.init(f"{p}.post_attention_layernorm", w(f"{p}.post_attention_layernorm.weight"))
        h2, _, _, residual = g.node("SkipSimplifiedLayerNormalization", [o, residual, ln2], n_out=4,
                                    domain="com.microsoft", name=f"{p}/ln2", epsilon=eps)
        # gate and up read the same input: one MatMul (one activation quantization) for both
        gate_up_w = np.concatenate([w(f"{p}.mlp.gate_proj.weight"), w(f"{p}.mlp.up_proj.weight")], axis=0).T
        gate_up = g.node("MatMul", [h2, g.init(f"{p}.gate_up_proj", gate_up_w)], name=f"{p}/gate_up_proj")[0]
        gate, up = g.node("Split", [gate_up, "mlp_split"], n_out=2, name=f"{p}/split", axis=-1)
        sig = g.node("Sigmoid", [gate], name=f"{p}/sigmoid")[0]
        silu = g.node("Mul", [gate, sig], name=f"{p}/silu")[0]
        act = g.node("Mul", [silu, up], name=f"{p}/act")[0]
        pending = g.node("MatMul", [act, g.init(f"{p}.down_proj", w(f"{p}.mlp.down_proj.weight").T)], name=f"{p}/down_proj")[0]

    final = g.init("model.norm", w("model.norm.weight"))
    last_in = g.node("Slice", [pending, "slice_start", "slice_end", "slice_axis"], name="last_mlp")[0]
    last_res = g.node("Slice", [residual, "slice_start", "slice_end", "slice_axis"], name="last_residual")[0]
    normed = g.node("SkipSimplifiedLayerNormalization", [last_in, last_res, final], n_out=1,
                    domain="com.microsoft", name="final_norm", epsilon=eps)[0]
    g.node("MatMul", [normed, g.init("lm_head", w("lm_head.weight").T)], name="lm_head", outputs=["logits"])

    kv_shape = ["batch_size", kv_heads, "max_sequence_length", head_dim]
    inputs = [
        helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch_size", "sequence_length"]),
        helper.make_tensor_value_info("seqlens_k", TensorProto.INT32, ["batch_size"]),
        helper.make_tensor_value_info("total_sequence_length", TensorProto.INT32, []),
    ]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch_size", 1, vocab])]
    for i in range(layers):
        for kind in ("key", "value"):
            inputs.append(helper.make_tensor_value_info(f"past_key_values.{i}.{kind}", TensorProto.FLOAT, kv_shape))
            outputs.append(helper.make_tensor_value_info(f"present.{i}.{kind}", TensorProto.FLOAT, kv_shape))
    graph = helper.make_graph(g.nodes, "fused_decoder", inputs, outputs, initializer=g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)],
                              producer_name="shared.modelops.fused")
    model.ir_version = 8
    return model


def build_fused(hf_dir: str | Path, dest: str | Path) -> Path:
    """Writes the fp32 fused graph to `dest` (quantize it afterwards)."""
    from .quantize import _save

    config, weights = load_llama_weights(hf_dir)
    model = build_fused_model(config, weights)
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    _save(model, dest)
    return dest
