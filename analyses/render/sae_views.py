"""Views of SAE features: one feature's dashboard, and a browser over many.

The data comes from `analyses.sae.dashboard.feature_dashboards`; these functions check its shape
and hand it to the Svelte components `FeatureDashboard` and `FeatureBrowser`.
"""

from collections.abc import Mapping, Sequence
from typing import Any

from .html import RenderedHTML, render

_REQUIRED = ("feature", "density", "maxActivation", "histogram", "contexts", "topLogits", "bottomLogits")


def _checked_feature(entry: Any, where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where} must be a dict of one feature's dashboard data, got {type(entry).__name__}")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise ValueError(f"{where} lacks {missing}; build it with analyses.sae.feature_dashboards")
    histogram = entry["histogram"]
    if len(histogram["counts"]) and len(histogram["edges"]) != len(histogram["counts"]) + 1:
        raise ValueError(f"{where}: histogram needs len(edges) == len(counts) + 1, got {len(histogram['edges'])} and {len(histogram['counts'])}")
    for i, context in enumerate(entry["contexts"]):
        if len(context["tokens"]) != len(context["acts"]):
            raise ValueError(f"{where}: contexts[{i}] has {len(context['tokens'])} tokens but {len(context['acts'])} activations")
        if not 0 <= context["peak"] < len(context["tokens"]):
            raise ValueError(f"{where}: contexts[{i}].peak={context['peak']} is outside its {len(context['tokens'])} tokens")
    return dict(entry)


def feature_dashboard(feature: Mapping[str, Any], *, title: str | None = None) -> RenderedHTML:
    """One feature: top-activating contexts coloured by activation, the activation histogram and
    density, the logits it promotes and suppresses, and (if computed) its effect when steered.

    Component props: `feature`, `density`, `maxActivation`, `histogram {edges [n+1], counts [n]}`,
    `contexts [{tokens [w], acts [w], peak, max, row, pos}]`, `topLogits`/`bottomLogits [{token, value}]`,
    `steering {prompt, coefficient, tokens [{token, before, after}]}`, `title`.
    """
    props = _checked_feature(feature, "feature")
    if title:
        props["title"] = title
    return render("FeatureDashboard", **props)


def feature_browser(features: Sequence[Mapping[str, Any]], *, selected: int | None = None, title: str | None = None) -> RenderedHTML:
    """Many features: a filterable list, the chosen one's dashboard beside it.

    Component props: `features [FeatureDashboard props]`, `selected`, `title`.
    """
    if isinstance(features, Mapping) or not len(features):
        raise ValueError("features must be a non-empty list of feature dashboards")
    checked = [_checked_feature(f, f"features[{i}]") for i, f in enumerate(features)]
    ids = [f["feature"] for f in checked]
    if selected is not None and selected not in ids:
        raise ValueError(f"selected={selected} is not one of the features {ids}")
    props: dict[str, Any] = {"features": checked}
    if selected is not None:
        props["selected"] = selected
    if title:
        props["title"] = title
    return render("FeatureBrowser", **props)
