"""Built-in influence backends, registered through the ``register_influence_backends`` hook like a plugin's.

The backend classes live in ``ddprobe.influence`` (imported when the hook is called, so that ``ddprobe --help``
never imports torch).
"""

from __future__ import annotations

from ..hookspecs import hookimpl


@hookimpl
def register_influence_backends(register):
    from ..influence import methods

    for backend in methods.BUILTIN:
        register(backend)
