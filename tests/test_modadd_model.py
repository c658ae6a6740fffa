"""The shipped hookgpt-modadd-113 against the paper's known answers (Nanda et al. 2023) and its card.

The paper's findings, each asserted on the shipped float16 weights with `analyses.fourier`:
- it generalises: test accuracy >= 99.9%;
- its embedding is sparse in the Fourier basis: a handful (3-7) of key frequencies, found from
  the weights, carry >= 90% of the embedding's squared Fourier norm;
- most MLP neurons have >= 85% of their variance explained by one frequency;
- the logits are the key frequencies' cos/sin w(a+b-c): keeping only those (restricted loss) is no
  worse than the full logits (<= 1.1x), removing them (excluded loss) is >= 10x worse;
- along training the excluded loss rises before the test loss falls (circuit formation precedes
  generalisation);
and the same analysis on an untrained model of the same shape finds no key frequencies.
"""

import json
import math

import pytest
import torch

from analyses import fourier
from hookgpt import HookedGPT
from hookgpt.loading import SHIPPED_DIR, list_shipped_models

NAME = "hookgpt-modadd-113"
DIRECTORY = SHIPPED_DIR / NAME
pytestmark = pytest.mark.skipif(not (DIRECTORY / "card.json").exists(), reason=f"{NAME} is not shipped in this checkout")


@pytest.fixture(scope="module")
def card() -> dict:
    return json.loads((DIRECTORY / "card.json").read_text())


@pytest.fixture(scope="module")
def model() -> HookedGPT:
    return HookedGPT.from_pretrained(NAME)


@pytest.fixture(scope="module")
def acts(model) -> dict:
    return fourier.grid_activations(model)


@pytest.fixture(scope="module")
def is_train() -> torch.Tensor:
    return fourier.shipped_train_mask(NAME)


@pytest.fixture(scope="module")
def measures(is_train) -> fourier.ProgressMeasures:
    return fourier.progress_measures(fourier.shipped_checkpoints(NAME), is_train)


def test_shipped_offline_by_name_within_15_mb(model, card):
    assert NAME in list_shipped_models()
    assert model.cfg.normalization_type is None and model.cfg.d_vocab_out == 113 and model.cfg.n_layers == 1
    size = sum(f.stat().st_size for f in DIRECTORY.rglob("*") if f.is_file())
    assert size <= 15 * 2**20
    assert len(list((DIRECTORY / "checkpoints").glob("step_*.safetensors"))) >= 10  # enough to draw the progress measures


def test_it_generalises(acts, is_train, card):
    correct = acts["logits"].argmax(-1).flatten() == fourier.answers(113)
    assert float(correct[~is_train].float().mean()) >= 0.999
    assert float(correct[is_train].float().mean()) == 1.0
    assert card["evaluation"]["test_accuracy"] == pytest.approx(float(correct[~is_train].float().mean()))
    assert int(is_train.sum()) == int(0.3 * 113**2)


def test_a_handful_of_key_frequencies_carry_the_embedding(model, card):
    keys = fourier.key_frequencies(model)
    assert 3 <= len(keys) <= 7
    share = float(fourier.embedding_spectrum(model).share[[k - 1 for k in keys]].sum())
    assert share >= 0.90
    assert keys == card["evaluation"]["key_frequencies"]


def test_most_neurons_are_one_frequency(model, acts, card):
    neurons = fourier.neuron_frequencies(model, activations=acts)
    share = float((neurons.fraction >= 0.85).float().mean())
    assert share > 0.5
    assert set(neurons.clusters().frequency) <= set(fourier.key_frequencies(model))  # clusters sit on key frequencies
    assert share == pytest.approx(card["evaluation"]["neurons_with_85pct_variance_in_one_frequency"])


def test_restricted_and_excluded_loss(model, acts, is_train):
    keys = fourier.key_frequencies(model)
    full = fourier.grid_loss(acts["logits"])
    restricted = fourier.restricted_loss(model, keys, logits=acts["logits"])
    excluded_train = fourier.excluded_loss(model, keys, rows=is_train, logits=acts["logits"])
    assert restricted <= 1.1 * full
    assert excluded_train >= 10 * fourier.grid_loss(acts["logits"], is_train)
    assert excluded_train >= 10 * full


def test_excluded_loss_rises_before_test_loss_falls(measures):
    rises, falls = measures.excluded_loss_rises_at(), measures.test_loss_falls_at()
    assert rises is not None and falls is not None and rises < falls, measures.df
    df = measures.to_df()
    assert df.gini.iloc[-1] > df.gini.iloc[0] + 0.3  # the embedding gets sparse
    phases = measures.phases()
    assert phases["memorisation"][1] < phases["circuit formation"][1] <= phases["clean-up"][1]


def test_an_untrained_model_has_no_key_frequencies(model):
    torch.manual_seed(0)
    untrained = HookedGPT(model.cfg)
    assert fourier.key_frequencies(untrained) == []
    neurons = fourier.neuron_frequencies(untrained)
    assert float((neurons.fraction >= 0.85).float().mean()) < 0.05
    logits = fourier.grid_activations(untrained)["logits"]
    assert fourier.grid_loss(logits) == pytest.approx(math.log(113), rel=0.05)


def test_card_progress_measures_match_the_checkpoints(measures, card):
    assert card["checkpoints"] == [int(s) for s in measures.df.step]
    for column in ("test_loss", "excluded_loss", "gini"):
        assert card["progress_measures"][column] == pytest.approx(measures.df[column].round(6).tolist(), rel=1e-4, abs=1e-6)
