"""Train, measure and ship the SAE of the shipped model: `hookgpt-shakespeare-resid-pre-1`.

    python scripts/ship_sae.py                 # the one command (resumable: run it again after a stop)

A TopK SAE (k=16, 8 x d_model features) on `blocks.1.hook_resid_pre` of `hookgpt-shakespeare`,
trained on activations streamed from the model over the bundled Shakespeare's training split,
then evaluated on the held-out split (CE loss recovered with the SAE spliced in). Writes the SAE
in SAELens's layout plus `card.json` (the numbers the tests check) and `README.md` to
`analyses/sae/data/hookgpt-shakespeare-resid-pre-1/`.
"""

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from analyses.sae import ModelActivations, SAEConfig, SAETrainConfig, evaluate_sae, save_sae, train_sae  # noqa: E402
from analyses.sae.saelens import SHIPPED_SAE_DIR  # noqa: E402
from hookgpt import HookedGPT  # noqa: E402
from hookgpt.train import load_tokens, prepare_data  # noqa: E402

NAME = "hookgpt-shakespeare-resid-pre-1"
COMMAND = "python scripts/ship_sae.py"
MODEL = "hookgpt-shakespeare"
HOOK = "blocks.1.hook_resid_pre"
SEQ_LEN = 128
EVAL_ROWS = 64
RUN_DIR = ROOT / "runs" / NAME
D_MODEL = json.loads((ROOT / "hookgpt" / "data" / "models" / MODEL / "config.json").read_text())["d_model"]
SAE_CFG = SAEConfig(d_in=D_MODEL, d_sae=8 * D_MODEL, architecture="topk", k=16, hook_name=HOOK, model_name=MODEL,
                    context_size=SEQ_LEN, prepend_bos=False, dataset="hookgpt bundled Shakespeare (train split)")
TRAIN_CFG = SAETrainConfig(out_dir=str(RUN_DIR), steps=3000, batch_size=1024, lr=2e-3, lr_warmup_steps=100,
                           lr_decay_steps=600, dead_steps=300, seed=0, checkpoint_interval=250, b_dec_init_samples=8192)


def main() -> None:
    torch.set_num_threads(1)
    model = HookedGPT.from_pretrained(MODEL).eval()
    data_dir = RUN_DIR / "data"
    prepare_data(None, data_dir, 0.05)
    source = ModelActivations(model, load_tokens(data_dir, "train"), HOOK, seq_len=SEQ_LEN, rows_per_chunk=32, forward_batch=16, seed=0)
    resume = (RUN_DIR / "sae_ckpt.pt").exists()
    result = train_sae(SAE_CFG, TRAIN_CFG, source, resume=resume)
    sae = result["sae"]
    val = load_tokens(data_dir, "val")
    evaluation = evaluate_sae(model, sae, val, seq_len=SEQ_LEN, max_rows=EVAL_ROWS, batch_size=16)
    out = SHIPPED_SAE_DIR / NAME
    save_sae(sae, out)
    last = result["history"][-1] if result["history"] else {}
    card = {
        "name": NAME,
        "model": MODEL,
        "hook_name": HOOK,
        "config": SAE_CFG.to_dict(),
        "training": {"command": COMMAND, "train_config": {k: v for k, v in TRAIN_CFG.to_dict().items() if k not in ("out_dir", "progress")},
                     "data": "activations streamed from the model over the bundled Shakespeare's train split, rows of 128 tokens",
                     "activations_seen": TRAIN_CFG.steps * TRAIN_CFG.batch_size, "final_train_mse": last.get("mse")},
        "evaluation": {"data": f"the first {EVAL_ROWS} rows of {SEQ_LEN} tokens of the held-out split", **evaluation.to_dict()},
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    e = evaluation
    (out / "README.md").write_text(f"""# {NAME}

A TopK sparse autoencoder (k={SAE_CFG.k}, {SAE_CFG.d_sae} features) on `{HOOK}` of the shipped model `{MODEL}`
(d_in {SAE_CFG.d_in}), trained with hookgpt's own `analyses.sae` by one command: `{COMMAND}`.

- Data: {card['training']['data']}; {TRAIN_CFG.steps} steps of {TRAIN_CFG.batch_size} activations
  ({card['training']['activations_seen']:,} in all), Adam lr {TRAIN_CFG.lr} (warmup {TRAIN_CFG.lr_warmup_steps},
  linear decay over the last {TRAIN_CFG.lr_decay_steps}), TopK auxiliary loss for dead features, b_dec from the geometric median.
- Evaluated on {card['evaluation']['data']} ({e.n_tokens:,} tokens):

| metric | value |
|---|---|
| L0 (features per token) | {e.l0:.2f} |
| explained variance | {e.explained_variance:.3f} |
| MSE | {e.mse:.4f} |
| dead fraction (never fires on the eval tokens) | {e.dead_fraction:.3f} |
| dense fraction (fires on > 10% of tokens) | {e.dense_fraction:.3f} |
| CE loss clean | {e.ce_loss_clean:.3f} |
| CE loss with the SAE spliced in | {e.ce_loss_with_sae:.3f} |
| CE loss, zero-ablated / mean-ablated hook | {e.ce_loss_zero_ablation:.3f} / {e.ce_loss_mean_ablation:.3f} |
| CE loss recovered (vs zero / vs mean ablation) | {e.ce_loss_recovered:.3f} / {e.ce_loss_recovered_mean:.3f} |

Load it offline: `SAE.from_pretrained("{NAME}")`. The files follow SAELens's layout
(`cfg.json` + `sae_weights.safetensors`), so `sae_lens.SAE.load_from_disk` reads them too.
`tests/test_sae_shipped.py` checks these numbers.
""")
    print(json.dumps(card["evaluation"], indent=2))


if __name__ == "__main__":
    main()
