"""Helpers for tests that compare hookgpt with Hugging Face's GPT-2: small random checkpoints
written in HF format, and GPT-2 tokenizer files made from the vocabulary shipped with hookgpt.

Import them in a test module (`from hf_utils import save_random_hf_gpt2`); `transformers` is
imported lazily so collecting the tests stays fast.
"""

import gzip
import os
from pathlib import Path
from typing import Any, Optional

import torch

GPT2_VOCAB = 50257
GPT2_EOS = 50256
GPT2_DATA = Path(__file__).resolve().parents[1] / "hookgpt" / "data" / "gpt2"


def random_hf_gpt2(
    n_layer: int = 2,
    n_embd: int = 64,
    n_head: int = 4,
    vocab_size: int = 1000,
    n_positions: int = 64,
    n_inner: Optional[int] = None,
    tie_word_embeddings: bool = True,
    activation_function: str = "gelu_new",
    seed: int = 0,
    attn_implementation: str = "eager",
    **config_kwargs: Any,
):
    """A `GPT2LMHeadModel` (eval mode) with random weights everywhere, LayerNorm gains and all
    biases included (GPT-2's init leaves those at 1 and 0, which would hide folding bugs)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    special = min(GPT2_EOS, vocab_size - 1)
    config = GPT2Config(
        n_layer=n_layer,
        n_embd=n_embd,
        n_head=n_head,
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_inner=n_inner,
        tie_word_embeddings=tie_word_embeddings,
        activation_function=activation_function,
        bos_token_id=special,
        eos_token_id=special,
        pad_token_id=special,
        attn_implementation=attn_implementation,
        **config_kwargs,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight")):
                param.copy_(1.0 + 0.2 * noise)
            elif name.endswith("bias"):
                param.copy_(0.1 * noise)
            elif name.endswith(("wte.weight", "wpe.weight", "lm_head.weight")):
                param.copy_(0.1 * noise)
            else:  # Conv1D weights [fan_in, fan_out]
                param.copy_(noise / param.shape[0] ** 0.5)
    return model.eval()


def save_random_hf_gpt2(directory: os.PathLike, tokenizer_files: bool = False, **kwargs: Any):
    """Write a random GPT-2 (see `random_hf_gpt2`) to `directory` with `save_pretrained`;
    with `tokenizer_files`, add GPT-2's `vocab.json` + `merges.txt`. Returns the HF model."""
    model = random_hf_gpt2(**kwargs)
    model.save_pretrained(str(directory))
    if tokenizer_files:
        write_gpt2_tokenizer_files(directory)
    return model


def write_gpt2_tokenizer_files(directory: os.PathLike) -> None:
    """GPT-2's `vocab.json` and `merges.txt`, from the copy shipped with hookgpt."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "vocab.json").write_bytes(gzip.decompress((GPT2_DATA / "encoder.json.gz").read_bytes()))
    (directory / "merges.txt").write_bytes(gzip.decompress((GPT2_DATA / "vocab.bpe.gz").read_bytes()))


def real_gpt2_cached() -> bool:
    """Whether a pretrained `gpt2` is in the local Hugging Face cache."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache("gpt2", "config.json")
    return isinstance(found, str)
