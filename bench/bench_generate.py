"""Greedy generation speed: hookgpt (KV cache) vs `transformers` `generate`, same weights.

A GPT-2 small config with random weights is written in Hugging Face format and loaded by both.
Each round times every (library, batch size) once, alternating which library goes first; the
first round is a warm-up. Reports median tokens/s (new tokens across the batch per second) and
the hookgpt / transformers ratio, and checks that both produced the same tokens.

    python bench/bench_generate.py                       # batch 1 and 8, 128 new tokens
    python bench/bench_generate.py --rounds 7 --threads 2

Run it on an otherwise idle machine: the numbers are wall-clock.
"""

import argparse
import statistics
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--layers", type=int, default=12, help="n_layer (12 = GPT-2 small)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging as hf_logging

    from hookgpt import HookedGPT

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    hf_model = GPT2LMHeadModel(GPT2Config(n_layer=args.layers)).eval()
    with tempfile.TemporaryDirectory() as tmp:
        hf_model.save_pretrained(tmp)
        model = HookedGPT.from_pretrained(tmp)
    model.eval()
    eos = 50256

    gen = torch.Generator().manual_seed(0)
    prompts = {b: torch.randint(0, eos, (b, args.prompt_len), generator=gen) for b in args.batches}

    def run_hookgpt(tokens: torch.Tensor) -> torch.Tensor:
        return model.generate(tokens, max_new_tokens=args.new_tokens, eos_token_id=eos)

    def run_hf(tokens: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return hf_model.generate(
                tokens,
                attention_mask=torch.ones_like(tokens),
                max_new_tokens=args.new_tokens,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=eos,
            )

    runners = {"hookgpt": run_hookgpt, "transformers": run_hf}
    times: dict[tuple[str, int], list[float]] = {(name, b): [] for name in runners for b in args.batches}
    outputs: dict[tuple[str, int], torch.Tensor] = {}
    print(
        f"GPT-2 small config (n_layer={args.layers}), random weights; prompt {args.prompt_len} tokens, "
        f"{args.new_tokens} new tokens, greedy; torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    for round_ in range(args.rounds + 1):
        order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
        for b in args.batches:
            for name in order:
                start = time.perf_counter()
                out = runners[name](prompts[b])
                elapsed = time.perf_counter() - start
                outputs[(name, b)] = out
                if round_ > 0:
                    times[(name, b)].append(elapsed)
        done = " ".join(f"{name}/b{b} {times[(name, b)][-1]:.2f}s" for b in args.batches for name in runners) if round_ else "warm-up"
        print(f"round {round_}: {done}", flush=True)

    print(f"\n{'batch':>5} {'hookgpt tok/s':>14} {'transformers tok/s':>19} {'ratio':>7}  same tokens")
    for b in args.batches:
        rates = {}
        for name in runners:
            n_new = outputs[(name, b)].shape[1] - args.prompt_len
            rates[name] = b * n_new / statistics.median(times[(name, b)])
        same = torch.equal(outputs[("hookgpt", b)], outputs[("transformers", b)])
        print(f"{b:>5} {rates['hookgpt']:>14.1f} {rates['transformers']:>19.1f} {rates['hookgpt'] / rates['transformers']:>6.2f}x  {same}")
    print("\nper-round seconds:")
    for (name, b), ts in times.items():
        print(f"  {name:>12} batch {b}: " + " ".join(f"{t:.2f}" for t in ts))


if __name__ == "__main__":
    main()
