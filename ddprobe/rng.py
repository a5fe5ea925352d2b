"""Named random streams: every draw comes from a generator seeded by (study seed, name)."""

from __future__ import annotations

import contextlib
import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import torch


def derive_seed(seed: int, name: str) -> int:
    """A 63-bit seed that depends only on the study seed and the stream name."""
    digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def torch_generator(seed: int, name: str, device: str = "cpu") -> torch.Generator:
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(derive_seed(seed, name))
    return gen


def numpy_generator(seed: int, name: str) -> np.random.Generator:
    import numpy as np

    return np.random.default_rng(derive_seed(seed, name))


@contextlib.contextmanager
def seeded_init(seed: int, name: str):
    """Run a block (typically model construction) under torch's global RNG seeded from (seed, name).

    The global RNG state is restored afterwards, so model initialization never depends on what ran before.
    """
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(derive_seed(seed, name))
        yield
