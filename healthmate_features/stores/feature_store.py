"""Thin helpers around Feast: open the store of a profile, apply, materialize, read online and offline.

Feast owns definitions, the registry, materialization and serving; these functions only pick
the right configuration, fill in sensible defaults (materialization window = the feature
tables' time range) and turn Feast's failures into messages that say what to run.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, ExitStack, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.errors import (
    FeatureRepoError,
    FeatureServiceNotFoundError,
    FeatureViewNotFoundError,
    MaterializationError,
    OnlineReadError,
    UserNotFoundError,
)
from healthmate_features.stores.online import OnlineResult, as_user_ids
from healthmate_features.util.progress import ticking_bar

if TYPE_CHECKING:
    from feast import FeatureService, FeatureStore, FeatureView

    from healthmate_features.stores.online import OnlineReader

log = logging.getLogger(__name__)
ROW_COLUMN = "_hm_store_row"  # entity-frame row number carried through a join to restore the order
_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # the color codes in Feast's console output


def open_feature_store(settings: Settings) -> FeatureStore:
    """The Feast FeatureStore of the settings' profile. Raises FeatureRepoError if unusable.

    Production: the configuration's placeholders are filled from the settings, and Postgres and
    Redis must answer within the connect timeout (else ServiceUnavailableError).
    """
    warnings.filterwarnings("ignore", message=".*experimental feature.*")
    return backend_for(settings).open_feature_store()


def apply(settings: Settings, *, progress: bool = False) -> str:
    """Run `feast apply` for the repository (registers every definition under feature_repo/), then
    create the offline tables of push sources that have none (`ensure_push_tables`).

    Runs the real Feast CLI in a child process: Feast changes the working directory and
    imports feature_repo/ as modules, neither of which should leak into this process. The child
    sees the settings as HM_* variables (`features.definitions.source` picks each table's source
    by HM_PROFILE) and the values of the profile's `${...}` placeholders.
    With `progress`, a line on stderr shows the elapsed time and Feast's latest status line
    while it runs (an apply on the production profile takes 10 s and more).
    Returns Feast's output; raises FeatureRepoError with it when apply fails, and (production)
    ServiceUnavailableError when Postgres or Redis does not answer.
    """
    backend = backend_for(settings)
    feast = Path(sys.executable).parent / "feast"
    command = [str(feast) if feast.exists() else (shutil.which("feast") or "feast")]
    command += ["--chdir", str(settings.repo_path), "--feature-store-yaml", str(backend.feature_store_yaml), "apply"]
    env = {**os.environ, **backend.feast_env(), "PYTHONUNBUFFERED": "1"}  # Feast's status lines as they come
    with ticking_bar(desc="feast apply", enabled=progress, bar_format="{desc} [{elapsed}{postfix}]") as bar:
        with subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, errors="replace"
        ) as child:  # leaving the block closes the pipes and waits for the child
            assert child.stdout is not None and child.stderr is not None  # both are pipes
            bar.set_postfix_str("starting Feast, importing feature_repo/")
            errors: list[str] = []
            drain = threading.Thread(target=errors.extend, args=(child.stderr,), daemon=True)
            drain.start()
            lines = []
            for line in child.stdout:
                lines.append(line)
                status = _ANSI.sub("", line).strip()
                if status[:1].isupper():  # Feast's status lines ("Deploying infrastructure for ..."), not its diffs
                    bar.set_postfix_str(status[:80])
            returncode = child.wait()
            drain.join()
    output, stderr = "".join(lines), "".join(errors)
    forget_online_reader(settings)
    if returncode != 0:
        raise FeatureRepoError(_apply_failure(returncode, stderr or output))
    store = open_feature_store(settings)
    with backend.service_errors():
        ensure_push_tables(store)  # so that Feast's own store.push works from the start
    return output


_OUR_ERROR = re.compile(r"^healthmate_features\.errors\.(\w+): (.+)$")
_ERROR_KIND = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit))\b")


def _apply_failure(returncode: int, output: str) -> str:
    """The message of a failed `feast apply`: Feast's output goes to the log only, as it can quote
    feature_store.yaml and absolute paths; an error of this package raised while Feast imported
    feature_repo/ (written to our rules: no paths, no file contents) is passed on as it is."""
    lines = _ANSI.sub("", output).strip().splitlines()
    log.warning("`feast apply` failed with exit code %s:\n%s", returncode, "\n".join(lines[-40:]))
    for line in reversed(lines):
        ours = _OUR_ERROR.match(line.strip())
        if ours:
            return f"`feast apply` failed: {ours.group(2)}"
    kinds = [m.group(1).rsplit(".", 1)[-1] for line in lines if (m := _ERROR_KIND.match(line.strip()))]
    kind = f" ({kinds[-1]})" if kinds else ""
    return (
        f"`feast apply` failed with exit code {returncode}{kind}; the server log has Feast's output, "
        "or run `feast apply` in the repository root to see it"
    )


def _require_registry(store) -> None:
    if not store.list_feature_views():
        raise FeatureRepoError("the Feast registry has no feature views; run `feast apply` from the repository root")


@dataclass(frozen=True)
class ViewMaterialization:
    """What `materialize` did for one feature view: the window it loaded, or that it was current.

    `start` is None when nothing ran: Feast's record says the view is materialized up to
    `materialized_until`, at or past the requested `end`. `materialized_until` is that record
    (the view's `most_recent_end_time`) before this run; None for a view never materialized.
    """

    view: str
    start: datetime | None
    end: datetime
    materialized_until: datetime | None

    @property
    def ran(self) -> bool:
        """True when a window was loaded for this view."""
        return self.start is not None

    def describe(self) -> str:
        """One line for people: the window loaded, or why none was."""
        if self.start is None:
            return (
                f"{self.view}: already materialized up to {self.materialized_until} "
                f"(at or past the requested end {self.end}); nothing to do"
            )
        return f"{self.view}: materialized {self.start} .. {self.end}"


@dataclass(frozen=True)
class Materialization:
    """The outcome of `materialize`: the requested window and one entry per feature view, in order.

    `start` is the window's start; with `incremental` it applies only to views never
    materialized (the others continue from Feast's record of where they ended).
    """

    start: datetime
    end: datetime
    incremental: bool
    views: tuple[ViewMaterialization, ...]

    def summary(self) -> str:
        """One line for people: how many views were loaded, up to when, and how many were current."""
        ran, total = sum(v.ran for v in self.views), len(self.views)
        how = "incrementally " if self.incremental else ""
        if ran == 0:
            return (
                f"nothing to materialize: all {total} view(s) are materialized up to {self.end} or later "
                "(a run that is not incremental loads the window again)"
            )
        current = f"; {total - ran} already current" if ran < total else ""
        return f"materialized {ran} of {total} view(s) {how}up to {self.end}{current}"


def _utc(moment: datetime) -> datetime:
    """An aware UTC datetime; a naive one is taken to be UTC (Feast's rule)."""
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def _materializable_views(store: FeatureStore, views: list[str] | None) -> list[FeatureView]:
    """The registry's stored feature views to load (all online ones, or `views` in order); unknown names are errors."""
    stored = {fv.name: fv for fv in store.list_feature_views() if fv.online}
    if views is None:
        return list(stored.values())
    unknown = [name for name in views if name not in stored]
    if unknown:
        raise FeatureViewNotFoundError(
            f"feature view(s) {', '.join(repr(n) for n in unknown)} cannot be materialized: not a stored "
            f"feature view in the Feast registry (stored views: {', '.join(stored) or 'none'}); "
            "check the name, or run `feast apply` if the view is new"
        )
    return [stored[name] for name in dict.fromkeys(views)]


def materialize(
    settings: Settings,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    incremental: bool = False,
    views: list[str] | None = None,
    progress: bool = False,
    written: Callable[[str, int], None] | None = None,
) -> Materialization:
    """Load the latest feature values of a window into the online store, view by view; say what ran.

    Default window: the feature tables' whole time range (the generated data lies in the past,
    so Feast's default "now minus TTL" would find nothing; a view fed by a push source is loaded
    over the same window, its pushes having written it online already); naive datetimes are UTC. With
    `incremental`, each view continues from Feast's own record of what was materialized (its
    `materialization_intervals`, whose latest end is `most_recent_end_time`), whoever wrote it:
    this function, `feast materialize` or `feast materialize-incremental`. A view materialized up
    to `end` or beyond is reported as current and not run; a view never materialized starts at
    `start`. No window whose end precedes its start is ever run. No two materializations of one
    view overlap, in any process: each view's lock `materialize:<view>` (Backend.lock) is held, in
    name order, for the whole run, and the plan is made from the registry read under the locks.
    The views that share a window go to Feast in one call (our engine, `stores.online_engine`,
    runs them two at a time: one view's pull overlaps another's write).

    On Redis, each view loaded gets its materialization marker (`stores.online_marks`), and
    `incremental` loads a view whose marker Redis lost from `start` again, whatever the registry
    says. Feast's Redis client does not retry here: a Redis that stops answering fails the run
    after HM_REDIS_TIMEOUT_S plus one lock command timeout (HM_CONNECT_TIMEOUT_S) with
    ServiceUnavailableError naming Redis and the limit.

    Side effects: the online store, and each view's materialization interval in the registry
    (Feast records it). Feast's own console output is swallowed; with `progress`, a bar on stderr
    counts the views and shows the ones loading. Raises MaterializationError for a window that
    ends before it starts, FeatureViewNotFoundError for an unknown view. `written(view, rows)` is
    called after each batch of rows Feast writes to the online store (e.g.
    monitoring.metrics.record_materialized_rows).
    """
    from healthmate_features import _feast
    from healthmate_features.stores import online_marks
    from healthmate_features.stores.online import OnlineReader

    backend = backend_for(settings)
    store = open_feature_store(settings)
    _feast.online_store_without_retries(store)
    marked = OnlineReader.serves(store.config)  # the Redis online store: markers say what it holds
    if written is not None:
        counting: AbstractContextManager[None] = _feast.online_writes_counted(store, written)
    else:
        counting = nullcontext()
    with backend.service_errors(), counting:
        _require_registry(store)
        ensure_push_tables(store)  # a repository applied with Feast's own CLI has no push table yet
        selected = _materializable_views(store, views)
        if start is None or end is None:  # the built tables' range; a push-fed view's table has no build
            built = [view.name for view in selected if not _pushed_by(view, None)]
            lo, hi = backend.feature_time_range(built or [view.name for view in selected])
            start = start or lo - timedelta(seconds=1)
            end = end or hi + timedelta(seconds=1)
        start, end = _utc(start), _utc(end)
        with ExitStack() as locks:
            for name in sorted(view.name for view in selected):
                locks.enter_context(backend.lock(f"materialize:{name}"))
            store.refresh_registry()  # where the previous run (maybe another process's) ended
            selected = _materializable_views(store, [view.name for view in selected])
            lost = set()
            if incremental and marked:
                lost = set(
                    online_marks.lost_views(settings, online_marks.recorded_markers(settings, store.project, selected))
                )
            plan: list[ViewMaterialization] = []
            for view in selected:
                recorded = view.most_recent_end_time
                until = _utc(recorded) if recorded is not None else None
                if incremental and until is not None and view.name not in lost:
                    plan.append(ViewMaterialization(view.name, until if until < end else None, end, until))
                else:
                    plan.append(ViewMaterialization(view.name, start, end, until))
            backwards = [v.view for v in plan if v.start is not None and v.start >= end]
            if backwards:
                raise MaterializationError(
                    f"materialization window is empty or backwards: start {start} is not before end {end} "
                    f"for {len(backwards)} view(s) ({', '.join(backwards)}); pass an end after the start "
                    "(--start and --end are UTC; the default window is the feature tables' whole time range)"
                )
            with (
                ticking_bar(desc="materialize", enabled=progress, total=len(plan), unit="view") as bar,
                contextlib.redirect_stdout(io.StringIO()),  # Feast prints colored lines per view
            ):
                windows: dict[tuple[datetime, datetime], list[str]] = {}  # one Feast call per window
                for entry in plan:
                    if entry.start is not None:
                        windows.setdefault((entry.start, entry.end), []).append(entry.view)
                bar.update(sum(1 for entry in plan if entry.start is None))
                for (window_start, window_end), names in windows.items():
                    bar.set_postfix_str(", ".join(names))
                    _materialize_window(settings, store, names, window_start, window_end, marked=marked)
                    bar.update(len(names))
    return Materialization(start, end, incremental, tuple(plan))


def _materialize_window(
    settings: Settings, store: FeatureStore, names: list[str], start: datetime, end: datetime, *, marked: bool
) -> None:
    """One Feast materialization of `names` over [start, end] (our engine runs its views two at a
    time), then the views' markers (Redis). When it fails, the views Feast recorded as done still
    get theirs (the registry, re-read), and the error is raised."""
    from healthmate_features.stores import online_marks

    try:
        store.materialize(start_date=start, end_date=end, feature_views=names)
    except BaseException:
        if marked:
            store.refresh_registry()
            ends = {view.name: view.most_recent_end_time for view in store.list_feature_views()}
            done = [name for name in names if (until := ends.get(name)) is not None and _utc(until) >= end]
            if done:
                online_marks.write_markers(settings, store.project, dict.fromkeys(done, end))
        raise
    if marked:
        online_marks.write_markers(settings, store.project, dict.fromkeys(names, end))


def online_data_lost(settings: Settings, store: FeatureStore) -> set[str] | None:
    """The feature views whose online data Redis lost: materialized per the registry, marker gone.

    None unless the online store is Redis (only it has markers, `stores.online_marks`). Reads
    the registry and one MGET; ServiceUnavailableError when Redis does not answer."""
    from healthmate_features.stores import online_marks
    from healthmate_features.stores.online import OnlineReader

    if not OnlineReader.serves(store.config):
        return None
    return set(online_marks.lost_views(settings, recorded_online_markers(settings, store)))


def recorded_online_markers(settings: Settings, store: FeatureStore) -> list:
    """The materialization markers Redis should hold for the registry's online views (none unless on Redis)."""
    from healthmate_features.stores import online_marks
    from healthmate_features.stores.online import OnlineReader

    if not OnlineReader.serves(store.config):
        return []
    views = [view for view in store.list_feature_views() if view.online]
    return online_marks.recorded_markers(settings, store.project, views)


def feature_refs(store: FeatureStore, feature_service: str | None) -> list[str] | FeatureService:
    """The features to read: a feature service's, or every feature of every view."""
    if feature_service:
        try:
            return store.get_feature_service(feature_service)
        except Exception as exc:
            names = ", ".join(s.name for s in store.list_feature_services())
            raise FeatureServiceNotFoundError(
                f"feature service '{feature_service}' not found (have: {names}); run `feast apply` if it is new"
            ) from exc
    refs = [f"{fv.name}:{f.name}" for fv in store.list_feature_views() for f in fv.features]
    refs += [f"{v.name}:{f.name}" for v in store.list_on_demand_feature_views() for f in v.features]
    return refs


_NO_READER = object()  # cached for settings whose online store the fast reader does not serve
_readers: dict[Settings, object] = {}
_readers_lock = threading.Lock()
_creating_lock = threading.Lock()  # held while a reader is made (opening it reads the registry)


def online_reader(settings: Settings) -> OnlineReader | None:
    """The process's OnlineReader for the settings (created on first use), or None unless on Redis or SQLite.

    Opening it checks the servers like open_feature_store; afterwards it follows Feast's registry
    cache (cache_ttl_seconds), and `apply` in this process makes it reload the registry. Its
    FeatureStore is the long-lived one `online_lookup` uses for whatever the reader does not serve.
    """
    from healthmate_features.stores.online import OnlineReader

    with _readers_lock:
        reader = _readers.get(settings)
    if reader is None:
        with _creating_lock:  # one reader per settings, ever: a discarded twin would close a SQLite connection
            with _readers_lock:
                reader = _readers.get(settings)
            if reader is None:
                store = open_feature_store(settings)
                reader = OnlineReader(settings, store=store) if OnlineReader.serves(store.config) else _NO_READER
                with _readers_lock:
                    _readers[settings] = reader
    return reader if isinstance(reader, OnlineReader) else None


def forget_online_reader(settings: Settings) -> None:
    """Make the next lookup of the settings re-read the registry (after an apply); close what the reader holds.

    A Redis reader is dropped and its connection pool closed. A SQLite reader is kept and only
    told to reload the registry before its next lookup: its FeatureStore holds Feast's connection
    to the online store file for the process's lifetime (closing a connection to a SQLite file
    drops every lock the process holds on it, those of a materialization in another thread too).
    """
    from healthmate_features.stores.online import OnlineReader

    with _readers_lock:
        reader = _readers.get(settings)
        if isinstance(reader, OnlineReader) and reader.keeps_store:
            reader.invalidate()
            return
        _readers.pop(settings, None)
    if isinstance(reader, OnlineReader):
        reader.close()


def online_lookup(
    settings: Settings,
    user_ids: Sequence[int],
    *,
    feature_service: str | None = None,
    at: datetime | Sequence[datetime] | None = None,
) -> OnlineResult:
    """Online features of users, and per user whether the online store knows them (`found`).

    `features` is shaped like Feast's `get_online_features(...).to_dict()` (full `view__feature`
    names without a service). A user is found when the online store holds a row of any feature
    view for them; an unknown user's stored features are None like missing values, so read
    `found`. `at` is the request time fed to the on-demand temporal features: one for all users
    or one per user (default: now, UTC).
    On Redis and SQLite: read by healthmate_features.stores.online.OnlineReader, which returns
    what Feast returns; for what that reader does not serve, through Feast on the reader's
    long-lived FeatureStore (other online stores: a FeatureStore per call), whose per-value
    statuses say which users have a row (a second, small read decides users without one in the
    views asked for).
    """
    return online_finish(online_fetch(settings, user_ids, feature_service=feature_service, at=at))


def _feast_lookup(
    settings: Settings, ids: list[int], feature_service: str | None, times: list[datetime]
) -> OnlineResult:
    """`online_lookup` through Feast's get_online_features, for what the fast reader does not serve."""
    backend = backend_for(settings)
    reader = online_reader(settings)
    store = reader.store if reader is not None else open_feature_store(settings)
    with backend.service_errors():
        _require_registry(store)
        features = feature_refs(store, feature_service)
        full_feature_names = feature_service is None
        rows = [{"user_id": u, "event_timestamp": pd.Timestamp(t)} for u, t in zip(ids, times, strict=True)]
        response = store.get_online_features(features=features, entity_rows=rows, full_feature_names=full_feature_names)
        if reader is not None:  # Feast's Redis read marks absent values PRESENT: ask Redis itself
            found = reader.known(ids)
        else:
            found = _found(store, response, features, full_feature_names, ids)
    return OnlineResult(features=response.to_dict(), found=found)


def _found(store: FeatureStore, response, features, full_feature_names: bool, ids: list[int]) -> list[bool]:
    """Per user of a Feast online response: whether any feature view holds a row for them.

    A stored feature's status is NOT_FOUND exactly when its view has no row for the user; users
    with no row in the views asked for are then looked up in every view keyed by user_id."""
    from healthmate_features import _feast

    context = _feast.online_request_context(store.registry, store.project, features, full_feature_names)
    stored = {
        f"{view.projection.name_to_use()}__{name}" if full_feature_names else name
        for view, names in context.grouped_refs
        for name in names
    }
    present = [values for name, values in _feast.stored_in_response(response).items() if name in stored]
    found = [any(values[i] for values in present) for i in range(len(ids))]
    unsure = sorted({u for u, known in zip(ids, found, strict=True) if not known})
    if unsure:
        views = [
            v for v in store.list_feature_views(allow_cache=True) if list(v.join_keys) == ["user_id"] and v.features
        ]
        probe = store.get_online_features(
            features=[f"{v.name}:{v.features[0].name}" for v in views],
            entity_rows=[{"user_id": u} for u in unsure],
            full_feature_names=True,
        )
        columns = [values for name, values in _feast.stored_in_response(probe).items() if name != "user_id"]
        known = {u for i, u in enumerate(unsure) if any(values[i] for values in columns)}
        found = [known_ or u in known for u, known_ in zip(ids, found, strict=True)]
    return found


def online_features(
    settings: Settings,
    user_id: int,
    *,
    feature_service: str | None = None,
    at: datetime | None = None,
) -> dict[str, object]:
    """One user's online features as a flat dict (full `view__feature` names without a service).

    `at` is the request time fed to the on-demand temporal features (default: now, UTC).
    Raises UserNotFoundError when the online store holds no row of any feature view for the
    user (see `online_lookup`), so an unknown user never reads as a user whose values are missing.
    """
    result = online_lookup(settings, [user_id], feature_service=feature_service, at=at)
    return one_user(result, user_id)


def one_user(result: OnlineResult, user_id: int) -> dict[str, object]:
    """The only user of a lookup as a flat dict; UserNotFoundError when the online store does not know them."""
    if not result.found[0]:
        raise UserNotFoundError(
            f"user {user_id} is not in the online store: no feature view holds a row for them "
            "(an id the feature tables do not know, not materialized yet, or expired from Redis); "
            "check the id, or run `healthmate-features materialize`"
        )
    return {name: values[0] for name, values in result.features.items()}


@dataclass(frozen=True)
class PendingLookup:
    """An online lookup's blocking part done (`online_fetch`): finish it with `online_finish` (no I/O)."""

    settings: Settings
    at: list[datetime]
    fetched: Any = None  # the reader's Fetched, or None when `result` is already complete
    result: OnlineResult | None = None


def online_fetch(
    settings: Settings,
    user_ids: Sequence[int],
    *,
    feature_service: str | None = None,
    at: datetime | Sequence[datetime] | None = None,
) -> PendingLookup:
    """`online_lookup`'s blocking part: the registry and the online store's reads (run it off the event loop).

    On Redis and SQLite the fast reader's `fetch`; otherwise (or for a selection it does not
    serve) the whole lookup through Feast. Raises as `online_lookup` does."""
    at = at if at is not None else datetime.now(timezone.utc)
    ids = as_user_ids(user_ids)
    times = list(at) if isinstance(at, Sequence) and not isinstance(at, str) else [at] * len(ids)
    if len(times) != len(ids):
        raise OnlineReadError(f"`at` has {len(times)} times for {len(ids)} user ids; pass one time or one per user")
    reader = online_reader(settings)
    if reader is not None:
        try:
            with backend_for(settings).service_errors():
                if feature_service:
                    fetched = reader.fetch(ids, feature_service=feature_service)
                else:
                    fetched = reader.fetch(ids, features=reader.feature_refs(), full_feature_names=True)
            return PendingLookup(settings=settings, at=times, fetched=fetched)
        except OnlineReadError:
            pass  # a selection the fast reader does not serve: Feast's path
    return PendingLookup(settings=settings, at=times, result=_feast_lookup(settings, ids, feature_service, times))


def ready_reader(settings: Settings, feature_service: str) -> OnlineReader | None:
    """The process's OnlineReader when it can look `feature_service` up with no registry I/O
    (`OnlineReader.ready`); None otherwise, and before the reader exists (opening it is slow I/O).
    Its `reads_in_place` (SQLite in WAL mode) may `fetch` on an event loop; on Redis, `fetch_async`."""
    from healthmate_features.stores.online import OnlineReader

    with _readers_lock:
        reader = _readers.get(settings)
    return reader if isinstance(reader, OnlineReader) and reader.ready(feature_service) else None


async def close_async_reader(settings: Settings) -> None:
    """Close what the process's reader opened on the running event loop (its pipelined Redis connection)."""
    from healthmate_features.stores.online import OnlineReader

    with _readers_lock:
        reader = _readers.get(settings)
    if isinstance(reader, OnlineReader):
        await reader.close_async()


def fetched_lookup(settings: Settings, fetched: Any, at: datetime) -> PendingLookup:
    """A PendingLookup of what a ready reader fetched itself (`ready_reader`), to `online_finish`."""
    return PendingLookup(settings=settings, at=[at] * len(fetched.ids), fetched=fetched)


def online_finish(pending: PendingLookup) -> OnlineResult:
    """`online_lookup`'s answer from its fetched part: decoding, on-demand views; CPU only (fine on an event loop)."""
    if pending.result is not None:
        return pending.result
    reader = online_reader(pending.settings)  # created by online_fetch: no I/O here
    assert reader is not None
    return reader.assemble(pending.fetched, at=pending.at)


def push(settings: Settings, push_source: str, frame: pd.DataFrame) -> None:
    """Push rows through Feast's `store.push(..., to=PushMode.ONLINE_AND_OFFLINE)`.

    Side effects: every view over the push source gets the rows in the online store, and its
    offline table gains them (created first when missing, by our offline stores). Runs on the
    process's long-lived FeatureStore when the fast reader has one (never a second handle on a
    SQLite store file). Raises FeatureRepoError when the registry lacks the source (run apply),
    ServiceUnavailableError when a server does not answer."""
    from feast.data_source import PushMode
    from feast.errors import PushSourceNotFoundException

    backend = backend_for(settings)
    reader = online_reader(settings)
    store = reader.store if reader is not None else open_feature_store(settings)
    with backend.service_errors():
        _require_registry(store)
        if not ensure_push_tables(store, push_source):
            raise FeatureRepoError(
                f"no feature view reads push source {push_source!r} in the registry; run `healthmate-features apply`"
            )
        try:
            store.push(push_source, frame, to=PushMode.ONLINE_AND_OFFLINE)
        except PushSourceNotFoundException as exc:
            raise FeatureRepoError(
                f"push source {push_source!r} is not in the registry; run `healthmate-features apply`"
            ) from exc


def ensure_push_tables(store: FeatureStore, push_source: str | None = None) -> list[str]:
    """Create the offline table of every view fed by a push source (or by `push_source`) that lacks one.

    Feast's push and write_to_offline_store read the table's columns first, so a table must exist
    before the first push; our offline stores create a missing one from an empty batch and leave an
    existing one alone. Returns the names of the views concerned."""
    from healthmate_features import _feast

    views = [v for v in store.list_feature_views() if _pushed_by(v, push_source)]
    offline = _feast.offline_store_of(store)
    for view in views:
        offline.offline_write_batch(store.config, view, _empty_batch(view), None)
    return [v.name for v in views]


def _pushed_by(view: FeatureView, push_source: str | None) -> bool:
    from feast.data_source import PushSource

    stream = getattr(view, "stream_source", None)
    return isinstance(stream, PushSource) and push_source in (None, stream.name)


def _empty_batch(view: FeatureView) -> Any:
    """A zero-row Arrow table with a view's batch-source columns: join keys, timestamps, features."""
    import pyarrow as pa

    from healthmate_features import _feast

    source = view.batch_source
    if source is None:
        raise FeatureRepoError(f"feature view {view.name!r} has no batch source to push to")
    reverse = {new: old for old, new in (source.field_mapping or {}).items()}
    fields = [(c.name, _feast.from_feast_to_pyarrow_type(c.dtype)) for c in view.entity_columns]
    fields += [(source.timestamp_field, pa.timestamp("us", tz="UTC"))]
    if source.created_timestamp_column:
        fields += [(source.created_timestamp_column, pa.timestamp("us", tz="UTC"))]
    fields += [(f.name, _feast.from_feast_to_pyarrow_type(f.dtype)) for f in view.features]
    schema = pa.schema([(reverse.get(n, n), t) for n, t in dict(fields).items()])
    return schema.empty_table()


def historical_features(
    settings: Settings,
    entity_df: pd.DataFrame,
    *,
    feature_service: str | None = None,
    features: list[str] | None = None,
    full_feature_names: bool = False,
    filter_by_created_timestamp: bool = False,
) -> pd.DataFrame:
    """Point-in-time join of `entity_df` (user_id, event_timestamp, ...) through Feast.

    Rows come back in the order of `entity_df`, with its own entity columns (values and dtypes):
    Feast's DuckDB and Postgres stores return rows in no guaranteed order, and the Postgres store
    drops the time zone of `event_timestamp`. A row-number column carried through the join restores both.
    """
    store = open_feature_store(settings)
    with backend_for(settings).service_errors():
        _require_registry(store)
        refs = features if features is not None else feature_refs(store, feature_service)
        entities = entity_df.reset_index(drop=True)
        numbered = entities.assign(**{ROW_COLUMN: range(len(entities))})
        job = store.get_historical_features(
            entity_df=numbered,
            features=refs,
            full_feature_names=full_feature_names,
            filter_by_created_timestamp=filter_by_created_timestamp,
        )
        frame = job.to_df()
    if len(frame) != len(entities):
        raise FeatureRepoError(
            f"Feast returned {len(frame)} rows for an entity frame of {len(entities)}; "
            "duplicate feature rows per user and timestamp?"
        )
    frame = frame.sort_values(ROW_COLUMN, kind="stable").reset_index(drop=True)
    frame[list(entities.columns)] = entities
    return frame.drop(columns=ROW_COLUMN)
