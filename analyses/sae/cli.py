"""`hookgpt sae ...`: train, evaluate and inspect SAEs from the command line.

    hookgpt sae train --hook blocks.1.hook_resid_pre --d-sae 512 --architecture topk --k 16 --out runs/my-sae
    hookgpt sae train --shards acts/ --hook blocks.1.hook_resid_pre ...      # from analyses.collect shards
    hookgpt sae eval runs/my-sae/sae                                          # or a shipped SAE's name
    hookgpt sae dashboard hookgpt-shakespeare-resid-pre-1 --features 3 7 --out features.html

Training streams activations from `--model` over the bundled Shakespeare (or `--data`, a text
file or directory) unless `--shards` is given; `--resume` continues a stopped run. Under
`torchrun --nproc_per_node N -m analyses.sae.cli train ...` each rank trains on its slice of
every global batch and the gradients are averaged.
"""

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

DEFAULT_MODEL = "hookgpt-shakespeare"


def _tokens(args, model_dir: Path, split: str):
    from hookgpt.train import load_tokens, prepare_data

    prepare_data(args.data, model_dir, 0.05)
    return load_tokens(model_dir, split)


def cmd_train(args) -> int:
    from analyses.sae import ModelActivations, SAEConfig, SAETrainConfig, ShardActivations, train_sae

    if args.shards:
        source = ShardActivations(args.shards, args.hook, seed=args.seed)
        model_name = args.model
    else:
        from hookgpt import HookedGPT

        model = HookedGPT.from_pretrained(args.model).eval()
        model_name = model.cfg.model_name or args.model
        tokens = _tokens(args, Path(args.out) / "data", "train")
        source = ModelActivations(model, tokens, args.hook, seq_len=args.seq_len, seed=args.seed)
    sae_cfg = SAEConfig(d_in=source.d_in, d_sae=args.d_sae, architecture=args.architecture, hook_name=args.hook,
                        k=args.k if args.architecture == "topk" else None, model_name=str(model_name), context_size=args.seq_len)
    train_cfg = SAETrainConfig(out_dir=args.out, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                               lr_warmup_steps=args.lr_warmup_steps, lr_decay_steps=args.lr_decay_steps,
                               l1_coefficient=args.l1_coefficient, l1_warmup_steps=args.l1_warmup_steps, l0_coefficient=args.l0_coefficient,
                               resample_interval=args.resample_interval, dead_steps=args.dead_steps, seed=args.seed,
                               checkpoint_interval=args.checkpoint_interval, device=args.device, progress=not args.quiet)
    result = train_sae(sae_cfg, train_cfg, source, resume=args.resume)
    last = result["history"][-1] if result["history"] else {}
    print(json.dumps({"sae_dir": result["sae_dir"], "checkpoint": result["checkpoint"], "interrupted": result["interrupted"],
                      **{k: last.get(k) for k in ("step", "mse", "l0", "explained_variance", "dead_fraction")}}))
    return 130 if result["interrupted"] else 0


def cmd_eval(args) -> int:
    from analyses.sae import SAE, evaluate_sae
    from hookgpt import HookedGPT

    sae = SAE.from_pretrained(args.sae)
    model = HookedGPT.from_pretrained(args.model).eval()
    tokens = _tokens(args, Path(args.work_dir), "val")
    ev = evaluate_sae(model, sae, tokens, seq_len=args.seq_len, max_rows=args.rows, batch_size=args.batch_size)
    print(json.dumps(ev.to_dict(), indent=2))
    return 0


def cmd_dashboard(args) -> int:
    from analyses.sae import SAE
    from analyses.sae.dashboard import feature_dashboards
    from hookgpt import HookedGPT

    sae = SAE.from_pretrained(args.sae)
    model = HookedGPT.from_pretrained(args.model).eval()
    tokens = _tokens(args, Path(args.work_dir), "val")
    dashboards = feature_dashboards(model, sae, tokens, features=args.features, seq_len=args.seq_len, max_rows=args.rows,
                                    steer_prompt=args.steer_prompt, steer_coefficient=args.steer_coefficient)
    path = dashboards.view().save(args.out)
    print(f"wrote {path} ({len(dashboards.features)} features)")
    return 0


def add_parser(sub) -> argparse.ArgumentParser:
    """Register `sae` (with `train`, `eval`, `dashboard`) on the `hookgpt` CLI's subparsers."""
    p = sub.add_parser("sae", help="sparse autoencoders: train, eval, dashboard", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = p.add_subparsers(dest="sae_command", metavar="SAE_COMMAND", required=True)

    def common(q, data=True):
        q.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or directory (default: {DEFAULT_MODEL})")
        q.add_argument("--debug", action="store_true", help="show the Python traceback of any error")
        q.add_argument("--seq-len", type=int, default=128, help="tokens per row (default: 128)")
        if data:
            q.add_argument("--data", default=None, help="text file or directory (default: the bundled Shakespeare)")

    t = commands.add_parser("train", help="train an SAE on one hook's activations")
    t.set_defaults(fn=cmd_train)
    common(t)
    t.add_argument("--hook", required=True, help="hook name, e.g. blocks.1.hook_resid_pre")
    t.add_argument("--shards", help="train on analyses.collect shards in this directory instead of streaming from the model")
    t.add_argument("--out", required=True, help="run directory (checkpoint, log.jsonl, loss.html, sae/)")
    t.add_argument("--architecture", default="topk", choices=["standard", "topk", "jumprelu"])
    t.add_argument("--d-sae", type=int, default=512)
    t.add_argument("--k", type=int, default=16, help="active features (topk)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=1024)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--lr-warmup-steps", type=int, default=0)
    t.add_argument("--lr-decay-steps", type=int, default=0)
    t.add_argument("--l1-coefficient", type=float, default=5.0)
    t.add_argument("--l1-warmup-steps", type=int, default=0)
    t.add_argument("--l0-coefficient", type=float, default=1.0)
    t.add_argument("--resample-interval", type=int, default=0)
    t.add_argument("--dead-steps", type=int, default=200)
    t.add_argument("--checkpoint-interval", type=int, default=250)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu")
    t.add_argument("--resume", action="store_true", help="continue the run in --out")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    for name, fn, help in (("eval", cmd_eval, "L0, explained variance, dead fraction, CE loss recovered"),
                           ("dashboard", cmd_dashboard, "feature dashboards as one standalone HTML file")):
        q = commands.add_parser(name, help=help)
        q.set_defaults(fn=fn)
        q.add_argument("sae", help="SAE directory (cfg.json + sae_weights.safetensors) or shipped SAE name")
        common(q)
        q.add_argument("--rows", type=int, default=32, help="rows of held-out text (default: 32)")
        q.add_argument("--batch-size", type=int, default=8)
        q.add_argument("--work-dir", default="runs/sae-eval-data", help="where the tokenized text is kept")
        if name == "dashboard":
            q.add_argument("--features", type=int, nargs="*", help="feature ids (default: the 16 densest)")
            q.add_argument("--steer-prompt", default=None, help="text to show each feature's steering effect on")
            q.add_argument("--steer-coefficient", type=float, default=10.0)
            q.add_argument("--out", default="sae-features.html")
    return p


def main(argv: Optional[list[str]] = None) -> int:
    """`python -m analyses.sae.cli train ...` (what torchrun runs)."""
    parser = argparse.ArgumentParser(prog="hookgpt")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sae", *(sys.argv[1:] if argv is None else argv)])
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
