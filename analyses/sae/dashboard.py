"""Feature dashboards: what makes a feature fire, and what it does.

    dashboards = feature_dashboards(model, sae, tokens, features=[3, 17, 40])
    dashboards.view()            # a browser over the features (Svelte, offline); .view(17) one feature
    dashboards.view().save("features.html")
    dashboards[17]               # the data of one feature, as a dict

For each feature, over a dataset of token rows `[n, seq]` (run in batches, with a progress bar):

- the top-activating contexts: the `n_contexts` (row, position) pairs where it fires most, each
  with a window of tokens around it and the feature's activation on every token of the window;
- the activation histogram over the tokens where it fires, and its density (fraction of tokens);
- the output logits it promotes and suppresses most: `W_dec[f] @ W_U` (the direct path);
- its effect when steered: next-token probabilities on `steer_prompt` with `steer_coefficient *
  W_dec[f]` added at the SAE's hook, against the unsteered ones (the biggest risers).

Under `torchrun` each rank scans its own rows; the top contexts and histograms are merged on
every rank (`all_gather_object`), so all ranks return the same dashboards.
"""

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from analyses._common import progress, token_strings
from analyses.collect import DataSource, _stop_layer, distributed_rank, token_rows

from .interventions import _feature_ids, steering_hook
from .sae import SAE
from hookgpt.model import HookedGPT


@dataclass
class FeatureDashboards:
    """Dashboard data of several features; `props` is what the Svelte views receive."""

    features: list[dict[str, Any]]
    hook_name: str
    title: str

    def __getitem__(self, feature: int) -> dict[str, Any]:
        for entry in self.features:
            if entry["feature"] == feature:
                return entry
        raise KeyError(f"no dashboard for feature {feature}; have {[e['feature'] for e in self.features]}")

    def view(self, feature: Optional[int] = None) -> Any:
        """One feature's dashboard (`feature`), or the browser over all of them."""
        from analyses.render.sae_views import feature_browser, feature_dashboard

        if feature is not None:
            return feature_dashboard(self[feature], title=f"{self.title}: feature {feature}")
        return feature_browser(self.features, title=self.title)

    def _repr_html_(self) -> str:
        return self.view()._repr_html_()


def _merge_across_ranks(per_feature: dict[int, dict[str, Any]], n_contexts: int) -> dict[int, dict[str, Any]]:
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return per_feature
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, per_feature)
    merged = {}
    for f in per_feature:
        parts = [g[f] for g in gathered]
        contexts = sorted((c for p in parts for c in p["top"]), key=lambda c: -c[0])[:n_contexts]
        merged[f] = {"top": contexts, "values": np.concatenate([p["values"] for p in parts]), "fires": sum(p["fires"] for p in parts)}
    return merged


@torch.no_grad()
def feature_dashboards(model: HookedGPT, sae: SAE, data: DataSource, features: Optional[Sequence[int]] = None, seq_len: Optional[int] = None,
                       n_contexts: int = 8, window: tuple[int, int] = (10, 3), batch_size: int = 8, max_rows: Optional[int] = None,
                       n_logits: int = 8, steer_prompt: Optional[str] = None, steer_coefficient: float = 5.0, histogram_bins: int = 24,
                       disable: Optional[bool] = None) -> FeatureDashboards:
    """Build the dashboards of `features` (default: the 16 densest) of `sae` over token rows `data`.

    Args:
        window: tokens shown before and after each context's peak.
        steer_prompt: text to steer on (default: none, the steering panel is left out).
        steer_coefficient: multiple of the feature's (unit-norm for topk/jumprelu) decoder direction added.
    """
    hook_name = sae.cfg.hook_name
    model._resolve(hook_name)
    rows = token_rows(data, seq_len)
    n_rows = rows.shape[0] if max_rows is None else min(max_rows, rows.shape[0])
    rank, world_size = distributed_rank()
    stop = _stop_layer(model, [hook_name])  # the forward pass ends after the hook's layer
    first, last = n_rows * rank // world_size, n_rows * (rank + 1) // world_size

    def batches(desc: str):
        for start in progress(range(first, last, batch_size), disable=disable, desc=desc):
            yield start, torch.as_tensor(np.asarray(rows[start : min(start + batch_size, last)]).astype(np.int64)).to(model.device)

    if features is None:  # the densest features on a first batch or so
        counts = torch.zeros(sae.cfg.d_sae)
        for _, tokens in batches("choosing features"):
            _, cache = model.run_with_cache(tokens, names_filter=[hook_name], return_type=None, stop_at_layer=stop, return_cache_object=False)
            counts += (sae.encode(cache[hook_name]) > 0).float().sum(dim=(0, 1)).cpu()
            break
        features = counts.topk(min(16, sae.cfg.d_sae)).indices.tolist()
    ids = _feature_ids(sae, list(features))

    per_feature: dict[int, dict[str, Any]] = {f: {"top": [], "values": [], "fires": 0} for f in ids}
    n_tokens = 0
    for start, tokens in batches("feature dashboards"):
        _, cache = model.run_with_cache(tokens, names_filter=[hook_name], return_type=None, stop_at_layer=stop, return_cache_object=False)
        acts = sae.encode(cache[hook_name])[..., ids].cpu()  # [batch, pos, n_features]
        n_tokens += acts.shape[0] * acts.shape[1]
        for j, f in enumerate(ids):
            a = acts[..., j]
            entry = per_feature[f]
            fired = a[a > 0]
            entry["values"].append(fired.numpy())
            entry["fires"] += int(fired.numel())
            k = min(n_contexts, a.numel())
            values, flat = a.flatten().topk(k)
            for value, index in zip(values.tolist(), flat.tolist()):
                if value > 0:  # keep the window's activations now: no second forward pass later
                    b, p = divmod(index, a.shape[1])
                    lo, hi = max(0, p - window[0]), min(a.shape[1], p + window[1] + 1)
                    entry["top"].append((value, start + b, p, lo, a[b, lo:hi].tolist()))
            entry["top"] = sorted(entry["top"], key=lambda c: -c[0])[:n_contexts]
    for entry in per_feature.values():
        entry["values"] = np.concatenate(entry["values"]) if entry["values"] else np.zeros(0, dtype=np.float32)
    if dist.is_available() and dist.is_initialized() and world_size > 1:
        totals = torch.tensor([n_tokens], dtype=torch.float64)
        dist.all_reduce(totals)
        n_tokens = int(totals.item())
    per_feature = _merge_across_ranks(per_feature, n_contexts)

    # What each feature writes: its direct effect on the logits, and the effect of steering along it.
    direct = (sae.W_dec[ids] @ model.W_U).cpu()  # [n_features, d_vocab]
    steer_tokens = model.to_tokens(steer_prompt) if steer_prompt else None
    clean_probs = model(steer_tokens)[0, -1].softmax(-1).cpu() if steer_prompt else None

    dashboards = []
    for j, f in enumerate(ids):
        entry = per_feature[f]
        contexts = []
        for value, row, pos, lo, window_acts in entry["top"]:
            row_tokens = torch.as_tensor(np.asarray(rows[row, lo : lo + len(window_acts)]).astype(np.int64))
            contexts.append({"row": int(row), "pos": int(pos), "start": int(lo), "peak": int(pos - lo), "max": float(value),
                             "tokens": token_strings(model, row_tokens), "acts": [round(float(v), 4) for v in window_acts]})
        values = entry["values"]
        if values.size:
            counts, edges = np.histogram(values, bins=histogram_bins)
        else:
            counts, edges = np.zeros(0, dtype=np.int64), np.zeros(0)
        top_pos, top_neg = direct[j].topk(n_logits), (-direct[j]).topk(n_logits)
        dashboard = {
            "feature": int(f),
            "density": entry["fires"] / max(n_tokens, 1),
            "maxActivation": float(values.max()) if values.size else 0.0,
            "histogram": {"edges": [round(float(e), 5) for e in edges], "counts": [int(c) for c in counts]},
            "contexts": contexts,
            "topLogits": [{"token": t, "value": round(float(v), 4)} for t, v in zip(token_strings(model, top_pos.indices), top_pos.values)],
            "bottomLogits": [{"token": t, "value": round(-float(v), 4)} for t, v in zip(token_strings(model, top_neg.indices), top_neg.values)],
        }
        if steer_prompt:
            with model.hooks([steering_hook(sae, f, steer_coefficient)]):
                steered = model(steer_tokens)[0, -1].softmax(-1).cpu()
            rise = (steered - clean_probs).topk(n_logits)
            dashboard["steering"] = {
                "prompt": steer_prompt, "coefficient": float(steer_coefficient),
                "tokens": [{"token": t, "before": round(float(clean_probs[i]), 5), "after": round(float(steered[i]), 5)}
                           for t, i in zip(token_strings(model, rise.indices), rise.indices.tolist())],
            }
        dashboards.append(dashboard)
    title = f"SAE features on {hook_name}" + (f" ({sae.cfg.model_name})" if sae.cfg.model_name else "")
    return FeatureDashboards(features=dashboards, hook_name=hook_name, title=title)

