"""Materialization markers: whether the Redis online store still holds what was materialized.

Feast's registry (Postgres) records what was materialized, per feature view; Redis holds the
values. A Redis restarted empty (no persistence) or flushed loses the values and leaves the
registry as it was: every user then reads as unknown, or with most features null, while the
registry still reports the old materialization. So `materialize` writes, after each view it
loads, one marker key per view, `<HM_REDIS_PREFIX>online:rows:<project>:<view>`, holding the end
of the window it loaded (ISO 8601, UTC), with no expiry. `rows` names the layout the marker vouches
for (one sealed row per user and view, stores.row_codec): markers written before it (per-value
seals, key `online:<project>:<view>`) do not count, so a store last materialized in the old layout
reads as lost, with the fix, instead of answering nulls. A view that the registry records as
materialized and whose marker is missing has lost its online data:

- an online lookup reading it raises OnlineStoreLostError (HTTP 503, "online store lost its
  data; re-run materialize"); the reader checks the markers of the views it reads in the same
  pipeline as the values (one MGET);
- the dashboard reports the view as `online_data: lost`, not with its old time;
- `materialize --incremental` loads such a view from the window's start again (its registry
  record says it is current, but Redis no longer holds it).

Feast's own `feast materialize` writes no marker. It needs none after ours has run once (a marker
stays until Redis loses it); a view only ever materialized by Feast's CLI reads as lost, with a
message saying so: run `healthmate-features materialize` once. Only the Redis online store has
markers (the embedded profile's SQLite online store is a file next to its registry).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from healthmate_features.backends import backend_for, redis
from healthmate_features.config import Settings
from healthmate_features.errors import OnlineStoreLostError

LAYOUT = "rows"  # the online layout a marker vouches for (see the module docstring)
Marker = tuple[str, str, datetime]  # (view, marker key, the registry's materialized end)


def marker_key(settings: Settings, project: str, view: str) -> str:
    """The Redis key of a feature view's materialization marker."""
    return f"{settings.redis_prefix}online:{LAYOUT}:{project}:{view}"


def recorded_markers(settings: Settings, project: str, views: Sequence[Any]) -> list[Marker]:
    """The markers to expect for Feast feature views: those the registry records as materialized."""
    return [
        (view.name, marker_key(settings, project, view.name), view.most_recent_end_time)
        for view in views
        if view.most_recent_end_time is not None
    ]


def write_markers(settings: Settings, project: str, ends: Mapping[str, datetime]) -> None:
    """Write each view's marker (the end of the window it loaded). Side effect: Redis keys, no expiry."""
    if not ends:
        return
    client = redis.connect(settings)
    try:
        with redis.answered_within(settings, timeout_s=settings.redis_timeout_s, setting="HM_REDIS_TIMEOUT_S"):
            client.mset({marker_key(settings, project, view): end.isoformat() for view, end in ends.items()})
    finally:
        client.close()


@functools.lru_cache(maxsize=8)
def _checking_client(settings: Settings, timeout_s: float) -> Any:
    """The process's client for marker checks (the dashboard asks on every request): its pool stays open."""
    return redis.connect(settings, timeout_s=timeout_s)


def lost_views(settings: Settings, markers: Sequence[Marker]) -> list[str]:
    """The views of `markers` whose marker Redis no longer holds (one MGET, waiting at most HM_CONNECT_TIMEOUT_S).

    Raises ServiceUnavailableError when Redis does not answer in time."""
    if not markers:
        return []
    timeout, setting = min(
        (settings.connect_timeout_s, "HM_CONNECT_TIMEOUT_S"), (settings.redis_timeout_s, "HM_REDIS_TIMEOUT_S")
    )
    with redis.answered_within(settings, timeout_s=timeout, setting=setting):
        values = _checking_client(settings, timeout).mget([key for _, key, _ in markers])
    return [view for (view, _, _), value in zip(markers, values, strict=True) if value is None]


def check(settings: Settings, markers: Sequence[Marker], values: Sequence[Any]) -> None:
    """Raise OnlineStoreLostError unless Redis holds every marker (`values`: its MGET reply, in order)."""
    lost = [(view, end) for (view, _, end), value in zip(markers, values, strict=True) if value is None]
    if lost:
        raise lost_error(settings, lost)


def lost_error(settings: Settings, lost: Sequence[tuple[str, datetime]]) -> OnlineStoreLostError:
    """The error for views whose online data is gone, naming them, the registry's record and the fix."""
    views = ", ".join(f"{view} (materialized up to {end:%Y-%m-%d %H:%M:%S} UTC)" for view, end in lost)
    command = backend_for(settings).command("materialize")
    return OnlineStoreLostError(
        f"online store lost its data; re-run materialize: Redis at {redis.redis_address(settings)} holds no "
        f"materialization marker of {len(lost)} feature view(s) the registry records as materialized: {views}. "
        f"Redis restarted empty or was flushed (or the views were materialized only by `feast materialize`, "
        f"which writes no marker, or before the online layout of one sealed row per view); run `{command}`"
    )
