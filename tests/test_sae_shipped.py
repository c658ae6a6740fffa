"""The shipped SAE of the shipped model: loads offline by name and matches its card."""


import pytest

from analyses.sae import SAE, evaluate_sae, list_pretrained_saes, pretrained_sae_card, splice
from analyses.sae.saelens import SHIPPED_SAE_DIR
from hookgpt import HookedGPT
from hookgpt.train import load_tokens, prepare_data

NAME = "hookgpt-shakespeare-resid-pre-1"
CARD = pretrained_sae_card(NAME)


@pytest.fixture(scope="module")
def model():
    return HookedGPT.from_pretrained("hookgpt-shakespeare")


@pytest.fixture(scope="module")
def sae():
    return SAE.from_pretrained(NAME)


def test_listed_small_and_described(model, sae):
    assert NAME in list_pretrained_saes()
    assert sum(p.stat().st_size for p in (SHIPPED_SAE_DIR / NAME).iterdir()) < 2 * 2**20
    assert sae.cfg.d_in == model.cfg.d_model and sae.cfg.hook_name == CARD["hook_name"] == "blocks.1.hook_resid_pre"
    assert sae.cfg.to_dict() == CARD["config"]
    assert "python scripts/ship_sae.py" in (SHIPPED_SAE_DIR / NAME / "README.md").read_text()


@pytest.fixture(scope="module")
def val_tokens(tmp_path_factory):
    directory = tmp_path_factory.mktemp("shakespeare")
    prepare_data(None, directory, 0.05)
    return load_tokens(directory, "val")


def test_matches_its_card_on_held_out_text(model, sae, val_tokens):
    # an eighth of the card's rows keeps the test fast; L0, EV and CE recovered are averages, so close
    ev = evaluate_sae(model, sae, val_tokens, seq_len=128, max_rows=8, batch_size=4, disable=True)
    card = CARD["evaluation"]
    assert ev.l0 == pytest.approx(card["l0"], abs=0.5)
    assert ev.explained_variance == pytest.approx(card["explained_variance"], abs=0.03)
    assert ev.ce_loss_recovered == pytest.approx(card["ce_loss_recovered"], abs=0.05)
    assert ev.ce_loss_with_sae_and_error == pytest.approx(ev.ce_loss_clean, abs=1e-5)
    # what the card promises in words: a useful SAE
    assert card["explained_variance"] > 0.9 and card["ce_loss_recovered"] > 0.9


@pytest.mark.slow
def test_every_card_number_on_the_cards_own_data(model, sae, val_tokens):
    ev = evaluate_sae(model, sae, val_tokens, seq_len=128, max_rows=64, batch_size=16, disable=True)
    for key, value in CARD["evaluation"].items():
        if key != "data":
            assert getattr(ev, key) == pytest.approx(value, rel=1e-4, abs=1e-5), key


def test_spliced_with_error_term_logits_equal_the_models(model, sae):
    tokens = model.to_tokens("ROMEO: But soft, what light through yonder window breaks?")
    clean = model(tokens)
    with splice(model, sae, use_error_term=True):
        spliced = model(tokens)
    assert (spliced - clean).abs().max() <= 1e-5
