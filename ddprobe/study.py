"""Run a study: resolve data, models and distilled sets; run probes with isolation, caching and provenance."""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from . import __version__
from .cache import Cache
from .context import StudyContext, resolve_device
from .errors import DDProbeError
from .executor import make_executor
from .guard import InputGuard, InputMutatedError
from .names import file_part, inside
from .plugins import get_plugins, load_plugins
from .progress import Progress
from .results import Check, DistilledRecord, ProbeRecord, ProbeResult, StudyResults, result_problems
from .sets import build_distilled, cached_set, distill_sets, failure, import_set, real_changed

T = TypeVar("T")

if TYPE_CHECKING:
    from .data import DistilledSet, RealData
    from .spec import DistilledSpec, ProbeSpec, Spec


@dataclass
class Study:
    """What lifecycle hooks receive: the spec, the context probes see, and the records so far."""

    spec: Spec
    context: StudyContext
    output_dir: Path
    records: list[ProbeRecord] = field(default_factory=list)
    distilled: dict[str, DistilledRecord] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    console: Any = None


def _plain(text: str) -> str:
    """Text shown as written on a rich console (an error's ``[...]`` is not markup)."""
    from rich.markup import escape

    return escape(text)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM while the distilled sets were being made: what was made so far travels with it."""

    def __init__(self, records: dict[str, DistilledRecord], errors: list[str], device: str, cache: Cache):
        super().__init__()
        self.records, self.errors, self.device, self.cache = records, errors, device, cache


INTERRUPTED = "interrupted before it finished (Ctrl-C or SIGTERM); rerun the same command to resume"


def _say(console: Any, text: str) -> None:
    if console is not None:
        console.print(text)


def load_real(spec: Spec) -> RealData:
    return spec.data.plugin.load(spec.data.options, spec.base_dir)


def data_key(spec: Spec, real: RealData) -> dict[str, Any]:
    """Identifies the real data by its spec and content, so cache entries never mix datasets."""
    from .data import content_hash

    return {**spec.data.key(), "train": content_hash(real.train.images, real.train.labels)[:16],
            "test": content_hash(real.test.images, real.test.labels)[:16]}


def make_cache(spec: Spec, no_cache: bool = False) -> Cache:
    root = (spec.base_dir / spec.study.cache_dir) if spec.study.cache_dir else None
    return Cache(root, read=not no_cache)


def control_specs(spec: Spec, sets: dict[str, DistilledSet]) -> list[DistilledSpec]:
    """The random-real controls a study adds: one per images-per-class of its declared or loaded sets."""
    from . import registry
    from .spec import DistilledSpec

    random = registry.get_distiller("random")
    ipcs = {d.ipc for d in spec.distilled.values() if d.distiller not in (None, "random") and d.ipc}
    ipcs |= {ds.manifest.ipc for ds in sets.values() if ds.manifest.ipc and ds.manifest.distiller != "random"}
    return [DistilledSpec(f"random_ipc{k}", k, "random", random, random.Options()) for k in sorted(ipcs)
            if f"random_ipc{k}" not in spec.distilled]


def _probe_cache_key(ctx: StudyContext, spec: Spec, probe: ProbeSpec) -> str:
    from . import registry
    from .fingerprint import code_fingerprint

    owner = registry.owner_of("probe", probe.kind)
    versions = {p["name"]: p.get("version") for p in get_plugins(include_builtin=True)}
    parts = {
        "kind": probe.kind, "code": code_fingerprint(probe.plugin), "options": probe.options.model_dump(mode="json"),
        "seed": spec.study.seed,
        "sets": {n: [ds.manifest.sha256, ds.manifest.learned_lr] for n, ds in ctx.distilled.items()},
        "models": {k: v.key() for k, v in ctx.models.items()}, "train": spec.train.key(),
        "pretrain": spec.pretrain.key(), "real": ctx.data_key, "ddprobe": __version__,
        "plugin": [owner, versions.get(owner)],
    }
    return ctx.cache.key("probe-results", parts)


def _store_probe(ctx: StudyContext, key: str, record: ProbeRecord) -> None:
    """Cache a successful probe's result; it is stored only if it reads back (:func:`_read_probe`)."""
    def fill(d: Path) -> None:
        for name, table in record.result.tables.items():
            table.to_csv(d / f"table-{name}.csv", index=False)
        figures = {}
        for name, path in record.result.figures.items():
            if Path(path).exists():
                shutil.copy(path, d / f"figure-{file_part(name)}.png")
                figures[name] = Path(path).name
        (d / "record.json").write_text(json.dumps({
            "metrics": record.result.metrics, "timings": record.result.timings, "summary": record.result.summary,
            "info": record.result.info, "figures": figures, "tables": list(record.result.tables),
            "seconds": record.seconds, "findings": [f.to_json() for f in record.result.findings],
        }, default=str))

    ctx.cache.store_directory("probe-results", key, fill, check=_read_probe)


def _read_probe(d: Path) -> tuple[dict[str, Any], dict[str, Any], list]:
    """Parse a cached probe result completely (record, tables, figure files); raise if any part is unusable."""
    import pandas as pd

    data = json.loads((d / "record.json").read_text())
    if not isinstance(data, dict):
        raise ValueError("record.json is not an object")
    for field_name in ("metrics", "figures", "info"):
        if not isinstance(data.get(field_name), dict):
            raise ValueError(f"record.json: {field_name!r} is not an object")
    if not all(isinstance(v, (int, float)) for v in data["metrics"].values()):
        raise ValueError("record.json: a metric is not a number")
    if not isinstance(data.get("tables"), list) or not isinstance(data.get("seconds"), (int, float)):
        raise ValueError("record.json: 'tables' or 'seconds' is missing")
    if not isinstance(data.get("summary"), str) or not isinstance(data.get("timings", {}), dict):
        raise ValueError("record.json: 'summary' or 'timings' is malformed")
    tables = {}
    for name in data["tables"]:
        path = d / f"table-{name}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path.name} is missing")
        try:
            tables[name] = pd.read_csv(path)
        except pd.errors.EmptyDataError:  # a table without columns is written as an empty file
            tables[name] = pd.DataFrame()
    for name in data["figures"]:
        if not (d / f"figure-{file_part(name)}.png").is_file():
            raise FileNotFoundError(f"figure-{file_part(name)}.png is missing")
    from .findings import Finding

    findings = [Finding.from_json(f) for f in data.get("findings", [])]
    return data, tables, findings


def _load_probe(ctx: StudyContext, key: str, probe: ProbeSpec) -> ProbeRecord | None:
    """A cached result (counted as a hit), or None (a miss: absent, or damaged and discarded with a warning)."""
    found = ctx.cache.load_directory("probe-results", key, _read_probe)
    if found is None:
        return None
    (data, tables, findings), d = found[0], ctx.cache.path("probe-results", key)
    figures = {}
    fig_dir = ctx.output_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    for name, filename in data["figures"].items():
        target = inside(fig_dir, filename)
        shutil.copy(d / f"figure-{file_part(name)}.png", target)
        figures[name] = target
    result = ProbeResult(data["metrics"], tables, figures, data["summary"], data["info"], findings,
                         timings=data.get("timings") or {})
    return ProbeRecord(probe.id, probe.kind, "ok", data["seconds"], result, cached=True)


_terminated = False  # SIGTERM arrived during run_study (see _signals_interrupt)


class _InterruptWatch:
    """Tells the user's Ctrl-C from a ``KeyboardInterrupt`` that a plugin raised itself.

    On the main thread it wraps the SIGINT handler for the duration of a probe: a real interrupt is recorded,
    then handed to the handler that was there (by default Python's, which raises ``KeyboardInterrupt``).
    Where no handler can be installed (another thread), a ``KeyboardInterrupt`` cannot come from the user.
    """

    def __init__(self) -> None:
        self.signalled = False
        self.main_thread = threading.current_thread() is threading.main_thread()
        self.installed = False
        self.raised: BaseException | None = None  # what left the watched block
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> Any:
        self.signalled = True
        previous = self._previous
        if callable(previous):
            return previous(signum, frame)
        if previous == signal.SIG_IGN:
            self.signalled = False
            return None
        raise KeyboardInterrupt

    def __enter__(self) -> _InterruptWatch:
        if self.main_thread:
            try:
                self._previous = signal.getsignal(signal.SIGINT)
                signal.signal(signal.SIGINT, self._handle)
                self.installed = True
            except (ValueError, OSError, TypeError):
                self.installed = False
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        self.raised = exc
        if self.installed:
            signal.signal(signal.SIGINT, self._previous if self._previous is not None else signal.SIG_DFL)

    def from_user(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the user's interrupt (then it ends the study; anything else is the probe's failure)."""
        if not isinstance(exc, KeyboardInterrupt):
            return False
        if exc is not self.raised:  # raised after the plugin's code returned (saving its result): not the plugin's
            return True
        return self.signalled or _terminated or (self.main_thread and not self.installed)


def _failure(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit: sys.exit({exc.code!r}) was called"
    if isinstance(exc, KeyboardInterrupt):
        return "KeyboardInterrupt: raised by plugin code itself (no interrupt signal was received)"
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_probe(study: Study, probe: ProbeSpec, use_cache: bool = True) -> ProbeRecord:
    """Run one probe in isolation: whatever it raises or returns becomes its record, never a lost study.

    Anything the probe raises (``SystemExit`` and other ``BaseException`` included) or a result that is not a
    well-formed ProbeResult (:func:`ddprobe.results.result_problems`: metrics that are not numbers, say) makes
    an error record. Only the user's own interrupt (Ctrl-C, a real SIGINT) propagates: the study stops and a
    rerun resumes from the cache.
    """
    ctx = study.context
    ctx.probe_id = probe.id
    key = _probe_cache_key(ctx, study.spec, probe)
    start = time.perf_counter()
    record = None
    if use_cache:
        try:
            record = _load_probe(ctx, key, probe)
        except Exception:  # an unreadable cache entry is a miss: the probe runs again and the entry is rewritten
            record = None
    if record is not None:
        record.computed_seconds, record.seconds = record.seconds, time.perf_counter() - start
    else:
        if not use_cache:
            ctx.cache.misses["probe-results"] += 1
        guard = InputGuard(ctx, lambda: load_real(study.spec))  # the probe gets copies of the sets
        start = time.perf_counter()
        watch = _InterruptWatch()
        try:
            with watch:
                result = probe.plugin.run(ctx, probe.options)
            problems = result_problems(result)
            if problems:
                raise TypeError(f"probe {probe.kind!r} returned an invalid result: " + "; ".join(problems))
            result.metrics = {k: float(v) for k, v in result.metrics.items()}
            guard.check(probe.id)  # before caching: a result computed on changed inputs is never stored
            record = ProbeRecord(probe.id, probe.kind, "ok", time.perf_counter() - start, result)
            _store_probe(ctx, key, record)
        except BaseException as exc:  # isolation: a plugin's sys.exit must not end the study
            if watch.from_user(exc):
                guard.release()
                ctx.probe_id = ""
                raise
            record = ProbeRecord(probe.id, probe.kind, "error", time.perf_counter() - start, ProbeResult(),
                                 error=_failure(exc), traceback=traceback.format_exc())
        guard.release()  # the study's own sets back; real data a probe changed is reloaded
    if record.status == "ok":
        checks: list[Check] = []
        for expectation in probe.expect:
            checks.extend(expectation.check(record.result.metrics, record.result.findings))
        record.checks = checks
    ctx.probe_id = ""
    return record


def notify(target: Study, hook: str, **kwargs: Any) -> None:
    """Call a lifecycle hook plugin by plugin: one that raises is a warning naming it, never a lost report."""
    from .plugins import pm

    caller = getattr(pm.hook, hook)
    impls = caller.get_hookimpls()
    plugins = [impl.plugin for impl in impls]
    for impl in reversed(impls):  # pluggy's order: the last registered is called first
        one = pm.subset_hook_caller(hook, remove_plugins=[p for p in plugins if p is not impl.plugin])
        watch = _InterruptWatch()
        try:
            with watch:
                one(**kwargs)
        except BaseException as exc:  # a hook's sys.exit is a warning as well
            if watch.from_user(exc):
                raise
            message = f"plugin {impl.plugin_name!r}: hook {hook} raised {_failure(exc)}"
            target.warnings.append(message)
            _say(target.console, f"[yellow]warning:[/yellow] {_plain(message)}")


def provenance(device: str, cache: Cache) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "ddprobe": __version__, "python": platform.python_version(), "platform": platform.platform(),
        "torch": torch.__version__, "device": device, "cache_dir": str(cache.root),
        "plugins": {p["name"]: p.get("version") for p in get_plugins()},
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


def prepare(spec: Spec, output_dir: Path, no_cache: bool = False, console: Any = None,
            progress: Progress | None = None) -> Study:
    """Resolve data and distilled sets; return a Study ready to run probes. Distiller failures are recorded."""
    from .spec_checks import device_problem, output_problem

    load_plugins()
    progress = progress or Progress(enabled=False)
    problem = device_problem(spec.study.device)
    if problem is not None:
        from .errors import SpecError

        raise SpecError(problem, file=str(spec.path) if spec.path else None)
    problem = output_problem(output_dir)
    if problem is not None:
        raise DDProbeError(problem)
    device = resolve_device(spec.study.device)
    if spec.study.executor == "ray":
        from .executor.ray import import_ray

        import_ray()  # a missing extra is a spec-level error (exit 2) before anything is computed
    cache = make_cache(spec, no_cache)
    if console is not None:
        from rich.markup import escape

        cache.report = lambda message: _say(console, f"[yellow]warning:[/yellow] {escape(message)}")
    real = load_real(spec)  # a dataset that cannot be loaded stops the study before anything is written
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DDProbeError(f"--output {output_dir}: cannot create the folder: {exc.strerror or exc}") from None
    dkey = data_key(spec, real)
    sets: dict[str, DistilledSet] = {}
    records: dict[str, DistilledRecord] = {}
    errors: list[str] = []
    controls: list[DistilledSpec] = []

    def record(dspec: DistilledSpec, build: Callable[[], tuple[DistilledSet, bool]], control: bool = False,
               seconds: float | None = None) -> None:
        """Build one set (``build() -> (set, cached)``) and record it, or record why it failed."""
        nonlocal real
        start = time.perf_counter()
        try:
            ds, cached = build()
        except KeyboardInterrupt:
            records[dspec.name] = DistilledRecord(dspec.name, dspec.distiller, dspec.ipc, 0, "",
                                                  time.perf_counter() - start,
                                                  str(dspec.path) if dspec.path else None, control, "interrupted",
                                                  INTERRUPTED)
            raise
        except Exception as exc:
            if isinstance(exc, InputMutatedError) and real_changed(real, dkey):  # the rest get the real data
                real = load_real(spec)
            msg = failure(exc)
            records[dspec.name] = DistilledRecord(dspec.name, dspec.distiller, dspec.ipc, 0, "", None,
                                                  str(dspec.path) if dspec.path else None, control, "error", msg)
            errors.append(f"distilled set {dspec.name!r}: {msg}")
            _say(console, f"[red]distilled set {dspec.name!r} failed:[/red] {_plain(msg)}")
            return
        sets[dspec.name] = ds
        m = ds.manifest
        for warning in getattr(m, "warnings", None) or []:
            from rich.markup import escape

            _say(console, f"[yellow]warning:[/yellow] {escape(warning)}")
        if seconds is None:
            seconds = m.seconds if cached or dspec.path else time.perf_counter() - start
        records[dspec.name] = DistilledRecord(dspec.name, m.distiller, m.ipc, len(ds), m.sha256 or "", seconds,
                                              str(dspec.path) if dspec.path else None, control)

    to_distill: list[DistilledSpec] = []
    executor = make_executor(spec.study.executor, spec.study.workers, spec.study.ray)
    try:
        for dspec in spec.distilled.values():  # imported and cached sets first; the rest is one bag of work
            if dspec.path is not None:
                record(dspec, lambda d=dspec: (import_set(d, real), False))
                continue
            found = cached_set(spec, dspec, real, cache, dkey)
            if found is None:
                to_distill.append(dspec)
            else:
                record(dspec, lambda ds=found: (ds, True))
        distill_sets(spec, to_distill, real, cache, device, dkey, progress, executor,
                     lambda d, result, seconds: record(d, lambda: (result(), False), seconds=seconds))
        controls = control_specs(spec, sets) if spec.study.control else []
        for cspec in controls:
            if cspec.name not in sets:
                with progress.task(f"distilled set {cspec.name}", total=None):
                    record(cspec, lambda c=cspec: build_distilled(spec, c, real, cache, device, dkey, progress),
                           control=True)
    except KeyboardInterrupt:
        executor.close()
        for dspec in to_distill:
            records.setdefault(dspec.name, DistilledRecord(dspec.name, dspec.distiller, dspec.ipc, 0, "", None, None,
                                                           False, "interrupted", INTERRUPTED))
        raise Interrupted(_in_order(records, spec, controls), errors, device, cache) from None
    except BaseException:
        executor.close()
        raise
    sets = _in_order(sets, spec, controls)  # the spec's order, whichever set ended first
    records = _in_order(records, spec, controls)
    ctx = StudyContext(spec.study.seed, real, spec.models, spec.train, cache, device, progress, dkey,
                       spec.study.workers, spec.study.executor, spec.study.ray, distilled=sets,
                       compile_mode=spec.study.compile,
                       pretrain_recipe=spec.pretrain, output_dir=output_dir,
                       controls={c.name for c in controls})
    ctx.use_executor(executor)  # the one that made the sets (a local Ray instance is started once per run)
    return Study(spec, ctx, output_dir, distilled=records, errors=errors, console=console)


def _in_order(by_name: dict[str, T], spec: Spec, controls: list[DistilledSpec]) -> dict[str, T]:
    """``by_name`` in the order of the spec's sets, then the controls'."""
    order = [*spec.distilled, *(c.name for c in controls)]
    return {n: by_name[n] for n in order if n in by_name}


def run_study(spec: Spec | str | Path, output_dir: str | Path | None = None, only: list[str] | None = None,
              no_cache: bool = False, console: Any = None, progress: bool = False,
              reporters: list[str] | None = None, threads: int | str | None = None) -> StudyResults:
    """Run a study end to end and write its reports. Returns the results; ``results.exit_code`` for CI.

    ``threads`` overrides ``[study] threads`` (see :mod:`ddprobe.threads`). Ctrl-C or SIGTERM stops the run
    within seconds (worker processes included): what finished stays in the cache, the reports of what finished
    are written with the interrupted set or probe marked ``interrupted``, and ``results.interrupted`` is set
    (exit code 130). Rerunning the same study resumes from the cache.
    """
    from . import registry
    from . import threads as threads_mod
    from .spec import load_spec

    if not hasattr(spec, "probes"):
        spec = load_spec(spec)  # type: ignore[arg-type]
    assert not isinstance(spec, (str, Path))
    out = Path(output_dir) if output_dir else Path("runs") / spec.study.name
    if only:
        ids = {p.id for p in spec.probes}
        unknown = [o for o in only if o not in ids]
        if unknown:
            from .errors import SpecError, suggest

            raise SpecError([f"--only {u}: no probe with that id; {suggest(u, ids)}" for u in unknown],
                            file=str(spec.path) if spec.path else None)
    if progress and console is None:
        from rich.console import Console

        console = Console(stderr=True, highlight=False)
    live = progress and console is not None and (console.is_terminal or console.is_jupyter)
    bar = Progress(enabled=live, console=console)
    import torch

    threads_before = torch.get_num_threads()
    budget = threads_mod.configure(threads if threads is not None else spec.study.threads)
    started = time.perf_counter()
    study: Study | None = None
    interrupted = False
    with _signals_interrupt():
        try:
            study = prepare(spec, out, no_cache=no_cache, console=console, progress=bar)
            draw_distilled(study)
            notify(study, "study_started", study=study)
            selected = [p for p in spec.probes if not only or p.id in only]
            overall = StudyProgress(len(selected), bar, console if progress and not live else None)
            for n, probe in enumerate(selected):
                with overall.probe(n, probe.id):
                    try:
                        record = run_probe(study, probe, use_cache=not no_cache)
                    except KeyboardInterrupt:
                        interrupted = True
                        study.records.append(ProbeRecord(probe.id, probe.kind, "interrupted", 0.0, ProbeResult(),
                                                         error=INTERRUPTED))
                        break
                study.records.append(record)
                if record.status != "ok":
                    _say(console, f"[red]probe {_plain(probe.id)} failed:[/red] {_plain(record.error or '')}")
                notify(study, "probe_finished", study=study, probe=probe, result=record)
        except Interrupted as stop:
            interrupted = True
            device, cache, distilled, errors = stop.device, stop.cache, stop.records, stop.errors
        except KeyboardInterrupt:
            if study is None:  # before any set was made: nothing to report
                raise
            interrupted = True  # in a lifecycle hook: the probes so far are reported
        finally:
            threads_mod.set_torch_threads(threads_before)
            if study is not None:
                study.context.executor.close()  # a local Ray instance this run started; nothing for the others
    if study is not None:
        device, cache, distilled, errors = study.context.device, study.context.cache, study.distilled, study.errors
    results = StudyResults(
        name=spec.study.name, seed=spec.study.seed, spec_sha256=spec.sha256,
        spec_path=str(spec.path) if spec.path else None, provenance=provenance(device, cache),
        distilled=distilled, probes=study.records if study is not None else [], output_dir=out, errors=errors,
        warnings=study.warnings if study is not None else [], interrupted=interrupted,
    )
    results.seconds = time.perf_counter() - started
    results.provenance["cache"] = cache.stats()
    results.provenance["cache_warnings"] = list(cache.warnings)
    results.provenance["threads"] = budget.to_dict()
    if study is not None and not interrupted:
        notify(study, "study_finished", study=study, results=results)
    write_tables(results)
    remove_stale_files(results)
    for fmt in reporters if reporters is not None else spec.report.formats:
        try:
            registry.get_reporter(fmt).write(results, out)
        except Exception as exc:
            results.errors.append(f"reporter {fmt!r}: {type(exc).__name__}: {exc}")
            _say(console, f"[red]reporter {fmt} failed:[/red] {_plain(str(exc))}")
    return results


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM (what ``timeout`` and schedulers send) stops a study the way Ctrl-C does, in the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        global _terminated
        _terminated = True  # a probe's interrupt watch takes it for the user's, like a real Ctrl-C
        raise KeyboardInterrupt

    global _terminated
    _terminated = False
    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def write_tables(results: StudyResults) -> None:
    """Every probe table as ``tables/<probe id>-<table>.csv`` (a table that cannot be written is an error)."""
    tables = results.output_dir / "tables"
    for record in results.probes:
        for name, table in record.result.tables.items():
            tables.mkdir(parents=True, exist_ok=True)
            table.to_csv(tables / f"{record.id}-{name}.csv", index=False)


def draw_distilled(study: Study) -> None:
    """A picture of each distilled set's images (``figures/distilled-<set>.png``) for the reports."""
    from .report.figures import mosaic

    ctx = study.context
    for name, ds in ctx.distilled.items():
        record = study.distilled.get(name)
        if record is None:
            continue
        kind = "random real images" if record.control else f"{record.distiller or 'imported'} set"
        try:
            record.figure = mosaic(
                ctx.real.to_pixels(ds.images), ds.hard_labels, ds.classes,
                study.output_dir / "figures" / f"distilled-{name}.png", title=f"{name} ({kind})",
                caption=f"The images of {name}, one row per class (at most 10 shown per class), in pixel space "
                        "clipped to [0, 1].")
        except Exception as exc:  # a picture never costs the study its results or its exit code
            import warnings

            warnings.warn(f"no picture of distilled set {name!r}: {type(exc).__name__}: {exc}", stacklevel=2)


def remove_stale_files(results: StudyResults) -> None:
    """Delete PNGs in ``figures/`` and CSVs in ``tables/`` of the output folder that this run's reports do not
    reference (left by an earlier run of other probes, e.g. before ``--only``). Nothing outside them is touched."""
    out = results.output_dir
    keep = {Path(p).resolve() for r in results.probes for p in r.result.figures.values()}
    keep |= {Path(d.figure).resolve() for d in results.distilled.values() if d.figure}
    keep |= {(out / "tables" / f"{r.id}-{name}.csv").resolve() for r in results.probes for name in r.result.tables}
    for folder, suffix in (("figures", ".png"), ("tables", ".csv")):
        d = out / folder
        if not d.is_dir():
            continue
        for f in d.iterdir():
            if f.is_file() and f.suffix == suffix and f.resolve() not in keep:
                f.unlink()


class StudyProgress:
    """The overall line of a run: probe n of m, elapsed time and an estimate of the time left.

    On a terminal or in a notebook it is the top line of the progress display; elsewhere (CI logs) each probe's
    start is printed as one line.
    """

    def __init__(self, total: int, bar: Progress, log: Any = None):
        self.total, self.bar, self.log = total, bar, log
        self.started = time.perf_counter()

    def eta(self, done: int) -> str:
        from .report.numbers import fmt_seconds

        elapsed = time.perf_counter() - self.started
        left = "" if done == 0 else f", about {fmt_seconds(elapsed / done * (self.total - done))} left"
        return f"{fmt_seconds(elapsed)} elapsed{left}"

    @contextlib.contextmanager
    def probe(self, n: int, probe_id: str) -> Any:
        line = f"probe {n + 1} of {self.total}: {probe_id}"
        if self.log is not None:
            self.log.print(f"{line} ({self.eta(n)})")
        with self.bar.task(line, total=None) as task:
            task.update(status=self.eta(n))
            yield task
