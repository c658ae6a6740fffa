"""How good is an SAE? Reconstruction, sparsity, and what the language model loses when it runs on it.

    ev = evaluate_sae(model, sae, tokens)      # tokens [n, seq]
    ev.l0, ev.explained_variance, ev.ce_loss_recovered
    ev.to_df()

- `l0`: mean number of active features per token.
- `mse`: mean over tokens of |x - x_hat|^2 (summed over d_in, as in training).
- `explained_variance`: 1 - sum |x - x_hat|^2 / sum |x - mean(x)|^2 over all tokens.
- `dead_fraction` / `dense_fraction`: features that never fire / fire on more than
  `dense_threshold` of the tokens; `feature_density [d_sae]` the fraction of tokens each fires on.
- The language-model loss (next-token cross-entropy) with the hook's activation
  - as it is (`ce_loss_clean`),
  - replaced by the reconstruction (`ce_loss_with_sae`),
  - replaced by reconstruction + error (`ce_loss_with_sae_and_error`, equal to clean: a check),
  - zero-ablated (`ce_loss_zero_ablation`) and mean-ablated (`ce_loss_mean_ablation`, the mean over all tokens),
  and "CE loss recovered" = (ablated - with_sae) / (ablated - clean): 1 when the SAE loses
  nothing, 0 when it is no better than ablating the hook (`ce_loss_recovered` against zero
  ablation, `ce_loss_recovered_mean` against mean ablation).
"""

from dataclasses import asdict, dataclass, field
from typing import Optional

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from analyses._common import progress
from analyses.collect import DataSource, token_rows

from .interventions import splice
from .sae import SAE
from hookgpt.model import HookedGPT


@dataclass
class SAEEvaluation:
    n_tokens: int
    l0: float
    mse: float
    explained_variance: float
    dead_fraction: float
    dense_fraction: float
    ce_loss_clean: float
    ce_loss_with_sae: float
    ce_loss_with_sae_and_error: float
    ce_loss_zero_ablation: float
    ce_loss_mean_ablation: float
    ce_loss_recovered: float
    ce_loss_recovered_mean: float
    feature_density: Tensor = field(repr=False)

    def to_dict(self) -> dict[str, float]:
        """The numbers (not `feature_density`), e.g. for a model card."""
        return {k: v for k, v in asdict(self).items() if k != "feature_density"}

    def to_df(self) -> pd.DataFrame:
        return pd.DataFrame([{"metric": k, "value": v} for k, v in self.to_dict().items()])


def _recovered(ablated: float, with_sae: float, clean: float) -> float:
    gap = ablated - clean
    return float("nan") if abs(gap) < 1e-12 else (ablated - with_sae) / gap


@torch.no_grad()
def evaluate_sae(model: HookedGPT, sae: SAE, data: DataSource, seq_len: Optional[int] = None, batch_size: int = 8,
                 max_rows: Optional[int] = None, dense_threshold: float = 0.1, disable: Optional[bool] = None) -> SAEEvaluation:
    """Evaluate `sae` on the model's activations at `sae.cfg.hook_name` over token rows `data`
    (`[n, seq]`, or a flat/uint16 file with `seq_len`), in batches of `batch_size` rows."""
    hook_name = sae.cfg.hook_name
    model._resolve(hook_name)
    rows = token_rows(data, seq_len)
    n_rows = rows.shape[0] if max_rows is None else min(max_rows, rows.shape[0])
    if n_rows == 0:
        raise ValueError("evaluate_sae needs at least one row of tokens")

    def batches(desc: str):
        for start in progress(range(0, n_rows, batch_size), disable=disable, desc=desc):
            yield torch.as_tensor(np.asarray(rows[start : min(start + batch_size, n_rows)]).astype(np.int64)).to(model.device)

    # Pass 1: the clean loss and the SAE's reconstruction statistics.
    d_in = sae.cfg.d_in
    sum_x, sum_x2 = torch.zeros(d_in, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    sse, active, n_tokens, n_loss = 0.0, 0.0, 0, 0
    fires = torch.zeros(sae.cfg.d_sae, dtype=torch.float64)
    clean = 0.0
    for tokens in batches("SAE eval (clean)"):
        loss, cache = model.run_with_cache(tokens, names_filter=[hook_name], return_type="loss", loss_per_token=True, return_cache_object=False)
        x = cache[hook_name].reshape(-1, d_in).to(sae.dtype)
        acts = sae.encode(x)
        recons = sae.decode(acts)
        sum_x += x.double().sum(0).cpu()
        sum_x2 += x.double().pow(2).sum().cpu()
        sse += float((recons - x).double().pow(2).sum())
        active += float((acts > 0).sum())
        fires += (acts > 0).double().sum(0).cpu()
        n_tokens += x.shape[0]
        clean += float(loss.double().sum())
        n_loss += loss.numel()
    mean_x = sum_x / n_tokens
    total_variance = float(sum_x2 - n_tokens * mean_x.pow(2).sum())

    # Pass 2: the loss with the hook replaced four ways.
    mean_act = mean_x.to(sae.dtype).to(model.device)
    losses = {"sae": 0.0, "error": 0.0, "zero": 0.0, "mean": 0.0}
    for tokens in batches("SAE eval (spliced)"):
        with splice(model, sae):
            losses["sae"] += float(model(tokens, return_type="loss", loss_per_token=True).double().sum())
        with splice(model, sae, use_error_term=True):
            losses["error"] += float(model(tokens, return_type="loss", loss_per_token=True).double().sum())
        zero = [(hook_name, lambda act, hook: torch.zeros_like(act))]
        losses["zero"] += float(model.run_with_hooks(tokens, fwd_hooks=zero, return_type="loss", loss_per_token=True).double().sum())
        mean = [(hook_name, lambda act, hook: mean_act.to(act.dtype).expand_as(act).clone())]
        losses["mean"] += float(model.run_with_hooks(tokens, fwd_hooks=mean, return_type="loss", loss_per_token=True).double().sum())
    ce = {k: v / n_loss for k, v in losses.items()}
    ce_clean = clean / n_loss
    density = (fires / n_tokens).float()
    return SAEEvaluation(
        n_tokens=n_tokens,
        l0=active / n_tokens,
        mse=sse / n_tokens,
        explained_variance=1.0 - sse / max(total_variance, 1e-12),
        dead_fraction=float((density == 0).float().mean()),
        dense_fraction=float((density > dense_threshold).float().mean()),
        ce_loss_clean=ce_clean,
        ce_loss_with_sae=ce["sae"],
        ce_loss_with_sae_and_error=ce["error"],
        ce_loss_zero_ablation=ce["zero"],
        ce_loss_mean_ablation=ce["mean"],
        ce_loss_recovered=_recovered(ce["zero"], ce["sae"], ce_clean),
        ce_loss_recovered_mean=_recovered(ce["mean"], ce["sae"], ce_clean),
        feature_density=density,
    )
