"""Benchmark: a residual-stream patching sweep, vectorised vs a loop of run_with_hooks patches.

GPT-2 small shape with random weights, a 20-token prompt, every (layer, position) of resid_pre
patched (12 x 20 = 240 patches), metric = logit difference at the last position. The methods run
interleaved (fast, naive, [TransformerLens], fast, naive, ...) so a busy machine slows them alike;
medians are reported, and the results must agree to 1e-5.

Two corruptions: of the first token (every patch above layer 0 has work to do: this measures the
batching and the reuse of the corrupted run), and of the middle token (patches before it change
nothing and are skipped, as in a typical IOI-style sweep).

    python bench/bench_patching.py [--repeats 3] [--threads N]

Both run again with a steering hook attached to the model (a vector added at resid_pre of layer
1, as `model.interventions(add(...))` or an SAE splice would do): the engine keeps its fast path,
exactly. Last, a head sweep with mean ablation (144 heads) as batched runs vs one forward per head.

TransformerLens 2.x `patching.get_act_patch_resid_pre` joins the comparison when
`transformer_lens` is installed (it loads the same weights via HookedTransformer); otherwise skipped.
"""

import argparse
import importlib.util
import statistics
import time

import torch

from analyses.ablation import ablate_heads
from analyses.patching import logit_diff, patch_residual
from hookgpt import GPTConfig, HookedGPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    cfg = GPTConfig.preset("gpt2")
    model = HookedGPT(cfg).eval()
    clean = torch.randint(0, cfg.d_vocab, (1, args.seq_len))
    print(f"resid_pre patching sweep, GPT-2 small (random weights), {args.seq_len} tokens, "
          f"{cfg.n_layers * args.seq_len} patches, {torch.get_num_threads()} threads, {args.repeats} interleaved repeats")
    if importlib.util.find_spec("transformer_lens") is None:
        print("transformer_lens not installed: skipping the TransformerLens comparison")
    for corrupt_at in (0, args.seq_len // 2):
        corrupted = clean.clone()
        corrupted[0, corrupt_at] = (clean[0, corrupt_at] + 1) % cfg.d_vocab
        run_scenario(model, clean, corrupted, corrupt_at, args.repeats)
    vector = torch.randn(cfg.d_model, generator=torch.Generator().manual_seed(1))
    handle = model.blocks[1].hook_resid_pre.add_hook(lambda x, hook: x + vector)
    try:
        print("with a steering hook attached (resid_pre 1):")
        for corrupt_at in (0, args.seq_len // 2):
            corrupted = clean.clone()
            corrupted[0, corrupt_at] = (clean[0, corrupt_at] + 1) % cfg.d_vocab
            run_scenario(model, clean, corrupted, corrupt_at, args.repeats, with_tl=False)
    finally:
        handle.remove()
    head_sweep(model, clean, args.repeats)


def head_sweep(model, tokens, repeats):
    """Mean-ablate each of the 144 heads: the batched engine vs one forward per head."""
    reference = torch.randint(0, model.cfg.d_vocab, (8, tokens.shape[1]), generator=torch.Generator().manual_seed(2))

    def metric(logits):
        return logits[:, -1, 123].mean()

    runners = {
        "batched": lambda: ablate_heads(model, tokens, metric, "mean", reference=reference, read_positions=-1, disable=True).effects,
        "per head": lambda: ablate_heads(model, tokens, metric, "mean", reference=reference, read_positions=-1, engine="naive", disable=True).effects,
    }
    runners["batched"]()
    times = {name: [] for name in runners}
    results = {}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    per_head = statistics.median(times["per head"])
    print("mean ablation of every head (144), last-position metric:")
    for name, ts in times.items():
        median = statistics.median(ts)
        diff = (results[name] - results["per head"]).abs().max().item()
        print(f"  {name:17s} median {median:7.3f} s   ({per_head / median:5.1f}x vs per head)   max |diff| {diff:.2e}")
    assert (results["batched"] - results["per head"]).abs().max() <= 1e-4, "batched and per-head ablation disagree"


def run_scenario(model, clean, corrupted, corrupt_at, repeats, with_tl=True):
    answer, wrong = 123, 456
    forwards = []

    def metric(logits: torch.Tensor) -> torch.Tensor:
        forwards.append(1)
        return logit_diff(logits, answer, wrong)

    runners = {
        "fast": lambda: patch_residual(model, clean, corrupted, metric, "resid_pre", method="fast", disable=True).values,
        "naive": lambda: patch_residual(model, clean, corrupted, metric, "resid_pre", method="naive", disable=True).values,
    }
    tl_runner = _transformer_lens_runner(model, clean, corrupted, answer, wrong) if with_tl else None
    if tl_runner is not None:
        runners["transformer_lens"] = tl_runner

    runners["fast"]()  # warm-up (allocator, kernels)
    forwards.clear()
    runners["fast"]()
    n_run = len(forwards) - 2  # the metric also reads the clean and corrupted runs

    times: dict[str, list[float]] = {name: [] for name in runners}
    results: dict[str, torch.Tensor] = {}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)

    print(f"corrupted token at position {corrupt_at}: the fast method ran {n_run} of {results['naive'].numel()} patches "
          f"(the others change nothing)")
    naive = statistics.median(times["naive"])
    for name, ts in times.items():
        median = statistics.median(ts)
        diff = (results[name] - results["naive"]).abs().max().item()
        print(f"  {name:17s} median {median:7.3f} s   ({naive / median:5.1f}x vs naive)   max |diff| vs naive {diff:.2e}")
    assert (results["fast"] - results["naive"]).abs().max() <= 1e-5, "fast and naive patching disagree"


def _transformer_lens_runner(model, clean, corrupted, answer, wrong):
    if importlib.util.find_spec("transformer_lens") is None:
        return None
    from transformer_lens import HookedTransformer, HookedTransformerConfig, patching
    cfg = model.cfg
    tl_cfg = HookedTransformerConfig(
        n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp,
        d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn=cfg.act_fn, normalization_type="LN",
    )
    tl_model = HookedTransformer(tl_cfg)
    state = {name: param for name, param in model.state_dict().items()}
    if "unembed.W_U" not in state:
        state["unembed.W_U"] = model.W_U.detach().clone()
    tl_model.load_state_dict(state, strict=False)
    _, clean_cache = tl_model.run_with_cache(clean)

    def metric(logits):
        return logit_diff(logits, answer, wrong)

    return lambda: patching.get_act_patch_resid_pre(tl_model, corrupted, clean_cache, metric)


if __name__ == "__main__":
    main()
