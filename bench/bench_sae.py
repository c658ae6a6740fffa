"""SAE training throughput (activations/s): hookgpt's `train_sae` vs a plain PyTorch loop on the
same SAE and the same activations, and activation streaming from the model vs from shards.

    python bench/bench_sae.py                 # full size
    python bench/bench_sae.py --tiny          # seconds: checks the script runs

Prints one JSON object with the throughputs and their ratios. (SAELens's own trainer needs a
TransformerLens model, so it is not run here; see tests/test_sae_saelens.py for the format check.)
Numbers are only meaningful on a quiet machine.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from analyses.collect import collect_activations  # noqa: E402
from analyses.sae import SAE, ModelActivations, SAEConfig, SAETrainConfig, ShardActivations, TensorActivations, train_sae  # noqa: E402
from hookgpt import HookedGPT  # noqa: E402

HOOK = "blocks.1.hook_resid_pre"


def plain_loop(sae: SAE, x: torch.Tensor, steps: int, batch_size: int, lr: float) -> None:
    """The reference: Adam on MSE for a TopK SAE, no bookkeeping."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    for step in range(steps):
        batch = x[(step * batch_size) % (len(x) - batch_size):][:batch_size]
        loss = (sae(batch) - batch).pow(2).sum(-1).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tiny", action="store_true")
    args = parser.parse_args()
    steps, batch_size, rows = (5, 256, 16) if args.tiny else (300, 4096, 512)
    model = HookedGPT.from_pretrained("hookgpt-shakespeare").eval()
    tokens = torch.randint(0, 50257, (rows, 128), generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(d_in=64, d_sae=512, architecture="topk", k=16, hook_name=HOOK)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        collect_activations(model, tokens, [HOOK], Path(tmp) / "acts", rows_per_shard=max(1, rows // 4), disable=True)
        x = ShardActivations(Path(tmp) / "acts", HOOK).sample(rows * 128)
        sources = {"tensor": TensorActivations(x), "shards": ShardActivations(Path(tmp) / "acts", HOOK),
                   "model": ModelActivations(model, tokens, HOOK, rows_per_chunk=32)}
        for name, source in sources.items():
            start = time.perf_counter()
            train_sae(cfg, SAETrainConfig(out_dir=f"{tmp}/{name}", steps=steps, batch_size=batch_size, lr=1e-3, progress=False,
                                          b_dec_init="mean", b_dec_init_samples=1024), source)
            out[f"train_sae_{name}_acts_per_s"] = steps * batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        plain_loop(SAE(cfg, seed=0), x, steps, batch_size, 1e-3)
        out["plain_loop_acts_per_s"] = steps * batch_size / (time.perf_counter() - start)
    out["ratio_train_sae_tensor_vs_plain"] = out["train_sae_tensor_acts_per_s"] / out["plain_loop_acts_per_s"]
    out["ratio_model_stream_vs_shards"] = out["train_sae_model_acts_per_s"] / out["train_sae_shards_acts_per_s"]
    print(json.dumps({"steps": steps, "batch_size": batch_size, **out}, indent=2))


if __name__ == "__main__":
    main()
