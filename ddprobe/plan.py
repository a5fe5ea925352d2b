"""A dry run of a study: what it would compute, what is already cached, and how long the rest should take.

Distilled sets, probe results and trained models are looked up in the cache under the same keys the study uses
(``ddprobe.study.distilled_cache_parts``, ``_probe_cache_key`` and ``StudyContext.model_cache_parts``). The
work inside a set or a probe is known only when its plugin says so through the optional extension ``plan``:

- distiller: ``plan(ctx, ipc, options) -> list[PlanItem]``
- probe: ``plan(ctx, options) -> list[PlanItem]``

An item with a ``key`` (say, the cache key of the model it trains) is counted once however many sets or probes
list it.

where ``ctx`` is a :class:`PlanContext`. Time estimates come from training steps of each model timed on this
machine: a training step costs what was measured at its batch size (scaled linearly above 256 examples), a
forward pass over N examples a third of a training step on N examples, a Hessian-vector product two training
steps. They are rough (within a factor of two or three); their point is to tell minutes from hours.
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


@dataclass
class Plan:
    study: str
    device: str
    cache_dir: str
    entries: list[Entry]
    throughput: dict[str, dict[str, float]]  # model -> {batch: seconds per training step}
    seconds: float  # estimated time of everything not cached (known parts)
    unknown: list[str]  # entries to compute whose cost is unknown

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def seconds_with(self, workers: int, task_overhead: float = 0.0) -> float:
        """The estimate with ``workers`` tasks at once: each item of ``count`` independent units (trainings,
        checkpoints) as a bag spread over the workers, ``ceil(count / workers)`` units long, plus
        ``task_overhead`` seconds per unit; single units stay serial. An upper bound on the speed-up: the
        driver's own work, stacked (vmap) training of several units in one task, and data shipping are not
        modelled."""
        import math

        total = 0.0
        for entry in self.entries:
            if entry.status != "to compute" or entry.seconds is None:
                continue
            if not entry.items:
                total += entry.seconds
            for item in entry.items:
                if item.cached or item.shared or item.seconds is None:
                    continue
                count = max(1, item.count)
                per_unit = item.seconds / count
                rounds = math.ceil(count / max(1, workers)) if count > 1 else 1
                total += rounds * per_unit + (task_overhead * rounds if count > 1 and workers > 1 else 0.0)
        return total


class Throughput:
    """Seconds per training step of each model, measured here on random inputs (a warm-up step, then 3)."""

    def __init__(self, models: dict[str, Any], input_shape: tuple[int, ...], num_classes: int, device: str,
                 measure: bool = True):
        self.models, self.input_shape, self.num_classes, self.device = models, input_shape, num_classes, device
        self.measure = measure
        self.measured: dict[str, dict[str, float]] = {}

    def step(self, model: str, batch: int) -> float | None:
        if not self.measure or model not in self.models or batch <= 0:
            return None
        b = min(batch, MEASURE_BATCH_MAX)
        table = self.measured.setdefault(model, {})
        if str(b) not in table:
            table[str(b)] = self._time(model, b)
        return table[str(b)] * batch / b

    def _time(self, model: str, batch: int) -> float:
        import torch

        from .rng import seeded_init
        from .timing import timed
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

        one()
        return timed(lambda: [one() for _ in range(3)], self.device) / 3

    def estimate(self, item: PlanItem) -> float | None:
        if item.seconds is not None:
            return item.seconds
        if item.model is None:
            return None
        if item.kind == "train":
            step = self.step(item.model, item.batch)
            return None if step is None else step * item.steps * item.count
        if item.kind == "forward":
            step = self.step(item.model, item.batch)
            return None if step is None else step / 3 * item.steps * item.count
        if item.kind == "hvp":
            step = self.step(item.model, item.batch)
            return None if step is None else 2 * step * item.steps * item.count
        return None


def _plugin_items(plugin: Any, *args: Any) -> list[PlanItem] | None:
    method = getattr(plugin, "plan", None)
    if method is None:
        return None
    return list(method(*args))


def plan_study(spec: Spec, measure: bool = True) -> Plan:
    """What ``ddprobe run`` would do for ``spec``, without training or writing anything (see module doc)."""
    from .context import StudyContext, resolve_device
    from .plugins import load_plugins
    from .progress import Progress
    from .spec import DistilledSpec
    from .study import (
        _probe_cache_key,
        build_distilled,
        control_specs,
        data_key,
        distilled_cache_parts,
        load_real,
        make_cache,
    )

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
        return Plan(spec.study.name, device, str(cache.root), entries, {}, 0.0, [e.name for e in entries])
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

    throughput = Throughput(spec.models, real.input_shape, real.num_classes, device, measure)
    total, unknown = 0.0, []
    seen: set[str] = set()
    for entry in entries:
        if entry.status != "to compute" or entry.seconds is not None:
            continue
        for item in entry.items:
            if item.key is not None and not item.cached:
                item.shared = item.key in seen
                seen.add(item.key)
        known = [0.0 if i.shared else throughput.estimate(i) for i in entry.items if not i.cached]
        for item in entry.items:
            if not item.cached:
                item.seconds = 0.0 if item.shared else throughput.estimate(item)
        if entry.planned and all(s is not None for s in known):
            entry.seconds = float(sum(known))  # type: ignore[arg-type]
            total += entry.seconds
        else:
            unknown.append(entry.name)
    return Plan(spec.study.name, device, str(cache.root), entries, throughput.measured, total, unknown)


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


__all__ = ["PlanItem", "PlanContext", "Plan", "Entry", "plan_study", "human_seconds", "describe"]
