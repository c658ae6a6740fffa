"""The errors hookgpt raises for bad input, so code can catch them and people can read them.

Every check at a public boundary raises one of these, with a message that names the argument
and says what was expected ("top_k must be a positive integer or None, got 2.5"). Each also
subclasses the built-in error it refines, so `except ValueError` (or `pytest.raises(KeyError)`)
keeps working:

    HookgptError                  the base: "hookgpt refused this input"
    ├── ArgumentError             (ValueError)  a value out of range or malformed
    │   ├── IndexRangeError       (also IndexError) a layer, head or position out of range
    │   ├── HookOutputError       a hook returned a tensor of the wrong dtype or device
    │   │   └── HookShapeError    ... or of the wrong shape
    │   └── CheckpointError       a checkpoint is missing, unreadable or inconsistent
    │       └── ModelNotFoundError (also FileNotFoundError) no model of that name anywhere
    ├── ArgumentTypeError         (TypeError)   a value of the wrong type
    └── UnknownNameError          (KeyError)    a hook / preset / scan name that does not exist

Anything else escaping from hookgpt (an IndexError from deep inside torch, say) is a bug.
"""

import difflib
from typing import Iterable


class HookgptError(Exception):
    """Base class of the errors hookgpt raises for input it refuses."""


class ArgumentError(HookgptError, ValueError):
    """An argument's value is out of range or malformed; the message names the argument."""


class ArgumentTypeError(HookgptError, TypeError):
    """An argument has the wrong type; the message names the argument and the types accepted."""


class UnknownNameError(HookgptError, KeyError):
    """A name (of a hook point, a preset, a scan) that does not exist; the message lists the
    closest valid names."""

    def __str__(self) -> str:  # KeyError would print the repr of the message, quotes and all
        return str(self.args[0]) if self.args else ""


class IndexRangeError(ArgumentError, IndexError):
    """A layer, head or position index outside the model or the sequence."""


class HookOutputError(ArgumentError):
    """A hook returned a tensor that cannot replace the activation (another dtype or device)."""


class HookShapeError(HookOutputError):
    """A hook returned a tensor whose shape differs from the activation it replaces."""


class CheckpointError(ArgumentError):
    """A checkpoint is missing, unreadable, or does not match its config."""


class ModelNotFoundError(CheckpointError, FileNotFoundError):
    """No shipped model, local directory or Hugging Face cache entry has this name."""


def close_matches(name: str, valid: Iterable[str], n: int = 5) -> str:
    """"; did you mean one of [...]?" for the valid names closest to `name` ("" if none is close)."""
    close = difflib.get_close_matches(str(name), list(valid), n=n, cutoff=0.5)
    return f"; did you mean one of {close}?" if close else ""
