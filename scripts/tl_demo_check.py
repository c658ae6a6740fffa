"""Run a TransformerLens 2.x demo notebook's code on the shipped model, on real TransformerLens and on
hookgpt's compat layer, and compare every number it computes.

The demo's code is read at run time from a TransformerLens git directory (it is not part of this
repo) and run cell by cell, unchanged except for two things, the same in both runs:
- the import line: `transformer_lens` is real TransformerLens 2.18 (--target tl, in its own venv)
  or `analyses.compat.transformer_lens` (--target compat, in the project venv);
- the model-load line: `HookedTransformer.from_pretrained(<any name>, **kwargs)` loads the shipped
  `hookgpt-shakespeare` weights with the demo's own keyword arguments (TL's loader and weight
  processing on the TL side, the compat layer's on the other).
Views are switched off (plotly's `show`, circuitsvis and IPython's HTML become no-ops), and each
cell starts from the same torch seed.

    TL=/path/to/TransformerLens.git
    /path/to/tl-venv/bin/python scripts/tl_demo_check.py run --target tl --tl-git $TL --out /tmp/tl.pt
    PYTHONPATH=. python scripts/tl_demo_check.py run --target compat --tl-git $TL --out /tmp/compat.pt
    python scripts/tl_demo_check.py compare /tmp/tl.pt /tmp/compat.pt

`compare` prints, per cell, whether it ran in each, and for every number the demo left behind
(tensors up to 1e6 elements, floats, ints) the largest difference between the two runs.
"""

import argparse
import json
import subprocess
import sys
import traceback
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "hookgpt" / "data" / "models" / "hookgpt-shakespeare"
DEMO = "demos/Exploratory_Analysis_Demo.ipynb"
TAG = "v2.18.0"


def demo_cells(tl_git: str, demo: str) -> list[str]:
    nb = json.loads(subprocess.run(["git", "--git-dir", tl_git, "show", f"{TAG}:{demo}"], check=True, capture_output=True, text=True).stdout)
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    # IPython syntax (%pip, !cmd) is for Colab installs; drop those lines
    return ["\n".join(line for line in cell.splitlines() if not line.lstrip().startswith(("%", "!"))) for cell in cells]


def stub_views() -> None:
    import plotly.basedatatypes

    plotly.basedatatypes.BaseFigure.show = lambda self, *a, **k: None
    cv = types.ModuleType("circuitsvis")
    cv_attention = types.ModuleType("circuitsvis.attention")
    cv_attention.attention_heads = lambda *a, **k: ""
    cv_attention.attention_patterns = lambda *a, **k: ""
    cv.attention = cv_attention
    sys.modules.update({"circuitsvis": cv, "circuitsvis.attention": cv_attention})
    try:
        import IPython.display  # noqa: F401
    except ImportError:
        ipy, display = types.ModuleType("IPython"), types.ModuleType("IPython.display")
        display.HTML = display.IFrame = display.display = lambda *a, **k: None
        ipy.display = display
        sys.modules.update({"IPython": ipy, "IPython.display": display})


def load_shipped_tl(cls, **kw):
    """The shipped weights through TransformerLens's own loader and weight processing."""
    import torch
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformerConfig

    hg = json.loads((SHIPPED / "config.json").read_text())
    fold_ln = kw.get("fold_ln", True)
    cfg = HookedTransformerConfig(
        n_layers=hg["n_layers"], d_model=hg["d_model"], n_heads=hg["n_heads"], d_head=hg["d_head"],
        d_mlp=None if hg["attn_only"] else hg["d_mlp"], d_vocab=hg["d_vocab"], n_ctx=hg["n_ctx"], act_fn=hg["act_fn"],
        eps=hg["layer_norm_eps"], attn_only=hg["attn_only"], normalization_type="LNPre" if fold_ln else "LN",
        original_architecture="GPT2LMHeadModel", tokenizer_name="gpt2", default_prepend_bos=True, device="cpu",
    )
    sd = {k: v.float() for k, v in load_file(str(SHIPPED / "model.safetensors")).items()}
    if "unembed.W_U" not in sd:
        sd["unembed.W_U"] = sd["embed.W_E"].T.contiguous()
    model = cls(cfg, move_to_device=False)
    model.load_and_process_state_dict(
        sd, fold_ln=fold_ln, center_writing_weights=kw.get("center_writing_weights", True),
        center_unembed=kw.get("center_unembed", True), fold_value_biases=kw.get("fold_value_biases", True),
        refactor_factored_attn_matrices=kw.get("refactor_factored_attn_matrices", False),
    )
    return model.to(torch.float32)


def install(target: str) -> None:
    if target == "compat":
        sys.path.insert(0, str(ROOT))
        import analyses.compat.transformer_lens as compat

        for name in list(sys.modules):
            if name.startswith("analyses.compat.transformer_lens"):
                sys.modules["transformer_lens" + name[len("analyses.compat.transformer_lens"):]] = sys.modules[name]
        original = compat.HookedTransformer.from_pretrained.__func__
        compat.HookedTransformer.from_pretrained = classmethod(lambda cls, name, *a, **kw: original(cls, str(SHIPPED), *a, **kw))
    else:
        import transformer_lens

        assert "site-packages" in transformer_lens.__file__
        transformer_lens.HookedTransformer.from_pretrained = classmethod(lambda cls, name, *a, **kw: load_shipped_tl(cls, **kw))


def run(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(1)
    stub_views()
    install(args.target)
    namespace: dict = {"__name__": "__main__"}
    cells = []
    for i, source in enumerate(demo_cells(args.tl_git, args.demo)):
        torch.manual_seed(1000 + i)
        try:
            exec(compile(source, f"<cell {i}>", "exec"), namespace)
            cells.append("ok")
        except Exception as error:  # a demo cell's failure is a result, not a crash
            cells.append(f"{type(error).__name__}: {str(error)[:200]}")
            if args.verbose:
                traceback.print_exc()
    numbers = {}
    for name, value in namespace.items():
        if name.startswith("_"):
            continue
        if isinstance(value, torch.Tensor) and value.numel() <= 1_000_000 and not value.is_complex():
            numbers[name] = value.detach().cpu().float().clone()
        elif isinstance(value, (float, int)) and not isinstance(value, bool):
            numbers[name] = torch.tensor(float(value))
    torch.save({"cells": cells, "numbers": numbers}, args.out)
    print(f"{args.target}: {cells.count('ok')} of {len(cells)} cells ran; {len(numbers)} numbers saved to {args.out}")


def compare(args: argparse.Namespace) -> None:
    import torch

    tl, compat = torch.load(args.tl, weights_only=True), torch.load(args.compat, weights_only=True)
    for i, (a, b) in enumerate(zip(tl["cells"], compat["cells"])):
        mark = "same" if (a == "ok") == (b == "ok") else "DIFFERENT"
        print(f"cell {i:2d}: tl {a[:60]!s:<62} compat {b[:60]!s:<62} {mark}")
    worst = 0.0
    for name in sorted(set(tl["numbers"]) | set(compat["numbers"])):
        x, y = tl["numbers"].get(name), compat["numbers"].get(name)
        if x is None or y is None:
            print(f"{name}: only in {'compat' if x is None else 'tl'}")
            continue
        if x.shape != y.shape:
            print(f"{name}: shapes differ, tl {tuple(x.shape)} vs compat {tuple(y.shape)}")
            worst = float("inf")
            continue
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        scale = x.abs().max().item() if x.numel() else 0.0
        worst = max(worst, diff)
        print(f"{name}: shape {tuple(x.shape)}, max |tl - compat| = {diff:.3g} (max |tl| = {scale:.3g})")
    ran = [a == "ok" for a in tl["cells"]], [b == "ok" for b in compat["cells"]]
    both = sum(1 for a, b in zip(*ran) if a and b)
    print(f"SUMMARY: {sum(ran[0])} cells ran on TL, {both} of them on compat; largest number difference {worst:.3g}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("--target", choices=("tl", "compat"), required=True)
    r.add_argument("--tl-git", required=True, help="a TransformerLens git directory (bare is fine)")
    r.add_argument("--demo", default=DEMO)
    r.add_argument("--out", required=True)
    r.add_argument("--verbose", action="store_true")
    c = sub.add_parser("compare")
    c.add_argument("tl")
    c.add_argument("compat")
    args = parser.parse_args()
    run(args) if args.command == "run" else compare(args)


if __name__ == "__main__":
    main()
