"""TransformerLens's `utils`: the names TL code imports, over hookgpt's implementations."""

from typing import Any, Optional, Union

import numpy as np
import torch
from torch import Tensor

from hookgpt.cache import get_act_name  # noqa: F401  (TL's compact names included)
from hookgpt.model import infer_attention_mask
from hookgpt.slicing import Slice, SliceInput  # noqa: F401

USE_DEFAULT_VALUE = None


def to_numpy(tensor: Any) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, (list, tuple)):
        return np.array(tensor)
    if isinstance(tensor, Tensor):
        return tensor.detach().cpu().numpy()
    if isinstance(tensor, (int, float, bool, str)):
        return np.array(tensor)
    raise ValueError(f"Input to to_numpy has invalid type: {type(tensor)}")


def get_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def get_attention_mask(tokenizer: Any, tokens: Tensor, prepend_bos: bool) -> Tensor:
    """TL's rule: pads on `tokenizer.padding_side` are masked (a leading pad that is the BOS is not)."""
    if tokenizer is None:
        return torch.ones_like(tokens)
    return infer_attention_mask(tokens, tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.padding_side, prepend_bos)


def remove_batch_dim(tensor: Tensor) -> Tensor:
    return tensor[0] if tensor.shape[0] == 1 else tensor


def transpose(tensor: Tensor) -> Tensor:
    return tensor.transpose(-1, -2)


def get_corner(tensor: Any, n: int = 3) -> Any:
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.ndim))]


def lm_cross_entropy_loss(logits: Tensor, tokens: Tensor, attention_mask: Optional[Tensor] = None, per_token: bool = False) -> Tensor:
    log_probs = logits.log_softmax(dim=-1)
    correct = log_probs[..., :-1, :].gather(-1, tokens[..., 1:, None])[..., 0]
    if attention_mask is not None:
        keep = (attention_mask[:, :-1] * attention_mask[:, 1:]).to(correct.dtype)
        return -correct * keep if per_token else -(correct * keep).sum() / keep.sum()
    return -correct if per_token else -correct.mean()


def test_prompt(
    prompt: str,
    answer: Union[str, list[str]],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: Optional[bool] = USE_DEFAULT_VALUE,
    top_k: int = 10,
) -> None:
    """Print how the model tokenizes `prompt` + `answer` and how it ranks each answer token."""
    answers = [answer] if isinstance(answer, str) else list(answer)
    for answer in answers:
        if prepend_space_to_answer and not answer.startswith(" "):
            answer = " " + answer
        prompt_str_tokens = model.to_str_tokens(prompt, prepend_bos=prepend_bos)
        answer_str_tokens = model.to_str_tokens(answer, prepend_bos=False)
        prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
        answer_tokens = model.to_tokens(answer, prepend_bos=False)
        tokens = torch.cat([prompt_tokens, answer_tokens], dim=1)
        n_prompt = prompt_tokens.shape[1]
        if print_details:
            print("Tokenized prompt:", prompt_str_tokens)
            print("Tokenized answer:", answer_str_tokens)
        with torch.no_grad():
            probs = model(tokens)[0].softmax(dim=-1)
        for i, token in enumerate(answer_tokens[0].tolist()):
            dist = probs[n_prompt - 1 + i]
            rank = int((dist > dist[token]).sum())
            if print_details:
                print(f"Performance on answer token:\nRank: {rank: <8} Prob: {dist[token].item():6.2%} Token: |{model.to_string([token])}|")
                values, indices = dist.topk(top_k)
                for k, (p, idx) in enumerate(zip(values.tolist(), indices.tolist())):
                    print(f"Top {k}th token. Prob: {p:6.2%} Token: |{model.to_string([idx])}|")


def _tokenize_batch(texts: list[str], tokenizer: Any) -> list[int]:
    """TL's tokenization of one batch: texts joined by EOS, split into 20 chunks at whitespace,
    each chunk tokenized, the tokens concatenated."""
    full_text = tokenizer.eos_token.join(texts)
    if not full_text.strip():
        return []
    num_chunks = 20
    chunk_length = (len(full_text) - 1) // num_chunks + 1
    lookahead = chunk_length // 10
    chunks, start = [], 0
    for _ in range(num_chunks):
        end = min(start + chunk_length, len(full_text))
        boundary = min(end + lookahead, len(full_text))
        while end < boundary and not full_text[end].isspace():
            end += 1
        chunks.append(full_text[start:end])
        start = end
    return [token for chunk in chunks if chunk for token in tokenizer.encode(chunk)]


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int = 10,
) -> Any:
    """TL's `tokenize_and_concatenate`: every text joined by EOS, tokenized, cut into rows of
    `max_length` tokens (the first one BOS with `add_bos_token`), the tail dropped. `dataset` is a
    Hugging Face `datasets.Dataset` (returns one with a "tokens" column in torch format), or a list
    of strings / a dict with `column_name` (returns `{"tokens": LongTensor[rows, max_length]}`).
    Batches of 1000 texts are tokenized separately, as TL's `Dataset.map(batched=True)` does."""
    from hookgpt import Tokenizer

    if not isinstance(tokenizer, Tokenizer):
        from analyses.compat.transformer_lens.HookedTransformer import _as_hookgpt_tokenizer

        tokenizer = _as_hookgpt_tokenizer(tokenizer)
    texts = list(dataset) if isinstance(dataset, (list, tuple)) else list(dataset[column_name])
    seq_len = max_length - 1 if add_bos_token else max_length
    rows = []
    for start in range(0, len(texts), 1000):
        tokens = torch.tensor(_tokenize_batch(texts[start : start + 1000], tokenizer), dtype=torch.long)
        n_rows = len(tokens) // seq_len
        batch_rows = tokens[: n_rows * seq_len].reshape(n_rows, seq_len)
        if add_bos_token:
            batch_rows = torch.cat([torch.full((n_rows, 1), tokenizer.bos_token_id), batch_rows], dim=1)
        rows.append(batch_rows)
    tokens = torch.cat(rows) if rows else torch.zeros(0, max_length, dtype=torch.long)
    if isinstance(dataset, (list, tuple, dict)):
        return {"tokens": tokens}
    from datasets import Dataset

    return Dataset.from_dict({"tokens": tokens.tolist()}).with_format(type="torch")
