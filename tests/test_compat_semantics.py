"""hookgpt's own API where TransformerLens 2.18 has a namesake (issue 12, part 1): padding side,
padding without an attention mask, and hooks that mask a whole attention row."""

import pytest
import torch

from hookgpt import GPTConfig, HookedGPT
from hookgpt.model import infer_attention_mask

PAD = 50256  # GPT-2: pad = BOS = EOS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return HookedGPT(GPTConfig(n_layers=2, d_model=32, n_heads=4, d_vocab=50257, n_ctx=32)).eval()


def test_tokenizer_padding_side_is_honoured(model):
    prompts = ["Hello world, how are you", "Hi"]
    right = model.to_tokens(prompts)
    assert right[1, -1] == PAD and right[1, 1] != PAD
    model.tokenizer.padding_side = "left"
    try:
        left = model.to_tokens(prompts)
        assert left[1, 0] == PAD and left[1, -1] == right[1, 1]
        assert torch.equal(model.to_tokens(prompts, padding_side="right"), right)  # the argument wins
        # text through forward is padded on the tokenizer's side too, and its mask follows
        logits = model(prompts)
        alone = model("Hi")
        torch.testing.assert_close(logits[1, -2:], alone[0], atol=1e-5, rtol=0)
    finally:
        model.tokenizer.padding_side = "right"
    other = HookedGPT(model.cfg)
    assert other.tokenizer.padding_side == "right"  # each model has its own tokenizer object
    with pytest.raises(ValueError, match="padding_side"):
        model(prompts, padding_side="middle")


def test_infer_attention_mask_follows_transformer_lens():
    t = torch.tensor([[PAD, PAD, PAD, 5, 6], [PAD, 7, 8, 9, PAD]])
    # left: leading pads are padding, except the last one, the BOS of a prepend_bos prompt
    assert infer_attention_mask(t, PAD, PAD, "left", prepend_bos=True).tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert infer_attention_mask(t, PAD, PAD, "left", prepend_bos=False).tolist() == [[0, 0, 0, 1, 1], [0, 1, 1, 1, 1]]
    assert infer_attention_mask(t, PAD, PAD, "right").tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]]


def test_left_padded_tokens_without_mask_do_not_attend_to_padding(model):
    tokens = model.to_tokens(["a b c d e f", "a b"], padding_side="left")
    with_mask = model(tokens, attention_mask=infer_attention_mask(tokens, PAD, PAD, "left"))
    inferred = model(tokens, padding_side="left")
    torch.testing.assert_close(inferred, with_mask)
    alone = model("a b")
    torch.testing.assert_close(inferred[1, -alone.shape[1]:], alone[0], atol=1e-5, rtol=0)
    model.tokenizer.padding_side = "left"
    try:
        torch.testing.assert_close(model(tokens), inferred)  # the tokenizer's side, as TL
    finally:
        model.tokenizer.padding_side = "right"
    small = HookedGPT(GPTConfig(n_layers=1, d_model=16, n_heads=2, d_vocab=20, n_ctx=8))
    with pytest.raises(ValueError, match="no tokenizer; pass attention_mask"):
        small(torch.zeros(1, 4, dtype=torch.long), padding_side="left")


def test_hook_masking_a_whole_row_gives_zero_pattern_not_nan(model):
    def mask_row(scores, hook):
        scores[:, :, 2, :] = float("-inf")
        return scores

    seen = {}
    logits = model.run_with_hooks(
        torch.arange(6)[None],
        fwd_hooks=[("blocks.0.attn.hook_attn_scores", mask_row), ("blocks.0.attn.hook_pattern", lambda p, hook: seen.update(p=p.clone()))],
    )
    assert torch.isfinite(logits).all()
    assert torch.equal(seen["p"][:, :, 2], torch.zeros_like(seen["p"][:, :, 2]))
    torch.testing.assert_close(seen["p"][:, :, 3].sum(-1), torch.ones(1, 4))
