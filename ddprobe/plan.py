"""A dry run of a study: what it would compute, what is already cached, and how long the rest should take.

Distilled sets, probe results and trained models are looked up in the cache under the same keys the study uses
(``ddprobe.sets.distilled_cache_parts``, ``_probe_cache_key`` and ``StudyContext.model_cache_parts``). The
work inside a set or a probe is known only when its plugin says so through the optional extension ``plan``:

- distiller: ``plan(ctx, ipc, options) -> list[PlanItem]``
- probe: ``plan(ctx, options) -> list[PlanItem]``

An item with a ``key`` (say, the cache key of the model it trains) is counted once however many sets or probes
list it.

where ``ctx`` is a :class:`PlanContext`. Time estimates come from training steps of each model timed on this
machine: a training step costs what was measured at its batch size (scaled linearly above 256 examples), a
forward pass over N examples a third of a training step on N examples, a Hessian-vector product two training
steps. Steps are timed after a warm-up, several times, with the thread budget the run would use; the estimate
uses the median step and comes with a range, from the fastest steps to the upper-quartile steps times
``OVERHEAD`` (what a run spends outside the timed steps). The estimate is for one process (``Plan.seconds_with``
spreads bags, and the distilled sets, over workers, at steps also timed with the one thread a worker uses) and
cannot foresee other jobs starting on the machine. docs/benchmarks.md records
estimates against actual cold runs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cache import Cache
    from .data import RealData
    from .spec import Spec
    from .training import TrainRecipe

MEASURE_BATCH_MAX = 256
WARMUP_STEPS = 3  # the first steps of a model pay one-time costs (allocator, kernel choice): never timed
MIN_REPEATS, MAX_REPEATS = 5, 25
OVERHEAD = 1.5  # what a run spends beyond the timed steps (data, evaluation, bookkeeping): the range's top
TIME_PER_POINT = 0.15  # seconds of timed steps per (model, batch size) beyond the minimum repeats


@dataclass
class PlanItem:
    """One piece of work: ``count`` x ``steps`` steps of ``kind`` on ``batch`` examples with model ``model``."""

    what: str
    kind: str = "train"  # train | forward | hvp | other
    model: str | None = None
    steps: int = 0
    batch: int = 0
    count: int = 1
    cached: bool = False
    seconds: float | None = None  # a plugin's own estimate for all ``count``; otherwise filled from throughput
    key: str | None = None  # what it makes (e.g. a cache key): items with the same key are done once
    shared: bool = False  # set by the planner: an earlier item has the same key, so this one costs nothing
    worker_seconds: float | None = None  # set by the planner: all ``count`` at one thread, as worker tasks run


@dataclass
class PlanContext:
    """What a plugin's ``plan`` receives: the study's data, models, recipes and cache, and item helpers."""

    seed: int
    real: RealData
    models: dict[str, Any]
    recipe: TrainRecipe
    pretrain_recipe: TrainRecipe
    cache: Cache
    data_key: dict[str, Any]
    device: str
    sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> {"ipc", "images", "cached"}

    def train_item(self, model: str, examples: int, recipe: TrainRecipe | None = None, what: str = "",
                   count: int = 1, cached: bool = False, key: str | None = None) -> PlanItem:
        """Training ``count`` models of ``model`` on ``examples`` examples with ``recipe`` (default: [train])."""
        recipe = recipe or self.recipe
        return PlanItem(what or f"train {model} on {examples} examples", "train", model,
                        recipe.total_steps(examples), recipe.batch(examples), count, cached, key=key)

    def forward_item(self, model: str, examples: int, what: str = "", count: int = 1,
                     cached: bool = False) -> PlanItem:
        return PlanItem(what or f"{model} forward over {examples} examples", "forward", model, 1, examples, count,
                        cached)

    def hvp_item(self, model: str, examples: int, products: int, what: str = "", count: int = 1,
                 cached: bool = False) -> PlanItem:
        """``products`` Hessian-vector products of ``model`` on ``examples`` examples each."""
        return PlanItem(what or f"{products} Hessian-vector products", "hvp", model, products, examples, count,
                        cached)

    def trained_cached(self, model: str, data_id: Any, recipe: TrainRecipe, seed_name: str,
                       learned_lr: float | None = None) -> bool:
        """Whether ``StudyContext.trained`` would find this model in the cache (same key parts)."""
        from .context import model_cache_parts

        parts = model_cache_parts(self.models, self.seed, self.data_key, model, data_id, recipe, seed_name, learned_lr)
        return self.cache.has("models", self.cache.key("models", parts))

    def select_sets(self, names: list[str] | None) -> dict[str, dict[str, Any]]:
        """The probe's ``sets`` option resolved, as ``StudyContext.select_sets`` does."""
        return {n: self.sets[n] for n in names} if names else dict(self.sets)

    def select_models(self, names: list[str] | None) -> list[str]:
        return list(names) if names else list(self.models)

    def set_size(self, name: str) -> int:
        """Images in a distilled set: known once it is made or cached, else ipc x classes."""
        info = self.sets.get(name, {})
        return int(info.get("images") or (info.get("ipc") or 1) * self.real.num_classes)

    def pretrained_item(self, model: str, seed_name: str = "pretrained") -> PlanItem:
        """Training the real-data model ``ctx.pretrained(model)`` returns, marked cached when it is."""
        cached = self.trained_cached(model, {"real-train": self.data_key}, self.pretrain_recipe, seed_name)
        return self.train_item(model, len(self.real.train), self.pretrain_recipe,
                               f"{model} on the real training set ({seed_name})", cached=cached)


@dataclass
class Entry:
    """A distilled set or a probe: cached, to compute, or imported, with its work items."""

    section: str  # distilled | probe
    name: str
    kind: str
    status: str  # cached | to compute | import | error
    items: list[PlanItem] = field(default_factory=list)
    note: str = ""
    seconds: float | None = None
    planned: bool = False  # its plugin listed its work through plan()
    low: float | None = None  # the range of ``seconds`` (see Throughput)
    high: float | None = None


@dataclass
class Plan:
    study: str
    device: str
    cache_dir: str
    entries: list[Entry]
    throughput: dict[str, dict[str, float]]  # model -> {batch: seconds per training step}
    seconds: float  # estimated time of everything not cached (known parts)
    unknown: list[str]  # entries to compute whose cost is unknown
    low: float = 0.0  # the range of ``seconds``: fastest measured steps ...
    high: float = 0.0  # ... to upper-quartile steps, times the overhead the steps do not include
    threads: dict[str, Any] = field(default_factory=dict)  # the thread budget the steps were measured with
    startup: float = 0.0  # starting Python, importing torch, loading the data: the run pays it too (CLI only)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def seconds_with(self, workers: int, task_overhead: float = 0.0) -> float:
        """The estimate with ``workers`` tasks at once: each item of ``count`` independent units (trainings,
        checkpoints) as a bag spread over the workers, ``ceil(count / workers)`` units long, plus
        ``task_overhead`` seconds per unit; single units stay serial, except that the distilled sets to compute
        are themselves one bag (one task per set, its single units in order; the longest first over the
        workers). An upper bound on the speed-up: the driver's own work, stacked (vmap) training of several
        units in one task, and data shipping are not modelled."""
        import math

        def in_task(item: PlanItem) -> float:  # all of ``item`` as worker tasks run it (one thread each)
            assert item.seconds is not None
            return item.worker_seconds if workers > 1 and item.worker_seconds is not None else item.seconds

        total = self.startup
        per_set: list[tuple[float, float]] = []  # each distilled set's own work: here, and as one task of a bag
        for entry in self.entries:
            if entry.status != "to compute" or entry.seconds is None:
                continue
            own = here = 0.0 if entry.items else entry.seconds
            for item in entry.items:
                if item.cached or item.shared or item.seconds is None:
                    continue
                count = max(1, item.count)
                if count == 1:
                    own, here = own + in_task(item), here + item.seconds
                    continue
                rounds = math.ceil(count / max(1, workers))
                per_unit = in_task(item) / count
                total += rounds * per_unit + (task_overhead * rounds if workers > 1 else 0.0)
            if entry.section == "distilled":
                per_set.append((here, own))
            else:
                total += here
        if workers > 1 and len(per_set) > 1:  # the sets are a bag of tasks only when there are several
            return total + longest_first([own for _, own in per_set], workers, task_overhead)
        return total + sum(here for here, _ in per_set)


def longest_first(durations: list[float], workers: int, task_overhead: float = 0.0) -> float:
    """When the last of ``durations`` ends, each started on the least busy of ``workers``, the longest first."""
    if workers <= 1 or len(durations) <= 1:
        return sum(durations)
    load = [0.0] * min(workers, len(durations))
    for d in sorted(durations, reverse=True):
        i = load.index(min(load))
        load[i] += d + task_overhead
    return max(load)


class Throughput:
    """Seconds per training step of each model, measured here on random inputs.

    Each model is warmed up once (a few steps, so one-time costs such as kernel selection and memory pools are
    not timed) and each batch size again (one step); then steps are timed one by one, round-robin over all the
    batch sizes the plan needs, at least ``MIN_REPEATS`` rounds and as many as fit in ``TIME_PER_POINT``
    seconds per point (at most ``MAX_REPEATS``). The estimate uses the median; the range uses the fastest step
    (``low``) and the upper quartile (``high``), so one step that another job on the machine delayed neither
    inflates the estimate nor hides in it.
    """

    def __init__(self, models: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, device: str,
                 measure: bool = True):
        self.models, self.input_shape, self.num_classes, self.device = models, input_shape, num_classes, device
        self.measure = measure
        self.measured: dict[str, dict[str, float]] = {}  # model -> {batch: median seconds per step}
        self.spread: dict[str, dict[str, tuple[float, float]]] = {}  # model -> {batch: (fastest, upper quartile)}
        self._warm: set[str] = set()

    def step(self, model: str, batch: int) -> float | None:
        """Median seconds of one training step of ``model`` on ``batch`` examples."""
        got = self.step_range(model, batch)
        return None if got is None else got[1]

    def step_range(self, model: str, batch: int) -> tuple[float, float, float] | None:
        """(fastest, median, upper quartile) seconds of one training step, scaled linearly above the measured
        batch sizes."""
        if not self.measure or model not in self.models or batch <= 0:
            return None
        b = min(batch, MEASURE_BATCH_MAX)
        if str(b) not in self.measured.get(model, {}):
            self.measure_all([(model, b)])
        scale = batch / b
        low, high = self.spread[model][str(b)]
        return low * scale, self.measured[model][str(b)] * scale, high * scale

    def measure_all(self, points: Any) -> None:
        """Time training steps at every ``(model, batch)`` in ``points`` not timed yet, round-robin.

        Every round times one step of each point, so a load that comes and goes on a shared machine slows all
        points alike instead of making one batch size look slower than a larger one. Afterwards a smaller batch
        of a model never costs more than a larger one (the larger batch's time is the better-sampled bound).
        """
        import time

        wanted = sorted({(m, min(b, MEASURE_BATCH_MAX)) for m, b in points
                         if self.measure and m in self.models and b > 0
                         and str(min(b, MEASURE_BATCH_MAX)) not in self.measured.get(m, {})})
        if not wanted:
            return
        from .timing import timed

        steps = {point: self._step_fn(*point) for point in wanted}
        for model, batch in wanted:  # one-time costs (allocator, kernel choice) are never timed
            for _ in range(WARMUP_STEPS if model not in self._warm else 1):
                steps[model, batch]()
            self._warm.add(model)
        samples: dict[tuple[str, int], list[float]] = {point: [] for point in wanted}
        start = time.perf_counter()
        rounds = 0
        while rounds < MAX_REPEATS and (rounds < MIN_REPEATS
                                        or time.perf_counter() - start < TIME_PER_POINT * len(wanted)):
            for point in wanted:
                samples[point].append(timed(steps[point], self.device))
            rounds += 1
        for (model, batch), got in samples.items():
            got.sort()
            self.measured.setdefault(model, {})[str(batch)] = _quantile(got, 0.5)
            self.spread.setdefault(model, {})[str(batch)] = (got[0], _quantile(got, 0.75))
        for model in {m for m, _ in wanted}:
            table, spread = self.measured[model], self.spread[model]
            cap: tuple[float, float, float] | None = None
            for b in sorted(table, key=int, reverse=True):
                low, high = spread[b]
                if cap is not None:
                    low, mid, high = min(low, cap[0]), min(table[b], cap[1]), min(high, cap[2])
                    table[b], spread[b] = mid, (low, high)
                cap = (spread[b][0], table[b], spread[b][1])

    def _step_fn(self, model: str, batch: int) -> Any:
        """One SGD training step of a fresh ``model`` on a random batch of ``batch`` examples."""
        import torch

        from .rng import seeded_init
        from .training import loss_fn

        with seeded_init(0, "plan:throughput"):
            net = self.models[model].build(self.input_shape, self.num_classes).to(self.device)
            x = torch.randn(batch, *self.input_shape, device=self.device)
            y = torch.randint(self.num_classes, (batch,), device=self.device)
        opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
        net.train()

        def one() -> None:
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        return one

    def estimate(self, item: PlanItem) -> float | None:
        got = self.estimate_range(item)
        return None if got is None else got[1]

    def estimate_range(self, item: PlanItem) -> tuple[float, float, float] | None:
        """(low, estimate, high) seconds of ``item``: its plugin's own figure, or from measured steps."""
        if item.seconds is not None:
            return item.seconds, item.seconds, item.seconds
        if item.model is None:
            return None
        factor = {"train": 1.0, "forward": 1 / 3, "hvp": 2.0}.get(item.kind)
        if factor is None:
            return None
        step = self.step_range(item.model, item.batch)
        if step is None:
            return None
        n = factor * item.steps * item.count
        return step[0] * n, step[1] * n, step[2] * n


def _quantile(sorted_samples: list[float], q: float) -> float:
    """The ``q`` quantile of sorted samples, interpolated linearly."""
    pos = q * (len(sorted_samples) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_samples) - 1)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def _plugin_items(plugin: Any, *args: Any) -> list[PlanItem] | None:
    method = getattr(plugin, "plan", None)
    if method is None:
        return None
    return list(method(*args))


def plan_study(spec: Spec, measure: bool = True, threads: int | str | None = None,
               count_startup: bool = False) -> Plan:
    """What ``ddprobe run`` would do for ``spec``, without training or writing anything (see module doc).

    Steps are timed with the thread budget the run would use (``threads`` overrides ``[study] threads``).
    ``count_startup`` (the CLI sets it) adds what this process spent before timing steps: starting Python,
    importing torch, loading the data and looking up the cache, which a ``ddprobe run`` process pays too.
    """
    import torch

    from . import threads as threads_mod

    before = torch.get_num_threads()
    budget = threads_mod.configure(threads if threads is not None else spec.study.threads)
    try:
        plan = _plan_study(spec, measure, budget)
    finally:
        threads_mod.set_torch_threads(before)
    to_compute = sum(e.status == "to compute" for e in plan.entries)
    if count_startup and to_compute:
        if measure:
            plan.startup += reporting_seconds(to_compute)  # drawn by the run's process too, like its start-up
        plan.seconds += plan.startup
        plan.low += plan.startup
        plan.high += plan.startup * OVERHEAD
    else:
        plan.startup = 0.0
    return plan


def reporting_seconds(figures: int) -> float:
    """What a run spends drawing: importing matplotlib (timed here, where this process has not yet) and ``figures``
    figures at the cost of one timed save of a small labelled plot (probes and sets draw about one each)."""
    import tempfile
    import time
    from pathlib import Path

    start = time.perf_counter()
    from .report.figures import plt, save

    pyplot = plt()
    imported = time.perf_counter() - start
    start = time.perf_counter()
    fig, ax = pyplot.subplots(figsize=(5, 3))
    ax.plot(range(50), range(50), label="a")
    ax.set_xlabel("x")
    ax.legend()
    with tempfile.TemporaryDirectory() as tmp:
        save(fig, Path(tmp) / "timing.png")
    return imported + figures * (time.perf_counter() - start)


def process_seconds() -> float:
    """Seconds since this process started (Linux ``/proc``; 0.0 where that is not available)."""
    import os
    from pathlib import Path

    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")  # field 22 of proc(5): starttime in clock ticks
        return max(0.0, float(Path("/proc/uptime").read_text().split()[0]) - started)
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def _plan_study(spec: Spec, measure: bool, budget: Any) -> Plan:
    from .context import StudyContext, resolve_device
    from .plugins import load_plugins
    from .progress import Progress
    from .sets import build_distilled, distilled_cache_parts
    from .spec import DistilledSpec
    from .study import _probe_cache_key, control_specs, data_key, load_real, make_cache

    load_plugins()
    device = resolve_device(spec.study.device)
    cache = make_cache(spec)
    cache.write = False  # a dry run stores nothing
    entries: list[Entry] = []
    check = getattr(spec.data.plugin, "check", None)  # optional dataset extension: is the data there?
    problems = check(spec.data.options, spec.base_dir) if check is not None else []
    if problems:
        from .errors import DDProbeError

        raise DDProbeError("\n".join(problems))
    try:
        real = load_real(spec)
    except Exception as exc:
        note = f"real data unavailable ({type(exc).__name__}: {exc}); cache status unknown"
        for d in spec.distilled.values():
            entries.append(Entry("distilled", d.name, d.distiller or "import", "unknown", note=note))
        for p in spec.probes:
            entries.append(Entry("probe", p.id, p.kind, "unknown", note=note))
        return Plan(spec.study.name, device, str(cache.root), entries, {}, 0.0, [e.name for e in entries],
                    threads=budget.to_dict())
    dkey = data_key(spec, real)
    pctx = PlanContext(spec.study.seed, real, spec.models, spec.train, spec.pretrain, cache, dkey, device)
    quiet = Progress(enabled=False)
    sets: dict[str, Any] = {}
    complete = True  # every set known (cached, imported or cheap), so probe-result keys can be computed

    def add_set(dspec: DistilledSpec) -> None:
        nonlocal complete
        if dspec.path is not None:
            try:
                sets[dspec.name], _ = build_distilled(spec, dspec, real, cache, device, dkey, quiet)
                entries.append(Entry("distilled", dspec.name, "import", "import", note=str(dspec.path)))
            except Exception as exc:
                complete = False
                entries.append(Entry("distilled", dspec.name, "import", "error", note=f"{type(exc).__name__}: {exc}"))
            return
        parts = distilled_cache_parts(spec, dspec, dkey)
        cached = cache.has("distilled", cache.key("distilled", parts))
        if cached or dspec.distiller == "random":  # the control distiller is instant: make it to know its hash
            sets[dspec.name], _ = build_distilled(spec, dspec, real, cache, device, dkey, quiet)
            entries.append(Entry("distilled", dspec.name, dspec.distiller, "cached" if cached else "to compute",
                                 seconds=None if cached else 0.0, note="" if cached else "instant"))
            return
        complete = False
        items = _plugin_items(dspec.plugin, pctx, dspec.ipc, dspec.options)
        entries.append(Entry("distilled", dspec.name, dspec.distiller, "to compute", items or [],
                             note="" if items is not None else "its distiller has no plan(): cost unknown",
                             planned=items is not None))

    for dspec in spec.distilled.values():
        add_set(dspec)
    if spec.study.control:
        for cspec in control_specs(spec, sets):
            add_set(cspec)
    pctx.sets = {e.name: {"status": e.status} for e in entries}
    for name, dspec in spec.distilled.items():
        if name in pctx.sets and dspec.ipc:
            pctx.sets[name]["ipc"] = dspec.ipc
    for name, ds in sets.items():
        pctx.sets[name].update(ipc=ds.manifest.ipc, images=len(ds), sha256=ds.manifest.sha256)

    ctx = None
    if complete:
        ctx = StudyContext(spec.study.seed, real, spec.models, spec.train, cache, device, quiet, dkey,
                           spec.study.workers, distilled=sets, pretrain_recipe=spec.pretrain,
                           controls={n for n in sets if n.startswith("random_ipc")})
    for probe in spec.probes:
        if ctx is not None:
            key = _probe_cache_key(ctx, spec, probe)
            if cache.has("probe-results", key):
                entries.append(Entry("probe", probe.id, probe.kind, "cached"))
                continue
        items = _plugin_items(probe.plugin, pctx, probe.options)
        note = "" if items is not None else "its probe has no plan(): cost unknown"
        if ctx is None:
            note = (note + "; " if note else "") + "runs after the sets above are made"
        entries.append(Entry("probe", probe.id, probe.kind, "to compute", items or [], note=note,
                             planned=items is not None))

    startup = process_seconds()
    to_time = [i for e in entries if e.status == "to compute" for i in e.items
               if i.model is not None and i.seconds is None and not i.cached and i.kind in ("train", "forward", "hvp")]
    throughput = Throughput(spec.models, real.input_shape, real.num_classes, device, measure)
    throughput.measure_all((i.model, i.batch) for i in to_time)
    # Worker tasks (local processes, Ray) train with one thread, and on small batches one thread is often faster
    # than several (no thread waits for another): bags (and the distilled sets) are also timed that way.
    in_tasks = {id(i) for e in entries if e.status == "to compute" for i in e.items
                if i.count > 1 or e.section == "distilled"}
    one_thread = throughput
    if budget.main > 1 and device == "cpu" and measure:
        from . import threads as threads_mod

        one_thread = Throughput(spec.models, real.input_shape, real.num_classes, device, measure)
        threads_mod.set_torch_threads(1)
        try:
            one_thread.measure_all((i.model, i.batch) for i in to_time if id(i) in in_tasks)
        finally:
            threads_mod.set_torch_threads(budget.main)
    total, low, high, unknown = 0.0, 0.0, 0.0, []
    seen: set[str] = set()
    for entry in entries:
        if entry.status != "to compute" or entry.seconds is not None:
            continue
        for item in entry.items:
            if item.key is not None and not item.cached:
                item.shared = item.key in seen
                seen.add(item.key)
        ranges = [(0.0, 0.0, 0.0) if i.shared else throughput.estimate_range(i) for i in entry.items if not i.cached]
        for item in entry.items:
            if not item.cached:
                # before ``seconds`` is filled in: an item's own ``seconds`` is a plugin's figure, used as given
                worker = one_thread.estimate(item) if id(item) in in_tasks and not item.shared else None
                item.seconds = 0.0 if item.shared else throughput.estimate(item)
                item.worker_seconds = worker if worker is not None else item.seconds
        if entry.planned and all(r is not None for r in ranges):
            entry.low = float(sum(r[0] for r in ranges))  # type: ignore[index]
            entry.seconds = float(sum(r[1] for r in ranges))  # type: ignore[index]
            entry.high = float(sum(r[2] for r in ranges)) * OVERHEAD  # type: ignore[index]
            total, low, high = total + entry.seconds, low + entry.low, high + entry.high
        else:
            unknown.append(entry.name)
    return Plan(spec.study.name, device, str(cache.root), entries, throughput.measured, total, unknown, low, high,
                budget.to_dict(), startup)


def human_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    if seconds < 1:
        return "<1 s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def human_range(seconds: float | None, low: float | None, high: float | None) -> str:
    """``"33 s (25 s - 50 s)"``: an estimate with its range, or just the estimate when the range is empty."""
    text = human_seconds(seconds)
    if seconds is None or low is None or high is None or high <= 0 or human_seconds(low) == human_seconds(high):
        return text
    return f"{text} ({human_seconds(low)} - {human_seconds(high)})"


def describe(item: PlanItem) -> str:
    if item.kind == "train":
        text = f"{item.what}: {item.steps} steps x batch {item.batch}"
    elif item.kind == "hvp":
        text = f"{item.what}: {item.steps} HVPs on {item.batch} examples"
    else:
        text = item.what
    if item.count != 1:
        text += f" (x{item.count})"
    return text + (" [cached]" if item.cached else " [shared: made above]" if item.shared else "")


__all__ = ["PlanItem", "PlanContext", "Plan", "Entry", "plan_study", "human_seconds", "human_range", "describe"]
