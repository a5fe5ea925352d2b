"""ddprobe's pytest plugin: fixtures and a conformance suite for plugin authors.

Installed with ddprobe (entry point ``pytest11``), so a plugin's own test suite can write::

    from ddprobe.testing import check_distiller

    def test_my_distiller_conforms(ddprobe_real):
        check_distiller(MyDistiller(), real=ddprobe_real, options={"iterations": 5})

The fixtures are all prefixed ``ddprobe_``:

- ``ddprobe_real``: tiny real data (digits, 20 training images per class, 8x8 grey).
- ``ddprobe_distilled``: a tiny distilled set (2 real images per class) in that data's input space.
- ``ddprobe_model``: a tiny ConvNet for that data, in eval mode.
- ``ddprobe_context``: a factory of :class:`~ddprobe.context.StudyContext` on the tiny data.
- ``ddprobe_distill_context``: a factory of :class:`~ddprobe.context.DistillContext`.
- ``ddprobe_register``: registers a plugin for the duration of one test.

The conformance checks (``check_distiller``, ``check_probe``, ``check_importer``, ``check_reporter``,
``check_options``) raise :class:`ConformanceError` listing every rule an object breaks;
docs/plugins/writing.md explains each rule. pytest imports this module in every session of an environment
where ddprobe is installed, so it imports nothing heavy at module level.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    import torch

    from .context import DistillContext, StudyContext
    from .data import DistilledSet, RealData
    from .results import StudyResults

TINY_TRAIN_PER_CLASS = 20
TINY_MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "convnet": ("convnet", {"width": 8, "depth": 1}),
    "mlp": ("mlp", {"hidden": 16, "depth": 1}),
}
UNKNOWN_OPTION = "ddprobe_conformance_unknown_option"
TIMING_METRICS = ("*seconds*",)  # wall-clock metrics: exempt from the determinism check


class ConformanceError(AssertionError):
    """A plugin object breaks one or more rules of ddprobe's plugin contract."""

    def __init__(self, what: str, problems: list[str]):
        self.what, self.problems = what, list(problems)
        super().__init__(f"{what} breaks the plugin contract:\n" + "\n".join(f"  - {p}" for p in problems))


def _raise(what: str, problems: list[str]) -> None:
    if problems:
        raise ConformanceError(what, problems)


# -- tiny objects ----------------------------------------------------------------------------------
def tiny_real(train_per_class: int = TINY_TRAIN_PER_CLASS) -> RealData:
    """Digits with ``train_per_class`` training images per class (10 classes, 1x8x8), full test split."""
    from . import registry

    plugin = registry.get_dataset("digits")
    return plugin.load(plugin.Options(train_per_class=train_per_class), Path.cwd())


def tiny_distilled(real: RealData, ipc: int = 2, seed: int = 0) -> DistilledSet:
    """A stratified random real subset at ``ipc`` images per class, with a complete manifest."""
    import torch

    from .data import DistilledSet, Manifest
    from .rng import torch_generator

    gen = torch_generator(seed, f"ddprobe.testing:{ipc}")
    picks = [idx[torch.randperm(idx.numel(), generator=gen)[:ipc]] for idx in real.train.class_indices()]
    index = torch.cat(picks)
    sub = real.train.subset(index)
    manifest = Manifest(name=f"tiny{ipc}", distiller="random", ipc=ipc, input_space=real.space,
                        source_dataset=real.name, seed=seed)
    return DistilledSet(sub.images.clone(), sub.hard_labels.clone(), list(real.classes), manifest=manifest)


def model_specs(models: dict[str, tuple[str, dict[str, Any]]] | None = None) -> dict[str, Any]:
    """``{name: (arch, options)}`` -> ``{name: ModelSpec}`` (default: a tiny convnet and mlp)."""
    from . import registry
    from .context import ModelSpec

    out = {}
    for name, (arch, opts) in (TINY_MODELS if models is None else models).items():
        plugin = registry.get_model(arch)
        out[name] = ModelSpec(name, arch, plugin.Options(**opts), plugin)
    return out


def tiny_recipes() -> tuple[Any, Any]:
    """(recipe, pretrain recipe): 20 full-batch steps on distilled data, 2 epochs of batch 64 on real data."""
    from .training import TrainRecipe

    return TrainRecipe(steps=20), TrainRecipe(epochs=2, batch_size=64, steps=None)


Models = dict[str, tuple[str, dict[str, Any]]]


def make_study_context(real: RealData, directory: Path, *, sets: dict[str, DistilledSet] | None = None,
                       models: Models | None = None, seed: int = 0) -> StudyContext:
    """A :class:`StudyContext` on ``real`` with tiny models and recipes; cache and outputs in ``directory``."""
    from .cache import Cache
    from .context import StudyContext

    recipe, pretrain = tiny_recipes()
    directory = Path(directory)
    return StudyContext(seed, real, model_specs(models), recipe, Cache(directory / "cache"), "cpu",
                        data_key={"dataset": real.name, "ddprobe.testing": True}, distilled=dict(sets or {}),
                        pretrain_recipe=pretrain, output_dir=directory / "out")


def make_distill_context(real: RealData, directory: Path, *, models: Models | None = None, seed: int = 0,
                         name: str = "conformance") -> DistillContext:
    """A :class:`DistillContext` on ``real`` with tiny models; cache under ``directory``."""
    from .cache import Cache
    from .context import DistillContext

    recipe, _ = tiny_recipes()
    directory = Path(directory)
    return DistillContext(seed, real, model_specs(models), recipe, Cache(directory / "cache"), "cpu",
                          data_key={"dataset": real.name, "ddprobe.testing": True}, name=name,
                          checkpoint_dir=directory / "checkpoints")


@contextmanager
def registered(plugin: object, name: str | None = None) -> Iterator[object]:
    """Register ``plugin`` (a module or an object with ``@hookimpl`` methods) for the duration of a block."""
    from . import registry
    from .plugins import load_plugins, pm

    load_plugins()
    name = name or getattr(plugin, "__name__", None) or f"test-plugin-{id(plugin)}"
    pm.register(plugin, name=name)
    registry.invalidate()
    try:
        yield plugin
    finally:
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
        registry.invalidate()


# -- fixtures --------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ddprobe_real() -> RealData:
    """Tiny real data: digits, 20 training images per class (10 classes, 1x8x8), the 360 test images."""
    return tiny_real()


@pytest.fixture
def ddprobe_distilled(ddprobe_real) -> DistilledSet:
    """A tiny distilled set: 2 real images per class of ``ddprobe_real``, manifest included."""
    return tiny_distilled(ddprobe_real)


@pytest.fixture
def ddprobe_model(ddprobe_real) -> torch.nn.Module:
    """A tiny seeded ConvNet (width 8, depth 1) for ``ddprobe_real`` in eval mode; ``embed(x)``: features."""
    from .rng import seeded_init

    spec = model_specs()["convnet"]
    with seeded_init(0, "ddprobe.testing:model"):
        net = spec.build(ddprobe_real.input_shape, ddprobe_real.num_classes)
    return net.eval()


@pytest.fixture
def ddprobe_context(ddprobe_real, tmp_path) -> Callable[..., StudyContext]:
    """``ddprobe_context(sets={...}, models={...}, seed=0)``: a StudyContext on the tiny data, fresh cache."""
    count = 0

    def make(sets=None, models=None, seed: int = 0) -> StudyContext:
        nonlocal count
        count += 1
        return make_study_context(ddprobe_real, tmp_path / f"ctx{count}", sets=sets, models=models, seed=seed)

    return make


@pytest.fixture
def ddprobe_distill_context(ddprobe_real, tmp_path) -> Callable[..., DistillContext]:
    """``ddprobe_distill_context(models={...}, seed=0)``: a DistillContext on the tiny data (fresh cache)."""
    count = 0

    def make(models=None, seed: int = 0) -> DistillContext:
        nonlocal count
        count += 1
        return make_distill_context(ddprobe_real, tmp_path / f"dctx{count}", models=models, seed=seed)

    return make


@pytest.fixture
def ddprobe_register() -> Iterator[Callable[..., object]]:
    """``ddprobe_register(plugin, name=None)`` registers a plugin until the test ends (registry refreshed)."""
    from . import registry
    from .plugins import load_plugins, pm

    load_plugins()
    names: list[str] = []

    def register(plugin: object, name: str | None = None) -> object:
        name = name or getattr(plugin, "__name__", None) or f"test-plugin-{id(plugin)}"
        pm.register(plugin, name=name)
        names.append(name)
        registry.invalidate()
        return plugin

    yield register
    for name in reversed(names):
        if pm.get_plugin(name) is not None:
            pm.unregister(name=name)
    registry.invalidate()


# -- conformance: helpers --------------------------------------------------------------------------
def _label(kind: str, obj: Any) -> str:
    return f"{kind} {getattr(obj, 'name', type(obj).__name__)!r}"


def _fingerprint(*tensors: torch.Tensor) -> str:
    from .data import content_hash

    return "/".join(content_hash(t, t.new_zeros(0)) for t in tensors)


def _global_rng_state() -> Any:
    import torch

    return torch.random.get_rng_state()


def _make_options(plugin: Any, options: dict[str, Any] | Any | None, what: str) -> Any:
    from pydantic import BaseModel

    if isinstance(options, BaseModel):
        return options
    preset = getattr(plugin, "conformance_options", None) if options is None else options
    try:
        return plugin.Options.model_validate(dict(preset or {}))
    except Exception as exc:
        raise ConformanceError(what, [f"its Options cannot be built from {preset!r}: {exc}; pass options=... "
                                      "or set a class attribute conformance_options = {...}"]) from exc


def check_options(plugin: Any, kind: str = "plugin") -> None:
    """Invalid options are clear errors: an unknown key or a wrong type raises an error naming the key."""
    from pydantic import BaseModel, ValidationError

    what = _label(kind, plugin)
    problems: list[str] = []
    options = getattr(plugin, "Options", None)
    if not (isinstance(options, type) and issubclass(options, BaseModel)):
        _raise(what, ["has no pydantic 'Options' model"])
    try:
        options.model_validate({UNKNOWN_OPTION: 1})
        problems.append(f"Options accepts an unknown key ({UNKNOWN_OPTION!r}); a misspelled option would be "
                        "silently ignored: set model_config = ConfigDict(extra='forbid')")
    except ValidationError as exc:
        if UNKNOWN_OPTION not in str(exc):
            problems.append(f"the error for an unknown key does not name it: {exc}")
    for field_name, field in options.model_fields.items():
        if field.annotation in (int, float):
            try:
                options.model_validate({field_name: "not-a-number"})
                problems.append(f"Options.{field_name} ({field.annotation.__name__}) accepts 'not-a-number'")
            except ValidationError as exc:
                if field_name not in str(exc):
                    problems.append(f"the error for a bad Options.{field_name} does not name it: {exc}")
    if not isinstance(getattr(plugin, "description", None), str) or "\n" in plugin.description:
        problems.append("'description' must be a one-line string")
    _raise(what, problems)


# -- conformance: distillers -----------------------------------------------------------------------
def _distilled_problems(ds: Any, real: RealData, ipc: int) -> list[str]:
    import torch

    from .data import DistilledSet, Manifest, check_compatible
    from .errors import DataMismatchError

    if not isinstance(ds, DistilledSet):
        return [f"distill() returned {type(ds).__name__}, not a DistilledSet"]
    problems = []
    expected = real.num_classes * ipc
    shape = list(ds.images.shape)
    if ds.images.dim() != 4 or shape[1:] != list(real.input_shape):
        problems.append(f"images have shape {shape}; expected [N, {', '.join(map(str, real.input_shape))}]")
    if ds.images.dtype != torch.float32:
        problems.append(f"images have dtype {ds.images.dtype}; expected torch.float32")
    if ds.images.requires_grad or ds.labels.requires_grad:
        problems.append("returned tensors require grad (attached to the optimization graph): detach them")
    if len(ds) != expected:
        problems.append(f"{len(ds)} images; expected num_classes x ipc = {real.num_classes} x {ipc}")
    if ds.labels.shape[0] != ds.images.shape[0]:
        problems.append(f"{ds.images.shape[0]} images but {ds.labels.shape[0]} labels")
    if ds.soft:
        if ds.labels.shape[1] != real.num_classes:
            problems.append(f"soft labels have {ds.labels.shape[1]} columns; expected {real.num_classes}")
    elif ds.labels.dtype != torch.int64:
        problems.append(f"hard labels have dtype {ds.labels.dtype}; expected torch.int64")
    elif not problems:
        counts = ds.counts()
        if any(c != ipc for c in counts):
            problems.append(f"images per class are {counts}; expected {ipc} for every class")
    if not isinstance(ds.manifest, Manifest):
        problems.append("manifest is not a ddprobe.data.Manifest")
    elif ds.manifest.input_space is not None:
        diffs = ds.manifest.input_space.differences(real.space)
        if diffs:
            problems.append("manifest input space differs from the real data's: " + "; ".join(diffs))
    if not problems:
        try:
            check_compatible(ds.to("cpu"), real, where="returned by distill()")
        except DataMismatchError as exc:
            problems.append(str(exc))
    return problems


def check_distiller(distiller: Any, *, real: RealData | None = None, ipc: int = 2,
                    options: dict[str, Any] | Any | None = None,
                    models: Models | None = None,
                    directory: str | Path | None = None) -> DistilledSet:
    """Run a distiller twice on tiny data and check its output, determinism and manners. Returns its set.

    Rules: a DistilledSet of ``num_classes x ipc`` float32 images in the real data's shape and input
    space with int64 (or ``[N, K]`` soft) labels, ``ipc`` per class, detached from any graph; the same set
    for the same seed (bit for bit); the real data untouched; torch's global RNG and grad mode left as found
    (draw randomness from ``ctx.rng(name)``); a save/load round trip that keeps tensors and manifest; clear
    option errors. A ``prepare`` (optional) runs before each ``distill``, as in a study. Files go to ``directory``
    (default: a temporary directory, removed afterwards).
    """
    import torch

    from .data import load_distilled, save_distilled
    from .sets import prepare_distiller

    if directory is None:  # nothing returned refers to the files: remove them afterwards
        with tempfile.TemporaryDirectory(prefix="ddprobe-conformance-") as tmp:
            return check_distiller(distiller, real=real, ipc=ipc, options=options, models=models, directory=tmp)
    what = _label("distiller", distiller)
    check_options(distiller, "distiller")
    real = real or tiny_real()
    opts = _make_options(distiller, options, what)
    tmp = Path(directory)
    before = _fingerprint(real.train.images, real.train.labels, real.test.images, real.test.labels)
    rng_before, grad_before = _global_rng_state(), torch.is_grad_enabled()
    outputs = []
    problems: list[str] = []
    for run in range(2):
        ctx = make_distill_context(real, tmp / f"run{run}", models=models)
        prepare_distiller(distiller, real, ipc, opts, ctx)  # its optional shared work, first, as in a study
        outputs.append(distiller.distill(real, ipc, opts, ctx))
        if run == 0:
            problems += _distilled_problems(outputs[0], real, ipc)
            if problems:
                _raise(what, problems)
            if not torch.equal(_global_rng_state(), rng_before):
                problems.append("it draws from torch's global RNG; use ctx.rng(name) (or ctx.build_model) so "
                                "results do not depend on what ran before")
            if torch.is_grad_enabled() != grad_before:
                problems.append(f"grad mode was {grad_before} before distill(), {torch.is_grad_enabled()} after")
    if _fingerprint(real.train.images, real.train.labels, real.test.images, real.test.labels) != before:
        problems.append("it modified the real data in place")
    a, b = outputs
    if not (torch.equal(a.images.cpu(), b.images.cpu()) and torch.equal(a.labels.cpu(), b.labels.cpu())):
        problems.append("two runs with the same seed gave different sets; draw through ctx.rng(name)")
    ds = a.to("cpu")
    ds.manifest.input_space = ds.manifest.input_space or real.space
    path = save_distilled(ds, tmp / "roundtrip" / "set")
    back = load_distilled(path)
    if not (torch.equal(back.images, ds.images) and torch.equal(back.labels, ds.labels)):
        problems.append("the set does not survive a save_distilled/load_distilled round trip")
    for key, value in ds.manifest.model_dump(mode="json").items():
        if key != "sha256" and back.manifest.model_dump(mode="json").get(key) != value:
            problems.append(f"manifest field {key!r} does not survive a round trip (use JSON values)")
    _raise(what, problems)
    return ds


# -- conformance: probes ---------------------------------------------------------------------------
class _ModelWatch:
    """Records models a probe receives from the context, to check it leaves them as found."""

    def __init__(self) -> None:
        self.handed: list[tuple[str, Any, list[bool], list[bool], list[str], str]] = []
        self._depth = 0

    @staticmethod
    def _grads(params: list[Any]) -> list[str]:
        return ["none" if p.grad is None else _fingerprint(p.grad.detach()) for p in params]

    def wrap(self, ctx: Any, method: str) -> None:
        original = getattr(ctx, method)

        def watched(*args: Any, **kwargs: Any) -> Any:
            self._depth += 1  # ctx.pretrained calls ctx.trained: record the outermost call only
            try:
                net = original(*args, **kwargs)
            finally:
                self._depth -= 1
            if self._depth == 0:
                params = list(net.parameters())
                shown = ", ".join(repr(a) for a in args if isinstance(a, (str, int, float)))
                self.handed.append((f"ctx.{method}({shown})", net, [m.training for m in net.modules()],
                                    [p.requires_grad for p in params], self._grads(params),
                                    _fingerprint(*[p.detach() for p in params])))
            return net

        setattr(ctx, method, watched)

    def problems(self) -> list[str]:
        out = []
        for where, net, modes, requires, grads, weights in self.handed:
            params = list(net.parameters())
            if [m.training for m in net.modules()] != modes:
                out.append(f"the model from {where} was left in a different train/eval mode (use "
                           "ddprobe.training.eval_mode or restore each module's mode)")
            if [p.requires_grad for p in params] != requires:
                out.append(f"the model from {where} was left with different requires_grad flags")
            if self._grads(params) != grads:
                out.append(f"the model from {where} was left with changed gradients in .grad (use "
                           "torch.autograd.grad, or put .grad back as it was)")
            if _fingerprint(*[p.detach() for p in params]) != weights:
                out.append(f"the weights of the model from {where} changed; train a copy (copy.deepcopy)")
        return out


def _result_problems(result: Any) -> list[str]:
    """The kit's rules for a result, then the rest of what a study refuses at run time
    (:func:`ddprobe.results.result_problems`: table names that are not plain file names, say)."""
    import pandas as pd

    from .results import ProbeResult, result_problems

    if not isinstance(result, ProbeResult):
        return [f"run() returned {type(result).__name__}, not a ProbeResult"]
    problems = []
    if not isinstance(result.metrics, dict):
        return ["metrics is not a dict"]
    for key, value in result.metrics.items():
        if not isinstance(key, str) or not key or any(c.isspace() for c in key):
            problems.append(f"metric key {key!r} must be a non-empty string without spaces")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"metric {key!r} is a {type(value).__name__}; metrics are plain floats")
        elif math.isinf(value):
            problems.append(f"metric {key!r} is infinite")
    problems += [p for p in result_problems(result) if not p.startswith("metric")]
    if not isinstance(result.tables, dict) or not isinstance(result.figures, dict):
        return problems
    for name, table in result.tables.items():
        if not isinstance(table, pd.DataFrame):
            problems.append(f"table {name!r} is a {type(table).__name__}, not a pandas DataFrame")
    for name, path in result.figures.items():
        if isinstance(path, (str, Path)) and not Path(path).is_file():
            problems.append(f"figure {name!r} points to {path}, which does not exist")
    return problems


def _finding_problems(probe: Any, result: Any, sets: dict[str, Any]) -> list[str]:
    """A declared finding's shape: Finding objects of declared ids, for known sets, with a well-formed verdict."""
    from .findings import VERDICTS, Finding

    declared = {f.id: f for f in getattr(probe, "findings", ())}
    problems = []
    for f in getattr(result, "findings", []):
        if not isinstance(f, Finding):
            problems.append(f"findings holds a {type(f).__name__}; return Finding objects made by FindingSpec.judge")
            continue
        if f.id not in declared:
            problems.append(f"finding {f.id!r} is not declared in the probe's `findings` "
                            f"({', '.join(declared) or 'none declared'})")
        if f.set not in sets:
            problems.append(f"finding {f.id!r} names set {f.set!r}, which the study does not have")
        if f.verdict not in VERDICTS:
            problems.append(f"finding {f.id}/{f.set} has verdict {f.verdict!r}; valid: {', '.join(VERDICTS)}")
        if f.ci is not None and not (f.ci[0] <= f.ci[1]):
            problems.append(f"finding {f.id}/{f.set} has an interval {f.ci} whose low end exceeds its high end")
        spec = declared.get(f.id)
        if f.verdict != "inconclusive" and (f.ci is None or (spec is not None and f.n < spec.min_n)):
            problems.append(f"finding {f.id}/{f.set} draws a verdict ({f.verdict}) from n = {f.n} without an "
                            f"interval; a verdict needs at least {spec.min_n if spec else 2} independent runs")
        if f.verdict == "inconclusive" and not f.reason:
            problems.append(f"finding {f.id}/{f.set} is inconclusive without a reason")
    return problems


def _declaration_problems(probe: Any, result: Any, sets: list[str], models: list[str], options: Any) -> list[str]:
    """A probe's optional ``metric_names(sets, models, options)`` must cover every metric its run() produced."""
    from .spec_checks import could_match

    declare = getattr(probe, "metric_names", None)
    if declare is None:
        return []
    if not callable(declare):
        return ["metric_names is not a method"]
    try:
        names = declare(list(sets), list(models), options)
    except Exception as exc:
        return [f"metric_names(sets, models, options) raised {exc!r}"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        return [f"metric_names() returned {type(names).__name__}, not a list of metric names or globs"]
    missing = [key for key in result.metrics if not could_match(key, names)]
    if missing:
        return [f"run() produced metric(s) that metric_names() does not declare: {missing[:5]}; "
                "ddprobe validate would refuse expectations on them"]
    return []


def check_probe(probe: Any, *, real: RealData | None = None, options: dict[str, Any] | Any | None = None,
                sets: dict[str, DistilledSet] | None = None,
                models: Models | None = None,
                directory: str | Path | None = None, atol: float = 1e-6,
                timings: tuple[str, ...] = TIMING_METRICS) -> Any:
    """Run a probe twice on a tiny study and check its result, determinism and manners. Returns its result.

    Rules: a ProbeResult with flat ``{str: float}`` metrics (numbers, never strings or tensors), DataFrame
    tables, existing figure files and a string summary; every metric declared by ``metric_names()`` when the
    probe has that method; the same metrics for the same seed; models received from ``ctx.pretrained`` or
    ``ctx.trained`` left in the mode, ``requires_grad`` and ``.grad`` state they were handed out in, with
    unchanged weights; the distilled sets, the real data, torch's global RNG and grad mode untouched; clear
    option errors. Metrics matching a glob in ``timings`` (default: keys containing ``seconds``) are wall-clock
    measurements and exempt from the determinism check. Files go to ``directory`` (default: a temporary
    directory, of which only the first run's outputs, the returned result's figures, are left).
    """
    import fnmatch

    import torch

    what = _label("probe", probe)
    check_options(probe, "probe")
    real = real or tiny_real()
    if sets is None:
        sets = {"tiny": tiny_distilled(real, 2, seed=0), "tiny_b": tiny_distilled(real, 2, seed=1)}
        sets["tiny_b"].manifest.name = "tiny_b"
    opts = _make_options(probe, options, what)
    temporary = directory is None
    tmp = Path(tempfile.mkdtemp(prefix="ddprobe-conformance-")) if temporary else Path(directory)
    def inputs() -> dict[str, str]:
        out = {"the real training data": _fingerprint(real.train.images, real.train.labels),
               "the real test data": _fingerprint(real.test.images, real.test.labels)}
        out.update({f"distilled set {n!r}": _fingerprint(ds.images, ds.labels) for n, ds in sets.items()})
        return out

    data_before = inputs()
    rng_before, grad_before = _global_rng_state(), torch.is_grad_enabled()
    results, problems = [], []
    for run in range(2):
        ctx = make_study_context(real, tmp / f"run{run}", sets=sets, models=models)
        ctx.probe_id = getattr(probe, "name", "probe")
        watch = _ModelWatch()
        for method in ("pretrained", "trained"):
            watch.wrap(ctx, method)
        results.append(probe.run(ctx, opts))
        if run == 0:
            problems += _result_problems(results[0])
            problems += _finding_problems(probe, results[0], sets)
            if not problems:
                problems += _declaration_problems(probe, results[0], list(sets), list(ctx.models), opts)
            problems += watch.problems()
            if not torch.equal(_global_rng_state(), rng_before):
                problems.append("it draws from torch's global RNG; use ctx.rng(name) so results do not "
                                "depend on probe order")
            if torch.is_grad_enabled() != grad_before:
                problems.append(f"grad mode was {grad_before} before run(), {torch.is_grad_enabled()} after")
            if problems:
                _raise(what, problems)
    changed = [name for name, digest in inputs().items() if data_before[name] != digest]
    if changed:
        problems.append(f"it modified the real data or a distilled set in place: {', '.join(changed)} (copy a "
                        f"tensor before changing it; in a study such a probe fails and its result is not cached)")
    a, b = results[0].metrics, results[1].metrics
    if set(a) != set(b):
        problems.append(f"two runs with the same seed gave different metric keys: {sorted(set(a) ^ set(b))}")
    else:
        for key in a:
            if any(fnmatch.fnmatchcase(key, g) for g in timings):
                continue
            x, y = float(a[key]), float(b[key])
            if not (math.isclose(x, y, abs_tol=atol) or (math.isnan(x) and math.isnan(y))):
                problems.append(f"metric {key!r} differs between two runs with the same seed: {x} vs {y}")
    if temporary:  # keep the first run's outputs (the returned result's figures), drop caches and the second run
        for leftover in (tmp / "run0" / "cache", tmp / "run1"):
            shutil.rmtree(leftover, ignore_errors=True)
    _raise(what, problems)
    return results[0]


# -- conformance: importers and reporters ----------------------------------------------------------
def check_importer(importer: Any, path: str | Path, *, real: RealData | None = None) -> DistilledSet:
    """Check an importer on a sample file it should read. Returns the imported set.

    Rules: ``sniff`` claims the sample and declines (returns False, never raises) files of other formats;
    ``load`` returns a DistilledSet with 4-D float32 images, int64 or ``[N, K]`` float labels, one per image,
    and a manifest naming the importer and the source file; loading twice gives the same content hash.
    """
    import torch

    from .data import DistilledSet, check_compatible
    from .errors import DataMismatchError

    what = _label("importer", importer)
    path = Path(path)
    problems = []
    if importer.sniff(path) is not True:
        problems.append(f"sniff() does not claim its own sample file {path.name}")
    with tempfile.TemporaryDirectory(prefix="ddprobe-conformance-") as tmp:
        for name, content in (("notes.txt", b"not a distilled set\n"), ("random.bin", bytes(range(256)))):
            other = Path(tmp) / name
            other.write_bytes(content)
            try:
                if importer.sniff(other):
                    problems.append(f"sniff() claims an unrelated file ({name})")
            except Exception as exc:
                problems.append(f"sniff() raised on an unrelated file ({name}): {exc!r}; return False")
    ds = importer.load(path)
    if not isinstance(ds, DistilledSet):
        _raise(what, [*problems, f"load() returned {type(ds).__name__}, not a DistilledSet"])
    if ds.images.dim() != 4 or ds.images.dtype != torch.float32:
        problems.append(f"images are {ds.images.dtype} {list(ds.images.shape)}; expected float32 [N, C, H, W]")
    if ds.labels.shape[0] != ds.images.shape[0]:
        problems.append(f"{ds.images.shape[0]} images but {ds.labels.shape[0]} labels")
    if not ds.soft and ds.labels.dtype != torch.int64:
        problems.append(f"hard labels have dtype {ds.labels.dtype}; expected torch.int64")
    if ds.manifest.importer != getattr(importer, "name", None):
        problems.append(f"manifest.importer is {ds.manifest.importer!r}; expected {importer.name!r}")
    if not ds.manifest.source_file:
        problems.append("manifest.source_file is empty; record the file the set came from")
    again = importer.load(path)
    if getattr(again, "manifest", None) is None or again.manifest.sha256 != ds.manifest.sha256:
        problems.append("loading the same file twice gave different content")
    if real is not None and not problems:
        try:
            check_compatible(ds, real, where=str(path))
        except DataMismatchError as exc:
            problems.append(str(exc))
    _raise(what, problems)
    return ds


def sample_results(directory: str | Path) -> StudyResults:
    """A small StudyResults with an ok probe (metrics, table, passing and failing checks), a failed probe
    and a failed distilled set: what a reporter must handle."""
    import pandas as pd

    from .results import Check, DistilledRecord, ProbeRecord, ProbeResult, StudyResults

    ok = ProbeRecord("evaluate", "evaluate", "ok", 1.5, ProbeResult(
        {"tiny/convnet": 0.75, "tiny/mlp": float("nan")},
        {"accuracy": pd.DataFrame([{"set": "tiny", "model": "convnet", "mean": 0.75}])}, {}, "tiny: 0.75"),
        checks=[Check("tiny/convnet", ">=", 0.5, 0.75, True),
                Check("tiny/mlp", ">=", 0.5, None, False, "NaN")])
    bad = ProbeRecord("broken", "broken", "error", 0.1, ProbeResult(), error="RuntimeError: boom",
                      traceback="Traceback (most recent call last):\nRuntimeError: boom")
    distilled = {"tiny": DistilledRecord("tiny", "random", 2, 20, "0" * 64, 0.01),
                 "dm": DistilledRecord("dm", "dm", 2, 0, "", None, status="error", error="ValueError: nope")}
    return StudyResults("conformance", 0, "0" * 64, None, {"ddprobe": "test", "plugins": {}}, distilled,
                        [ok, bad], Path(directory), seconds=1.6,
                        errors=["distilled set 'dm': ValueError: nope"])


def check_reporter(reporter: Any, directory: str | Path | None = None) -> list[Path]:
    """Check a reporter writes at least one file for :func:`sample_results` (NaN metrics, failed checks,
    errors included) without raising or changing the results. Returns the files it wrote."""
    from .report.json_report import to_dict

    what = _label("reporter", reporter)
    directory = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="ddprobe-report-"))
    directory.mkdir(parents=True, exist_ok=True)
    results = sample_results(directory)
    before = repr(to_dict(results))
    try:
        reporter.write(results, directory)
    except Exception as exc:
        raise ConformanceError(what, [f"write() raised {exc!r} on results with NaN metrics, a failed "
                                      "check and failed probes"]) from exc
    problems = []
    written = sorted(p for p in directory.rglob("*") if p.is_file())
    if not written:
        problems.append(f"write() wrote no file into {directory}")
    if repr(to_dict(results)) != before:
        problems.append("write() changed the results it was given")
    _raise(what, problems)
    return written
