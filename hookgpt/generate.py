"""Generation: continue a prompt one token at a time.

The whole idea is a loop:

    tokens = prompt
    repeat max_new_tokens times:
        logits = model(tokens)[:, -1]        # the model's distribution over the next token
        next_token = logits.argmax(-1)       # greedy (or a sample, see `sample_next_token`)
        tokens = append(tokens, next_token)

Three refinements make it practical:

- **KV cache.** Running the model on the whole sequence at every step repeats the work of all
  earlier positions. Their keys and values never change (attention is causal), so we keep them
  in a `KVCache` and feed the model only the newest token: one prompt pass, then one position
  per step. Hooks still fire, on the new position only (`[batch, 1, ...]` activations).
- **Batches.** Prompts of different lengths are padded on the LEFT, so every row's last token
  is in the last column. The attention mask keeps padding invisible and positions are counted
  over real tokens, so a padded prompt continues exactly as it would alone.
- **Stopping.** A row that produces the end-of-text token is finished; it is padded from then on,
  and the loop ends when every row is finished.
"""

import contextlib
import math
import numbers
from collections.abc import Iterator
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm  # text bars: work in terminals and notebooks alike, no ipywidgets needed

from hookgpt import tokenizer as tok
from hookgpt.errors import ArgumentError, ArgumentTypeError
from hookgpt.kv_cache import KVCache
from hookgpt.model import HookedGPT, _checked_mask

# `generate` checks its arguments itself (`_check_options`, `_prompt_tokens`), so the boundary
# types are broad: a wrong value gets a message naming the argument, not a type-checker dump.
Prompt = Any  # a string, a list of strings, or token ids [batch, pos] / [pos]
Number = Any  # an int or a float (or None where the option allows it)
OptionalInt = Any  # an int or None
GenerateOutput = Union[str, list[str], Int[Tensor, "batch all_pos"], Int[Tensor, "all_pos"]]  # prompt + new tokens
StreamPiece = Union[str, list[str], Int[Tensor, "batch"]]
RETURN_TYPES = ("auto", "str", "tokens")


# ---------------------------------------------------------------------------------------------
# Choosing the next token
# ---------------------------------------------------------------------------------------------


def sample_next_token(
    logits: Float[Tensor, "batch d_vocab"],
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Int[Tensor, "batch"]:
    """The next token of each row: the argmax (greedy), or a sample from the distribution
    sharpened by `temperature` and restricted to the `top_k` most likely tokens and/or the
    smallest set of tokens whose probability adds up to `top_p` (nucleus sampling)."""
    if not do_sample or temperature == 0:
        return logits.argmax(dim=-1)
    # in float64 (a Python float temperature is one: 9e-80 would be 0 in float32), with the best
    # logit shifted to 0 first (softmax ignores a shift): a tiny temperature then gives -inf,
    # never +inf, so the distribution stays defined (it tends to the argmax)
    logits = logits.double()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth_largest = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth_largest, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        sorted_probs = sorted_logits.softmax(dim=-1)
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs  # probability of the more likely tokens
        remove = (mass_before > top_p).scatter(-1, order, mass_before > top_p)
        logits = logits.masked_fill(remove, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)[:, 0]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _generating(model: HookedGPT) -> Iterator[None]:
    """Mark the forward passes of a generation loop (`model.generating`): an intervention at a
    position the sequence has not reached yet waits for it instead of being an error."""
    outer, model.generating = model.generating, True
    try:
        yield
    finally:
        model.generating = outer


def generate_tokens(
    model: HookedGPT,
    tokens: Int[Tensor, "batch pos"],
    max_new_tokens: int,
    attention_mask: Optional[Int[Tensor, "batch pos"]] = None,
    eos_token_ids: Optional[list[int]] = None,
    use_kv_cache: bool = True,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    generator: Optional[torch.Generator] = None,
) -> Iterator[Int[Tensor, "batch"]]:
    """Yield the next token of every row, one step at a time (the core loop of `generate`).

    `tokens` must be left padded (`attention_mask` 0 on padding) and already validated. Rows that
    produced one of `eos_token_ids` continue with the first EOS id as padding; the loop stops
    when all rows have finished.
    """
    batch = tokens.shape[0]
    device = tokens.device
    eos = None if not eos_token_ids else torch.tensor(eos_token_ids, device=device)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    cache = KVCache.empty(model.cfg, batch, device=model.device, dtype=model.W_E.dtype) if use_kv_cache else None
    step_input, step_mask = tokens, attention_mask  # what the next forward pass sees

    for step in range(max_new_tokens):
        with torch.no_grad(), _generating(model):
            logits = model(step_input, attention_mask=step_mask, past_kv_cache=cache)[:, -1]  # [batch, d_vocab]
            next_token = sample_next_token(logits, do_sample, temperature, top_k, top_p, generator)
            if eos is not None:
                next_token = torch.where(finished, eos[0], next_token)
                finished |= torch.isin(next_token, eos)
        yield next_token
        if step == max_new_tokens - 1 or (eos is not None and bool(finished.all())):
            return
        if cache is not None:  # the cache holds everything before: feed only the new token
            step_input, step_mask = next_token[:, None], None
        else:
            step_input = torch.cat([step_input, next_token[:, None]], dim=1)
            if step_mask is not None:
                step_mask = torch.cat([step_mask, torch.ones_like(step_mask[:, :1])], dim=1)


# ---------------------------------------------------------------------------------------------
# Text or tokens in, text or tokens out
# ---------------------------------------------------------------------------------------------


def generate(
    model: HookedGPT,
    input: Prompt = "",
    max_new_tokens: Any = 10,
    temperature: Number = 1.0,
    top_k: OptionalInt = None,
    top_p: Number = None,
    do_sample: bool = False,
    eos_token_id: Any = None,
    stop_at_eos: bool = True,
    use_kv_cache: bool = True,
    seed: OptionalInt = None,
    stream: bool = False,
    prepend_bos: bool = True,
    return_type: Any = "auto",
    attention_mask: Any = None,
    truncate: bool = False,
    verbose: bool = False,
) -> Union[GenerateOutput, Iterator[StreamPiece]]:
    """Continue a prompt (greedy by default).

    Args:
        input: a string, a list of strings (left padded into one batch), or token ids `[pos]` /
            `[batch, pos]` (left padded, with `attention_mask`, if the rows differ in length).
        max_new_tokens: how many tokens to add at most.
        do_sample: sample instead of taking the argmax; `temperature`, `top_k` and `top_p`
            shape the distribution. `seed` makes sampling reproducible.
        eos_token_id: the token(s) that end a row (default: the tokenizer's end-of-text);
            with `stop_at_eos=False` generation always runs `max_new_tokens` steps.
        use_kv_cache: reuse the keys/values of earlier positions (same output, much faster).
        stream: return an iterator yielding each step's new text (a str, or a list of str for a
            batch) or, for token input, the new token of every row (`[batch]`).
        prepend_bos: put the BOS token before text prompts.
        return_type: "auto" (text in -> text out, tokens in -> tokens out), "str" or "tokens".
        truncate: when prompt + max_new_tokens exceeds the context n_ctx, drop the oldest
            prompt tokens instead of raising.
        verbose: show a progress bar.

    Returns:
        Text: each prompt followed by its continuation (up to, not including, the EOS token).
        Tokens: the input followed by the new tokens, `[batch, pos + n_new]` (`[pos + n_new]` for
        1-D input); finished rows are padded with the EOS token. Fewer than `max_new_tokens`
        columns are added when every row stops early.
    """
    _check_options(max_new_tokens, temperature, top_k, top_p, do_sample, return_type, seed)
    temperature, top_p = float(temperature), None if top_p is None else float(top_p)  # 1 -> 1.0
    max_new_tokens, top_k = int(max_new_tokens), None if top_k is None else int(top_k)  # numpy ints too
    text_input = isinstance(input, (str, list))
    tokens, mask = _prompt_tokens(model, input, prepend_bos, attention_mask)
    tokens, mask = _fit_context(model, tokens, mask, max_new_tokens, truncate)
    tokens = model._validated_tokens(tokens, 0)  # ids in range and length <= n_ctx, before any compute
    mask = None if mask is None or bool(mask.all()) else mask.to(tokens.device)

    eos_ids = _eos_ids(model, eos_token_id) if stop_at_eos else None
    generator = None
    if do_sample and seed is not None:
        generator = torch.Generator(device=tokens.device)
        generator.manual_seed(seed)
    steps = generate_tokens(
        model, tokens, max_new_tokens, mask, eos_ids, use_kv_cache, do_sample, temperature, top_k, top_p, generator
    )
    if verbose:
        steps = iter(tqdm(steps, total=max_new_tokens, desc="generating", disable=None))

    as_text = return_type == "str" or (return_type == "auto" and text_input)
    if stream:
        return _stream_text(model, steps, input, eos_ids) if as_text else steps
    new = [t[:, None] for t in steps]
    new_tokens = torch.cat(new, dim=1) if new else tokens.new_zeros((tokens.shape[0], 0))
    if as_text:
        texts = [
            _prompt_text(model, input, tokens, mask, row) + model.tokenizer.decode(_until_eos(new_tokens[row], eos_ids))
            for row in range(tokens.shape[0])
        ]
        return texts[0] if isinstance(input, str) else texts
    original = input if isinstance(input, Tensor) else tokens
    out = torch.cat([original.to(new_tokens.device) if original.ndim == 2 else original[None].to(new_tokens.device), new_tokens], dim=1)
    return out[0] if isinstance(input, Tensor) and input.ndim == 1 else out


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_options(
    max_new_tokens: Any, temperature: Any, top_k: Any, top_p: Any, do_sample: Any, return_type: Any, seed: Any = None
) -> None:
    """Every sampling option has the right type and range, before any compute."""
    if not _is_int(max_new_tokens) or max_new_tokens < 0:
        raise ArgumentError(f"max_new_tokens must be a non-negative integer, got {max_new_tokens!r}")
    if not _is_number(temperature):
        raise ArgumentTypeError(f"temperature must be a number >= 0 (0 means greedy), got {type(temperature).__name__} {temperature!r}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ArgumentError(f"temperature must be a finite number >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ArgumentError(f"top_k must be a positive integer or None, got {top_k!r}")
    if top_p is not None and (not _is_number(top_p) or not 0 < top_p <= 1):
        raise ArgumentError(f"top_p must be a number in (0, 1] or None, got {top_p!r}")
    if not isinstance(do_sample, bool):
        raise ArgumentTypeError(f"do_sample must be True or False, got {do_sample!r}")
    if seed is not None and not _is_int(seed):
        raise ArgumentTypeError(f"seed must be an integer or None, got {seed!r}")
    if return_type not in RETURN_TYPES:
        raise ArgumentError(f"return_type must be one of {list(RETURN_TYPES)}, got {return_type!r}")


def _prompt_tokens(
    model: HookedGPT, input: Prompt, prepend_bos: bool, attention_mask: Optional[Tensor]
) -> tuple[Int[Tensor, "batch pos"], Optional[Int[Tensor, "batch pos"]]]:
    """Token ids `[batch, pos]` and attention mask of the prompt, left padded."""
    if isinstance(input, (str, list)):
        if attention_mask is not None:
            raise ArgumentError("attention_mask is only for token input; text prompts get their mask from the tokenizer")
        tokens, mask = tok.to_tokens_with_mask(model.tokenizer, input, prepend_bos=prepend_bos, padding_side="left")
        return tokens.to(model.device), mask.to(model.device)
    if not isinstance(input, Tensor):
        raise ArgumentTypeError(f"input: expected a string, a list of strings or a tensor of token ids, got {type(input).__name__}")
    if input.is_floating_point() or input.is_complex() or input.dtype == torch.bool:
        raise ArgumentTypeError(f"input: token ids must be an integer tensor, got {input.dtype}")
    if input.ndim not in (1, 2):
        raise ArgumentError(f"input: token ids must have shape [pos] or [batch, pos], got shape {tuple(input.shape)}")
    tokens = input[None] if input.ndim == 1 else input
    if attention_mask is None:
        return tokens, None
    mask = _checked_mask(attention_mask, tuple(tokens.shape)).to(tokens.device)
    if not (bool((mask[:, 1:] >= mask[:, :-1]).all()) and bool(mask[:, -1].all())):
        raise ArgumentError("attention_mask: generate needs LEFT padding: each attention_mask row must be 0s (padding) followed by 1s")
    return tokens, mask


def _fit_context(
    model: HookedGPT, tokens: Tensor, mask: Optional[Tensor], max_new_tokens: int, truncate: bool
) -> tuple[Tensor, Optional[Tensor]]:
    """Check prompt + new tokens fit in n_ctx; with `truncate`, keep the most recent prompt tokens."""
    n_ctx, n_prompt = model.cfg.n_ctx, tokens.shape[1]
    if n_prompt + max_new_tokens <= n_ctx:
        return tokens, mask
    if not truncate or max_new_tokens >= n_ctx:
        raise ArgumentError(
            f"the prompt ({n_prompt} tokens) plus max_new_tokens={max_new_tokens} is longer than the model's "
            f"context n_ctx={n_ctx}; shorten the prompt, lower max_new_tokens"
            + (" or pass truncate=True to drop the oldest prompt tokens" if max_new_tokens < n_ctx else "")
        )
    keep = n_ctx - max_new_tokens
    return tokens[:, -keep:], None if mask is None else mask[:, -keep:]


def _eos_ids(model: HookedGPT, eos_token_id: Any) -> Optional[list[int]]:
    """The EOS ids to stop at: as given, else the tokenizer's (None when the model has none)."""
    if eos_token_id is not None:
        ids = [eos_token_id] if isinstance(eos_token_id, int) else eos_token_id
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise ArgumentTypeError(f"eos_token_id must be a token id, a list of token ids or None, got {eos_token_id!r}")
        ids = list(ids)
        for i in ids:
            if not 0 <= i < model.cfg.d_vocab:
                raise ArgumentError(f"eos_token_id {i} is out of range for d_vocab={model.cfg.d_vocab}")
        return ids
    try:
        eos = model.tokenizer.eos_token_id
    except ValueError:  # no tokenizer fits this vocabulary: generation runs max_new_tokens steps
        return None
    return [eos] if eos < model.cfg.d_vocab else None


def _until_eos(row: Int[Tensor, "pos"], eos_ids: Optional[list[int]]) -> list[int]:
    ids = row.tolist()
    if eos_ids:
        for i, token in enumerate(ids):
            if token in eos_ids:
                return ids[:i]
    return ids


def _prompt_text(model: HookedGPT, input: Prompt, tokens: Tensor, mask: Optional[Tensor], row: int) -> str:
    """The prompt as text: the string given, or the decoded real (unpadded) prompt tokens."""
    if isinstance(input, str):
        return input
    if isinstance(input, list):
        return input[row]
    ids = tokens[row] if mask is None else tokens[row][mask[row].bool()]
    return model.tokenizer.decode(ids)


def _stream_text(
    model: HookedGPT, steps: Iterator[Tensor], input: Prompt, eos_ids: Optional[list[int]]
) -> Iterator[Union[str, list[str]]]:
    """Turn the token steps into text pieces. A token can end in the middle of a UTF-8
    character; such a tail is held back until the next token completes it."""
    tokenizer = model.tokenizer
    new_ids: Optional[list[list[int]]] = None
    emitted: list[str] = []
    done: list[bool] = []
    for next_token in steps:
        if new_ids is None:
            n = next_token.shape[0]
            new_ids, emitted, done = [[] for _ in range(n)], [""] * n, [False] * n
        pieces = []
        for row, token in enumerate(next_token.tolist()):
            if not done[row] and eos_ids and token in eos_ids:
                done[row] = True
            if not done[row]:
                new_ids[row].append(token)
            text = tokenizer.decode(new_ids[row])
            if not done[row]:
                text = text.rstrip("\ufffd")  # an incomplete character: wait for its other bytes
            pieces.append(text[len(emitted[row]) :])
            emitted[row] = emitted[row] + pieces[-1]
        yield pieces[0] if isinstance(input, str) else pieces
    if new_ids is not None:  # whatever was held back at the very end
        tails = [tokenizer.decode(ids)[len(text) :] for ids, text in zip(new_ids, emitted)]
        if any(tails):
            yield tails[0] if isinstance(input, str) else tails
