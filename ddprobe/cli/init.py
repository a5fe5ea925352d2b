"""``ddprobe init [PATH]``: write a commented starter spec that runs as written (validated in tests)."""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, fail

STARTER = '''# A ddprobe study. Run it with:  ddprobe run {path}
# Every table and key is described in docs/spec.md; `ddprobe list` shows what is installed.
[study]
name = "{name}"
seed = 0
device = "auto"            # auto | cpu | cuda | cuda:N | mps

[data]
dataset = "digits"         # scikit-learn's 8x8 digits, embedded (offline); cifar10 takes root = "..."

[train]                    # how models are trained on distilled sets: the paper's protocol
optimizer = "sgd"
lr = 0.01
momentum = 0.9
steps = 300
batch_size = "full"

[models]
convnet = {{ arch = "convnet", width = 32, depth = 2 }}

# A distilled set made here by a distiller ...
[distilled.dm]
distiller = "dm"
ipc = 1
iterations = 100

# ... or one loaded from a file another project wrote (see `ddprobe list importers`):
# [distilled.paper]
# path = "distilled/res_DM_CIFAR10_ConvNet_1ipc.pt"

# The study adds a random-real control (random_ipc1) with the same images per class.

[[probe]]                  # train on each set, test on real data
kind = "evaluate"
seeds = 2
expect = {{ "dm/convnet" = ">= 0.5" }}   # a failed expectation makes `ddprobe run` exit 1 (CI gate)

[[probe]]                  # do real-trained models recognize the distilled images?
kind = "recognition"

[[probe]]                  # are distilled pixels still valid images?
kind = "pixels"
'''


@app.command()
def init(
    path: Path = typer.Argument(Path("study.toml"), metavar="PATH", help="Where to write the spec"),
    name: str | None = typer.Option(None, "--name", metavar="NAME", help="Study name (default: the file's stem)"),
    force: bool = typer.Option(False, "--force", "-f", help="Overwrite an existing file"),
) -> None:
    """Write a starter study spec (digits, one distiller, three probes) to edit and run."""
    if path.exists() and not force:
        raise fail(f"{path} already exists; pass --force to overwrite it or choose another PATH", 2)
    if path.suffix != ".toml":
        raise fail(f"{path}: a spec is a TOML file; give PATH a .toml suffix", 2)
    study = name or path.stem.replace("_", "-")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STARTER.format(path=path, name=study))
    typer.echo(f"wrote {path}; check it with `ddprobe validate {path}`, run it with `ddprobe run {path}`")
