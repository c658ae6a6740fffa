"""The `hookgpt` command line: what a researcher runs first.

    hookgpt demo                      # the shipped model: generate, copy, logit lens, head scans -> report.html
    hookgpt generate "To be, or not"  # continue a prompt
    hookgpt lens "..."                # logit lens of a prompt
    hookgpt heads                     # previous-token / induction / duplicate / BOS head scans
    hookgpt patch --clean ... --corrupted ... --answer ... --wrong ...
    hookgpt render "..." --layer 1    # interactive attention view (HTML)
    hookgpt info                      # config, parameter count, hook names
    hookgpt train [...]               # train a model (see hookgpt train --help)
    hookgpt export CKPT DIR           # a training checkpoint -> a loadable model directory

Every command takes `--model` (a shipped model name, a hookgpt or Hugging Face directory, or a
name in the local Hugging Face cache) and `--device`. The command line is the top layer of the
project: it uses `hookgpt` and `analyses`, and nothing imports it. Each command is a few lines
that call an analysis and print or save its result (pages: `analyses.render.save_report`).

A user error (a bad number, a missing or unreadable file, a model that does not load) is one
line on stderr and exit code 2; a closed pipe (`hookgpt generate --stream | head`) ends quietly.
Only a bug in hookgpt prints a traceback, and `--debug` shows it for any error.
"""

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Optional

from hookgpt.atomic import write_text_atomic
from hookgpt.errors import HookgptError, UnknownNameError, close_matches

DEFAULT_MODEL = "hookgpt-shakespeare"
DEFAULT_PROMPT = "ROMEO:\nBut, soft! what light through yonder window breaks?\nIt is the east, and Juliet is the"
# The passage the demo asks the model to copy: a sonnet (not in the plays the model was trained on),
# so a good continuation of its second copy is copying from the context (induction), not memory.
COPY_PASSAGE = ("Shall I compare thee to a summer's day? Thou art more lovely and more temperate: "
                "Rough winds do shake the darling buds of May, And summer's lease hath all too short a date;")


class CLIError(Exception):
    """An error to report as one line, without a traceback."""


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def load_model(args: argparse.Namespace):
    from hookgpt import HookedGPT

    model = HookedGPT.from_pretrained(args.model, device=args.device)
    model.eval()
    return model


def _prompt(args) -> str:
    text = getattr(args, "prompt", None)
    return DEFAULT_PROMPT if text is None else text.replace("\\n", "\n")


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def cmd_info(args) -> int:
    model = load_model(args)
    cfg = model.cfg
    print(f"model: {args.model} ({cfg.model_name})")
    print(f"parameters: {model.n_params():,} ({model.n_params(include_embeddings=False):,} without embeddings)")
    for key, value in cfg.to_dict().items():
        if key != "extra":
            print(f"  {key}: {value}")
    print(f"hook points ({len(model.hook_dict)}):")
    names = list(model.hook_dict)
    if not args.all_hooks:
        names = [n for n in names if not n.startswith("blocks.") or n.startswith("blocks.0.")]
        print("  (layer 0 shown; every layer has the same; --all-hooks lists them all)")
    for name in names:
        print(f"  {name}")
    return 0


def cmd_generate(args) -> int:
    model = load_model(args)
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.sample, temperature=args.temperature,
                   top_k=args.top_k, top_p=args.top_p, seed=args.seed)
    prompt = _prompt(args)
    if args.stream:
        print(prompt, end="", flush=True)
        for piece in model.generate(prompt, stream=True, **options):
            print(piece if isinstance(piece, str) else getattr(piece, "text", piece), end="", flush=True)
        print()
    else:
        print(model.generate(prompt, **options))
    return 0


def cmd_heads(args) -> int:
    from analyses import heads
    from analyses.render import save_report

    for kind in args.kinds or []:
        if kind not in heads.SCANS:
            raise UnknownNameError(f"unknown scan {kind!r}{close_matches(kind, heads.SCANS)}; choose from {sorted(heads.SCANS)}")
    model = load_model(args)
    scores = heads.pattern_scores(model, heads.repeated_random_tokens(model, seq_len=args.seq_len))
    for kind in args.kinds or scores:
        print(f"\n{kind} (top {args.top}):")
        print(heads.top_heads(scores[kind], k=args.top, kind=kind).to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    if args.out:
        page = save_report(args.out, f"Head scans: {args.model}", [(k, heads.plot_head_scores(v, title=k)) for k, v in scores.items()])
        print(f"\nwrote {page}")
    return 0


def cmd_lens(args) -> int:
    from analyses import logit_lens
    from analyses.render import logit_lens_grid, save_report

    model = load_model(args)
    result = logit_lens.logit_lens(model, _prompt(args), k=args.k)
    last = len(result.tokens) - 1
    print(f"logit lens at the last position ({result.tokens[last]!r}): top-{args.k} predictions per layer")
    for layer, label in enumerate(result.layer_labels):
        preds = ", ".join(f"{t!r} {p:.2f}" for t, p in zip(result.top_tokens[layer][last], result.top_probs[layer, last].tolist()))
        print(f"  {label:>10}: {preds}")
    if args.out:
        view = logit_lens_grid(result.tokens, result.layer_labels, result.top_tokens, result.top_probs, title="Logit lens")
        page = save_report(args.out, f"Logit lens: {args.model}", [("Top predictions by layer and position", view),
                                                                    ("Probability of the actual next token", result.figure())])
        print(f"wrote {page}")
    return 0


def cmd_patch(args) -> int:
    from analyses import patching
    from analyses.render import save_report

    model = load_model(args)
    clean, corrupted = args.clean.replace("\\n", "\n"), args.corrupted.replace("\\n", "\n")
    clean_tokens, corrupted_tokens = model.to_tokens(clean), model.to_tokens(corrupted)
    if clean_tokens.shape != corrupted_tokens.shape:
        raise CLIError(
            f"clean and corrupted prompts must have the same number of tokens, got {clean_tokens.shape[1]} and "
            f"{corrupted_tokens.shape[1]}: {model.to_str_tokens(clean)} vs {model.to_str_tokens(corrupted)}"
        )
    answer, wrong = model.to_single_token(args.answer), model.to_single_token(args.wrong)
    import torch

    with torch.no_grad():
        metric = patching.logit_diff_metric(model(clean_tokens), model(corrupted_tokens), answer, wrong)
        result = patching.patch_residual(model, clean_tokens, corrupted_tokens, metric, activation=args.activation)
    print(f"patching {args.activation} (metric: logit difference {args.answer!r} - {args.wrong!r}, 0 = corrupted, 1 = clean)")
    print(result.to_df().pivot(index="layer", columns="pos", values="metric").to_string(float_format=lambda x: f"{x:.2f}"))
    if args.out:
        page = save_report(args.out, f"Activation patching: {args.model}", [(f"{args.activation} by layer and position", result.figure())])
        print(f"wrote {page}")
    return 0


def cmd_render(args) -> int:
    from analyses.render import attention

    model = load_model(args)
    view = attention(model, _prompt(args), layer=args.layer)
    out = Path(args.out or f"attention-layer{args.layer}.html")
    view.save(out)
    print(f"wrote {out}")
    return 0


def cmd_train(args) -> int:
    from hookgpt.train import main as train_main

    return train_main(args.train_args)


def cmd_export(args) -> int:
    from hookgpt.train import export_model

    model = export_model(args.checkpoint, args.out, dtype=args.dtype)
    print(f"wrote {args.out} ({model.n_params():,} parameters, {args.dtype}); load it with HookedGPT.from_pretrained({str(args.out)!r})")
    return 0


def cmd_demo(args) -> int:
    import torch

    from analyses import heads, logit_lens
    from analyses.render import attention, logit_lens_grid, save_report

    started = time.perf_counter()
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():  # say so now, not after the whole demo has run
        raise CLIError(f"--out {str(out_dir)!r} is a file, not a directory")
    model = load_model(args)
    prompt = _prompt(args)
    print(f"hookgpt demo: {args.model} ({model.cfg.n_layers} layers, d_model {model.cfg.d_model}, {model.n_params():,} parameters)")

    continuation = model.generate(prompt, max_new_tokens=args.max_new_tokens)
    print(f"\n--- greedy continuation ---\n{continuation}\n---------------------------")
    sampling = {"do_sample": True, "temperature": 0.8, "top_k": 40, "seed": args.seed}
    sampled = model.generate(prompt, max_new_tokens=args.max_new_tokens, **sampling)
    sampled_heading = f"sampled continuation (temperature 0.8, top-k 40, seed {args.seed})"
    print(f"\n--- {sampled_heading} ---\n{sampled}\n---------------------------")
    copy = _copy_passage(model, COPY_PASSAGE)
    copy_text = (f"passage: {copy['passage']!r}\ngiven the passage and then its first {copy['prefix_tokens']} tokens "
                 f"({copy['prefix']!r}) again, "
                 f"the model continues: {copy['continuation']!r}\ncopied {copy['tokens_copied']}/{copy['tokens_total']} tokens; "
                 f"with the passage read twice, its top guess is the next token for {copy['top1_second_copy']}/{copy['passage_tokens']} "
                 f"tokens of the second copy ({copy['top1_first_copy']}/{copy['passage_tokens']} of the first); "
                 f"loss on the first copy {copy['first_copy_loss']:.2f}, on the second {copy['second_copy_loss']:.2f} nats/token")
    print(f"\n--- copying a repeated passage (induction) ---\n{copy_text}\n---------------------------\n")

    with torch.no_grad():
        loss = float(model(prompt, return_type="loss"))
    lens = logit_lens.logit_lens(model, prompt, k=5)
    repeated = heads.repeated_random_tokens(model)
    scores = heads.pattern_scores(model, repeated)  # every scan of analyses.heads, one forward pass
    top = {kind: heads.top_heads(scores[kind], k=3, kind=kind) for kind in ("previous_token", "induction", "duplicate_token")}

    print(f"loss on the prompt: {loss:.3f} nats/token")
    for kind, df in top.items():
        best = ", ".join(f"L{r.layer}H{r.head} {r.score:.2f}" for r in df.itertuples())
        print(f"top {kind.replace('_', '-')} heads: {best}")

    sections = [
        ("Prompt and greedy continuation", continuation),
        (f"Prompt and {sampled_heading}", sampled),
        ("Copying a repeated passage (induction at work)", copy_text),
        ("Logit lens: top predictions by layer and position", logit_lens_grid(lens.tokens, lens.layer_labels, lens.top_tokens, lens.top_probs)),
        ("Logit lens: probability of the actual next token", lens.figure()),
    ]
    for kind, s in scores.items():
        sections.append((f"Head scan: {kind.replace('_', ' ')}", heads.plot_head_scores(s, title=kind)))
    sections.append(("Top heads", heads.head_scores_df(scores).sort_values("score", ascending=False).groupby("kind").head(3)))
    repeated_text = model.to_string(repeated[0, 1:])
    for layer in range(model.cfg.n_layers):
        sections.append((f"Attention, layer {layer}, on a repeated random sequence (hover a token)", attention(model, repeated_text, layer=layer)))
    sections += _sae_sections(model, args.model, prompt)
    report = save_report(out_dir / "report.html", f"hookgpt demo: {args.model}", sections)
    summary = {"model": args.model, "loss_on_prompt": loss, "continuation": continuation,
               "sampled_continuation": sampled, "sampling": sampling, "copy": copy,
               "top_heads": {k: df.to_dict(orient="records") for k, df in top.items()}, "seconds": time.perf_counter() - started}
    write_text_atomic(out_dir / "summary.json", json.dumps(summary, indent=2))
    print(f"\nwrote {report} and {out_dir / 'summary.json'} in {summary['seconds']:.1f} s")
    return 0


def _copy_passage(model, passage: str, prefix_tokens: int = 3) -> dict:
    """Induction at work: the model reads `passage`, then its first `prefix_tokens` tokens again,
    and continues greedily for the rest of the passage's length. Returns the passage, the
    continuation, how many generated tokens equal the passage's (one early miss sends a greedy
    continuation elsewhere), and, on the passage repeated twice (BOS first, the true tokens as
    context), how many tokens of each copy are the model's top guess and the mean loss per token."""
    import torch

    tokens = model.to_tokens(passage)[0]  # [pos]: BOS, then the passage
    bos, passage_tokens = tokens[:1], tokens[1:(model.cfg.n_ctx + 1) // 2]  # BOS + two copies fit the context
    passage, n = model.to_string(passage_tokens), len(passage_tokens)
    prompt = torch.cat([bos, passage_tokens, passage_tokens[:prefix_tokens]])
    generated = model.generate(prompt, max_new_tokens=n - prefix_tokens, stop_at_eos=False)[len(prompt):]
    twice = torch.cat([bos, passage_tokens, passage_tokens])[None]
    with torch.no_grad():
        logits = model(twice)[0, :-1]  # position i predicts token i + 1
    loss = torch.nn.functional.cross_entropy(logits.float(), twice[0, 1:], reduction="none")
    right = logits.argmax(dim=-1) == twice[0, 1:]
    return {
        "passage": passage,
        "prefix": model.to_string(passage_tokens[:prefix_tokens]),
        "prefix_tokens": prefix_tokens,
        "continuation": model.to_string(generated),
        "tokens_copied": int((generated == passage_tokens[prefix_tokens:]).sum()),
        "tokens_total": n - prefix_tokens,
        "passage_tokens": n,
        "top1_first_copy": int(right[:n].sum()),  # the passage's tokens that are the model's top guess, the first time
        "top1_second_copy": int(right[n:].sum()),  # ... and again, when they are in the context
        "first_copy_loss": float(loss[:n].mean()),  # predicting the passage's tokens the first time
        "second_copy_loss": float(loss[n:].mean()),  # ... and again, when they are in the context
    }


def _sae_sections(model, model_name: str, prompt: str) -> list:
    """The shipped SAE of the shipped model, if there is one: its features most active on the
    prompt's last token, as dashboards over held-out Shakespeare."""
    import tempfile

    import torch

    from analyses.sae import SAE, list_pretrained_saes
    from analyses.sae.dashboard import feature_dashboards
    from hookgpt.datasets import load_tokens, prepare_data

    names = [n for n in list_pretrained_saes() if n.startswith(f"{model_name}-")]
    if not names:
        return []
    sae = SAE.from_pretrained(names[0])
    with torch.no_grad():
        _, cache = model.run_with_cache(prompt, names_filter=sae.cfg.hook_name, return_type=None)
        acts = sae.encode(cache[sae.cfg.hook_name][0, -1])  # [d_sae] at the prompt's last token
    features = [int(f) for f in acts.topk(4).indices if acts[f] > 0]
    print(f"shipped SAE {names[0]}: features most active on the prompt's last token: {features}")
    with tempfile.TemporaryDirectory() as tmp:
        val = torch.from_numpy(load_tokens(prepare_data(None, tmp), "val").astype("int64"))
        dashboards = feature_dashboards(model, sae, val, features=features, seq_len=64, max_rows=32, steer_prompt=prompt)
    return [(f"SAE features ({names[0]}) most active on the prompt's last token", dashboards.view())]


# ---------------------------------------------------------------------------------------------
# argument parsing
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hookgpt", description="A clean, hooked GPT-2 for interpretability.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, fn: Callable, help: str, prompt: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        p.set_defaults(fn=fn)
        p.add_argument("--model", default=DEFAULT_MODEL, help=f"model name or directory (default: {DEFAULT_MODEL})")
        p.add_argument("--device", default="cpu", help="where to run the model: cpu (default), cuda, cuda:1, mps")
        p.add_argument("--debug", action="store_true", help="show the Python traceback of any error")
        if prompt:
            p.add_argument("prompt", nargs="?", default=None, help="the text (\\n for newlines; default: a line of Romeo and Juliet)")
        return p

    p = add("demo", cmd_demo, "generate (greedy and sampled), copy a repeated passage, run the logit lens and head scans, "
                               "and write an HTML report")
    p.add_argument("--out", default="hookgpt-demo", help="directory for report.html and summary.json (default: hookgpt-demo)")
    p.add_argument("--prompt", default=None, help="the prompt (default: a line of Romeo and Juliet)")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled continuation (default: 0)")

    p = add("generate", cmd_generate, "continue a prompt", prompt=True)
    p.add_argument("-n", "--max-new-tokens", type=int, default=40)
    p.add_argument("--sample", action="store_true", help="sample instead of greedy decoding")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")

    p = add("lens", cmd_lens, "logit lens: what each layer predicts at each position", prompt=True)
    p.add_argument("-k", type=int, default=5)
    p.add_argument("--out", help="also write an HTML view here")

    p = add("heads", cmd_heads, "head scans: previous-token, induction, duplicate-token, first-token, current-token")
    p.add_argument("--kinds", nargs="*", help="which scans to print (default: all)")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--seq-len", type=int, default=20, help="length of the random sequence repeated for the induction scan")
    p.add_argument("--out", help="also write heatmaps to this HTML file")

    p = add("patch", cmd_patch, "activation patching from a clean into a corrupted prompt (logit-difference metric)")
    p.add_argument("--clean", required=True)
    p.add_argument("--corrupted", required=True)
    p.add_argument("--answer", required=True, help="the answer token of the clean prompt (one token, e.g. ' Romeo')")
    p.add_argument("--wrong", required=True, help="the answer token of the corrupted prompt")
    p.add_argument("--activation", default="resid_pre", choices=["resid_pre", "resid_mid", "attn_out", "mlp_out"])
    p.add_argument("--out", help="also write the heatmap to this HTML file")

    p = add("render", cmd_render, "interactive attention view of one layer, saved as standalone HTML", prompt=True)
    p.add_argument("--layer", type=int, default=0)
    p.add_argument("--out", help="output file (default: attention-layer<L>.html)")

    p = add("info", cmd_info, "model config, parameter count and hook names")
    p.add_argument("--all-hooks", action="store_true")

    p = sub.add_parser("train", help="train a model (all options: hookgpt train --help)", add_help=False)
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("export", help="turn a training checkpoint into a model directory for from_pretrained")
    p.set_defaults(fn=cmd_export)
    p.add_argument("--debug", action="store_true", help="show the Python traceback of any error")
    p.add_argument("checkpoint", help="a ckpt.pt written by hookgpt train")
    p.add_argument("out", help="output directory")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])

    from analyses.sae.cli import add_parser as add_sae_parser  # hookgpt sae train|eval|dashboard

    add_sae_parser(sub)
    return parser


# Errors that mean "the user asked for something that cannot be done", reported in one line:
# hookgpt's own refusals, bad values, unknown names and the operating system's answers (a file
# that does not exist, a directory that is read-only, a disk that is full).
USER_ERRORS = (CLIError, HookgptError, ValueError, KeyError, OSError)


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":  # the trainer has its own parser; pass everything through
        args = argparse.Namespace(fn=cmd_train, train_args=argv[1:], command="train", debug=False)
    else:
        args = parser.parse_args(argv)
    if getattr(args, "fn", None) is None:
        parser.print_help()
        return 2
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, like any Unix tool
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by a closed pipe
    except USER_ERRORS as e:
        if args.debug:
            raise
        print(f"hookgpt {args.command}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Exception:
        traceback.print_exc()
        print(f"hookgpt {args.command}: this is a bug in hookgpt; please report it with the traceback above", file=sys.stderr)
        return 1


def _one_line(error: BaseException) -> str:
    """The message of an error, on one line (a KeyError's without its quotes)."""
    message = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    if isinstance(error, OSError) and error.filename and str(error.filename) not in message:
        message = f"{message}: {error.filename}"
    return " ".join(message.split()) or type(error).__name__


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so Python's own flush at exit does not fail on the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
