"""A torchvision dataset missing offline is a clean exit 2 before anything runs, naming the dataset, the resolved
folder, the files expected and ``download = true``; validate, plan and run say the same; no run folder is left."""

from __future__ import annotations

from urllib.error import URLError

import pytest
from typer.testing import CliRunner

from ddprobe import registry
from ddprobe.cli import app
from ddprobe.errors import DDProbeError

SPEC = """
[study]
name = "offline"
[data]
dataset = "{dataset}"
root = "nowhere/data"
download = {download}
[distilled.r]
distiller = "random"
ipc = 1
[[probe]]
kind = "pixels"
"""

EXPECTED = {"cifar10": "cifar-10-batches-py/data_batch_1", "cifar100": "cifar-100-python/train",
            "mnist": "MNIST/raw/train-images-idx3-ubyte", "fashionmnist": "FashionMNIST/raw/t10k-labels-idx1-ubyte",
            "svhn": "train_32x32.mat"}


def write(tmp_path, dataset="cifar10", download="false"):
    path = tmp_path / "s.toml"
    path.write_text(SPEC.format(dataset=dataset, download=download))
    return path


@pytest.mark.parametrize("dataset", sorted(EXPECTED))
def test_each_dataset_names_its_files(tmp_path, dataset):
    plugin = registry.get_dataset(dataset)
    problems = plugin.check(plugin.Options(root="nowhere/data"), tmp_path)
    folder = (tmp_path / "nowhere" / "data").resolve()
    assert len(problems) == 1
    assert f"dataset {dataset!r} is not in {folder}" in problems[0]
    assert EXPECTED[dataset] in problems[0] and "`download = true`" in problems[0]
    with pytest.raises(DDProbeError, match="is not in"):
        plugin.load(plugin.Options(root="nowhere/data"), tmp_path)
    assert plugin.check(plugin.Options(root="nowhere/data", download=True), tmp_path) == []


@pytest.mark.parametrize("command", ["validate", "plan", "run"])
def test_cli_exits_2_before_anything_runs(tmp_path, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    spec = write(tmp_path)
    args = [command, str(spec)] + (["-o", str(tmp_path / "out"), "-q"] if command == "run" else [])
    if command == "plan":
        args.append("--no-measure")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    folder = (tmp_path / "nowhere" / "data").resolve()
    assert f"dataset 'cifar10' is not in {folder}" in text
    assert "cifar-10-batches-py/data_batch_1" in text and "`download = true`" in text
    assert "Traceback" not in result.output
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()
    assert not (tmp_path / "nowhere").exists()


def test_failed_download_is_a_clean_error_and_leaves_no_folder(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as cifar

    def offline(*args, **kwargs):
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(cifar, "download_and_extract_archive", offline)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["run", str(write(tmp_path, download="true")), "-o", str(tmp_path / "out"),
                                      "-q"])
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.split())
    assert "dataset 'cifar10' could not be downloaded into" in text and "Name or service not known" in text
    assert "cifar-10-batches-py/data_batch_1" in text
    assert not (tmp_path / "out").exists() and not (tmp_path / "nowhere" / "data").exists()
