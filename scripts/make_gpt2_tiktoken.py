"""Write `hookgpt/data/gpt2/gpt2.tiktoken`: GPT-2's BPE ranks in tiktoken's own file format.

    python scripts/make_gpt2_tiktoken.py

The ranks come from OpenAI's original files shipped next to it (`encoder.json.gz`,
`vocab.bpe.gz`), converted by tiktoken's public `tiktoken.load.data_gym_to_mergeable_bpe_ranks`
(the function tiktoken's own `gpt2` encoding is built with). The format is one line per
mergeable token, `base64(token bytes) rank`, in rank order, which is what
`tiktoken.load.load_tiktoken_bpe` reads. The script prints the file's sha256, which
`hookgpt/tokenizer.py` pins (`GPT2_TIKTOKEN_SHA256`).
"""

import base64
import gzip
import hashlib
import tempfile
from pathlib import Path

from tiktoken.load import data_gym_to_mergeable_bpe_ranks

DATA = Path(__file__).resolve().parent.parent / "hookgpt" / "data" / "gpt2"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        files = {}
        for packed, name in (("vocab.bpe.gz", "vocab.bpe"), ("encoder.json.gz", "encoder.json")):
            files[name] = Path(tmp) / name
            files[name].write_bytes(gzip.decompress((DATA / packed).read_bytes()))
        ranks = data_gym_to_mergeable_bpe_ranks(
            vocab_bpe_file=str(files["vocab.bpe"]),
            encoder_json_file=str(files["encoder.json"]),
            vocab_bpe_hash="1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
            encoder_json_hash="196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
        )
    lines = [base64.b64encode(token) + b" " + str(rank).encode() for token, rank in sorted(ranks.items(), key=lambda item: item[1])]
    data = b"\n".join(lines) + b"\n"
    (DATA / "gpt2.tiktoken").write_bytes(data)
    print(f"wrote {DATA / 'gpt2.tiktoken'}: {len(ranks)} ranks, sha256 {hashlib.sha256(data).hexdigest()}")


if __name__ == "__main__":
    main()
