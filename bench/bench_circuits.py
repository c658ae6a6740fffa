"""Benchmark: attribution patching and edge attribution vs the patching they estimate.

GPT-2 small shape with random weights, a 20-token prompt whose first token is corrupted (so every
patch has work to do), metric = logit difference at the last position. In one run:

1. every head x position (`hook_z`; 12 x 20 x 12 = 2,880 sites): attribution patching (one
   backward) vs batched activation patching of the same sites (the interventions engine) vs the
   naive loop (one `run_with_hooks` per site); the three are timed interleaved, medians
   reported, with the agreement of the estimate with the measured effects (Pearson r);
2. EAP over every edge of the graph (~32k for GPT-2 small), and EAP-IG with 5 steps, each in
   units of one plain forward pass of the same input.

    python bench/bench_circuits.py [--repeats 3] [--seq-len 20] [--threads N] [--no-naive]
    python bench/bench_circuits.py --n-layers 2 --d-model 64 --n-heads 4 --seq-len 6 --repeats 1   # a quick check

Timings mean something only on an otherwise quiet machine.
"""

import argparse
import statistics
import time

import numpy as np
import torch

from analyses import circuits, patching
from analyses.metrics import logit_diff
from hookgpt import GPTConfig, HookedGPT


def timed(runners: dict, repeats: int) -> tuple[dict, dict]:
    """Run each runner `repeats` times, interleaved; medians and last results."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    results = {}
    for _ in range(repeats):
        for name, run in runners.items():
            start = time.perf_counter()
            results[name] = run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seq-len", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive loop (the slowest part)")
    parser.add_argument("--n-layers", type=int, default=None, help="override GPT-2 small's shape (for a quick check)")
    parser.add_argument("--d-model", type=int, default=None)
    parser.add_argument("--n-heads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in dict(n_layers=args.n_layers, d_model=args.d_model, n_heads=args.n_heads).items() if v is not None}

    torch.manual_seed(0)
    cfg = GPTConfig.preset("gpt2", **overrides)
    model = HookedGPT(cfg).eval()
    for param in model.parameters():
        param.requires_grad_(False)
    clean = torch.randint(0, cfg.d_vocab, (1, args.seq_len))
    corrupted = clean.clone()
    corrupted[0, 0] = (clean[0, 0] + 1) % cfg.d_vocab

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return logit_diff(logits, 123, 456)

    n_sites = cfg.n_layers * args.seq_len * cfg.n_heads
    print(f"GPT-2 small shape{' ' + str(overrides) if overrides else ''} (random weights), {args.seq_len} tokens, "
          f"{torch.get_num_threads()} threads, {args.repeats} interleaved repeats")

    # 1. every head x position
    runners = {
        "attribution": lambda: circuits.attribution_patch_heads(model, clean, corrupted, metric, by_position=True).values,
        "batched": lambda: patching.patch_heads(model, clean, corrupted, metric, by_position=True, method="fast", disable=True).values,
    }
    if not args.no_naive:
        runners["naive"] = lambda: patching.patch_heads(model, clean, corrupted, metric, by_position=True, method="naive", disable=True).values
    for run in list(runners.values())[:2]:
        run()  # warm-up
    medians, results = timed(runners, args.repeats)
    base = medians["batched"]
    print(f"every head x position ({n_sites} sites, hook_z):")
    for name, median in medians.items():
        print(f"  {name:12s} median {median:8.3f} s   (batched / this = {base / median:7.1f}x)")
    corrupted_metric = float(metric(model(corrupted)[:, [-1]]))
    estimate = (results["attribution"] - corrupted_metric).flatten()
    measured = (results["batched"] - corrupted_metric).flatten()
    r = float(np.corrcoef(estimate.numpy(), measured.numpy())[0, 1])
    print(f"  attribution vs activation patching: Pearson r = {r:.4f}, max |diff| = {(estimate - measured).abs().max():.3e}")
    if "naive" in results:
        diff = (results["batched"] - results["naive"]).abs().max().item()
        print(f"  batched vs naive: max |diff| = {diff:.2e}")
        assert diff <= 1e-4, "batched and naive activation patching disagree"

    # 2. edges, in units of one plain forward pass
    def forward():
        with torch.no_grad():
            return model(clean)

    edge_runners = {
        "forward": forward,
        "EAP": lambda: circuits.edge_attribution(model, clean, corrupted, metric),
        "EAP-IG (5 steps)": lambda: circuits.edge_attribution(model, clean, corrupted, metric, method="EAP-IG", steps=5),
    }
    for run in edge_runners.values():
        run()  # warm-up
    medians, results = timed(edge_runners, args.repeats)
    n_edges = results["EAP"].graph.n_edges
    print(f"edge attribution, every edge ({n_edges:,} edges):")
    for name, median in medians.items():
        print(f"  {name:17s} median {median:8.4f} s   = {median / medians['forward']:6.1f} plain forwards")


if __name__ == "__main__":
    main()
