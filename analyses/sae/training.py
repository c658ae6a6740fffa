"""Training an SAE: activations in, a sparse dictionary out.

    source = ShardActivations("acts/", "blocks.1.hook_resid_pre")      # or ModelActivations(model, tokens, hook)
    result = train_sae(SAEConfig(d_in=64, d_sae=512, architecture="topk", k=8, hook_name=...),
                       SAETrainConfig(out_dir="runs/sae", steps=2000, batch_size=4096), source)
    sae = result["sae"]

One step:

1. the global batch of the step, `x [batch, d_in]` (this rank's slice of it under `torchrun`);
2. the loss: reconstruction MSE (summed over `d_in`, averaged over the batch) plus the
   architecture's sparsity term:
   - "standard": `l1_coefficient * sum_i acts_i * |W_dec[i]|` (warmed up over `l1_warmup_steps`);
   - "jumprelu": `l0_coefficient * L0`, its threshold gradient from the straight-through estimator;
   - "topk": none (k fixes the sparsity), plus the auxiliary loss `aux_coefficient * |e - e_hat|^2`
     where `e_hat` reconstructs the residual `e = x - x_hat` from the `aux_k` largest *dead* features,
     which gives dead features a gradient (Gao et al. 2024);
3. backward; under `torchrun` the gradients are averaged over ranks (`all_reduce`), which is the
   gradient of the loss of the whole global batch; decoder rows are kept at unit norm for "topk"
   and "jumprelu" (the gradient's component along each row removed, then renormalised);
4. Adam, with linear LR warmup over `lr_warmup_steps` and linear decay to 0 over the last
   `lr_decay_steps`;
5. dead-feature bookkeeping: a feature is dead after `dead_steps` steps without firing; every
   `resample_interval` steps ("standard"/"jumprelu") dead features are resampled towards inputs
   the SAE reconstructs worst (Bricken et al. 2023), their Adam moments reset.

`b_dec` starts at the geometric median (or mean) of the first activations. Progress: tqdm with
MSE, L0 and the dead fraction; one JSON record per step in `out_dir/log.jsonl`; `loss.html`
(plotly) at the end. Checkpoints (`out_dir/sae_ckpt.pt`) are written atomically every
`checkpoint_interval` steps and at the end; `resume=True` continues from one and computes the
same SAE as a run never stopped (the batch of step `s` depends on `s` only, and resampling's
randomness on `(seed, s)`). Checkpoints hold only tensors, numbers and strings, so they load with
`torch.load(weights_only=True)`. The final SAE is saved in SAELens's layout in `out_dir/sae/`.
"""

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.distributed as dist
from jaxtyping import Float
from torch import Tensor

from analyses._common import progress
from hookgpt.atomic import atomic_write, write_bytes_atomic
from hookgpt.train import catch_ctrl_c

from .sae import SAE, SAEConfig, jumprelu_l0

CHECKPOINT_NAME = "sae_ckpt.pt"
LOG_NAME = "log.jsonl"
B_DEC_INITS = ("geometric_median", "mean", "zeros")


class SAETrainingError(ValueError):
    """Bad SAE training input: a config that cannot work, a checkpoint that does not fit."""


@dataclass
class SAETrainConfig:
    """How to train an SAE (the SAE itself is an `SAEConfig`)."""

    out_dir: str = "sae_run"
    steps: int = 1000
    batch_size: int = 4096
    lr: float = 3e-4
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    lr_warmup_steps: int = 0
    lr_decay_steps: int = 0
    l1_coefficient: float = 5.0
    l1_warmup_steps: int = 0
    l0_coefficient: float = 1.0
    aux_k: Optional[int] = None
    aux_coefficient: float = 1 / 32
    dead_steps: int = 200
    resample_interval: int = 0
    b_dec_init: str = "geometric_median"
    b_dec_init_samples: int = 4096
    seed: int = 0
    checkpoint_interval: int = 500
    log_interval: int = 10
    progress: bool = True
    device: str = "cpu"

    def __post_init__(self):
        for name in ("steps", "batch_size", "checkpoint_interval", "log_interval", "dead_steps", "b_dec_init_samples"):
            if getattr(self, name) < 1:
                raise SAETrainingError(f"SAETrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("lr_warmup_steps", "lr_decay_steps", "l1_warmup_steps", "resample_interval"):
            if getattr(self, name) < 0:
                raise SAETrainingError(f"SAETrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.lr <= 0:
            raise SAETrainingError(f"SAETrainConfig.lr must be > 0, got {self.lr}")
        if self.lr_warmup_steps + self.lr_decay_steps > self.steps:
            raise SAETrainingError(f"lr_warmup_steps + lr_decay_steps ({self.lr_warmup_steps} + {self.lr_decay_steps}) exceed steps={self.steps}")
        if self.b_dec_init not in B_DEC_INITS:
            raise SAETrainingError(f"SAETrainConfig.b_dec_init must be one of {B_DEC_INITS}, got {self.b_dec_init!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "SAETrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise SAETrainingError(f"unknown SAETrainConfig fields {unknown}")
        return cls(**d)


# ============================================================================ schedules


def lr_at(step: int, cfg: SAETrainConfig) -> float:
    """Linear warmup from 0, constant, then linear decay to 0 over the last `lr_decay_steps`."""
    if cfg.lr_warmup_steps and step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    decay_start = cfg.steps - cfg.lr_decay_steps
    if cfg.lr_decay_steps and step >= decay_start:
        return cfg.lr * (cfg.steps - step) / cfg.lr_decay_steps
    return cfg.lr


def sparsity_coefficient_at(step: int, coefficient: float, warmup_steps: int) -> float:
    """The L1 (or L0) coefficient, ramped linearly from 0 over `warmup_steps`."""
    if warmup_steps and step < warmup_steps:
        return coefficient * (step + 1) / warmup_steps
    return coefficient


# ============================================================================ b_dec's initial value


def geometric_median(points: Float[Tensor, "n d"], iterations: int = 100, tol: float = 1e-7) -> Float[Tensor, "d"]:
    """The point minimising the summed Euclidean distance to `points` (Weiszfeld's algorithm):
    a robust centre, unlike the mean not dragged by a few huge activations."""
    points = points.double()
    median = points.mean(0)
    for _ in range(iterations):
        distances = (points - median).norm(dim=-1).clamp(min=1e-12)
        weights = 1.0 / distances
        new = (weights[:, None] * points).sum(0) / weights.sum()
        if (new - median).norm() <= tol * max(1.0, float(median.norm())):
            median = new
            break
        median = new
    return median


def initial_b_dec(source: Any, cfg: SAETrainConfig) -> Optional[Float[Tensor, "d_in"]]:
    if cfg.b_dec_init == "zeros":
        return None
    sample = source.sample(cfg.b_dec_init_samples)
    return geometric_median(sample) if cfg.b_dec_init == "geometric_median" else sample.double().mean(0)


# ============================================================================ one step's loss


def sae_loss(sae: SAE, x: Float[Tensor, "batch d_in"], cfg: SAETrainConfig, step: int,
             dead: Optional[Tensor] = None) -> tuple[Tensor, dict[str, Tensor], Tensor]:
    """`(loss, parts, acts)` of one batch: the MSE plus the architecture's sparsity term (see the module
    docstring). `parts` holds `mse`, `sparsity` and (topk) `aux`, detached; `acts` the features."""
    pre = sae.pre_activations(x)
    acts = sae.activation(pre)
    recons = acts @ sae.W_dec + sae.b_dec
    mse = (recons - x).pow(2).sum(-1).mean()
    parts = {"mse": mse.detach()}
    loss = mse
    architecture = sae.cfg.architecture
    if architecture == "standard":
        sparsity = (acts * sae.W_dec.norm(dim=-1)).sum(-1).mean()
        loss = loss + sparsity_coefficient_at(step, cfg.l1_coefficient, cfg.l1_warmup_steps) * sparsity
        parts["sparsity"] = sparsity.detach()
    elif architecture == "jumprelu":
        sparsity = jumprelu_l0(pre, sae.threshold, sae.cfg.jumprelu_bandwidth).mean()
        loss = loss + sparsity_coefficient_at(step, cfg.l0_coefficient, cfg.l1_warmup_steps) * sparsity
        parts["sparsity"] = sparsity.detach()
    else:
        aux = torch.zeros((), dtype=x.dtype, device=x.device)
        n_dead = 0 if dead is None else int(dead.sum())
        if n_dead:
            k_aux = min(cfg.aux_k or max(1, sae.cfg.d_in // 2), n_dead)
            residual = (x - recons).detach()
            dead_pre = pre.masked_fill(~dead, float("-inf"))
            values, indices = dead_pre.topk(k_aux, dim=-1)
            aux_acts = torch.zeros_like(pre).scatter(-1, indices, torch.relu(values))
            aux = (aux_acts @ sae.W_dec - residual).pow(2).sum(-1).mean()
            loss = loss + cfg.aux_coefficient * aux
        parts["aux"] = aux.detach()
    return loss, parts, acts


# ============================================================================ resampling dead features


@torch.no_grad()
def resample_dead_features(sae: SAE, optimizer: torch.optim.Optimizer, x: Float[Tensor, "batch d_in"],
                           dead: Tensor, generator: torch.Generator) -> int:
    """Point each dead feature at an input the SAE reconstructs badly (drawn with probability
    proportional to its squared error): decoder row = that input's direction (at the live rows'
    mean norm), encoder column = the same direction at 0.2x the live columns' mean norm, `b_enc` 0.
    Adam's moments of the changed entries are reset. Returns how many were resampled."""
    dead_ids = dead.nonzero().flatten()
    if len(dead_ids) == 0:
        return 0
    errors = (sae(x) - x).pow(2).sum(-1)
    if float(errors.sum()) <= 0:
        return 0
    chosen = torch.multinomial(errors.double().cpu(), len(dead_ids), replacement=True, generator=generator)
    inputs = x[chosen.to(x.device)] - sae.b_dec
    directions = inputs / inputs.norm(dim=-1, keepdim=True).clamp(min=1e-8)
    alive = ~dead
    dec_norm = sae.W_dec.norm(dim=-1)[alive].mean() if bool(alive.any()) else torch.tensor(1.0)
    enc_norm = sae.W_enc.norm(dim=0)[alive].mean() if bool(alive.any()) else torch.tensor(1.0)
    if sae.cfg.architecture != "standard":
        dec_norm = torch.tensor(1.0)  # unit-norm decoders
    sae.W_dec[dead_ids] = directions * dec_norm
    sae.W_enc[:, dead_ids] = (directions * enc_norm * 0.2).T
    sae.b_enc[dead_ids] = 0.0
    for param, index in ((sae.W_dec, (dead_ids,)), (sae.W_enc, (slice(None), dead_ids)), (sae.b_enc, (dead_ids,))):
        state = optimizer.state.get(param, {})
        for moment in ("exp_avg", "exp_avg_sq"):
            if moment in state:
                state[moment][index] = 0.0
    return len(dead_ids)


# ============================================================================ checkpoints


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: a reader or a killed process sees the old checkpoint or the new one, whole."""
    with atomic_write(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: Union[str, os.PathLike]) -> dict:
    """A training checkpoint, read with `weights_only=True` (tensors, numbers and strings only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no SAE checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise SAETrainingError(f"SAE checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__}: {e})") from e
    missing = {"sae", "optimizer", "step", "steps_since_fired", "sae_config", "train_config", "source"} - set(state if isinstance(state, dict) else {})
    if missing:
        raise SAETrainingError(f"{path} is not an SAE training checkpoint (missing {sorted(missing)})")
    return state


# ============================================================================ the loop


def _distributed() -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo" if not torch.cuda.is_available() else "nccl")
    return dist.get_rank(), dist.get_world_size()


def _all_reduce_mean(tensors: list[Tensor], world_size: int) -> None:
    if world_size > 1:
        for t in tensors:
            dist.all_reduce(t)
            t.div_(world_size)


def _all_gather(x: Tensor, world_size: int) -> Tensor:
    if world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def _read_records(path: Path) -> list[dict]:
    records = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed process
                continue
    return records


def read_log(out_dir: Union[str, os.PathLike]) -> list[dict]:
    """The run's records by step (if a step was logged twice, the last record wins)."""
    by_step = {r["step"]: r for r in _read_records(Path(out_dir) / LOG_NAME)}
    return [by_step[s] for s in sorted(by_step)]


def write_training_curves(out_dir: Union[str, os.PathLike]) -> Path:
    """`loss.html`: MSE, L0 and dead fraction against step (plotly, inlined: works offline)."""
    from plotly.subplots import make_subplots

    records = read_log(out_dir)
    steps = [r["step"] for r in records]
    fig = make_subplots(rows=1, cols=3, subplot_titles=("MSE", "L0 (features per input)", "dead fraction"))
    for col, key in enumerate(("mse", "l0", "dead_fraction"), start=1):
        fig.add_scatter(x=steps, y=[r[key] for r in records], mode="lines", name=key, row=1, col=col)
    fig.update_layout(title="SAE training", template="plotly_white", showlegend=False)
    path = Path(out_dir) / "loss.html"
    write_bytes_atomic(path, fig.to_html(include_plotlyjs=True, full_html=True).encode())
    return path


def train_sae(sae_cfg: SAEConfig, cfg: SAETrainConfig, source: Any, resume: bool = False) -> dict[str, Any]:
    """Train an SAE on `source` (a `TensorActivations`, `ShardActivations` or `ModelActivations`).

    Returns `{"sae", "history", "checkpoint", "log", "sae_dir", "interrupted"}`. Without `resume`,
    an existing checkpoint in `out_dir` is an error rather than something to overwrite; with it, the
    checkpoint's SAE, train config and data source must match the ones given.
    """
    if source.d_in != sae_cfg.d_in:
        raise SAETrainingError(f"the source's activations have d_in={source.d_in}, the SAEConfig says d_in={sae_cfg.d_in}")
    rank, world_size = _distributed()
    if cfg.batch_size % world_size:
        raise SAETrainingError(f"batch_size={cfg.batch_size} must be divisible by the number of processes ({world_size})")
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    out_dir = Path(cfg.out_dir)
    ckpt_path, log_path = out_dir / CHECKPOINT_NAME, out_dir / LOG_NAME
    config_json = {"sae_config": json.dumps(sae_cfg.to_dict(), sort_keys=True),
                   "train_config": json.dumps({k: v for k, v in cfg.to_dict().items() if k not in ("progress", "checkpoint_interval", "log_interval", "device")}, sort_keys=True),
                   "source": json.dumps(source.describe(), sort_keys=True)}

    state = load_checkpoint(ckpt_path) if resume else None
    if state is not None:
        for key, value in config_json.items():
            if state[key] != value:
                raise SAETrainingError(f"{ckpt_path} was made with {key} {state[key]}, this run has {value}; use the same settings or a new out_dir")
    elif ckpt_path.exists():
        raise SAETrainingError(f"{ckpt_path} already exists; pass resume=True (--resume) to continue that run, or choose another out_dir")

    sae = SAE(sae_cfg, seed=cfg.seed).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2))
    steps_since_fired = torch.zeros(sae_cfg.d_sae, dtype=torch.long)
    start_step = 0
    if state is not None:
        sae.load_state_dict(state["sae"])
        optimizer.load_state_dict(state["optimizer"])
        steps_since_fired = state["steps_since_fired"].clone()
        start_step = int(state["step"])
    else:
        b_dec = initial_b_dec(source, cfg)
        if b_dec is not None:
            with torch.no_grad():
                sae.b_dec.copy_(b_dec)

    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        for stale in out_dir.glob(f".{CHECKPOINT_NAME}.*.tmp"):  # left by a process killed mid-save
            stale.unlink()
        kept = [r for r in _read_records(log_path) if r["step"] <= start_step] if resume else []
        write_bytes_atomic(log_path, "".join(json.dumps(r) + "\n" for r in kept).encode())

    def checkpoint(step: int) -> None:
        if rank == 0:
            save_checkpoint(ckpt_path, {"sae": sae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                        "steps_since_fired": steps_since_fired.clone(), **config_json})

    interrupted, restore_sigint = catch_ctrl_c()  # Ctrl-C: finish the step, save, stop

    unit_decoder = sae_cfg.architecture in ("topk", "jumprelu")
    if unit_decoder and state is None:
        sae.set_decoder_norm_to_unit_norm()
    history: list[dict] = []
    bar = progress(range(start_step, cfg.steps), initial=start_step, total=cfg.steps,
                   disable=None if (cfg.progress and rank == 0) else True, desc="train SAE", dynamic_ncols=True)
    try:
        for step in bar:
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = source.batch(step, cfg.batch_size, rank, world_size).to(device)
            dead = (steps_since_fired >= cfg.dead_steps).to(device)
            loss, parts, acts = sae_loss(sae, x, cfg, step, dead)
            optimizer.zero_grad(set_to_none=False)
            loss.backward()
            if world_size > 1:  # the mean of the ranks' gradients = the gradient of the global batch's loss
                _all_reduce_mean([p.grad for p in sae.parameters()], world_size)
            if unit_decoder:
                sae.remove_gradient_parallel_to_decoder_directions()
            optimizer.step()
            if unit_decoder:
                sae.set_decoder_norm_to_unit_norm()

            with torch.no_grad():
                fired = (acts > 0).sum(0).float()
                centred = x - x.mean(0)
                sums = torch.stack([(acts > 0).sum(-1).float().mean(), ((acts @ sae.W_dec + sae.b_dec - x).pow(2).sum() / centred.pow(2).sum().clamp(min=1e-12))])
            metrics = torch.stack([loss.detach(), *parts.values()])
            if world_size > 1:  # (on the training device: nccl reduces GPU tensors only)
                dist.all_reduce(fired)
            _all_reduce_mean([metrics, sums], world_size)
            metrics, sums = metrics.cpu(), sums.cpu()
            steps_since_fired = torch.where(fired.cpu() > 0, torch.zeros_like(steps_since_fired), steps_since_fired + 1)

            resampled = 0
            if cfg.resample_interval and sae_cfg.architecture != "topk" and (step + 1) % cfg.resample_interval == 0:
                dead_now = (steps_since_fired >= cfg.dead_steps).to(device)
                if bool(dead_now.any()):
                    generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                    resampled = resample_dead_features(sae, optimizer, _all_gather(x, world_size), dead_now, generator)
                    steps_since_fired[dead_now.cpu()] = 0

            record = {"step": step + 1, "loss": float(metrics[0]), **{k: float(v) for k, v in zip(parts, metrics[1:])},
                      "l0": float(sums[0]), "explained_variance": 1.0 - float(sums[1]),
                      "dead_fraction": float((steps_since_fired >= cfg.dead_steps).float().mean()), "lr": lr}
            if resampled:
                record["resampled"] = resampled
            history.append(record)
            if rank == 0:
                with open(log_path, "a") as f:
                    f.write(json.dumps(record) + "\n")
                if (step + 1) % cfg.log_interval == 0:
                    bar.set_postfix(mse=f"{record['mse']:.4g}", l0=f"{record['l0']:.1f}", dead=f"{record['dead_fraction']:.2f}")
            if world_size > 1:
                stop = torch.tensor(float(interrupted["flag"]), device=device)
                dist.all_reduce(stop)
                interrupted["flag"] = bool(stop > 0)
            if (step + 1) % cfg.checkpoint_interval == 0 or step + 1 == cfg.steps or interrupted["flag"]:
                checkpoint(step + 1)
            if interrupted["flag"]:
                if rank == 0:
                    bar.write(f"interrupted: checkpoint saved at step {step + 1} in {ckpt_path}; continue with --resume")
                break
    finally:
        bar.close()
        restore_sigint()

    sae_dir = out_dir / "sae"
    if rank == 0 and not interrupted["flag"]:
        sae.save_pretrained(sae_dir)
        if read_log(out_dir):
            write_training_curves(out_dir)
    return {"sae": sae.eval(), "history": history, "checkpoint": str(ckpt_path), "log": str(log_path),
            "sae_dir": str(sae_dir), "interrupted": interrupted["flag"]}
