"""ddprobe-coreset: herding and k-center selections of real images, registered as ddprobe distillers."""

from __future__ import annotations

from ddprobe import hookimpl

from .distillers import Herding, KCenter

__version__ = "0.1.0"
__all__ = ["Herding", "KCenter", "register_distillers"]


# -- start register --
@hookimpl
def register_distillers(register):
    register(Herding())
    register(KCenter())
# -- end register --
