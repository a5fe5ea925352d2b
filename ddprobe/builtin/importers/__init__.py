"""Importers for the files that the reference repositories write (paper-methods.md C.5), and class folders.

Every ``.pt`` file is read with ``torch.load(weights_only=True)`` and only the NumPy scalar and array types
those files need (``safeload``): no pickled code is ever executed. A path must be a regular file or a folder;
anything else (a FIFO, a socket, a device) is refused before it is opened, so reading never blocks.
"""

from __future__ import annotations

from pathlib import Path

from ...errors import DDProbeError
from ...hookspecs import hookimpl
from .folders import ClassFolderImporter
from .formats import CanonicalImporter, DatasetCondensationImporter, DictImporter, NpzImporter, RTPImporter
from .mtt import MTTImporter
from .safeload import load_pt, reading, require_readable

__all__ = ["ALL", "import_file", "load_pt", "find_importer"]

ALL = (CanonicalImporter, MTTImporter, DatasetCondensationImporter, RTPImporter, DictImporter, NpzImporter,
       ClassFolderImporter)


@hookimpl
def register_importers(register):
    for cls in ALL:
        register(cls())


def find_importer(path: Path, importer: str | None = None):
    """The named importer, or the first registered one whose ``sniff`` claims ``path``."""
    from ... import registry
    from ...errors import suggest

    importers = registry.get_all("importer")
    if importer is not None:
        if importer not in importers:
            raise DDProbeError(f"unknown importer {importer!r}; {suggest(importer, importers)}")
        return importers[importer]
    for imp in importers.values():
        try:
            if imp.sniff(path):
                return imp
        except DDProbeError:
            raise
        except Exception:  # an importer that cannot read the file simply does not claim it
            continue
    what = "folder" if path.is_dir() else "file"
    raise DDProbeError(
        f"{path}: no importer recognizes this {what}. Known formats: "
        + "; ".join(f"{imp.name} ({imp.description})" for imp in importers.values())
    )


def import_file(path: str | Path, importer: str | None = None):
    """Load a distilled set with the named importer, or the first one whose ``sniff`` accepts the path."""
    path = Path(path)
    require_readable(path)
    with reading():
        return find_importer(path, importer).load(path)
