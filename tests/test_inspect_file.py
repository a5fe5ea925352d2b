"""``ddprobe inspect FILE``: what ddprobe reads in a file, and why it would be refused (exit 2)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from ddprobe.cli import app


def _dc_file(path, images, labels):
    torch.save({"data": [[images, labels]], "accs_all_exps": {"ConvNet": [np.float64(0.83), np.float64(0.85)]}},
               path)


def _subset(digits, per_class=2):
    idx = torch.cat([torch.nonzero(digits.train.labels == c).flatten()[:per_class] for c in range(10)])
    return digits.train.images[idx].clone(), digits.train.labels[idx].clone()


def test_inspect_dc_file(tmp_path, digits):
    x, y = _subset(digits)
    path = tmp_path / "res_DM_MNIST_ConvNet_2ipc.pt"
    _dc_file(path, x, y)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 0, result.output
    assert "format      dc: DatasetCondensation" in result.output
    assert "images      20 x [1, 8, 8]" in result.output
    assert "labels      hard, 10 classes" in result.output and "per class   2 each" in result.output
    assert "learned lr  none in the file" in result.output
    result = CliRunner().invoke(app, ["inspect", str(path), "--dataset", "digits", "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["importer"] == "dc" and info["distiller"] == "dm" and info["looks_like"] == "normalized"
    assert info["per_class"] == [2] * 10 and info["labels"] == "hard" and info["warnings"] == []


def test_inspect_says_why_a_pixel_set_would_be_refused(tmp_path, digits):
    x, y = _subset(digits)
    path = tmp_path / "pixels.pt"
    torch.save({"images": digits.to_pixels(x), "labels": y}, path)
    result = CliRunner().invoke(app, ["inspect", str(path), "-d", "digits"])
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "looks like pixels-space images" in text and 'input_space = "pixels"' in text
    spec = tmp_path / "s.toml"
    spec.write_text(f'[data]\ndataset = "digits"\n[distilled.p]\npath = "{path.name}"\ninput_space = "pixels"\n')
    result = CliRunner().invoke(app, ["inspect", str(path), "--spec", str(spec)])
    assert result.exit_code == 0, result.output  # the spec declares what it holds
    assert "looks like  pixels space of digits" in result.output


def test_inspect_mtt_file_with_learned_lr(tmp_path):
    images = torch.randn(20, 1, 8, 8)
    torch.save(images, tmp_path / "images_300.pt")
    torch.save(torch.arange(10).repeat_interleave(2), tmp_path / "labels_300.pt")
    torch.save(torch.tensor(0.02), tmp_path / "syn_lr.pt")
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "labels_300.pt")])
    assert result.exit_code == 0, result.output
    assert "learned lr  0.02 (from syn_lr.pt)" in result.output and "iteration   300" in result.output


def test_inspect_refuses_payloads_and_fifos(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 1])]], "accs_all_exps": Payload()}, path)
    result = CliRunner().invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2 and "weights_only" in result.output and "pwned" not in result.output
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "pipe.pt"
        os.mkfifo(fifo)
        result = CliRunner().invoke(app, ["inspect", str(fifo)])
        assert result.exit_code == 2 and "named pipe (FIFO)" in result.output
    result = CliRunner().invoke(app, ["inspect", str(tmp_path / "absent.pt")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.parametrize("args", [["--dataset", "digitz"], ["--importer", "nope"]])
def test_inspect_bad_options(tmp_path, args):
    path = tmp_path / "x.pt"
    torch.save({"images": torch.zeros(2, 1, 8, 8), "labels": torch.tensor([0, 1])}, path)
    result = CliRunner().invoke(app, ["inspect", str(path), *args])
    assert result.exit_code == 2 and "unknown" in result.output
