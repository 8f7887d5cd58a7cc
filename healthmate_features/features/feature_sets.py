"""Feature sets: Feast feature services defined at run time (over the HTTP API), kept in a file.

`feast apply` makes the registry match the repository and drops what the repository does not
define, so a feature service created at run time must live in the repository too. Such
definitions are kept in `feature_repo/feature_sets.json`::

    {"feature_sets": [
        {"name": "sleep_risk_v1", "features": ["health_rolling", "profile:age_years"],
         "description": "Sleep-related risk: rolling vitals and age."}
    ]}

A feature is `view:feature`, or a view name for every feature of the view. The declarative
module `feature_repo/feature_sets.py` turns each entry into a module-level FeatureService of the
same name (`services_from_file`); a missing or empty file defines none. `create` validates a
definition against the Feast registry, writes the file atomically and runs `feast apply`,
restoring the previous file if apply fails.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from healthmate_features.config import Settings
from healthmate_features.errors import FeatureSetError, FeatureSetExistsError
from healthmate_features.stores import feature_store as store
from healthmate_features.util.files import atomic_write_text

SPEC_FILE = Path("feature_repo") / "feature_sets.json"
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,62}_v[0-9]{1,6}$"
_NAME = re.compile(NAME_PATTERN)
_PART = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_DESCRIPTION = 500


@dataclass(frozen=True)
class FeatureSet:
    """One feature-set definition: a versioned name, feature references and a description."""

    name: str
    features: tuple[str, ...]
    description: str = ""
    tags: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON entry (what feature_sets.json holds)."""
        out: dict[str, Any] = {"name": self.name, "features": list(self.features), "description": self.description}
        if self.tags:
            out["tags"] = dict(self.tags)
        return out


def spec_path(settings: Settings) -> Path:
    """Where the repository keeps run-time feature sets: feature_repo/feature_sets.json."""
    return settings.repo_path / SPEC_FILE


def check_name(name: object) -> str:
    """Return `name` if it is a versioned feature-set name like `sleep_risk_v1`, else raise."""
    if not isinstance(name, str) or not _NAME.match(name):
        raise FeatureSetError(
            f"feature set name {name!r} is not a versioned name: use lowercase letters, digits and "
            "'_', starting with a letter and ending in _v<number>, e.g. sleep_risk_v1"
        )
    return name


def parse_ref(ref: object) -> tuple[str, str | None]:
    """Split a feature reference into (view, feature); a bare view name gives (view, None)."""
    if not isinstance(ref, str):
        raise FeatureSetError(f"feature reference {ref!r} is not a string; use 'view:feature' or 'view'")
    view, sep, feature = ref.partition(":")
    if not _PART.match(view) or (sep and not _PART.match(feature)):
        raise FeatureSetError(f"feature reference {ref!r} is not 'view:feature' or 'view' (letters, digits and '_')")
    return view, (feature if sep else None)


def resolve(features: Iterable[object], views: Mapping[str, list[str]]) -> dict[str, list[str] | None]:
    """Check references against `views` (view name -> its feature names); group them by view.

    Returns {view: [features] or None for the whole view}, in first-mention order. Raises
    FeatureSetError naming an unknown view or feature, an empty list, or two features of
    different views with the same name (they would collide in online responses)."""
    grouped: dict[str, list[str] | None] = {}
    for ref in features:
        view, feature = parse_ref(ref)
        if view not in views:
            raise FeatureSetError(
                f"unknown feature view {view!r} in {ref!r} (registered views: {', '.join(sorted(views))}); "
                "run `feast apply` if it is new"
            )
        if feature is not None and feature not in views[view]:
            raise FeatureSetError(
                f"feature view {view!r} has no feature {feature!r} (its features: {', '.join(views[view])})"
            )
        if feature is None:
            grouped[view] = None  # the whole view
            continue
        picked = grouped.setdefault(view, [])
        if picked is not None and feature not in picked:
            picked.append(feature)
    if not grouped:
        raise FeatureSetError("a feature set needs at least one feature reference, e.g. 'health_rolling:steps_mean_7d'")
    seen: dict[str, str] = {}
    for view, chosen in grouped.items():
        for feature in views[view] if chosen is None else chosen:
            if feature in seen:
                raise FeatureSetError(
                    f"feature {feature!r} is in both {seen[feature]!r} and {view!r}; a feature set "
                    "returns features by name, so pick it from one view only"
                )
            seen[feature] = view
    return grouped


def expand(grouped: Mapping[str, list[str] | None], views: Mapping[str, list[str]]) -> list[str]:
    """Every `view:feature` a grouping (from `resolve`) stands for."""
    return [f"{view}:{f}" for view, chosen in grouped.items() for f in (views[view] if chosen is None else chosen)]


def _normalized(grouped: Mapping[str, list[str] | None]) -> tuple[str, ...]:
    """References as stored: a bare view name for a whole view, else `view:feature` each."""
    return tuple(
        ref
        for view, chosen in grouped.items()
        for ref in ([view] if chosen is None else [f"{view}:{f}" for f in chosen])
    )


def _shown(path: Path) -> str:
    """A feature-sets file in messages: `feature_repo/feature_sets.json`, never the server's absolute path."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


def read_file(path: Path) -> list[FeatureSet]:
    """The feature sets of a feature_sets.json; a missing or blank file holds none.

    Raises FeatureSetError for invalid JSON, a bad entry, or a name defined twice in the file."""
    shown = _shown(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    if not text.strip():
        return []
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise FeatureSetError(f"{shown} is not valid JSON ({exc}); fix or remove it") from exc
    entries = data.get("feature_sets") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise FeatureSetError(f'{shown} must be an object {{"feature_sets": [...]}}; fix or remove it')
    out: list[FeatureSet] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("features"), list):
            raise FeatureSetError(f"{shown}: entry {i} needs a name and a list of features")
        if entry.get("name") in {s.name for s in out}:
            raise FeatureSetExistsError(
                f"{shown}: feature set {entry['name']!r} is defined twice (entry {i} and an earlier one); "
                "keep one of them"
            )
        out.append(
            FeatureSet(
                name=check_name(entry.get("name")),
                features=tuple(entry["features"]),
                description=str(entry.get("description") or ""),
                tags={str(k): str(v) for k, v in (entry.get("tags") or {}).items()},
            )
        )
    return out


def repo_modules(module_file: str | Path) -> list[ModuleType]:
    """Every other module of the feature repository that `module_file` is in, imported.

    Feast imports each of them on `feast apply` anyway (as `feature_repo.<name>`); importing
    them first lets `services_from_file` see every feature service the code defines."""
    path = Path(module_file)
    return [
        importlib.import_module(f"{path.parent.name}.{other.stem}")
        for other in sorted(path.parent.glob("*.py"))
        if other.stem not in ("__init__", path.stem)
    ]


def services_from_file(path: Path, *, modules: Iterable[object], code: Iterable[object] = ()) -> dict[str, Any]:
    """Build a Feast FeatureService for each entry of `path`, from the views of `modules`.

    What feature_repo/feature_sets.py calls; `modules` are the repository modules whose
    module-level FeatureView and OnDemandFeatureView objects the entries may reference, `code`
    the modules whose module-level FeatureService objects the repository's code defines (Feast
    would keep one of two services of a name and drop the other without a word).
    Raises FeatureSetError naming the file when an entry is invalid, FeatureSetExistsError when
    an entry's name is a service of the code (then `feast apply` fails with that message)."""
    from feast import FeatureService, FeatureView
    from feast.on_demand_feature_view import OnDemandFeatureView

    from healthmate_features.features.definitions import OWNER

    objects = {
        obj.name: obj
        for module in modules
        for obj in vars(module).values()
        if isinstance(obj, (FeatureView, OnDemandFeatureView))
    }
    views = {name: [f.name for f in obj.features] for name, obj in objects.items()}
    defined: dict[str, str] = {
        obj.name: str(getattr(module, "__file__", None) or getattr(module, "__name__", "the repository's code"))
        for module in (*modules, *code)
        for obj in vars(module).values()
        if isinstance(obj, FeatureService)
    }
    services = {}
    for spec in read_file(path):
        if spec.name in defined:
            origin = defined[spec.name]
            where = _shown(Path(origin)) if origin.endswith(".py") else origin
            raise FeatureSetExistsError(
                f"feature service {spec.name!r} is defined twice: in the repository's code ({where}) and in "
                f"{_shown(path)}; remove its entry from {path.name} or rename one of them (e.g. the next version)"
            )
        try:
            grouped = resolve(spec.features, views)
        except FeatureSetError as exc:
            raise FeatureSetError(f"{_shown(path)}: feature set {spec.name!r}: {exc}") from exc
        services[spec.name] = FeatureService(
            name=spec.name,
            features=[objects[v] if chosen is None else objects[v][chosen] for v, chosen in grouped.items()],
            description=spec.description,
            tags={"owner": OWNER, **spec.tags, "defined_in": SPEC_FILE.name},
        )
    return services


def registry_views(fs) -> dict[str, list[str]]:
    """Feature names of every feature view and on-demand view in a FeatureStore's registry."""
    views = {fv.name: [f.name for f in fv.features] for fv in fs.list_feature_views()}
    views.update({v.name: [f.name for f in v.features] for v in fs.list_on_demand_feature_views()})
    return views


def create(
    settings: Settings,
    name: str,
    features: list[str],
    *,
    description: str = "",
    overwrite: bool = False,
) -> tuple[FeatureSet, list[str], bool]:
    """Define a feature set, persist it in feature_sets.json and run `feast apply`.

    Returns (the definition, every `view:feature` it holds, whether it replaced one).
    Side effects: rewrites feature_repo/feature_sets.json atomically and applies the repository
    (the previous file is restored if apply fails). Refuses a service the repository's code
    defines, and one defined here before unless `overwrite` (FeatureSetExistsError)."""
    check_name(name)
    if not isinstance(description, str) or len(description) > MAX_DESCRIPTION:
        raise FeatureSetError(f"a feature set description is text of at most {MAX_DESCRIPTION} characters")
    path = spec_path(settings)
    with _locked(settings):
        fs = store.open_feature_store(settings)
        views = registry_views(fs)
        grouped = resolve(features, views)
        specs = read_file(path)
        ours = {s.name for s in specs}
        registered = {s.name for s in fs.list_feature_services()}
        if name in registered - ours:
            raise FeatureSetExistsError(
                f"feature service {name!r} is defined in the repository's code (feature_repo/); "
                "choose another name, e.g. the next version"
            )
        if name in ours and not overwrite:
            raise FeatureSetExistsError(
                f"feature set {name!r} already exists; pass overwrite=true to replace it, or create the next version"
            )
        spec = FeatureSet(name=name, features=_normalized(grouped), description=description)
        previous = path.read_text() if path.exists() else None
        _write_atomic(path, [s for s in specs if s.name != name] + [spec])
        try:
            store.apply(settings)
        except BaseException:
            _restore(path, previous)
            raise
    return spec, expand(grouped, views), name in ours


def _write_atomic(path: Path, specs: list[FeatureSet]) -> None:
    text = json.dumps({"feature_sets": [s.to_dict() for s in sorted(specs, key=lambda s: s.name)]}, indent=2) + "\n"
    atomic_write_text(path, text)


def _restore(path: Path, previous: str | None) -> None:
    if previous is None:
        path.unlink(missing_ok=True)
    else:
        atomic_write_text(path, previous)


@contextlib.contextmanager
def _locked(settings: Settings) -> Iterator[None]:
    """One feature-set change at a time, across threads and processes (a lock file in data/)."""
    import fcntl

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.data_dir / "feature_sets.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
