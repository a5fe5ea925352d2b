"""``ddprobe inspect FILE``: what ddprobe reads in a distilled-set file, before any study."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from .app import app, fail


def describe(path: Path, importer: str | None = None, real: Any = None, name: str = "NAME",
             declared: str = "study") -> dict[str, Any]:
    """What the file holds, as ddprobe reads it; with ``real``, also how it fits that data. Raises DDProbeError
    with the reason when the file would be refused."""
    from ..builtin.importers import import_file

    ds = import_file(path, importer)
    m = ds.manifest
    counts = ds.counts()
    images = ds.images
    info: dict[str, Any] = {
        "file": str(path),
        "importer": m.importer,
        "format": _description(m.importer),
        "source_file": m.source_file,
        "images": len(ds),
        "image_shape": list(images.shape[1:]),
        "values": {"min": float(images.min()) if len(ds) else None, "max": float(images.max()) if len(ds) else None,
                   "mean": float(images.mean()) if len(ds) else None,
                   "std": float(images.std()) if len(ds) > 1 else None},
        "labels": "soft" if ds.soft else "hard",
        "classes": ds.num_classes,
        "per_class": counts,
        "learned_lr": m.learned_lr,
        "learned_lr_source": m.learned_lr_source,
        "file_space": m.file_space,
        "distilled_space": m.distilled_space,
    }
    for key in ("distiller", "iteration", "experiments", "class_folders", "soft_labels_file"):
        value = getattr(m, key, None)
        if value is not None:
            info[key] = value
    if real is not None:
        from ..data import check_compatible
        from ..spaces import adopt, guess_space, study_kind

        info["dataset"] = real.name
        info["study_space"] = study_kind(real)
        ds.classes = list(real.classes) if len(ds.classes) <= real.num_classes else ds.classes
        check_compatible(ds, real, where=str(path), space=False)
        guess = guess_space(ds.images, real)
        info["looks_like"] = guess.looks_like
        info["distances"] = {k: round(v, 3) for k, v in guess.distances.items()}
        info["warnings"] = adopt(ds, real, name, declared, where=str(path))
    return info


def _description(importer: str | None) -> str:
    from .. import registry

    obj = registry.get_all("importer").get(importer or "")
    return getattr(obj, "description", "") if obj is not None else ""


def _real_from(spec: Path | None, dataset: str | None, root: Path) -> tuple[Any, dict[str, Any]]:
    """The real data to compare with: a spec's [data], or a registered dataset with default options."""
    if spec is not None:
        from ..spec import load_spec
        from ..study import load_real

        parsed = load_spec(spec)
        return load_real(parsed), {str(d.path.resolve()): d for d in parsed.distilled.values() if d.path}
    if dataset is not None:
        from .. import registry

        plugin = registry.get_dataset(dataset)
        return plugin.load(plugin.Options(), root), {}
    return None, {}


@app.command("inspect")
def inspect_command(
    path: Path = typer.Argument(..., help="A distilled-set file or run folder"),
    spec: Path | None = typer.Option(None, "--spec", "-s", help="Compare with this study's \\[data] (and use "
                                     "the input_space of a \\[distilled.NAME] table whose path is this file)"),
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Compare with this dataset (default options)"),
    importer: str | None = typer.Option(None, "--importer", help="Force an importer instead of detecting it"),
    as_json: bool = typer.Option(False, "--json", help="Print what was read as JSON"),
) -> None:
    """Show what ddprobe reads in a distilled-set file: format, images, labels, images per class, learned lr and
    the input space it looks like; exit 2 with the reason when the file would be refused."""
    from ..errors import DDProbeError, SpecError, suggest

    try:
        if dataset is not None:
            from .. import registry

            if dataset not in registry.get_all("dataset"):
                raise DDProbeError(f"--dataset {dataset}: unknown dataset; "
                                   f"{suggest(dataset, registry.get_all('dataset'))}")
        real, tables = _real_from(spec, dataset, Path.cwd())
        table = tables.get(str(path.resolve()))
        info = describe(path, importer or (table.importer if table else None), real,
                        table.name if table else "NAME", table.input_space if table else "study")
    except (SpecError, DDProbeError) as exc:
        raise fail(f"{exc}", 2) from None
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    for line in _lines(info):
        typer.echo(line)


def _lines(info: dict[str, Any]) -> list[str]:
    v = info["values"]
    counts = info["per_class"]
    per_class = f"{counts[0]} each" if counts and len(set(counts)) == 1 else ", ".join(map(str, counts))
    lr = ("none in the file (give learned_lr in [distilled.NAME] for lr = \"learned\")"
          if info["learned_lr"] is None else f"{info['learned_lr']:g} (from {info['learned_lr_source']})")
    out = [
        f"file        {info['file']}",
        f"format      {info['importer']}: {info['format']}",
        f"read from   {info['source_file']}",
        f"images      {info['images']} x {info['image_shape']}, values in [{v['min']:.3g}, {v['max']:.3g}], "
        f"mean {v['mean']:.3g}, std {(v['std'] or 0):.3g}" if info["images"] else "images      none",
        f"labels      {info['labels']}, {info['classes']} classes",
        f"per class   {per_class}",
        f"learned lr  {lr}",
    ]
    for key in ("distiller", "iteration", "experiments"):
        if key in info:
            out.append(f"{key:<11} {info[key]}")
    known = info["file_space"]
    if known:
        trained = f"; distilled in {info['distilled_space']} space" if info.get("distilled_space") else ""
        out.append(f"space       {known} (its format says so){trained}")
    if "looks_like" in info:
        shown = ", ".join(f"{k} {d:.2f}" for k, d in sorted(info["distances"].items(), key=lambda kv: kv[1]))
        out.append(f"looks like  {info['looks_like']} space of {info['dataset']} (distances: {shown}); "
                   f"the study uses {info['study_space']}")
        out += [f"warning     {w}" for w in info.get("warnings", [])]
    else:
        out.append("looks like  (give --spec or --dataset to compare it with real data)")
    return out
