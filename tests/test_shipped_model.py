"""The shipped model: loads offline, matches its model card, and has the heads the card promises."""

import json

import pytest
import torch

from analyses import heads
from hookgpt import HookedGPT
from hookgpt.loading import SHIPPED_DIR, list_shipped_models
from hookgpt.train import TrainConfig, evaluate, load_tokens, prepare_data

CARD = json.loads((SHIPPED_DIR / "hookgpt-shakespeare" / "card.json").read_text())
# Issue 4 asks for a previous-token and an induction head (score >= 0.4). Where the model card says
# the shipped model lacks one, its test is an expected failure, strictly: it starts failing (and
# asks for this line to change) as soon as a retrained model has the head.
BEST = {kind: max(max(row) for row in CARD["head_scans"][kind]) for kind in ("previous_token", "induction")}
NO_INDUCTION = pytest.mark.xfail(BEST["induction"] < 0.4, strict=True, reason="issue 4: the shipped model has no induction head yet")
NO_PREVIOUS = pytest.mark.xfail(BEST["previous_token"] < 0.4, strict=True, reason="issue 4: the shipped model has no previous-token head yet")


@pytest.fixture(scope="module")
def model():
    return HookedGPT.from_pretrained("hookgpt-shakespeare")


def test_is_listed_and_small():
    assert "hookgpt-shakespeare" in list_shipped_models()
    weights = SHIPPED_DIR / "hookgpt-shakespeare" / "model.safetensors"
    assert weights.stat().st_size <= 30 * 2**20
    assert (SHIPPED_DIR / "hookgpt-shakespeare" / "MODEL_CARD.md").exists()


def test_loads_offline_in_float32(model):
    assert model.cfg.dtype == torch.float32 and model.W_E.dtype == torch.float32
    assert model.cfg.n_layers == CARD["config"]["n_layers"] and model.cfg.d_model == CARD["config"]["d_model"]
    assert model.n_params() == CARD["parameters"]


def test_validation_loss_matches_card(model, tmp_path):
    train_cfg = TrainConfig.from_dict(CARD["training"]["stages"][-1]["train_config"])  # the Shakespeare stage
    prepare_data(None, tmp_path, train_cfg.val_fraction)
    loss = evaluate(model, load_tokens(tmp_path, "val"), train_cfg, torch.device("cpu"))
    assert loss == pytest.approx(CARD["evaluation"]["val_loss"], abs=0.05)
    # and it learned Shakespeare: far below the loss of a uniform guess over its vocabulary (ln 50257 = 10.8)
    assert loss < 7.5


def test_head_scans_match_card(model):
    for kind, scan in (("previous_token", heads.previous_token_scores), ("induction", heads.induction_scores)):
        torch.testing.assert_close(scan(model), torch.tensor(CARD["head_scans"][kind]), atol=0.02, rtol=0)


@NO_INDUCTION
def test_has_an_induction_head(model):
    scores = heads.induction_scores(model)
    assert scores.max() >= 0.4, scores
    layer, head = divmod(int(scores.argmax()), model.cfg.n_heads)
    assert layer >= 1, "an induction head needs a previous-token head below it"
    card_top = CARD["top_heads"]["induction"][0]
    assert (layer, head) == (card_top["layer"], card_top["head"])


@NO_PREVIOUS
def test_has_a_previous_token_head(model):
    scores = heads.previous_token_scores(model)
    assert scores.max() >= 0.4, scores
    card_top = CARD["top_heads"]["previous_token"][0]
    assert divmod(int(scores.argmax()), model.cfg.n_heads) == (card_top["layer"], card_top["head"])


@NO_INDUCTION
def test_the_model_uses_its_induction_heads(model):
    """The heads are not only shaped right: the model predicts a repeated sequence by copying,
    and zero-ablating its induction heads (the card's heads scoring >= 0.3; the model spreads
    induction over several heads) takes that away."""
    tokens = heads.repeated_random_tokens(model, seq_len=30, batch=8, seed=1)
    induction = [(l, h) for l, row in enumerate(CARD["head_scans"]["induction"]) for h, x in enumerate(row) if x >= 0.3]

    def ablate(z, hook):
        layer = int(hook.name.split(".")[1])
        z[:, :, [h for l, h in induction if l == layer]] = 0
        return z

    hooks = [(f"blocks.{layer}.attn.hook_z", ablate) for layer in sorted({l for l, _ in induction})]
    with torch.no_grad():
        clean = model(tokens, return_type="loss", loss_per_token=True)
        ablated = model.run_with_hooks(tokens, return_type="loss", loss_per_token=True, fwd_hooks=hooks)
    first_copy, second_copy = clean[:, :30].mean(), clean[:, 31:].mean()
    assert second_copy < first_copy - 0.5  # seen tokens are predicted better
    assert ablated[:, 31:].mean() > second_copy + 1.0  # and not without the induction heads

    line = model.to_tokens("Is this a dagger which I see before me, the handle toward my hand? Come, let me clutch thee.")
    repeated = torch.cat([line, line[:, 1:]], dim=1)  # BOS, line, line
    with torch.no_grad():
        loss = model(repeated, return_type="loss", loss_per_token=True)
    n = line.shape[1]
    assert loss[:, n:].mean() < loss[:, : n - 1].mean() - 2.0  # a repeated line of Macbeth is copied

# Issue 16 part 3's targets, which the shipped model was retrained to meet (its card records them).
TARGETS = {"previous_token": 0.6, "induction": 0.5, "second_copy_loss_ratio": 0.5, "val_loss": 5.55}  # the old model: 5.569


def test_validation_loss_beats_the_old_model(model, tmp_path):
    train_cfg = TrainConfig.from_dict(CARD["training"]["stages"][-1]["train_config"])
    prepare_data(None, tmp_path, train_cfg.val_fraction)
    assert evaluate(model, load_tokens(tmp_path, "val"), train_cfg, torch.device("cpu")) < TARGETS["val_loss"]


def test_heads_hold_across_the_context(model):
    """Previous-token >= 0.6 and induction >= 0.5 on repeated random corpus tokens of 20, 40 and 60
    tokens per copy (1 + 2 * 60 = 121 of the 128 positions), as the card says."""
    for seq_len in (20, 40, 60):
        tokens = heads.repeated_random_tokens(model, seq_len=seq_len, batch=8, seed=0)
        for kind, template, target in (("previous_token", heads.previous_token_template, TARGETS["previous_token"]),
                                       ("induction", heads.induction_template, TARGETS["induction"])):
            scores = heads.head_scores(model, tokens, template)
            torch.testing.assert_close(scores, torch.tensor(CARD["head_scans_by_length"][str(seq_len)][kind]), atol=0.02, rtol=0)
            assert scores.max() >= target, (seq_len, kind, scores)


def test_second_copy_loss_is_at_most_half_the_first(model):
    tokens = heads.repeated_random_tokens(model, seq_len=40, batch=8, seed=0)
    with torch.no_grad():
        loss = model(tokens, return_type="loss", loss_per_token=True)  # position i predicts token i + 1
    first, second = loss[:, :40].mean(), loss[:, 40:].mean()
    assert float(first) == pytest.approx(CARD["evaluation"]["copy"]["first_copy_loss"], abs=0.05)
    assert float(second) == pytest.approx(CARD["evaluation"]["copy"]["second_copy_loss"], abs=0.05)
    assert second <= TARGETS["second_copy_loss_ratio"] * first, (float(first), float(second))


def test_full_softmax_equals_the_corpus_softmax(model, tmp_path):
    """The ids that never occur in the corpus carry a bias of -100: the full softmax gives them no
    probability, so it equals the softmax over the corpus's ids the model was trained with; head
    scans draw random tokens from the other ids, and generation never produces a masked id."""
    masked = model.b_U <= -99.0
    assert masked.any(), "no id is masked"
    assert int(masked.sum()) == CARD["vocabulary"]["masked_ids"]
    prepare_data(None, tmp_path, 0.05)
    corpus = set(load_tokens(tmp_path, "train").tolist()) | set(load_tokens(tmp_path, "val").tolist())
    assert set(torch.nonzero(~masked).flatten().tolist()) == corpus
    val = torch.from_numpy(load_tokens(tmp_path, "val")[:512].astype("int64")).reshape(4, 128)
    with torch.no_grad():
        logits = model(val)
    full = logits.log_softmax(dim=-1)[..., ~masked]
    restricted = logits[..., ~masked].log_softmax(dim=-1)
    torch.testing.assert_close(full, restricted, atol=1e-5, rtol=0)
    assert set(heads.predictable_token_ids(model).tolist()) == corpus
    generated = model.generate("Friends, Romans, countrymen", max_new_tokens=30, do_sample=True, seed=0, return_type="tokens")
    assert not masked[generated].any()
