"""hookgpt vs TransformerLens 2.18, each in its own venv, on the same weights and input, back to back.

    python bench/bench_tl.py --tl-python /path/to/tl-venv/bin/python [--rounds 7] [--batch 4] [--pos 256] [--config gpt2]

TransformerLens 2.18 pins numpy<2 and an older transformers, so it runs in its own venv. This script
(in the project venv) writes one random GPT-2 (Hugging Face format) and one batch of token ids to a
temporary directory, then starts two workers -- itself with `--worker hookgpt` in this venv and
`--worker tl` under `--tl-python` -- and asks them for rounds in turn (hookgpt, TL, hookgpt, TL, ...),
so drifting machine load hits both alike. Each worker loads the same weights (no weight processing)
and times, per round, in its own venv:
  - hf_sdpa:         transformers GPT2LMHeadModel, attn_implementation="sdpa" (each venv's own transformers)
  - forward:         the library's model(tokens), no hooks
  - run_with_cache:  the library's run_with_cache(tokens), every hook point
  - (hookgpt only) compat_forward / compat_run_with_cache: analyses.compat.transformer_lens's HookedTransformer
Reports medians, each library's ratios against its own forward and against HF sdpa in its venv,
and the largest logit difference between the libraries (they compute the same function).
Nothing else should be running: two torch processes on two cores slow each other several-fold.
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def hookgpt_variants(directory: Path, tokens):
    from transformers import GPT2LMHeadModel

    from analyses.compat.transformer_lens import HookedTransformer
    from hookgpt import HookedGPT

    hf = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    model = HookedGPT.from_pretrained(directory).eval()
    compat = HookedTransformer.from_pretrained_no_processing(str(directory)).eval()
    variants = {
        "hf_sdpa": lambda: hf(tokens).logits,
        "forward": lambda: model(tokens),
        "run_with_cache": lambda: model.run_with_cache(tokens),
        "compat_forward": lambda: compat(tokens),
        "compat_run_with_cache": lambda: compat.run_with_cache(tokens),
    }
    return variants, lambda: model(tokens)


def tl_variants(directory: Path, tokens):
    from transformers import GPT2LMHeadModel
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    hf = GPT2LMHeadModel.from_pretrained(directory, attn_implementation="sdpa").eval()
    c = hf.config
    cfg = HookedTransformerConfig(
        n_layers=c.n_layer, d_model=c.n_embd, n_heads=c.n_head, d_head=c.n_embd // c.n_head, d_mlp=4 * c.n_embd,
        d_vocab=c.vocab_size, n_ctx=c.n_positions, act_fn="gelu_new", eps=c.layer_norm_epsilon, normalization_type="LN",
        original_architecture="GPT2LMHeadModel", device="cpu",
    )
    from transformer_lens.pretrained.weight_conversions import convert_gpt2_weights

    model = HookedTransformer(cfg, move_to_device=False).eval()
    model.load_and_process_state_dict(convert_gpt2_weights(hf, cfg), fold_ln=False, center_writing_weights=False,
                                      center_unembed=False, fold_value_biases=False)
    variants = {
        "hf_sdpa": lambda: hf(tokens).logits,
        "forward": lambda: model(tokens),
        "run_with_cache": lambda: model.run_with_cache(tokens),
    }
    return variants, lambda: model(tokens)


def worker(kind: str, directory: Path, threads: int) -> None:
    """Answer "round" lines with one JSON line of timings; "logits PATH" saves the logits."""
    import torch
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(threads)
    tokens = load_file(str(directory / "tokens.safetensors"))["tokens"]
    with torch.no_grad():
        variants, logits = (hookgpt_variants if kind == "hookgpt" else tl_variants)(directory, tokens)
        for fn in variants.values():  # warm-up
            fn()
        print(json.dumps({"ready": kind}), flush=True)
        for line in sys.stdin:
            command = line.split()
            if command[0] == "round":
                print(json.dumps({name: timed(fn) for name, fn in variants.items()}), flush=True)
            elif command[0] == "logits":
                save_file({"logits": logits().contiguous()}, command[1])
                print(json.dumps({"saved": command[1]}), flush=True)
            else:
                return


def start(python: str, kind: str, directory: Path, threads: int) -> subprocess.Popen:
    env = {"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": str(threads)}
    import os

    proc = subprocess.Popen(
        [python, __file__, "--worker", kind, "--dir", str(directory), "--threads", str(threads)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, **env},
    )
    ready = json.loads(proc.stdout.readline() or "{}")
    if ready.get("ready") != kind:
        raise SystemExit(f"the {kind} worker ({python}) did not start")
    return proc


def ask(proc: subprocess.Popen, command: str) -> dict:
    proc.stdin.write(command + "\n")
    proc.stdin.flush()
    return json.loads(proc.stdout.readline())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tl-python", help="the python of a venv with transformer-lens==2.18.0")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=256)
    parser.add_argument("--config", default="gpt2", help="a preset name or a JSON dict of GPTConfig fields")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this JSON file")
    parser.add_argument("--worker", choices=("hookgpt", "tl"), help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args.worker, Path(args.dir), args.threads)
    if not args.tl_python:
        parser.error("--tl-python is required (a venv with transformer-lens==2.18.0)")

    import torch
    from safetensors.torch import load_file, save_file

    sys.path.insert(0, str(ROOT))
    from hookgpt import GPTConfig, HookedGPT
    from hookgpt.loading import save_hf_pretrained

    cfg = GPTConfig.preset(args.config) if args.config.startswith("gpt2") else GPTConfig(**json.loads(args.config))
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        torch.manual_seed(0)
        save_hf_pretrained(HookedGPT(cfg), directory)
        save_file({"tokens": torch.randint(0, cfg.d_vocab, (args.batch, args.pos))}, str(directory / "tokens.safetensors"))
        workers = {"hookgpt": start(sys.executable, "hookgpt", directory, args.threads),
                   "tl": start(args.tl_python, "tl", directory, args.threads)}
        times: dict[str, dict[str, list[float]]] = {kind: {} for kind in workers}
        try:
            for _ in range(args.rounds):
                for kind, proc in workers.items():
                    for name, seconds in ask(proc, "round").items():
                        times[kind].setdefault(name, []).append(seconds)
            for kind, proc in workers.items():
                ask(proc, f"logits {directory / (kind + '_logits.safetensors')}")
            diff = (load_file(str(directory / "hookgpt_logits.safetensors"))["logits"]
                    - load_file(str(directory / "tl_logits.safetensors"))["logits"]).abs().max().item()
        finally:
            for proc in workers.values():
                if proc.stdin:
                    proc.stdin.write("quit\n")
                    proc.stdin.close()
                proc.wait(timeout=60)

    medians = {kind: {name: statistics.median(ts) for name, ts in by.items()} for kind, by in times.items()}
    result = {"config": cfg.to_dict(), "batch": args.batch, "pos": args.pos, "rounds": args.rounds, "medians_s": medians,
              "max_logit_diff_hookgpt_vs_tl": diff, "ratios": {}}
    for kind, m in medians.items():
        for name, seconds in m.items():
            if name not in ("forward", "hf_sdpa"):
                result["ratios"][f"{kind}.{name} / {kind}.forward"] = seconds / m["forward"]
            if name != "hf_sdpa":
                result["ratios"][f"{kind}.{name} / hf_sdpa ({kind} venv)"] = seconds / m["hf_sdpa"]
    print(f"{cfg.n_layers} layers, d_model {cfg.d_model}, batch {args.batch} x {args.pos} tokens, {args.rounds} rounds, "
          f"{args.threads} threads; max |logits hookgpt - TL| = {diff:.2e}")
    for kind, m in medians.items():
        print(f"  {kind}: " + ", ".join(f"{name} {seconds * 1000:.1f} ms" for name, seconds in m.items()))
    for name, ratio in result["ratios"].items():
        print(f"  {name}: {ratio:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
