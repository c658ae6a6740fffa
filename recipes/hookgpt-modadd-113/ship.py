"""Turn the training run of hookgpt-modadd-113 into the package's shipped model.

    python recipes/hookgpt-modadd-113/make_table.py                   # the task table (seconds)
    hookgpt train --config recipes/hookgpt-modadd-113/config.json     # full-batch training (resumable: --resume)
    python recipes/hookgpt-modadd-113/ship.py runs/hookgpt-modadd-113 [STEP]   # STEP: ship an earlier snapshot

Exports the final checkpoint in float16 to `hookgpt/data/models/hookgpt-modadd-113/`, with the
weights along training (`checkpoints/step_XXXXXX.safetensors`, float16: every 250 steps up to
4,000, every 500 after), the train/test split (`task.safetensors`), and a card (`card.json` +
`MODEL_CARD.md`) holding what `analyses.fourier` measures on them. `tests/test_modadd_model.py`
checks the shipped files against the card and against the paper's known answers.
"""

import json
import shutil
import sys
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analyses import fourier  # noqa: E402
from hookgpt import GPTConfig, HookedGPT  # noqa: E402
from hookgpt.datasets import load_task_table  # noqa: E402
from hookgpt.train import TrainConfig, export_model, list_snapshots, load_checkpoint, read_log  # noqa: E402

NAME = "hookgpt-modadd-113"
OUT = ROOT / "hookgpt" / "data" / "models" / NAME
MAX_BYTES = 15 * 2**20
COMMAND = ("python recipes/hookgpt-modadd-113/make_table.py && hookgpt train --config recipes/hookgpt-modadd-113/config.json && "
           "python recipes/hookgpt-modadd-113/ship.py runs/hookgpt-modadd-113")


def shipped_steps(steps: list[int]) -> list[int]:
    return [s for s in steps if (s <= 4000 and s % 250 == 0) or s % 500 == 0]


def wall_time(run: Path) -> dict:
    """Seconds the training took, from the start/end lines `runs/modadd_walltime.txt` collects (if any)."""
    path = run.parent / "modadd_walltime.txt"
    if not path.exists():
        return {}
    starts = [int(line.split()[1]) for line in path.read_text().splitlines() if line.startswith("start")]
    ends = [int(line.split()[1]) for line in path.read_text().splitlines() if line.startswith("end")]
    total = sum(e - s for s, e in zip(starts, ends))
    return {"wall_seconds": total, "sessions": len(ends)}


def export_snapshot(run: Path, step: int, state: dict) -> None:
    """Save the weights of `run`'s snapshot at `step` as the model (float16), with the run's model config."""
    model = HookedGPT(GPTConfig.from_dict(state["model_config"]), init_weights=False)
    model.load_state_dict(load_file(str(dict(list_snapshots(run))[step])))
    model = model.half()
    model.cfg = model.cfg.replace(dtype=torch.float16)
    model.save_pretrained(str(OUT))


def main(run_dir: str, final_step: Optional[int] = None) -> None:
    """Ship `run_dir`'s model: its last checkpoint, or with `final_step` its snapshot at that step
    (the weights a run with `max_steps = final_step` ends with: the learning rate is constant)."""
    run = Path(run_dir)
    state = load_checkpoint(run / "ckpt.pt")
    train_cfg = TrainConfig.from_dict(state["train_config"])
    _, _, is_train, table_meta = load_task_table(train_cfg.data)
    final_step = state["step"] if final_step is None else final_step
    if train_cfg.lr != train_cfg.min_lr and final_step != state["step"]:
        raise SystemExit("shipping an earlier step is exact only with a constant learning rate (lr == min_lr)")

    if OUT.exists():
        shutil.rmtree(OUT)
    if final_step == state["step"]:
        export_model(run / "ckpt.pt", OUT, dtype="float16")
    else:
        export_snapshot(run, final_step, state)
    (OUT / "checkpoints").mkdir()
    snapshots = dict(list_snapshots(run))
    for step in shipped_steps([s for s in sorted(snapshots) if s <= final_step]):
        weights = {k: v.half().contiguous() for k, v in load_file(str(snapshots[step])).items()}
        save_file(weights, str(OUT / "checkpoints" / f"step_{step:06d}.safetensors"), metadata={"step": str(step)})
    save_file({"is_train": torch.from_numpy(is_train)}, str(OUT / "task.safetensors"), metadata={k: str(v) for k, v in table_meta.items()})

    model = HookedGPT.from_pretrained(NAME)  # float16 weights, computed in float32
    mask = fourier.shipped_train_mask(NAME)
    checkpoints = fourier.shipped_checkpoints(NAME)
    keys = fourier.key_frequencies(model)
    measures = fourier.progress_measures(checkpoints, mask, keys)
    final = measures.df.iloc[-1]
    spectrum = fourier.embedding_spectrum(model)
    neurons = fourier.neuron_frequencies(model)
    logits = fourier.grid_activations(model)["logits"]
    log = read_log(run / "log.jsonl")
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())

    card = {
        "name": NAME,
        "config": model.cfg.to_dict() | {"dtype": "float16 (stored); float32 when loaded"},
        "parameters": model.n_params(),
        "task": table_meta | {"train_pairs": int(mask.sum()), "test_pairs": int((~mask).sum())},
        "training": {
            "command": COMMAND,
            "train_config": state["train_config"],
            "steps": final_step,
            "epochs": final_step,  # full batch: one step is one epoch
            "run_steps": state["step"],
            "final_train_loss_during_training": next(r["loss"] for r in log if r["step"] == final_step),
            "after_the_shipped_step": after_note(log, final_step),
            **wall_time(run),
        },
        "evaluation": {
            "train_loss": float(final.train_loss), "test_loss": float(final.test_loss),
            "train_accuracy": float(final.train_accuracy), "test_accuracy": float(final.test_accuracy),
            "all_pairs_loss": fourier.grid_loss(logits),
            "key_frequencies": keys,
            "key_frequency_share_of_embedding": float(spectrum.share[[k - 1 for k in keys]].sum()),
            "embedding_frequency_shares": [round(float(x), 5) for x in spectrum.share],
            "neurons_with_85pct_variance_in_one_frequency": float((neurons.fraction >= 0.85).float().mean()),
            "median_neuron_fraction_explained": float(neurons.fraction.median()),
            "neuron_clusters": neurons.clusters().to_dict(orient="records"),
            "restricted_loss": float(final.restricted_loss),
            "excluded_loss": float(final.excluded_loss),
            "phases": measures.phases(),
        },
        "checkpoints": [int(s) for s in measures.df.step],
        "progress_measures": measures.df.round(6).to_dict(orient="list"),
        "directory_bytes": size,
    }
    if size > MAX_BYTES:
        raise SystemExit(f"{OUT} holds {size:,} bytes, more than {MAX_BYTES:,}")
    (OUT / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (OUT / "MODEL_CARD.md").write_text(model_card_markdown(card))
    for path in OUT.rglob("*"):  # safetensors writes 0600 files; a package's data files are 0644
        path.chmod(0o755 if path.is_dir() else 0o644)
    print(json.dumps(card["evaluation"], indent=2))


def after_note(log: list[dict], final_step: int) -> Optional[dict]:
    """What the run did after the shipped step, if it went on (from its log)."""
    later = [r for r in log if r["step"] > final_step]
    if not later:
        return None
    spike = max(later, key=lambda r: r["loss"])
    evaluated = [r for r in later if "val_accuracy" in r]
    return {"last_step": later[-1]["step"], "highest_train_loss": spike["loss"], "at_step": spike["step"],
            "last_test_accuracy": evaluated[-1]["val_accuracy"] if evaluated else None}


def weight_decay_note(weight_decay: float) -> str:
    if weight_decay == 1.0:
        return ""
    return (f"weight decay {weight_decay} instead of 1.0, so that it groks about {weight_decay:g}x sooner (with 1.0 the paper's "
            "setup reaches 100% test accuracy near epoch 7,000, more than this session's shared 2-core CPU allowed; a run with "
            "1.0 had memorised by epoch 1,342 when it was stopped, test accuracy 5%); ")


def spike_note(t: dict) -> str:
    after = t.get("after_the_shipped_step")
    if not after:
        return ""
    return (f"\n- This run went on to step {after['last_step']:,}, where a loss spike (the float32 \"slingshot\": train loss up to "
            f"{after['highest_train_loss']:.1e} at step {after['at_step']:,}; test accuracy {after['last_test_accuracy']:.2%} at the end) "
            f"left the weights less clean. The shipped model is the step-{t['steps']:,} weights, which the recipe's "
            f"`max_steps: {t['steps']}` reproduces (the learning rate is constant after warmup, so stopping earlier changes nothing before).")


def model_card_markdown(card: dict) -> str:
    cfg, t, e, tc = card["config"], card["training"], card["evaluation"], card["training"]["train_config"]
    wall = (f"{t['wall_seconds'] / 60:.0f} minutes of one CPU thread for the run's {t['run_steps']:,} steps (a 2-core machine "
            "shared with other work)") if "wall_seconds" in t else "not recorded"
    phases = "; ".join(f"{name} steps {a:,}–{b:,}" for name, (a, b) in e["phases"].items())
    return f"""# hookgpt-modadd-113

A one-layer transformer trained on modular addition, `a b = -> (a + b) mod 113`, by hookgpt's own
trainer: the setup of Nanda et al. 2023, "Progress measures for grokking via mechanistic
interpretability". It memorises its training pairs first, then generalises long after, with a
Fourier-multiplication algorithm that can be read off its weights (`analyses.fourier`).
Shipped with its weights along training: `HookedGPT.from_pretrained("{card['name']}")`,
`analyses.fourier.shipped_checkpoints("{card['name']}")`.

## Model
- 1 layer, d_model {cfg['d_model']}, {cfg['n_heads']} heads of d_head {cfg['d_head']}, d_mlp {cfg['d_mlp']}, ReLU, no LayerNorm
  (`normalization_type: null`), untied embeddings; inputs `a b =` over d_vocab {cfg['d_vocab']} (`=` is token 113),
  d_vocab_out {cfg['d_vocab_out']} answer logits at the last position; n_ctx 3; {card['parameters']:,} parameters. No tokenizer: feed token ids.
- Weights stored in float16; loaded as float32.

## Data
All 113² = 12,769 pairs; a random 30% ({card['task']['train_pairs']:,} pairs, split seed {card['task'].get('split_seed')}) train, the other 70% test
(`task.safetensors` holds the split; `recipes/hookgpt-modadd-113/make_table.py` builds the table).

## Training
`{t['command']}`

- Full batch (every step is one epoch over the 3,830 training pairs), {t['steps']:,} steps; loss on the answer position only.
- AdamW, lr {tc['lr']} after {tc['warmup_steps']} linear warmup steps, constant; weight decay {tc['weight_decay']} on every matrix,
  embeddings included; betas {tuple(tc['betas'])}; no gradient clipping; biases frozen at zero (`freeze: {tc['freeze']}`); model seed {tc['seed']}.
- Wall time: {wall}.{spike_note(t)}
- Deviations from the paper: {weight_decay_note(tc['weight_decay'])}{t['steps']:,} epochs instead of 40,000 (enough for the three phases); init N(0, {cfg['init_range']})
  (TransformerLens's 0.8/sqrt(d_model)) with hookgpt's GPT-2 rule scaling W_O and W_out by 1/sqrt(2); the loss in float32
  (the paper used float64); its own random split and seeds.

## Evaluation (`analyses.fourier`, on the shipped float16 weights)
- Train loss {e['train_loss']:.2e}, test loss {e['test_loss']:.2e}; train accuracy {e['train_accuracy']:.2%}, **test accuracy {e['test_accuracy']:.2%}**.
- Key frequencies (from the embedding's Fourier spectrum): **{e['key_frequencies']}**, holding {e['key_frequency_share_of_embedding']:.1%}
  of its squared Fourier norm.
- MLP neurons: {e['neurons_with_85pct_variance_in_one_frequency']:.1%} have at least 85% of their variance explained by one frequency
  (median {e['median_neuron_fraction_explained']:.1%}); clusters: {', '.join(f"k={c['frequency']}: {c['neurons']}" for c in e['neuron_clusters'])}.
- Restricted loss (logits kept only along cos/sin w(a+b-c) of the key frequencies, all pairs): {e['restricted_loss']:.2e}, against
  {e['all_pairs_loss']:.2e} for the full logits; excluded loss (those directions removed, training pairs): {e['excluded_loss']:.3f}.
- Phases (from the shipped checkpoints): {phases}.

`tests/test_modadd_model.py` checks the shipped weights against this card and the paper's known answers.
"""


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/hookgpt-modadd-113", int(sys.argv[2]) if len(sys.argv) > 2 else None)
