"""Benchmark: training tokens/s of hookgpt's training step vs the same step without hook points.

One training step = the trainer's objective (`hookgpt.train.LanguageModelLoss`: forward, next-token
cross-entropy), backward, gradient clipping, AdamW step. Three models, all from the same weights:

- `hookgpt`:  `HookedGPT` exactly as the trainer uses it, every `HookPoint` in place, no hooks attached.
- `no-hooks`: the same `HookedGPT` with every `HookPoint` replaced by a bare identity function (not a
              module), so the forward does the same maths with the same kernels minus the hook
              points. `hookgpt` vs `no-hooks` is the cost of the hook points: the target is < 5%.
- `nanogpt`:  a minimal nanoGPT-style module written out here (fused qkv matmul, `x @ W` instead of
              einsum, tied embedding), holding copies of the same weights; the first-step losses
              of all three must agree. `hookgpt` vs `nanogpt` is the cost of the whole per-head
              layout + einsum style, not of the hooks.

The variants run interleaved step by step, in rotating order, so a busy machine slows them alike;
reported: medians per variant, and the median of the per-step ratios hookgpt / baseline (steps
adjacent in time, so slow drifts in the machine's load cancel).
Both softmax objectives are measured: the full vocabulary and `restrict_vocab` (what the shipped
model trained with: the corpus's ids only, where the transformer body is a larger share of a step).

    python bench/bench_train.py [--steps 8] [--objective both|restrict_vocab|full] [--threads N] [--clock wall|cpu]
                                [--preset gpt2] [--tiny]

On a machine shared with other jobs, wall-clock steps vary several-fold; `--threads 1 --clock cpu`
(CPU seconds of this process) is then the steadier measure of the work each step does.

Defaults: the shipped model's shape (2 layers, d_model 128, 4 heads, d_mlp 512, n_ctx 256, tied
embeddings), batch 8 x 256 tokens of the bundled Shakespeare. `--preset gpt2` runs GPT-2 small's
shape instead (batch 4 x 256; slow on a CPU). `--tiny` runs a 1-layer toy in seconds, to check the script works.
"""

import argparse
import statistics
import tempfile
import time
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from hookgpt import HookedGPT, HookPoint
from hookgpt.datasets import TextTokens
from hookgpt.train import LanguageModelLoss, TrainConfig, load_tokens, make_optimizer, prepare_data

SHIPPED = dict(n_layers=2, d_model=128, n_heads=4, d_mlp=512, n_ctx=256, tie_embeddings=True)


class _Identity:
    """What a HookPoint does when nothing listens, without being a module (no `nn.Module.__call__`)."""

    has_hooks = False
    only_observed = True

    def __call__(self, x: Tensor) -> Tensor:
        return x


def without_hook_points(model: HookedGPT) -> HookedGPT:
    """`model` with every HookPoint swapped for a bare identity function (in place)."""
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, HookPoint):
                del module._modules[child_name]
                object.__setattr__(module, child_name, _Identity())
    return model


class PlainGPT(nn.Module):
    """GPT-2 as nanoGPT writes it (fused qkv, plain matmuls, SDPA), with weights copied from a HookedGPT."""

    def __init__(self, model: HookedGPT):
        super().__init__()
        cfg = self.cfg = model.cfg
        assert cfg.tie_embeddings and not cfg.attn_only
        copy = lambda t: nn.Parameter(t.detach().clone().contiguous())
        self.wte, self.wpe, self.b_U = copy(model.W_E), copy(model.W_pos), copy(model.b_U)
        self.ln_f_w, self.ln_f_b = copy(model.ln_final.w), copy(model.ln_final.b)
        self.blocks = nn.ModuleList()
        for block in model.blocks:
            attn, mlp = block.attn, block.mlp
            b = nn.Module()
            b.ln1_w, b.ln1_b, b.ln2_w, b.ln2_b = (copy(p) for p in (block.ln1.w, block.ln1.b, block.ln2.w, block.ln2.b))
            b.W_qkv = copy(torch.cat([rearrange(W, "h m d -> m (h d)") for W in (attn.W_Q, attn.W_K, attn.W_V)], dim=1))
            b.b_qkv = copy(torch.cat([bias.flatten() for bias in (attn.b_Q, attn.b_K, attn.b_V)]))
            b.W_O, b.b_O = copy(rearrange(attn.W_O, "h d m -> (h d) m")), copy(attn.b_O)
            b.W_in, b.b_in, b.W_out, b.b_out = (copy(p) for p in (mlp.W_in, mlp.b_in, mlp.W_out, mlp.b_out))
            self.blocks.append(b)

    def forward(self, tokens: Tensor, targets: Optional[Tensor] = None, ids: Optional[Tensor] = None) -> Tensor:
        """Next-token loss of `tokens` (`targets` are the trainer's, always tokens[:, 1:] here)."""
        cfg, (B, T) = self.cfg, tokens.shape
        H, D, eps = cfg.n_heads, cfg.d_head, cfg.layer_norm_eps
        x = self.wte[tokens] + self.wpe[:T]
        for b in self.blocks:
            h = F.layer_norm(x, (cfg.d_model,), b.ln1_w, b.ln1_b, eps)
            q, k, v = (h @ b.W_qkv + b.b_qkv).split(H * D, dim=-1)
            q, k, v = (t.view(B, T, H, D).transpose(1, 2) for t in (q, k, v))
            z = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, H * D)
            x = x + z @ b.W_O + b.b_O
            h = F.layer_norm(x, (cfg.d_model,), b.ln2_w, b.ln2_b, eps)
            x = x + F.gelu(h @ b.W_in + b.b_in, approximate="tanh") @ b.W_out + b.b_out
        x = F.layer_norm(x[:, :-1], (cfg.d_model,), self.ln_f_w, self.ln_f_b, eps)
        if ids is None:
            logits, targets = x @ self.wte.T + self.b_U, tokens[:, 1:]
        else:
            logits, targets = x @ self.wte[ids].T + self.b_U[ids], torch.searchsorted(ids, tokens[:, 1:].contiguous())
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())


def make_step(module: nn.Module, cfg: TrainConfig):
    """One optimizer step of the trainer on `module(tokens, targets, ids) -> loss`."""
    optimizer = make_optimizer(module, cfg)

    def step(tokens: Tensor, targets: Tensor, ids) -> float:
        loss = module(tokens, targets, ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(module.parameters(), cfg.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed training steps per variant and objective")
    parser.add_argument("--objective", choices=("both", "restrict_vocab", "full"), default="both")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="cpu: this process's CPU time (steadier on a shared machine; use with --threads 1)")
    parser.add_argument("--preset", default=None, help="a GPTConfig preset instead of the shipped shape (e.g. gpt2)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--tiny", action="store_true", help="a 1-layer d_model 32 model on 2 x 32 tokens: checks the script runs")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model_spec = dict(preset=args.preset, n_ctx=max(args.seq_len, 1024)) if args.preset else dict(SHIPPED)
    if args.tiny:
        model_spec, args.seq_len, args.batch_size = dict(SHIPPED, n_layers=1, d_model=32, d_mlp=64, n_ctx=32), 32, 2
    cfg = TrainConfig(model=model_spec, seq_len=args.seq_len, batch_size=args.batch_size or (4 if args.preset else 8))
    with tempfile.TemporaryDirectory() as data_dir:
        tokens = np.array(load_tokens(prepare_data(None, data_dir), "train"))
    corpus_ids = torch.from_numpy(np.unique(tokens).astype(np.int64))
    dataset = TextTokens(tokens, tokens, cfg.seq_len, cfg.batch_size, cfg.seed)  # the trainer's batches

    torch.manual_seed(0)
    hooked = HookedGPT(cfg.model_config())
    n_hook_points = len(hooked.hook_dict)
    objectives = ["restrict_vocab", "full softmax"] if args.objective == "both" else [
        "restrict_vocab" if args.objective == "restrict_vocab" else "full softmax"]

    results = {}
    for objective in objectives:
        # three copies of the same weights (the hooked model's current ones), each with a fresh AdamW
        stripped = HookedGPT(cfg.model_config(), init_weights=False)
        stripped.load_state_dict(hooked.state_dict())
        without_hook_points(stripped)
        vocab_ids = corpus_ids if objective == "restrict_vocab" else None
        modules = {
            "hookgpt": LanguageModelLoss(hooked, vocab_ids),
            "no-hooks": LanguageModelLoss(stripped, vocab_ids),
            "nanogpt": PlainGPT(hooked),
        }
        steps = {name: make_step(m, cfg) for name, m in modules.items()}

        def batch_of(i: int):
            tokens, targets = dataset.global_batch(i).to("cpu")
            ids = None if vocab_ids is None else modules["hookgpt"].softmax_ids(targets)
            return tokens, targets, ids

        first = {name: step(*batch_of(0)) for name, step in steps.items()}  # also the warm-up
        spread = max(first.values()) - min(first.values())
        assert spread < 1e-4, f"the three models disagree on the first loss: {first}"

        # Interleave step by step, rotating the order, so that load from other processes falls on
        # all three alike; compare hookgpt with each baseline on the steps next to it in time.
        names = list(steps)
        times = {name: [] for name in names}
        clock = time.process_time if args.clock == "cpu" else time.perf_counter
        for i in range(args.steps):
            batch = batch_of(1 + i)
            for name in names[i % 3 :] + names[: i % 3]:
                start = clock()
                steps[name](*batch)
                times[name].append(clock() - start)
        results[objective] = (times, spread, len(corpus_ids) if vocab_ids is not None else cfg.model_config().d_vocab)

    c = cfg.model_config()
    print(f"training step (fwd + bwd + clip + AdamW), {args.preset or 'shipped model'}: {c.n_layers} layers, d_model "
          f"{c.d_model}, {c.n_heads} heads, d_mlp {c.d_mlp}, batch {cfg.batch_size} x {cfg.seq_len} tokens, "
          f"{torch.get_num_threads()} threads, {args.clock} clock, {args.steps} steps per variant interleaved; {n_hook_points} hook points")
    tokens_per_step = cfg.batch_size * cfg.seq_len
    for objective, (times, spread, n_ids) in results.items():
        print(f"  {objective} (softmax over {n_ids:,} ids; first-step losses agree to {spread:.1e})")
        for name, ts in times.items():
            median = statistics.median(ts)
            print(f"    {name:9s} {tokens_per_step / median:9,.0f} tokens/s   median {median * 1000:7.1f} ms/step   "
                  f"[{', '.join(f'{t * 1000:.0f}' for t in ts)}]")
        paired = lambda other: statistics.median(h / o for h, o in zip(times["hookgpt"], times[other])) - 1
        print(f"    hook points cost {paired('no-hooks'):+.1%} (target < 5%; median of per-step ratios hookgpt / no-hooks)")
        print(f"    hookgpt vs nanogpt-style {paired('nanogpt'):+.1%} (per-head einsum layout vs fused qkv matmuls)")


if __name__ == "__main__":
    main()
