"""What the figures say (titles, axis labels, legends, captions), read back from the PNG metadata, not pixels."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from ddprobe.report.figures import CONTROL_STYLE, class_colors, read_description, series_style


def fake_ctx(tmp_path, controls=("random_ipc1",)):
    def figure_path(name):
        (tmp_path / "figures").mkdir(exist_ok=True)
        return tmp_path / "figures" / f"p-{name}.png"

    return SimpleNamespace(controls=set(controls), figure_path=figure_path)


def legend_entries(desc):
    return [e for lg in desc["legends"] for e in lg["entries"]]


def test_control_style_is_one_definition():
    for i in range(3):
        style = series_style("random_ipc1", i, {"random_ipc1"})
        assert (style["color"], style["linestyle"]) == (CONTROL_STYLE["color"], CONTROL_STYLE["linestyle"])
        assert style["label"] == "random_ipc1 (control)"
    assert series_style("dm", 0, {"random_ipc1"})["color"] != CONTROL_STYLE["color"]
    assert series_style("real", 0)["color"] != CONTROL_STYLE["color"]


def test_class_colors_are_qualitative_and_distinct():
    import matplotlib

    assert class_colors(10) == [matplotlib.colormaps["tab10"](i) for i in range(10)]
    assert len(set(class_colors(20))) == 20


def test_recognition_figure(tmp_path):
    from ddprobe.builtin.probe_recognition import Recognition

    rows = [{"set": s, "model": m, "recognition": 0.5, "real_test_accuracy": 0.9 if m == "convnet" else 0.8,
             "models": 1 if m == "convnet" else 3} for s in ("dm", "random_ipc1") for m in ("convnet", "mlp")]
    path = Recognition()._figure(fake_ctx(tmp_path), pd.DataFrame(rows), ["convnet", "mlp"], ["dm", "random_ipc1"])
    d = read_description(path)
    ax = d["axes"][0]
    assert ax["ylabel"] == "recognition accuracy" and ax["xlabel"] == "distilled set"
    assert "Recognition" in ax["title"]
    assert set(legend_entries(d)) == {"convnet", "mlp (mean of 3 models)", "convnet on real test images",
                                      "mlp on real test images"}
    assert "real test" in d["caption"]


def test_pixels_figure_labels_and_control(tmp_path):
    import torch

    from ddprobe.builtin.probe_pixels import Pixels

    groups = {n: torch.rand(4, 1, 8, 8) for n in ("real", "dm", "random_ipc1")}
    d = read_description(Pixels()._figure(fake_ctx(tmp_path), groups, 20))
    assert d["axes"][0]["ylabel"] == "density"
    assert d["axes"][0]["xlabel"].startswith("pixel value")
    assert legend_entries(d) == ["real", "dm", "random_ipc1 (control)"]


@pytest.mark.parametrize("projection,name", [("pca", "PCA"), ("umap", "UMAP")])
def test_embedding_figure_names_projection_model_and_classes(tmp_path, projection, name):
    from ddprobe.builtin.probe_embedding import Embedding

    coords = pd.DataFrame({"source": ["real_test"] * 3 + ["dm", "random_ipc1"], "index": [0, 1, 2, 0, 0],
                           "label": [0, 1, 2, 0, 1], "x": [0.0, 1, 2, 3, 4], "y": [0.0, 1, 0, 1, 0]})
    path = Embedding()._figure(fake_ctx(tmp_path), coords, ["dm", "random_ipc1"], ["zero", "one", "two"],
                               "convnet", projection)
    d = read_description(path)
    ax = d["axes"][0]
    assert ax["title"] == f"{name} of convnet penultimate features (real-trained)"
    assert (ax["xlabel"], ax["ylabel"]) == (f"{name} 1", f"{name} 2")
    legends = {lg["title"]: lg["entries"] for lg in d["legends"]}
    assert legends["class (colour)"] == ["zero", "one", "two"]
    assert legends["points"] == ["real test images", "dm", "random_ipc1 (control)"]


def test_agreement_panels_count_models_and_single_model_is_points(tmp_path):
    from ddprobe.builtin.probe_agreement import Agreement

    values = [{"set": "dm", "model": "convnet", "seed": 0, "pool": "subset", "member": m, "agreement": 0.5 + m / 20}
              for m in range(4)]
    values += [{"set": "dm", "model": "convnet", "seed": 0, "pool": "early", "member": 0, "agreement": 0.7}]
    d = read_description(Agreement()._figure(fake_ctx(tmp_path), pd.DataFrame(values), ["convnet"], ["dm"]))
    title = d["axes"][0]["title"]
    assert "subset-trained: 4 models" in title and "early-stopped: 1 model" in title
    assert "early-stopped pool (1 model, no spread)" in legend_entries(d)
    assert d["axes"][0]["ylabel"] == "density"


def test_hessian_title_has_no_raw_formula(tmp_path):
    from ddprobe.builtin.probe_hessian import Hessian

    curves = {n: [([0, 10], [1.0, 2.0], [1.0, 1.1], [0.1, 0.1])] * 2 for n in ("real", "dm", "random_ipc1")}
    d = read_description(Hessian()._figure(fake_ctx(tmp_path), curves, [0, 10]))
    titles = [a["title"] for a in d["axes"]]
    assert not any("_{" in t or "s_t" in t for t in titles)
    assert legend_entries(d) == ["real", "dm", "random_ipc1 (control)"]


def test_recognition_curve_uses_the_control_style(tmp_path):
    from ddprobe.builtin.probe_recognition_curve import RecognitionCurve

    curves = pd.DataFrame([{"model": "convnet", "series": s, "step": t, "accuracy": 0.1 * t, "run": 0}
                           for s in ("real_test", "dm", "random_ipc1") for t in range(3)])
    d = read_description(RecognitionCurve()._figure(fake_ctx(tmp_path), curves, ["convnet"], ["dm", "random_ipc1"]))
    assert legend_entries(d) == ["real test", "dm", "random_ipc1 (control)"]
    assert d["axes"][0]["ylabel"] == "accuracy"


def test_influence_gallery_titles_readable(tmp_path, digits):
    import torch

    from ddprobe.builtin.probe_influence import Influence
    from ddprobe.testing import tiny_distilled

    ds = tiny_distilled(digits, ipc=1)
    ctx = fake_ctx(tmp_path)
    ctx.real = digits
    rows = torch.tensor([0])
    idx = torch.tensor([[0, 1]])
    val = torch.tensor([[5.83, 0.012]])
    path = Influence()._gallery(ctx, ds, digits.test, rows, idx, val, "dm", 0)
    titles = [a.get("title", "") for a in read_description(path)["axes"]]
    l0, l1 = int(digits.test.labels[0]), int(digits.test.labels[1])
    assert f"label {digits.classes[l0]}\ninfluence 5.83" in titles
    assert f"label {digits.classes[l1]}\ninfluence 0.012" in titles


def test_read_description_of_foreign_png_is_none(tmp_path):
    from ddprobe.report.figures import plt

    fig = plt().figure()
    fig.savefig(tmp_path / "x.png")
    assert read_description(tmp_path / "x.png") is None
    assert read_description(tmp_path / "missing.png") is None


def test_mixing_figure_labels_and_control(tmp_path):
    from ddprobe.builtin.probe_mixing import Mixing

    rows = [{"set": s, "model": "mlp", "k": k, "mean": 0.5 + k / 100, "std": 0.01}
            for s in ("dm", "random_ipc1") for k in (0, 2, 10)]
    sets = {s: SimpleNamespace(manifest=SimpleNamespace(ipc=1)) for s in ("dm", "random_ipc1")}
    d = read_description(Mixing()._figure(fake_ctx(tmp_path), pd.DataFrame(rows), ["mlp"], list(sets), [0, 2, 10],
                                          sets))
    assert d["axes"][0]["ylabel"] == "test accuracy"
    assert d["axes"][0]["xlabel"] == "images per class: distilled + real"
    assert legend_entries(d) == ["dm", "random_ipc1 (control)"]


def test_sensitivity_figure_names_rows_and_columns(tmp_path):
    from ddprobe.builtin.probe_sensitivity import Sensitivity

    rows = [{"set": s, "model": "mlp", "cell": c, "mean": 0.6} for s in ("dm", "random_ipc1") for c in ("a", "b")]
    d = read_description(Sensitivity()._figure(fake_ctx(tmp_path), pd.DataFrame(rows), ["dm", "random_ipc1"],
                                               ["mlp"], ["a", "b"]))
    main, bar = d["axes"]
    assert (main["xlabel"], main["ylabel"]) == ("training recipe", "distilled set")
    assert bar == {"colorbar": "test accuracy"}
