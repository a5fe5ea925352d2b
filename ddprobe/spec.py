"""Study specs: TOML parsed into validated models; every error names the file, the key path and what is valid."""

from __future__ import annotations

import hashlib
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from . import registry
from .context import ModelSpec
from .errors import SpecError, suggest
from .expectations import Expectation
from .names import MAX_LENGTH, NAME_PATTERN, name_problem
from .training import TrainRecipe

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


CONTROL = re.compile(r"random_ipc[1-9]\d*")  # the random-real controls a study adds (study.control_specs)
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


class RaySection(BaseModel):
    """``[study.ray]``: docs/scaling.md."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(None, description="'auto' or 'ray://host:10001' joins a cluster; absent: a local "
                                                  "instance")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per task (also its torch threads)")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per task (1: one training per GPU)")
    max_retries: int = Field(3, ge=0, description="retries of a task whose worker died or that raised")
    retry_exceptions: bool = Field(True, description="also retry tasks that raised an exception")
    local_cpus: int | None = Field(None, ge=1, description="CPUs of a local instance (default: workers if > 1, "
                                                           "else all)")


class StudySection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        problem = name_problem(v)
        if problem is not None:  # the name is a folder: runs/<name>/
            raise ValueError(f"study name {problem}")
        return v

    @field_validator("device")
    @classmethod
    def _known_device(cls, v: str) -> str:
        if not DEVICE.fullmatch(v):
            raise ValueError("valid devices: auto, cpu, cuda, cuda:N (N a GPU index), mps")
        return v

    name: str = Field("study", description="names the output folder runs/<name>/ (letters, digits, _ . -)",
                      json_schema_extra={"pattern": NAME_PATTERN, "maxLength": MAX_LENGTH})
    seed: int = Field(0, description="every random draw derives from this seed and a stream name")
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N | mps")
    plugins: list[str] = Field([], description="plugin .py files to load, relative to the spec file")
    control: bool = Field(True, description="add a random-real control set for each images-per-class")
    cache_dir: str | None = Field(None, description="artifact cache (default $DDPROBE_CACHE_DIR or ~/.cache/ddprobe)")
    workers: int = Field(1, ge=1, description="worker processes (CPU) for independent units of work: retrainings, "
                                              "Hessian checkpoints")
    executor: Literal["serial", "processes", "ray"] = Field(
        "processes", description="where bags of independent work run: serial | processes ([study] workers local "
                                 "processes; serial when workers = 1) | ray (needs ddprobe[ray]; see [study.ray])")
    ray: RaySection = Field(default_factory=lambda: RaySection(), description="Ray options (executor = 'ray')")
    threads: Literal["auto"] | Annotated[int, Field(ge=1)] = Field(
        "auto", description="CPU threads for all processes together; auto = the cores this process may use "
                            "(affinity, cgroup quota, OMP_NUM_THREADS); ddprobe run --threads overrides it")
    compile: Literal["auto", "always", "never"] = Field(
        "auto", description="torch.compile the model for bags of trainings (pools, leave-one-out retrainings): "
                            "auto compiles when the predicted saving beats the compile time; eager when unavailable")


class ReportSection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[str] = Field(["json", "markdown", "html", "junit"], description="reporters to run")


PRETRAIN_DEFAULTS = {"epochs": 20, "batch_size": 256, "steps": None}
SECTIONS = ("study", "data", "train", "pretrain", "models", "distilled", "probe", "report")
DISTILLED_KEYS = ("distiller", "path", "importer", "ipc", "input_space")
INPUT_SPACES = ("study", "pixels", "normalized", "zca")  # ddprobe.spaces; "study" = not declared, checked
PROBE_KEYS = ("kind", "id", "expect")


@dataclass
class DataSpec:
    dataset: str
    plugin: Any
    options: BaseModel

    def key(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "options": self.options.model_dump(mode="json")}


@dataclass
class DistilledSpec:
    name: str
    ipc: int | None
    distiller: str | None = None
    plugin: Any = None
    options: BaseModel | None = None
    path: Path | None = None
    importer: str | None = None
    input_space: Literal["study", "pixels", "normalized", "zca"] = "study"
    learned_lr: float | None = None


@dataclass
class ProbeSpec:
    id: str
    kind: str
    plugin: Any
    options: BaseModel
    expect: list[Expectation] = field(default_factory=list)
    where: str = ""  # its key path in the spec, e.g. probe[2]


@dataclass
class Spec:
    path: Path | None
    sha256: str
    study: StudySection
    data: DataSpec
    train: TrainRecipe
    pretrain: TrainRecipe
    models: dict[str, ModelSpec]
    distilled: dict[str, DistilledSpec]
    probes: list[ProbeSpec]
    report: ReportSection
    raw: dict[str, Any]

    @property
    def base_dir(self) -> Path:
        return self.path.parent if self.path else Path.cwd()


def _loc(prefix: str, loc: tuple) -> str:
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_UNION_TAGS = {"float", "int", "str", "bool", "list", "dict", "none", "function-after", "function-before"}


def _is_union_tag(part: object) -> bool:
    """pydantic adds the union member (``float``, ``literal['learned']``) to an error's location."""
    return isinstance(part, str) and (part in _UNION_TAGS or "[" in part or part.startswith("constrained-"))


def _pydantic_problems(prefix: str, exc: ValidationError, model: type[BaseModel] | None) -> list[str]:
    valid = list(model.model_fields) if model is not None else []
    merged: dict[str, list[str]] = {}
    inputs: dict[str, str] = {}
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not _is_union_tag(p))
        where = _loc(prefix, loc)
        if err["type"] == "extra_forbidden":
            key = str(err["loc"][-1])
            text = f"unknown key {key!r}; {suggest(key, valid)}"
        elif err["type"] == "missing":
            text = "required key is missing"
        else:
            got = err.get("input")
            if not isinstance(got, dict) and got is not None:
                shown = repr(got)
                inputs[where] = f" (got {shown[:80]}{'...' if len(shown) > 80 else ''})"
            text = err["msg"].removeprefix("Value error, ")
        merged.setdefault(where, []).append(text)
    return [f"{where}: " + " or ".join(dict.fromkeys(texts)) + inputs.get(where, "")
            for where, texts in merged.items()]


def _validate(model: type[BaseModel], data: Any, prefix: str, problems: list[str]) -> BaseModel | None:
    if not isinstance(data, dict):
        problems.append(f"{prefix}: must be a table, got {type(data).__name__}")
        return None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(_pydantic_problems(prefix, exc, model))
        return None


def _lookup(kind: str, name: Any, where: str, problems: list[str]) -> Any:
    from .errors import PluginError

    try:
        names = registry.get_all(kind)
    except PluginError as exc:  # two installed plugins registered the same name: say so, do not crash
        problems.append(f"{where}: {exc}")
        return None
    if not isinstance(name, str):
        problems.append(f"{where}: must be a string naming a {kind} (got {type(name).__name__}); "
                        f"{suggest('', names)}")
        return None
    if name not in names:
        problems.append(f"{where}: unknown {kind} {name!r}; {suggest(name, names)}")
        return None
    return names[name]


MAX_DEPTH = 24  # tables and arrays nested deeper than this are refused (no spec needs more than a few levels)
MAX_BYTES = 4 * 1024 * 1024


def read_toml(path: str | Path) -> tuple[dict[str, Any], bytes]:
    """Read a TOML spec; anything but a readable UTF-8 TOML file is a :class:`SpecError` naming it."""
    path = Path(path)
    file = str(path)
    try:
        if not path.exists():
            raise SpecError(f"spec file {path} does not exist")
        if path.is_dir():
            raise SpecError("is a directory; give the spec's .toml file", file=file)
        if not path.is_file():
            raise SpecError("is not a regular file (a FIFO, device or socket); give the spec's .toml file", file=file)
        if path.stat().st_size > MAX_BYTES:
            raise SpecError(f"is larger than {MAX_BYTES // 2**20} MiB; a study spec is a small TOML file", file=file)
        raw_bytes = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot be read: {exc.strerror or exc}", file=file) from None
    try:
        text = raw_bytes.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"is not UTF-8 text (byte {raw_bytes[exc.start]:#04x} at offset {exc.start}); TOML files "
                        f"must be UTF-8: save it with that encoding", file=file) from None
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"not valid TOML: {exc}", file=file) from None
    except RecursionError:
        raise SpecError(f"not valid TOML: arrays or tables nested too deeply (at most {MAX_DEPTH} levels)",
                        file=file) from None
    return raw, raw_bytes


def _too_deep(value: Any, where: str = "", depth: int = 0) -> str | None:
    """The key path where ``value`` nests deeper than :data:`MAX_DEPTH`, or ``None`` (iterative: no recursion)."""
    stack = [(value, where, depth)]
    while stack:
        item, loc, d = stack.pop()
        if d > MAX_DEPTH:
            return loc or "(top level)"
        if isinstance(item, dict):
            stack.extend((v, f"{loc}.{k}" if loc else str(k), d + 1) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend((v, f"{loc}[{i}]", d + 1) for i, v in enumerate(item))
    return None


def load_spec(source: str | Path | dict[str, Any], overrides: list[str] | None = None) -> Spec:
    """Read and validate a study spec; raises :class:`SpecError` listing every problem found.

    ``source`` is a path to a TOML file, TOML text (a string with a newline or starting with ``[``), or an
    already parsed dict; without a file, relative paths in the spec are relative to the working directory.
    ``overrides`` are ``key.path=value`` assignments applied before validation (``ddprobe run --set``).
    """
    path: Path | None = None
    if isinstance(source, dict):
        raw, raw_bytes = source, None
    elif isinstance(source, str) and ("\n" in source or source.lstrip().startswith("[")):
        try:
            raw, raw_bytes = tomllib.loads(source), source.encode()
        except tomllib.TOMLDecodeError as exc:
            raise SpecError(f"not valid TOML: {exc}", file="<spec text>") from None
    else:
        path = Path(source)
        raw, raw_bytes = read_toml(path)
    if overrides:
        from .overrides import apply_overrides

        raw = apply_overrides(raw, overrides)
        raw_bytes = (raw_bytes or repr(source).encode()) + ("\n# --set " + "\n# --set ".join(overrides)).encode()
    return parse_spec(raw, path, raw_bytes)


def parse_spec(raw: dict[str, Any], path: Path | None = None, raw_bytes: bytes | None = None) -> Spec:
    """Validate a parsed spec; raises :class:`SpecError` listing every problem found (never another exception
    for any TOML-shaped input: tests/test_spec_fuzz.py holds it to that)."""
    file = str(path) if path else None
    if not isinstance(raw, dict):
        raise SpecError(f"a spec is a table of sections, got {type(raw).__name__}", file=file)
    deep = _too_deep(raw)
    if deep is not None:
        raise SpecError(f"{deep}: nested more than {MAX_DEPTH} levels deep; no spec key needs that", file=file)
    problems: list[str] = []
    base = path.parent if path else Path.cwd()
    sha = hashlib.sha256(raw_bytes if raw_bytes is not None else repr(raw).encode()).hexdigest()

    for key in raw:
        if key not in SECTIONS:
            problems.append(f"{key}: unknown section; {suggest(key, SECTIONS)}")

    study = _validate(StudySection, raw.get("study", {}), "study", problems) or StudySection()
    _load_plugin_files(study.plugins, base, problems)

    # [data]
    data_raw = raw.get("data", {"dataset": "digits"})
    if not isinstance(data_raw, dict):
        problems.append(f"data: must be a table such as [data] dataset = \"digits\" (got {type(data_raw).__name__})")
        data_raw = {"dataset": "digits"}
    data_raw = dict(data_raw)
    ds_name = data_raw.pop("dataset", "digits")
    ds_plugin = _lookup("dataset", ds_name, "data.dataset", problems)
    data = None
    if ds_plugin is not None:
        opts = _validate(ds_plugin.Options, data_raw, "data", problems)
        data = DataSpec(ds_name, ds_plugin, opts) if opts is not None else None

    train = _validate(TrainRecipe, raw.get("train", {}), "train", problems) or TrainRecipe()
    pre_raw = raw.get("pretrain", {})
    pretrain = _validate(TrainRecipe, {**PRETRAIN_DEFAULTS, **pre_raw} if isinstance(pre_raw, dict) else pre_raw,
                         "pretrain", problems) or TrainRecipe(**PRETRAIN_DEFAULTS)

    models = _parse_models(raw.get("models", {"convnet": {"arch": "convnet"}}), base, problems)
    distilled = _parse_distilled(raw.get("distilled", {}), base, models, problems)
    probes = _parse_probes(raw.get("probe", []), models, distilled, study.control, problems)

    report = _validate(ReportSection, raw.get("report", {}), "report", problems) or ReportSection()
    for i, fmt in enumerate(report.formats):
        _lookup("reporter", fmt, f"report.formats[{i}]", problems)

    from .spec_checks import check_expectation_metrics

    check_expectation_metrics(probes, distilled, models, study.control, problems)
    if problems or data is None:
        raise SpecError(list(dict.fromkeys(problems)) or ["data: invalid"], file=file)
    return Spec(path, sha, study, data, train, pretrain, models, distilled, probes, report, raw)


def _load_plugin_files(files: list[str], base: Path, problems: list[str]) -> None:
    """Load ``[study] plugins``; a file that fails to import or registers a taken name is a spec problem."""
    from . import plugins as plugin_core
    from .errors import PluginError

    for i, plugin_file in enumerate(files):
        where = f"study.plugins[{i}]"
        try:
            plugin_core.load_plugin_file(base / plugin_file)
        except FileNotFoundError:
            problems.append(f"{where}: plugin file {base / plugin_file} does not exist")
            continue
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # a broken local plugin (even one calling sys.exit) is a spec problem
            problems.append(f"{where}: plugin file {plugin_file} failed to load: {exc!r}")
            continue
        try:
            registry.check_all()
        except PluginError as exc:  # e.g. it registers a probe named like a built-in: refuse the file, keep going
            plugin_core.unload_plugin_file(base / plugin_file)
            problems.append(f"{where}: plugin file {plugin_file}: {exc}")


def _name_ok(name: Any, where: str, what: str, problems: list[str]) -> bool:
    problem = name_problem(name)
    if problem is not None:
        shown = f" {name!r}" if isinstance(name, str) else ""
        problems.append(f"{where}: {what}{shown} {problem}")
    return problem is None


def _parse_models(models_raw: Any, base: Path, problems: list[str]) -> dict[str, ModelSpec]:
    models: dict[str, ModelSpec] = {}
    if not isinstance(models_raw, dict):
        problems.append("models: must be a table of name = { arch = ..., ... }")
        return models
    for name, table in models_raw.items():
        where = f"models.{name}"
        if not _name_ok(name, where, "model name", problems):
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table such as {{ arch = \"convnet\" }}")
            continue
        table = dict(table)
        if "arch" not in table:
            problems.append(f"{where}.arch: required key is missing; valid: {', '.join(registry.get_all('model'))}")
            continue
        arch = table.pop("arch")
        weights = _weights_path(table.pop("weights", None), base, f"{where}.weights", problems)
        plugin = _lookup("model", arch, f"{where}.arch", problems)
        if plugin is None:
            continue
        opts = _validate(plugin.Options, table, where, problems)
        if opts is not None:
            models[name] = ModelSpec(name, arch, opts, plugin, weights)
    return models


def _parse_distilled(dist_raw: Any, base: Path, models: dict[str, ModelSpec],
                     problems: list[str]) -> dict[str, DistilledSpec]:
    distilled: dict[str, DistilledSpec] = {}
    if not isinstance(dist_raw, dict):
        problems.append("distilled: must be a table of [distilled.NAME] tables")
        return distilled
    for name, table in dist_raw.items():
        where = f"distilled.{name}"
        if not _name_ok(name, where, "set name", problems):
            continue
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table with distiller = \"...\" or path = \"...\"")
            continue
        table = dict(table)
        ipc = table.pop("ipc", None)
        if ipc is not None and (not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1):
            problems.append(f"{where}.ipc: must be a positive integer (got {ipc!r})")
            ipc = None
        input_space = table.pop("input_space", "study")
        if input_space not in INPUT_SPACES:
            problems.append(f"{where}.input_space: must be one of {', '.join(repr(v) for v in INPUT_SPACES)} "
                            f"(got {input_space!r})")
            input_space = "study"
        if "path" in table:
            set_file = table.pop("path")
            importer = table.pop("importer", None)
            if importer is not None:
                _lookup("importer", importer, f"{where}.importer", problems)
            learned_lr = table.pop("learned_lr", None)
            if learned_lr is not None and (isinstance(learned_lr, bool) or not isinstance(learned_lr, (int, float))
                                           or not learned_lr > 0 or learned_lr == float("inf")):
                problems.append(f"{where}.learned_lr: must be a positive number, the set's learned learning rate "
                                f"(got {learned_lr!r})")
                learned_lr = None
            for extra in table:
                problems.append(f"{where}.{extra}: unknown key for an imported set; valid: path, importer, ipc, "
                                f"input_space, learned_lr")
            if not isinstance(set_file, str) or not set_file or "\x00" in set_file:
                problems.append(f"{where}.path: must be a file or folder name (a non-empty string), got {set_file!r}")
                continue
            distilled[name] = DistilledSpec(name, ipc, path=(base / set_file), importer=importer,
                                            input_space=input_space,
                                            learned_lr=None if learned_lr is None else float(learned_lr))
            continue
        if "distiller" not in table:
            problems.append(f"{where}: needs distiller = \"...\" (valid: "
                            f"{', '.join(registry.get_all('distiller'))}) or path = \"file\"")
            continue
        dname = table.pop("distiller")
        plugin = _lookup("distiller", dname, f"{where}.distiller", problems)
        if plugin is None:
            continue
        if ipc is None:
            problems.append(f"{where}.ipc: required key is missing (images per class, e.g. ipc = 10)")
            continue
        valid = [*DISTILLED_KEYS, *plugin.Options.model_fields]
        opts = _validate_plugin_options(plugin.Options, table, where, valid, problems)
        if opts is not None:
            _check_references(opts, where, models, {}, problems)
            distilled[name] = DistilledSpec(name, ipc, dname, plugin, opts)
    return distilled


def _parse_probes(probe_raw: Any, models: dict[str, ModelSpec], distilled: dict[str, DistilledSpec],
                  control: bool, problems: list[str]) -> list[ProbeSpec]:
    from .spec_checks import study_set_names

    study_sets = study_set_names(distilled, control)
    probes: list[ProbeSpec] = []
    if isinstance(probe_raw, dict):
        probe_raw = [probe_raw]
    if not isinstance(probe_raw, list):
        problems.append("probe: write each probe as a [[probe]] table")
        return probes
    seen_ids: set[str] = set()
    for i, table in enumerate(probe_raw):
        where = f"probe[{i}]"
        if not isinstance(table, dict):
            problems.append(f"{where}: must be a table")
            continue
        table = dict(table)
        if "kind" not in table:
            problems.append(f"{where}.kind: required key is missing; valid: {', '.join(registry.get_all('probe'))}")
            continue
        kind = table.pop("kind")
        plugin = _lookup("probe", kind, f"{where}.kind", problems)
        pid = table.pop("id", None)
        if pid is not None:
            if not _name_ok(pid, f"{where}.id", "probe id", problems):
                pid = None
        elif isinstance(kind, str):
            pid = kind if _name_ok(kind, f"{where}.id", "probe id (the kind, as no id is set)", problems) else None
        if isinstance(pid, str) and pid in seen_ids:
            n = 2
            while f"{pid}-{n}" in seen_ids:
                n += 1
            pid = f"{pid}-{n}"
        if isinstance(pid, str):
            seen_ids.add(pid)
        expects = _parse_expect(table.pop("expect", {}), where, problems)
        if plugin is None or not isinstance(pid, str):
            continue
        valid = [*PROBE_KEYS, *plugin.Options.model_fields]
        opts = _validate_plugin_options(plugin.Options, table, where, valid, problems)
        if opts is None:
            continue
        _check_references(opts, where, models, distilled, problems, study_sets)
        _check_finding_expectations(plugin, expects, where, study_sets, problems)
        probes.append(ProbeSpec(pid, kind, plugin, opts, expects, where=where))
    return probes


def _parse_expect(expect_raw: Any, where: str, problems: list[str]) -> list[Expectation]:
    expects: list[Expectation] = []
    if not isinstance(expect_raw, dict):
        problems.append(f"{where}.expect: must be a table such as {{ \"dm/convnet\" = \">= 0.8\" }}")
        return expects
    for metric, text in expect_raw.items():
        try:
            expects.append(Expectation.parse(metric, text))
        except ValueError as exc:
            problems.append(f"{where}.expect.{metric}: {exc}")
    return expects


def _weights_path(value: Any, base_dir: Path, where: str, problems: list[str]) -> Path | None:
    """A [models] entry's ``weights``: a state-dict file (.pt/.pth via weights_only, or .safetensors)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        problems.append(f"{where}: must be the path of a state-dict file (.pt, .pth or .safetensors)")
        return None
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base_dir / path
    if not path.is_file():
        problems.append(f"{where}: no such file {str(path)!r}; give a state-dict file saved with torch.save("
                        f"model.state_dict(), ...) or safetensors, relative to the spec's folder")
        return None
    return path


def _check_finding_expectations(plugin: Any, expects: list[Expectation], where: str, study_sets: list[str],
                                problems: list[str]) -> None:
    """A ``finding:<id>/<set>`` expectation must name a finding the probe declares and a set the study has
    (``study_sets``, from :func:`spec_checks.study_set_names`, whose imported sets' control is a glob)."""
    import fnmatch

    declared = [f.id for f in getattr(plugin, "findings", ())]
    for e in expects:
        if not e.is_finding:
            continue
        if e.finding_id not in declared:
            hint = suggest(e.finding_id, declared) if declared else f"probe kind {plugin.name!r} declares no findings"
            problems.append(f"{where}.expect.{e.metric}: no finding {e.finding_id!r}; {hint}")
        if not any(fnmatch.fnmatchcase(e.finding_set, s) for s in study_sets):
            problems.append(f"{where}.expect.{e.metric}: no set {e.finding_set!r} in this study; "
                            f"{suggest(e.finding_set, study_sets)}")


def _validate_plugin_options(options_model: type[BaseModel], table: dict, where: str, valid: list[str],
                             problems: list[str]) -> BaseModel | None:
    before = len(problems)
    opts = _validate(options_model, table, where, problems)
    # re-word "unknown key" hints so they include the reserved keys too
    for j in range(before, len(problems)):
        if ": unknown key " in problems[j]:
            head, _, _ = problems[j].partition("; ")
            key = head.rsplit("'", 2)[-2]
            problems[j] = f"{head}; {suggest(key, valid)}"
    return opts


def _check_references(opts: BaseModel, where: str, models: dict, distilled: dict, problems: list[str],
                      study_sets: list[str] | None = None) -> None:
    """Probe options named ``models``/``model`` must name [models] entries; ``sets`` must name distilled sets or
    the random-real controls the study adds (``study_sets``, from :func:`spec_checks.study_set_names`)."""
    for field_name in ("models", "model"):
        value = getattr(opts, field_name, None)
        names = value if isinstance(value, list) else ([value] if isinstance(value, str) else [])
        for j, name in enumerate(names):
            if name not in models:
                loc = f"{where}.{field_name}" + (f"[{j}]" if isinstance(value, list) else "")
                problems.append(f"{loc}: no model {name!r} in [models]; {suggest(name, models)}")
    sets = getattr(opts, "sets", None)
    if not isinstance(sets, list):
        return
    import fnmatch

    known = list(distilled) if study_sets is None else study_sets
    for j, name in enumerate(sets):
        if name in distilled:
            continue
        if study_sets is None and CONTROL.fullmatch(str(name)):
            continue
        if CONTROL.fullmatch(str(name)) and any(fnmatch.fnmatchcase(name, s) for s in known):
            continue
        control = " (the study adds a random_ipcK control only for the images per class of its distilled sets)" \
            if CONTROL.fullmatch(str(name)) else ""
        problems.append(f"{where}.sets[{j}]: no distilled set {name!r}{control}; {suggest(name, known)}")


def json_schema() -> dict[str, Any]:
    """A JSON Schema for study specs, with each registered plugin's options (for editor validation)."""

    defs: dict[str, Any] = {}  # pydantic's "#/$defs/..." references resolve against the document root

    def hoist(schema: dict[str, Any]) -> dict[str, Any]:
        defs.update(schema.pop("$defs", {}))
        return schema

    def plugin_variants(kind: str, key: str, reserved: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        for name, plugin in sorted(registry.get_all(kind).items()):
            schema = hoist(plugin.Options.model_json_schema())
            props = {key: {"const": name, "description": plugin.description}, **reserved,
                     **schema.get("properties", {})}
            out.append({"type": "object", "properties": props, "required": [key], "additionalProperties": False})
        return out

    expect = {"type": "object", "additionalProperties": {"type": ["string", "number"]},
              "description": "metric (or glob) -> \">= 0.8\""}
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "ddprobe study spec",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "study": hoist(StudySection.model_json_schema()),
            "data": {"anyOf": plugin_variants("dataset", "dataset", {})},
            "train": hoist(TrainRecipe.model_json_schema()),
            "pretrain": hoist(TrainRecipe.model_json_schema()),
            "models": {"type": "object", "additionalProperties": {"anyOf": plugin_variants("model", "arch", {})}},
            "distilled": {"type": "object", "additionalProperties": {"anyOf": [
                *plugin_variants("distiller", "distiller", {"ipc": {"type": "integer", "minimum": 1},
                                                            "input_space": {"enum": list(INPUT_SPACES)}}),
                {"type": "object", "required": ["path"], "additionalProperties": False, "properties": {
                    "path": {"type": "string"}, "importer": {"type": "string"}, "ipc": {"type": "integer"},
                    "input_space": {"enum": list(INPUT_SPACES)},
                    "learned_lr": {"type": "number", "exclusiveMinimum": 0}}},
            ]}},
            "probe": {"type": "array", "items": {"anyOf": plugin_variants(
                "probe", "kind", {"id": {"type": "string", "pattern": NAME_PATTERN, "maxLength": MAX_LENGTH},
                                  "expect": expect})}},
            "report": hoist(ReportSection.model_json_schema()),
        },
    }
    schema["$defs"] = defs
    return schema
