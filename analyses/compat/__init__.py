"""Compatibility layers: other libraries' public APIs over hookgpt and analyses.

`analyses.compat.transformer_lens` is TransformerLens 2.x: change one import line,

    from analyses.compat import transformer_lens        # instead of: import transformer_lens
    from analyses.compat.transformer_lens import HookedTransformer, utils

and TransformerLens code runs on hookgpt models. See the README's "Differences from
TransformerLens" for what differs and why.
"""
