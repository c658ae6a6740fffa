"""analyses.fourier on inputs whose answers are known by construction (no training needed).

The shipped model's known answers (the paper's) are in tests/test_modadd_model.py.
"""

import math

import numpy as np
import pytest
import torch

from analyses import fourier
from hookgpt import GPTConfig, HookedGPT

P = 29


def modadd_model(p: int = P, seed: int = 0) -> HookedGPT:
    torch.manual_seed(seed)
    cfg = GPTConfig(n_layers=1, d_model=32, n_heads=2, d_mlp=48, d_vocab=p + 1, d_vocab_out=p, n_ctx=3, act_fn="relu",
                    normalization_type=None, init_range=1 / math.sqrt(32))
    return HookedGPT(cfg).eval()


def wave(p: int, k: int, kind: str = "cos") -> torch.Tensor:
    x = torch.arange(p, dtype=torch.float32)
    return (torch.cos if kind == "cos" else torch.sin)(2 * math.pi * k * x / p)


def test_fourier_basis_is_orthonormal_with_named_waves():
    basis, names = fourier.fourier_basis(P)
    assert basis.shape == (P, P) and names[:3] == ["const", "cos 1", "sin 1"] and names[-1] == f"sin {(P - 1) // 2}"
    torch.testing.assert_close(basis @ basis.T, torch.eye(P), atol=1e-5, rtol=0)
    torch.testing.assert_close(basis[3], wave(P, 2) / wave(P, 2).norm())
    with pytest.raises(ValueError, match="odd integer"):
        fourier.fourier_basis(12)


def test_key_frequencies_are_read_off_the_embedding():
    model = modadd_model()
    assert fourier.key_frequencies(model) == []  # untrained: a flat spectrum
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        W_E = torch.zeros(P, 32)
        for k, strength in ((2, 2.0), (5, 2.0)):
            W_E += wave(P, k)[:, None] * torch.randn(1, 32, generator=generator) * strength
            W_E += wave(P, k, "sin")[:, None] * torch.randn(1, 32, generator=generator) * strength
        model.embed.W_E[:P] = W_E + 0.01 * torch.randn(P, 32, generator=generator)
    assert fourier.key_frequencies(model) == [2, 5]
    spectrum = fourier.embedding_spectrum(model)
    assert float(spectrum.share[[1, 4]].sum()) > 0.99
    assert list(spectrum.to_df().columns) == ["frequency", "norm", "share"]
    assert fourier.gini(spectrum.components[1:]) > 0.7


def test_gini():
    assert fourier.gini([1, 1, 1, 1]) == pytest.approx(0.0)
    assert fourier.gini([0, 0, 0, 5]) == pytest.approx(0.75)  # (n - 1) / n for one holder
    assert fourier.gini([0, 0]) == 0.0


def test_frequency_fractions_of_known_functions():
    a, b = torch.meshgrid(torch.arange(P), torch.arange(P), indexing="ij")
    w = 2 * math.pi / P
    units = torch.stack([
        torch.cos(w * 3 * a) * torch.cos(w * 3 * b),  # frequency 3, a product term
        torch.cos(w * 3 * (a + b)),  # frequency 3: cos cos - sin sin
        torch.sin(w * 4 * a) + 7.0,  # frequency 4 in a alone; the constant is not variance
        torch.cos(w * 1 * a) + torch.cos(w * 13 * b),  # half and half
    ], dim=-1).float()
    fractions = fourier.frequency_fractions(units)  # [unit, freq]
    assert fractions.shape == (4, (P - 1) // 2)
    torch.testing.assert_close(fractions.sum(-1), torch.ones(4), atol=1e-5, rtol=0)
    assert fractions[0, 2] == pytest.approx(1.0, abs=1e-5) and fractions[1, 2] == pytest.approx(1.0, abs=1e-5)
    assert fractions[2, 3] == pytest.approx(1.0, abs=1e-5)
    assert fractions[3, 0] == pytest.approx(0.5, abs=1e-5) and fractions[3, 12] == pytest.approx(0.5, abs=1e-5)


def test_restricted_and_excluded_loss_on_known_logits():
    a, b, c = torch.meshgrid(*(torch.arange(P),) * 3, indexing="ij")
    w = 2 * math.pi / P
    algorithm = (4.0 * torch.cos(w * 2 * (a + b - c)) + 4.0 * torch.cos(w * 5 * (a + b - c))).float()
    noise = 0.5 * torch.randn(P, P, P, generator=torch.Generator().manual_seed(0))
    logits = algorithm + noise
    for over in ("input", "grid"):
        kept = fourier.project_logits(logits, [2, 5], over=over)
        restricted = fourier.grid_loss(kept)
        assert restricted == pytest.approx(fourier.grid_loss(algorithm), rel=0.1), over  # (most of) the noise is gone
        assert restricted < fourier.grid_loss(logits)
        assert fourier.grid_loss(logits - kept) == pytest.approx(math.log(P), rel=0.1), over  # noise left: chance level
        torch.testing.assert_close(fourier.project_logits(algorithm, [2, 5], over=over), algorithm, atol=1e-4, rtol=0)
        assert fourier.grid_loss(fourier.project_logits(logits, [], over=over)) == pytest.approx(math.log(P))
    # an amplitude that varies with the input is kept per input, averaged over the grid
    amplitude = 1.0 + (a + 2 * b).float() % 5
    varying = (amplitude * torch.cos(w * 3 * (a + b - c))).float()
    torch.testing.assert_close(fourier.project_logits(varying, [3], over="input"), varying, atol=1e-4, rtol=0)
    assert not torch.allclose(fourier.project_logits(varying, [3]), varying, atol=1e-2)  # the grid's one amplitude
    assert fourier.restricted_loss(None, [3], logits=varying, over="input") == pytest.approx(fourier.grid_loss(varying), rel=1e-4)
    assert fourier.excluded_loss(None, [3], logits=varying, over="input") == pytest.approx(math.log(P), rel=1e-4)
    uniform = fourier.project_logits(varying, [3])  # = mean amplitude x the wave: the excluded rest still leans right
    torch.testing.assert_close(uniform, (amplitude.mean() * torch.cos(w * 3 * (a + b - c))).float(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="frequency 15 is out of range"):
        fourier.project_logits(logits, [15])
    with pytest.raises(ValueError, match="over must be"):
        fourier.project_logits(logits, [1], over="all")


def test_grid_activations_and_neurons_of_a_model():
    model = modadd_model()
    acts = fourier.grid_activations(model)
    assert acts["pattern"].shape == (P, P, 2, 3) and acts["neurons"].shape == (P, P, 48) and acts["logits"].shape == (P, P, P)
    tokens = torch.tensor([[4, 9, P]])
    torch.testing.assert_close(acts["logits"][4, 9], model(tokens)[0, -1, :P])
    neurons = fourier.neuron_frequencies(model, activations=acts)
    assert neurons.frequency.min() >= 1 and neurons.frequency.max() <= (P - 1) // 2
    assert float(neurons.fraction.mean()) < 0.5  # untrained neurons are not single-frequency
    assert len(model.hook_dict["blocks.0.mlp.hook_post"]._forward_hooks) == 0  # no hook left behind


def test_progress_measures_of_checkpoints():
    checkpoints = [(0, modadd_model(seed=0)), (10, modadd_model(seed=1))]
    is_train = torch.zeros(P * P, dtype=torch.bool)
    is_train[::3] = True
    measures = fourier.progress_measures(checkpoints, is_train, freqs=[1, 2])
    df = measures.to_df()
    assert list(df.step) == [0, 10]
    for column in ("train_loss", "test_loss", "restricted_loss", "excluded_loss"):
        assert np.allclose(df[column], math.log(P), rtol=0.05), column  # untrained: about chance
    assert (df.gini < 0.3).all() and (df.weight_norm > 0).all()
    assert measures.key_frequencies == [1, 2]
    assert fourier.progress_measures(checkpoints, is_train).key_frequencies == []  # found from the last: none
    fig = measures.figure()
    assert len(fig.data) == 4
    with pytest.raises(ValueError, match="checkpoints is empty"):
        fourier.progress_measures([], is_train)


def test_modulus_must_fit_the_model():
    with pytest.raises(ValueError, match="does not fit this model"):
        fourier.embedding_spectrum(modadd_model(), p=31)


def test_phases_and_turning_points_of_a_known_history():
    import pandas as pd

    df = pd.DataFrame({
        "step": [0, 100, 200, 300, 400, 500, 600],
        "train_accuracy": [0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
        "test_accuracy": [0.0, 0.01, 0.02, 0.05, 0.6, 0.9995, 1.0],
        "test_loss": [4.7, 9.0, 10.0, 9.5, 4.0, 0.5, 0.01],
        "excluded_loss": [4.7, 0.1, 0.05, 0.3, 2.0, 5.0, 6.0],
    })
    measures = fourier.ProgressMeasures(df, [1])
    assert measures.excluded_loss_rises_at() == 300  # 0.3 > 2 x 0.05
    assert measures.test_loss_falls_at() == 400  # 4.0 < 0.5 x 10
    assert measures.phases() == {"memorisation": (0, 100), "circuit formation": (100, 400), "clean-up": (400, 500)}
    flat = fourier.ProgressMeasures(df.assign(excluded_loss=1.0, test_loss=1.0), [1])
    assert flat.excluded_loss_rises_at() is None and flat.test_loss_falls_at() is None
