"""Fourier analysis of a modular-arithmetic model (Nanda et al. 2023, "Progress measures for
grokking via mechanistic interpretability").

A one-layer transformer trained on `a b = -> (a + b) mod p` learns to compute with rotations:
it embeds each number as cos/sin waves of a few *key frequencies* w_k = 2 pi k / p, multiplies
them in the MLP into cos(w(a + b)) and sin(w(a + b)), and reads the answer off
cos(w(a + b - c)), which peaks at c = a + b. All of it shows in the Fourier basis of Z_p:

- `fourier_basis(p)`: the orthonormal basis of functions on Z_p: a constant, then cos k and
  sin k for k = 1 .. (p - 1) / 2.
- `embedding_spectrum(model)`: W_E projected onto it: the norm of each frequency. Sparse in a
  trained model, flat in an untrained one. `key_frequencies(model)` reads the key frequencies
  off it (the weights, not a list given in advance).
- `grid_activations(model)` (and `grid_logits`): the attention pattern, the MLP neurons and the logits at the `=`
  position on all p^2 inputs, shaped `[a, b, ...]`, and `fourier_2d` of any of them.
- `neuron_frequencies(model)`: for each neuron, the frequency whose terms (cos/sin of it in a,
  in b, and their products) explain most of its variance over the p^2 inputs, and how much.
- `restricted_loss` / `excluded_loss`: the loss when the logits keep only their components
  along cos(w(a + b - c)), sin(w(a + b - c)) for the key frequencies, or lose exactly those.
- `progress_measures(checkpoints)`: across training: train/test loss, restricted and excluded
  loss, the Gini coefficient of the embedding's Fourier norms, and the total squared weight norm.

The model reads three tokens `a b =` (`=` is token p) and predicts at the last position; its
unembedding's first p outputs are the answers (d_vocab_out = p for the shipped
`hookgpt-modadd-113`). Every function takes the model and finds p from its config, or `p=`.
"""

import functools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from analyses.plotting import heatmap


# ------------------------------------------------------------------ the Fourier basis of Z_p


def fourier_basis(p: int) -> tuple[Float[Tensor, "component x"], list[str]]:
    """`(basis [p, p], names)`: row 0 the constant, rows 2k-1 and 2k cos(2 pi k x / p) and
    sin(2 pi k x / p) for k = 1 .. (p-1)/2; every row has unit norm. `p` must be odd (a prime here)."""
    if not isinstance(p, int) or p < 3 or p % 2 == 0:
        raise ValueError(f"p must be an odd integer >= 3, got {p!r}")
    x = torch.arange(p, dtype=torch.float64)
    rows, names = [torch.ones(p, dtype=torch.float64)], ["const"]
    for k in range(1, (p - 1) // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
        names += [f"cos {k}", f"sin {k}"]
    basis = torch.stack(rows)
    return (basis / basis.norm(dim=1, keepdim=True)).float(), names


def n_frequencies(p: int) -> int:
    return (p - 1) // 2


def modulus(model: Any, p: Optional[int] = None) -> int:
    """p: given, or the model's `d_vocab_out` (its answers), checked against `d_vocab = p + 1` (the `=` token)."""
    p = model.cfg.d_vocab_out if p is None else p
    if model.cfg.d_vocab < p + 1 or model.cfg.d_vocab_out < p or model.cfg.n_ctx < 3:
        raise ValueError(
            f"p={p} does not fit this model (d_vocab={model.cfg.d_vocab}, d_vocab_out={model.cfg.d_vocab_out}, "
            f"n_ctx={model.cfg.n_ctx}); expected inputs 'a b =' with '=' = token p and p answer logits"
        )
    return p


def all_inputs(p: int, device: Union[str, torch.device] = "cpu") -> Int[Tensor, "batch 3"]:
    """Every input `a b =` in the order a * p + b (`=` is token p)."""
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return torch.stack([a.flatten(), b.flatten(), torch.full((p * p,), p)], dim=1).to(device)


def answers(p: int) -> Int[Tensor, "batch"]:
    a, b = torch.meshgrid(torch.arange(p), torch.arange(p), indexing="ij")
    return ((a + b) % p).flatten()


# ------------------------------------------------------------------ the embedding's spectrum


@dataclass
class Spectrum:
    """Norms of a matrix's rows in the Fourier basis. `values`: per frequency k = 1..(p-1)/2,
    sqrt(|cos k|^2 + |sin k|^2); `components`: per basis row (const, cos 1, sin 1, ...)."""

    values: Float[Tensor, "freq"]
    components: Float[Tensor, "component"]
    names: list[str]

    @property
    def share(self) -> Float[Tensor, "freq"]:
        """Each frequency's share of the squared norm (the constant left out)."""
        squared = self.values**2
        return squared / squared.sum()

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame({"frequency": np.arange(1, len(self.values) + 1), "norm": self.values.numpy(), "share": self.share.numpy()})

    def figure(self, title: str = "Fourier components of the embedding W_E") -> go.Figure:
        fig = go.Figure(go.Bar(x=self.names, y=self.components.numpy()))
        fig.update_layout(title=title, xaxis_title="Fourier component", yaxis_title="norm", template="plotly_white")
        return fig


def embedding_spectrum(model: Any, p: Optional[int] = None) -> Spectrum:
    """The norms of W_E's rows for 0..p-1 in the Fourier basis over the input number."""
    p = modulus(model, p)
    basis, names = fourier_basis(p)
    W_E = model.W_E.detach().float().cpu()[:p]  # [p, d_model]
    components = (basis @ W_E).norm(dim=-1)  # [component]
    per_freq = (components[1::2] ** 2 + components[2::2] ** 2).sqrt()
    return Spectrum(per_freq, components, names)


def key_frequencies(model: Any, p: Optional[int] = None, factor: float = 2.0) -> list[int]:
    """The frequencies k whose share of the embedding's squared Fourier norm is at least `factor`
    times the share of a flat spectrum (1 / ((p-1)/2)), largest first. An untrained embedding's
    shares scatter around the flat value (within about 25% for d_model = 128: each is a sum of
    2 * d_model squared Gaussians), so it has none."""
    spectrum = embedding_spectrum(model, p)
    share = spectrum.share
    flat = 1 / len(share)
    found = [int(k) + 1 for k in torch.argsort(share, descending=True) if share[k] >= factor * flat]
    return found


def gini(values: Union[Tensor, np.ndarray, Sequence[float]]) -> float:
    """The Gini coefficient of non-negative values: 0 when all are equal, near 1 when one holds everything."""
    x = np.sort(np.abs(np.asarray(values, dtype=np.float64)))
    n = len(x)
    if n == 0 or x.sum() == 0:
        return 0.0
    return float((2 * np.arange(1, n + 1) - n - 1) @ x / (n * x.sum()))


# ------------------------------------------------------------------ activations on the p x p grid


@torch.no_grad()
def grid_activations(model: Any, p: Optional[int] = None) -> dict[str, Tensor]:
    """On every input `a b =`, at the `=` position, shaped `[a, b, ...]` (float32, CPU):
    `pattern` `[p, p, n_heads, 3]` (layer 0's attention from `=`), `neurons` `[p, p, d_mlp]`
    (layer 0's `mlp.hook_post`, if it has an MLP) and `logits` `[p, p, p]` (the p answers)."""
    p = modulus(model, p)
    names = ["blocks.0.attn.hook_pattern"] + ([] if model.cfg.attn_only else ["blocks.0.mlp.hook_post"])
    logits, cache = model.run_with_cache(all_inputs(p, model.device), names_filter=names)
    out = {"pattern": cache["blocks.0.attn.hook_pattern"][:, :, -1].float().cpu().reshape(p, p, model.cfg.n_heads, -1),
           "logits": logits[:, -1, :p].float().cpu().reshape(p, p, p)}
    if not model.cfg.attn_only:
        out["neurons"] = cache["blocks.0.mlp.hook_post"][:, -1].float().cpu().reshape(p, p, -1)
    return out


@torch.no_grad()
def grid_logits(model: Any, p: Optional[int] = None) -> Float[Tensor, "a b c"]:
    """The p answer logits at `=` on every input, `[a, b, c]` (a plain forward: nothing cached)."""
    p = modulus(model, p)
    return model(all_inputs(p, model.device))[:, -1, :p].float().cpu().reshape(p, p, p)


def fourier_2d(values: Float[Tensor, "a b *rest"]) -> Float[Tensor, "a_component b_component *rest"]:
    """A function of (a, b) in the 2-D Fourier basis: component (i, j) = basis_i(a) basis_j(b)."""
    p = values.shape[0]
    basis, _ = fourier_basis(p)
    return torch.einsum("ia,jb,ab...->ij...", basis, basis, values.float())


@dataclass
class NeuronFrequencies:
    """For each MLP neuron: `frequency` (1..(p-1)/2) whose terms explain most of its variance
    over the p^2 inputs, and `fraction` explained (the constant term left out of the variance)."""

    frequency: Int[Tensor, "d_mlp"]
    fraction: Float[Tensor, "d_mlp"]
    fractions: Float[Tensor, "d_mlp freq"]

    @property
    def values(self) -> Float[Tensor, "d_mlp"]:
        return self.fraction

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame({"neuron": np.arange(len(self.frequency)), "frequency": self.frequency.numpy(),
                             "fraction_explained": self.fraction.numpy()})

    def clusters(self, threshold: float = 0.85) -> pd.DataFrame:
        """How many neurons each frequency holds (neurons with fraction >= threshold), largest first."""
        df = self.to_df()
        df = df[df.fraction_explained >= threshold]
        return df.groupby("frequency").size().rename("neurons").sort_values(ascending=False).reset_index()

    def figure(self, title: str = "MLP neurons by frequency") -> go.Figure:
        fig = go.Figure(go.Scatter(x=self.frequency.numpy(), y=self.fraction.numpy(), mode="markers",
                                   text=[f"neuron {i}" for i in range(len(self.frequency))], marker=dict(opacity=0.6)))
        fig.update_layout(title=title, xaxis_title="the neuron's frequency k", yaxis_title="fraction of variance explained by k",
                          yaxis_range=[0, 1.02], template="plotly_white")
        return fig


def frequency_fractions(values: Float[Tensor, "a b unit"]) -> Float[Tensor, "unit freq"]:
    """For each unit (a neuron, a head, ...) a function of (a, b): the fraction of its variance
    in the terms of frequency k: cos/sin k of a alone, of b alone, and their four products."""
    p = values.shape[0]
    squared = fourier_2d(values) ** 2  # [component, component, unit]
    squared[0, 0] = 0  # the mean is not variance
    total = squared.flatten(0, 1).sum(0).clamp(min=1e-30)
    fractions = []
    for k in range(1, n_frequencies(p) + 1):
        rows = [2 * k - 1, 2 * k]
        terms = squared[rows][:, rows].sum((0, 1)) + squared[0, rows].sum(0) + squared[rows, 0].sum(0)
        fractions.append(terms / total)
    return torch.stack(fractions, dim=-1)


def neuron_frequencies(model: Any, p: Optional[int] = None, activations: Optional[dict] = None) -> NeuronFrequencies:
    """Each MLP neuron's frequency and the fraction of its variance that frequency explains."""
    activations = activations or grid_activations(model, p)
    if "neurons" not in activations:
        raise ValueError("this model has no MLP (attn_only=True): no neurons to analyse")
    fractions = frequency_fractions(activations["neurons"])  # [d_mlp, freq]
    fraction, index = fractions.max(dim=-1)
    return NeuronFrequencies(index + 1, fraction, fractions)


# ------------------------------------------------------------------ restricted and excluded loss


def key_directions(p: int, freqs: Sequence[int]) -> Float[Tensor, "direction a b c"]:
    """Unit tensors cos(w(a + b - c)) and sin(w(a + b - c)) over the p^3 grid, w = 2 pi k / p for each k."""
    return _key_directions(p, tuple(int(k) for k in freqs)).float()


@functools.lru_cache(maxsize=4)
def _key_directions(p: int, freqs: tuple[int, ...]) -> Tensor:
    a, b, c = torch.meshgrid(*(torch.arange(p, dtype=torch.float64),) * 3, indexing="ij")
    directions = []
    for k in freqs:
        angle = 2 * math.pi * int(k) * (a + b - c) / p
        directions += [torch.cos(angle), torch.sin(angle)]
    if not directions:
        return torch.zeros(0, p, p, p, dtype=torch.float64)
    stacked = torch.stack(directions)
    return stacked / stacked.flatten(1).norm(dim=1)[:, None, None, None]  # float64: sums over p^3 entries


def project_logits(logits: Float[Tensor, "a b c"], freqs: Sequence[int], over: str = "grid") -> Float[Tensor, "a b c"]:
    """The part of the logits along cos(w(a + b - c)), sin(w(a + b - c)) for the frequencies `freqs`.

    `over="grid"` (the default, the paper's) fits one coefficient per direction over the whole
    p^3 grid: what is kept is the algorithm with one amplitude per frequency, and everything that
    varies from input to input (the memorising part, noise) is dropped. `over="input"` fits two
    coefficients per frequency for each input (a, b): for a fixed a + b these span the same
    functions of c as cos(wc), sin(wc), so it keeps exactly the logits' Fourier components over c
    at those frequencies, amplitudes varying with the input included.
    """
    p = logits.shape[0]
    for k in freqs:
        if not 1 <= int(k) <= n_frequencies(p):
            raise ValueError(f"frequency {k} is out of range for p={p}: expected 1..{n_frequencies(p)}")
    if over == "grid":
        directions = _key_directions(p, tuple(int(k) for k in freqs))  # orthonormal over the grid
        coefficients = torch.einsum("dabc,abc->d", directions, logits.double())
        return torch.einsum("d,dabc->abc", coefficients, directions).float()
    if over != "input":
        raise ValueError(f"over must be 'input' or 'grid', got {over!r}")
    basis, _ = fourier_basis(p)
    rows = [row for k in freqs for row in (2 * int(k) - 1, 2 * int(k))]
    kept = basis[rows]  # [2 * len(freqs), c]
    return torch.einsum("abc,kc,kd->abd", logits.float(), kept, kept)


def grid_loss(logits: Float[Tensor, "a b c"], rows: Optional[Bool[Tensor, "batch"]] = None) -> float:
    """Mean cross-entropy of `[a, b, c]` logits against c = (a + b) mod p, over `rows` (a mask
    over the p^2 inputs in the order a * p + b) or all of them."""
    p = logits.shape[0]
    flat, target = logits.reshape(p * p, p), answers(p)
    if rows is not None:
        flat, target = flat[rows], target[rows]
    return float(F.cross_entropy(flat.double(), target))


def restricted_loss(model: Any, freqs: Sequence[int], rows: Optional[Tensor] = None, p: Optional[int] = None,
                    logits: Optional[Tensor] = None, over: str = "grid") -> float:
    """The loss when the logits keep only their components along the key directions of `freqs`
    (everything else, the memorising part included, removed); see `project_logits`."""
    logits = grid_logits(model, p) if logits is None else logits
    return grid_loss(project_logits(logits, freqs, over), rows)


def excluded_loss(model: Any, freqs: Sequence[int], rows: Optional[Tensor] = None, p: Optional[int] = None,
                  logits: Optional[Tensor] = None, over: str = "grid") -> float:
    """The loss when exactly the key directions of `freqs` are removed from the logits (the
    generalising algorithm cut out, the rest kept). The paper measures it on the training pairs."""
    logits = grid_logits(model, p) if logits is None else logits
    return grid_loss(logits - project_logits(logits, freqs, over), rows)


# ------------------------------------------------------------------ progress measures over training


def total_weight_norm(model: Any) -> float:
    """The sum of squared parameters (what weight decay pushes down)."""
    return float(sum(param.detach().float().pow(2).sum() for param in model.parameters()))


@dataclass
class ProgressMeasures:
    """One row per checkpoint: step, train/test loss and accuracy, restricted loss (all pairs),
    excluded loss (training pairs), Gini of the embedding's Fourier norms, total squared weight norm."""

    df: pd.DataFrame
    key_frequencies: list[int]

    @property
    def values(self) -> pd.DataFrame:
        return self.df

    def to_df(self) -> pd.DataFrame:
        return self.df

    def phases(self) -> dict[str, tuple[int, int]]:
        """The paper's three phases as step ranges, read off the checkpoints:
        memorisation until train accuracy first reaches 100%; circuit formation until the test
        loss, past its peak, first falls below half of it; clean-up until test accuracy first
        reaches 99.9% (or the last checkpoint)."""
        df, last = self.df, int(self.df.step.max())
        first = lambda mask: int(df.step[mask].min()) if mask.any() else last
        memorised = first(df.train_accuracy >= 1.0)
        peak = int(df.step[df.test_loss.idxmax()])
        formed = first((df.step >= max(peak, memorised)) & (df.test_loss < 0.5 * df.test_loss.max()))
        cleaned = first((df.step >= formed) & (df.test_accuracy >= 0.999))
        return {"memorisation": (0, memorised), "circuit formation": (memorised, formed), "clean-up": (formed, cleaned)}

    def excluded_loss_rises_at(self, factor: float = 2.0) -> Optional[int]:
        """The first step at which the excluded loss is `factor` times its lowest value so far:
        the training pairs have started to depend on the key frequencies (None: never)."""
        df = self.df
        rising = df.step[df.excluded_loss > factor * df.excluded_loss.cummin()]
        return int(rising.min()) if len(rising) else None

    def test_loss_falls_at(self, fraction: float = 0.5) -> Optional[int]:
        """The first step after the test loss's peak at which it is below `fraction` of the peak (None: never)."""
        df = self.df
        peak = df.step[df.test_loss.idxmax()]
        falling = df.step[(df.step > peak) & (df.test_loss < fraction * df.test_loss.max())]
        return int(falling.min()) if len(falling) else None

    def figure(self, title: str = "Progress measures") -> go.Figure:
        df = self.df
        fig = go.Figure()
        for column, name in (("train_loss", "train loss"), ("test_loss", "test loss"),
                             ("restricted_loss", "restricted loss"), ("excluded_loss", "excluded loss")):
            fig.add_scatter(x=df.step, y=df[column], name=name, mode="lines")
        colours = {"memorisation": "rgba(99,110,250,0.08)", "circuit formation": "rgba(239,85,59,0.08)",
                   "clean-up": "rgba(0,204,150,0.08)"}
        for phase, (start, end) in self.phases().items():
            fig.add_vrect(x0=start, x1=end, fillcolor=colours[phase], line_width=0, annotation_text=phase,
                          annotation_position="top left")
        fig.update_layout(title=title, xaxis_title="step (epoch: full batch)", yaxis_title="cross-entropy (nats)",
                          yaxis_type="log", template="plotly_white")
        return fig

    def figure_gini_and_weight_norm(self) -> go.Figure:
        from plotly.subplots import make_subplots

        fig = make_subplots(specs=[[{"secondary_y": True}]])
        fig.add_scatter(x=self.df.step, y=self.df.gini, name="Gini of W_E's Fourier norms", secondary_y=False)
        fig.add_scatter(x=self.df.step, y=self.df.weight_norm, name="total squared weight norm", secondary_y=True)
        fig.update_layout(title="Sparsity of the embedding and weight norm over training", xaxis_title="step",
                          template="plotly_white")
        return fig


@torch.no_grad()
def progress_measures(checkpoints: Sequence[tuple[int, Any]], is_train: Bool[Tensor, "batch"],
                      freqs: Optional[Sequence[int]] = None, p: Optional[int] = None) -> ProgressMeasures:
    """The progress measures of `(step, model)` checkpoints; `is_train` marks the training pairs
    (order a * p + b). The key frequencies are the last checkpoint's unless given."""
    if not checkpoints:
        raise ValueError("checkpoints is empty: pass a list of (step, model)")
    last = checkpoints[-1][1]
    freqs = key_frequencies(last, p) if freqs is None else list(freqs)
    is_train = torch.as_tensor(is_train, dtype=torch.bool)
    rows = []
    for step, model in checkpoints:
        logits = grid_logits(model, p)
        pp = logits.shape[0]
        flat, target = logits.reshape(pp * pp, pp), answers(pp)
        correct = flat.argmax(-1) == target
        spectrum = embedding_spectrum(model, p)
        rows.append({
            "step": int(step),
            "train_loss": grid_loss(logits, is_train), "test_loss": grid_loss(logits, ~is_train),
            "train_accuracy": float(correct[is_train].float().mean()), "test_accuracy": float(correct[~is_train].float().mean()),
            "restricted_loss": grid_loss(kept := project_logits(logits, freqs)),
            "excluded_loss": grid_loss(logits - kept, is_train),
            "gini": gini(spectrum.components[1:]), "weight_norm": total_weight_norm(model),
        })
    return ProgressMeasures(pd.DataFrame(rows), list(freqs))


# ------------------------------------------------------------------ the shipped checkpoints


def shipped_checkpoints(name_or_path: Union[str, Path] = "hookgpt-modadd-113") -> list[tuple[int, Any]]:
    """`(step, model)` for every checkpoint shipped with a model (its `checkpoints/` folder), the
    final model last if it is not among them."""
    from safetensors.torch import load_file

    from hookgpt import HookedGPT
    from hookgpt.loading import find_checkpoint

    directory = find_checkpoint(str(name_or_path))
    final = HookedGPT.from_pretrained(str(name_or_path))
    found = []
    for path in sorted((directory / "checkpoints").glob("step_*.safetensors")):
        model = HookedGPT(final.cfg, init_weights=False)
        model.load_state_dict({k: v.float() for k, v in load_file(str(path)).items()})
        found.append((int(path.stem.split("_", 1)[1]), model.eval()))
    return found


def shipped_train_mask(name_or_path: Union[str, Path] = "hookgpt-modadd-113") -> Bool[Tensor, "batch"]:
    """Which of the p^2 pairs (order a * p + b) the shipped model was trained on."""
    from safetensors.torch import load_file

    from hookgpt.loading import find_checkpoint

    return load_file(str(find_checkpoint(str(name_or_path)) / "task.safetensors"))["is_train"].bool()


def figure_neuron_clusters(neurons: NeuronFrequencies, activations: dict, top: int = 5) -> go.Figure:
    """The 2-D Fourier spectrum of the MLP neurons summed within each frequency's cluster: each
    cluster's energy sits on the terms of its own frequency."""
    p = activations["neurons"].shape[0]
    _, names = fourier_basis(p)
    squared = fourier_2d(activations["neurons"]) ** 2  # [comp, comp, d_mlp]
    squared[0, 0] = 0
    per_neuron = squared.flatten(0, 1).norm(dim=0)
    energy = (squared / per_neuron.pow(2).clamp(min=1e-30)).mean(-1)  # [comp, comp], share averaged over neurons
    return heatmap(energy.numpy(), x_labels=names, y_labels=names, title="MLP neurons in the 2-D Fourier basis (share of variance)",
                   x_title="component of b", y_title="component of a")
