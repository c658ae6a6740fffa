"""Shared test settings.

The tests use tiny models, for which one thread is fastest: with two threads on a two-core machine
that is doing anything else, every small op waits for the other thread to be scheduled.
"""

import torch

torch.set_num_threads(1)
