"""SAE training throughput (activations/s): hookgpt's `train_sae` vs a plain PyTorch loop on the
same SAE and the same activations, and activation streaming from the model vs from shards.

    python bench/bench_sae.py                 # full size
    python bench/bench_sae.py --tiny          # seconds: checks the script runs

Where an interpreter with `sae_lens` exists (`$HOOKGPT_SAELENS_PYTHON`, default
/work/venvs/saelens/bin/python; see tests/test_sae_saelens.py) SAELens's own `SAETrainer` trains
the same TopK SAE on the same activations in that interpreter, fed from an iterator of batches,
and its throughput is reported too. Prints one JSON object with the throughputs and their ratios.
Numbers are only meaningful on a quiet machine.
"""

import argparse
import json
import os
import subprocess
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
SAELENS_PYTHON = os.environ.get("HOOKGPT_SAELENS_PYTHON", "/work/venvs/saelens/bin/python")

# Run in the sae_lens interpreter: SAETrainer on batches of the saved activations; prints acts/s.
SAELENS_SCRIPT = r"""
import sys, time, torch
from safetensors.torch import load_file
from sae_lens import LoggingConfig
from sae_lens.config import SAETrainerConfig
from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig
from sae_lens.training.sae_trainer import SAETrainer
torch.set_num_threads(1)
x = load_file(sys.argv[1])["x"]
steps, batch_size = int(sys.argv[2]), int(sys.argv[3])
def batches():
    step = 0
    while True:
        start = (step * batch_size) % (len(x) - batch_size)
        yield x[start : start + batch_size]
        step += 1
sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=512, k=16))
cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size, lr=1e-3, lr_end=1e-3,
                       logger=LoggingConfig(log_to_wandb=False))
trainer = SAETrainer(cfg, sae, batches())
start = time.perf_counter()
trainer.fit()
print(steps * batch_size / (time.perf_counter() - start))
"""


def saelens_throughput(x: torch.Tensor, steps: int, batch_size: int, tmp: str):
    """SAELens's trainer's activations/s on `x`, or None where no sae_lens interpreter exists."""
    if not Path(SAELENS_PYTHON).exists():
        return None
    from safetensors.torch import save_file

    save_file({"x": x.contiguous()}, f"{tmp}/x.safetensors")
    Path(f"{tmp}/saelens_bench.py").write_text(SAELENS_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run([SAELENS_PYTHON, f"{tmp}/saelens_bench.py", f"{tmp}/x.safetensors", str(steps), str(batch_size)],
                          capture_output=True, text=True, env=env, timeout=3600)
    if done.returncode != 0:
        raise RuntimeError(f"the sae_lens benchmark failed:\n{done.stderr[-3000:]}")
    return float(done.stdout.strip().splitlines()[-1])


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
    torch.set_num_threads(1)
    model = HookedGPT.from_pretrained("hookgpt-shakespeare").eval()
    tokens = torch.randint(0, 50257, (rows, 128), generator=torch.Generator().manual_seed(0))
    cfg = SAEConfig(d_in=64, d_sae=512, architecture="topk", k=16, hook_name=HOOK)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        collect_activations(model, tokens, [HOOK], Path(tmp) / "acts", rows_per_shard=max(1, rows // 4), disable=True)
        x = ShardActivations(Path(tmp) / "acts", HOOK).sample(rows * 128)
        sources = {"tensor": TensorActivations(x), "shards": ShardActivations(Path(tmp) / "acts", HOOK),
                   "model": ModelActivations(model, tokens, HOOK, rows_per_chunk=32)}
        # warm-up (imports, first plotly page, allocator) so the first timed run pays nothing extra
        train_sae(cfg, SAETrainConfig(out_dir=f"{tmp}/warmup", steps=2, batch_size=batch_size, progress=False, b_dec_init="mean",
                                      b_dec_init_samples=256), sources["tensor"])
        for name, source in sources.items():
            start = time.perf_counter()
            train_sae(cfg, SAETrainConfig(out_dir=f"{tmp}/{name}", steps=steps, batch_size=batch_size, lr=1e-3, progress=False,
                                          b_dec_init="mean", b_dec_init_samples=1024), source)
            out[f"train_sae_{name}_acts_per_s"] = steps * batch_size / (time.perf_counter() - start)
        start = time.perf_counter()
        plain_loop(SAE(cfg, seed=0), x, steps, batch_size, 1e-3)
        out["plain_loop_acts_per_s"] = steps * batch_size / (time.perf_counter() - start)
        saelens = saelens_throughput(x, steps, batch_size, tmp)
        if saelens is not None:
            out["saelens_trainer_acts_per_s"] = saelens
            out["ratio_train_sae_tensor_vs_saelens"] = out["train_sae_tensor_acts_per_s"] / saelens
    out["ratio_train_sae_tensor_vs_plain"] = out["train_sae_tensor_acts_per_s"] / out["plain_loop_acts_per_s"]
    out["ratio_model_stream_vs_shards"] = out["train_sae_model_acts_per_s"] / out["train_sae_shards_acts_per_s"]
    print(json.dumps({"steps": steps, "batch_size": batch_size, **out}, indent=2))


if __name__ == "__main__":
    main()
