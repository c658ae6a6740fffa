"""Forward-pass speed: hookgpt vs Hugging Face GPT-2 (sdpa) on identical weights, in one run.

    python bench/bench_forward.py [--rounds 7] [--batch 4] [--pos 256] [--config gpt2]

Times, interleaved round by round (so drifting machine load hits every variant alike), and
reports medians and ratios:
  - hf_sdpa:            transformers GPT2LMHeadModel, attn_implementation="sdpa"   (the peer)
  - hookgpt_forward:    HookedGPT(tokens), no hooks attached
  - hookgpt_cache_all:  HookedGPT.run_with_cache(tokens), every hook point cached
  - hookgpt_cache_read_all: run_with_cache(tokens), then every activation read once (this also
                        computes the per-head hook_result, which caches otherwise compute lazily)
  - hookgpt_cache_no_result: run_with_cache without the per-head hook_result
  - tl_forward / tl_cache_all: TransformerLens HookedTransformer, if installed
Targets (issue 2): hookgpt_forward <= 1.00x hf_sdpa; hookgpt_cache_all <= 1.15x hookgpt_forward.
Nothing else should be running: two torch processes on two cores slow each other several-fold.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from hookgpt import GPTConfig, HookedGPT  # noqa: E402
from hookgpt.loading import config_to_hf, convert_hf_state_dict  # noqa: E402


def build(config_name: str, seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPTConfig.preset(config_name) if config_name.startswith("gpt2") else GPTConfig(**json.loads(config_name))
    torch.manual_seed(seed)
    hf = GPT2LMHeadModel(GPT2Config(**config_to_hf(cfg), attn_implementation="sdpa")).eval()
    model = HookedGPT(cfg).eval()
    model.load_state_dict(convert_hf_state_dict(hf.state_dict(), cfg))
    tl = None
    try:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        tl_cfg = HookedTransformerConfig(
            n_layers=cfg.n_layers, d_model=cfg.d_model, n_heads=cfg.n_heads, d_head=cfg.d_head, d_mlp=cfg.d_mlp,
            d_vocab=cfg.d_vocab, n_ctx=cfg.n_ctx, act_fn="gelu_new", normalization_type="LN",
        )
        tl = HookedTransformer(tl_cfg).eval()
        sd = dict(model.state_dict())
        sd.setdefault("unembed.W_U", model.W_U.detach().clone())
        tl.load_state_dict(sd, strict=False)
    except ImportError:
        pass
    return cfg, hf, model, tl


def read_all(logits, cache):
    for _ in cache.values():  # materialises the lazy entries (hook_result)
        pass
    return logits


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=256)
    parser.add_argument("--config", default="gpt2", help="a preset name or a JSON dict of GPTConfig fields")
    parser.add_argument("--json", help="also write the results to this JSON file")
    args = parser.parse_args()

    cfg, hf, model, tl = build(args.config)
    tokens = torch.randint(0, cfg.d_vocab, (args.batch, args.pos), generator=torch.Generator().manual_seed(1))
    variants = {
        "hf_sdpa": lambda: hf(tokens).logits,
        "hookgpt_forward": lambda: model(tokens),
        "hookgpt_cache_all": lambda: model.run_with_cache(tokens)[0],
        "hookgpt_cache_read_all": lambda: read_all(*model.run_with_cache(tokens)),
        # everything except the per-head outputs [batch, pos, n_heads, d_model], which TransformerLens
        # only computes with use_attn_result=True (its run_with_cache default does not include them)
        "hookgpt_cache_no_result": lambda: model.run_with_cache(tokens, names_filter=lambda n: not n.endswith("hook_result"))[0],
    }
    if tl is not None:
        variants["tl_forward"] = lambda: tl(tokens)
        variants["tl_cache_all"] = lambda: tl.run_with_cache(tokens)[0]

    with torch.inference_mode():
        reference = variants["hf_sdpa"]()
        for name, fn in variants.items():  # warm-up + correctness: all variants compute the same logits
            err = (fn() - reference).abs().max().item()
            assert err < 1e-3, f"{name} differs from hf_sdpa by {err}"
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, fn in variants.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)

    med = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"config={args.config} batch={args.batch} pos={args.pos} rounds={args.rounds} threads={torch.get_num_threads()} torch={torch.__version__}")
    print(f"{'variant':<20}{'median s':>10}{'vs hf_sdpa':>12}{'vs hookgpt fwd':>16}")
    for name, m in med.items():
        print(f"{name:<20}{m:>10.4f}{m / med['hf_sdpa']:>11.2f}x{m / med['hookgpt_forward']:>15.2f}x")
    fwd_ratio = med["hookgpt_forward"] / med["hf_sdpa"]
    cache_ratio = med["hookgpt_cache_all"] / med["hookgpt_forward"]
    no_result_ratio = med["hookgpt_cache_no_result"] / med["hookgpt_forward"]
    read_ratio = med["hookgpt_cache_read_all"] / med["hookgpt_forward"]
    print(f"\nforward vs HF sdpa: {fwd_ratio:.2f}x (target <= 1.00x) {'OK' if fwd_ratio <= 1.0 else 'MISSED'}")
    print(f"run_with_cache(all) vs own forward: {cache_ratio:.2f}x (target <= 1.15x) {'OK' if cache_ratio <= 1.15 else 'MISSED'}")
    print(f"run_with_cache(all) + reading every activation vs own forward: {read_ratio:.2f}x")
    print(f"run_with_cache(all but hook_result) vs own forward: {no_result_ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": med, "forward_vs_hf": fwd_ratio, "cache_vs_forward": cache_ratio, "cache_no_result_vs_forward": no_result_ratio, "cache_read_all_vs_forward": read_ratio}, indent=2))


if __name__ == "__main__":
    main()
