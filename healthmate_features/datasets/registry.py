"""The dataset registry: immutable, self-describing, semantically versioned training sets.

Layout under a storage root (a local directory, or a pyarrow filesystem URI such as file:///..)::

    <root>/<name>/<major.minor.patch>/
        manifest.json                      everything about the version (see README "Dataset versions")
        X_train.parquet  X_test.parquet    processed splits
        y_train.parquet  y_test.parquet    labels (one column each)
        joined_train.parquet  joined_test.parquet   joined frames before preprocessing (optional)
        pipeline.joblib                    the fitted preprocessing pipeline (optional; a pickle)
        lifecycle.json                     what happened to the version after it was published (optional)

`lifecycle.json` is a sidecar the registry reads with the manifest: an append-only list of
records, each naming the state it starts from (file hashes and data hash) and the one it leaves.
A record of kind "redaction" says an erasure (its id) rewrote data files without one person's
rows: the removed row counts, when, the new file hashes and data hash, the old data hash.
`verify` and `load` check the files against the state the last record leaves ("redacted by
erasure E"), so a redacted version stays verifiable; the manifest itself is never edited.
A record of kind "tombstone" says retention removed the version's data files (`tombstone`):
the manifest and lifecycle.json stay, `verify` says "tombstoned by retention on <date>" and
passes, and `load` refuses the version with an error naming it and why.

A version is written under `<root>/<name>/.tmp-<uuid>` and published by one atomic rename onto
its final name; a rename onto an existing version fails, and the save then retries with the
next free version. The saving process holds an advisory lock (flock) on its temporary directory
while it writes: a process killed mid-save leaves the directory unlocked, and
`clean_temporary()` (run when a worker starts) deletes exactly those. Published files and
directories are made read-only. Saving needs a local root (atomic rename); reading works on any
pyarrow filesystem.

Encryption at rest: with a keyring (`from_settings` passes the profile's) every data file (the
splits and the pipeline) is stored as an HME1 envelope (crypto.seal) of the file it stands for,
under the active data key. The manifest's SHA-256s and sizes are those of the plaintext inside, so
a version's identity does not depend on the key: re-encryption (`reencrypt`, run by a data-key
rotation) rewrites the envelopes and no hash. A plaintext data file (a version saved before
encryption, or by a registry without a keyring) is read as it is. manifest.json and
lifecycle.json stay plaintext: they hold aggregate statistics and hashes, never a row, and listing
versions needs no key. Reading an encrypted version without a keyring is an EncryptionKeyError.

Trust model: `pipeline.joblib` is a pickle, and unpickling runs arbitrary code. `load` checks its
SHA-256 against the manifest before unpickling the very bytes it checked, which catches
corruption and edits of the file alone; the manifest is not signed, so anyone who can write to
the root can replace both. Load pipelines only from roots you trust; `load_pipeline=False`
reads the Parquet data (safe to parse) and leaves the pipeline alone.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import hashlib
import io
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from healthmate_features.crypto import Keyring, seal, sealed_key_id, unseal
from healthmate_features.crypto.ciphers import KeyringSource
from healthmate_features.datasets import manifest as mf
from healthmate_features.datasets.dataset import (
    OPTIONAL_SPLITS,
    SPLITS,
    ProcessedDataset,
    as_frame,
    data_hash,
    restore_resolution,
)
from healthmate_features.datasets.manifest import BUMPS, VERSION_RE, check_version, next_version, parse_version
from healthmate_features.datasets.ref import NAME_RE
from healthmate_features.errors import DatasetNotFoundError, DatasetVersionError, EncryptionKeyError
from healthmate_features.util.files import atomic_write_bytes

__all__ = [
    "BUMPS",
    "DatasetRegistry",
    "VerifyReport",
    "VersionState",
    "check_name",
    "check_version",
    "data_hash",
    "next_version",
    "parse_version",
]

Bump = Literal["major", "minor", "patch"]
MANIFEST = mf.MANIFEST_FILE
PIPELINE_FILE = mf.PIPELINE_FILE
ALLOWED_FILES = frozenset({f"{s}.parquet" for s in SPLITS} | {PIPELINE_FILE})
LIFECYCLE = "lifecycle.json"
LIFECYCLE_FORMAT = "healthmate-lifecycle/1"
_MAX_ATTEMPTS = 1000
TMP_PREFIX = ".tmp-"
_TMP_GRACE_S = 5.0  # a directory younger than this may be one a save has just made and not yet locked


def check_name(name: object) -> str:
    """Return `name` if it is a safe dataset name, else raise DatasetVersionError.

    Safe: 1-128 characters of letters, digits, '.', '_', '-', starting with a letter or digit
    (so no separators, no '..', no absolute paths, no hidden or temporary directories)."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise DatasetVersionError(
            f"invalid dataset name {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no path separators)"
        )
    return name


@dataclass
class VerifyReport:
    """The outcome of `DatasetRegistry.verify`: one line per problem, each naming its file."""

    name: str
    version: str
    problems: list[str] = field(default_factory=list)
    checked_files: list[str] = field(default_factory=list)
    data_hash: str | None = None
    notes: list[str] = field(default_factory=list)  # e.g. "redacted by erasure E at T: 12 rows removed"
    redacted_by: list[str] = field(default_factory=list)  # erasure ids, oldest first
    tombstoned: str | None = None  # when retention removed the data files (ISO time), if it did

    @property
    def ok(self) -> bool:
        """True when every file and the data hash match the manifest."""
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the report."""
        return {**asdict(self), "ok": self.ok}


@dataclass
class VersionState:
    """What a version's data files must be now: the manifest's, or what its last lifecycle record left.

    `files` maps file name to {sha256, bytes}; `rows` split name to row count; `records` are the
    lifecycle records (oldest first); `pending` is a last record whose rewrite did not finish
    (its files may be old or new until the erasure that wrote it runs again)."""

    files: dict[str, Any]
    data_hash: str | None
    rows: dict[str, Any]
    records: builtins.list[dict[str, Any]] = field(default_factory=list)
    pending: dict[str, Any] | None = None
    problems: builtins.list[str] = field(default_factory=list)

    @property
    def tombstone(self) -> dict[str, Any] | None:
        """The completed tombstone record when retention removed the version's data, else None."""
        last = self.records[-1] if self.records else None
        if last is None or last is self.pending or last.get("kind") != "tombstone":
            return None
        return last

    @property
    def redacted_by(self) -> builtins.list[str]:
        """Ids of the erasures whose redaction of this version completed, oldest first."""
        done = [r for r in self.records if r.get("kind") == "redaction" and r is not self.pending]
        return [str(r.get("erasure_id")) for r in done]

    def accepts(self, fname: str, sha256: str) -> bool:
        """Whether `sha256` is what file `fname` may hold now (either side of a pending rewrite)."""
        expected = {(self.files.get(fname) or {}).get("sha256")}
        if self.pending is not None:
            expected.add(((self.pending.get("files") or {}).get(fname) or {}).get("sha256"))
        return sha256 in expected


def version_state(manifest: Mapping[str, Any], records: builtins.list[dict[str, Any]]) -> VersionState:
    """Follow a version's lifecycle records from its manifest; each must start where the previous ended."""
    listed = manifest.get("files")
    splits = manifest.get("splits")
    state = VersionState(
        files=dict(listed) if isinstance(listed, dict) else {},
        data_hash=manifest.get("data_hash"),
        rows={k: (v or {}).get("rows") for k, v in splits.items()} if isinstance(splits, dict) else {},
        records=records,
    )
    for i, record in enumerate(records):
        previous = record.get("previous") or {}
        before = {f: (e or {}).get("sha256") for f, e in state.files.items()}
        if previous.get("data_hash") != state.data_hash or previous.get("files") != before:
            state.problems.append(
                f"{LIFECYCLE}: record {i + 1} ({record.get('kind')} {record.get('erasure_id') or record.get('at')}) "
                "does not start from "
                "the state before it (edited or out of order)"
            )
        if record.get("status") != "complete":
            if i == len(records) - 1:
                state.pending = record
                break
            state.problems.append(f"{LIFECYCLE}: record {i + 1} is incomplete but not the last one")
        state.files = dict(record.get("files") or {})
        state.data_hash = record.get("data_hash")
        state.rows = dict(record.get("rows") or {})
    return state


class DatasetRegistry:
    """Immutable, semantically versioned ProcessedDatasets under one storage root.

    `root` is a local directory (str or path) or a pyarrow filesystem URI ("file:///...",
    "s3://bucket/prefix"); alternatively pass `filesystem` and a path inside it as `root`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        filesystem: pafs.FileSystem | None = None,
        keyring: KeyringSource = None,
    ):
        text = os.fspath(root)
        self._keyring = keyring
        if filesystem is not None:
            self._fs, path = filesystem, text
        elif "://" in text:
            try:
                self._fs, path = pafs.FileSystem.from_uri(text)
            except (pa.ArrowException, ValueError) as exc:
                raise DatasetVersionError(f"cannot open dataset root {text!r}: {exc}") from exc
        else:
            self._fs, path = pafs.LocalFileSystem(), Path(os.path.abspath(text)).as_posix()
        #: The root as a path inside the filesystem (a plain directory path for local roots).
        self.root: str = path.rstrip("/") or "/"
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self.uri = text

    @classmethod
    def from_settings(cls, settings: Any) -> DatasetRegistry:
        """The registry of the package settings: `settings.datasets_dir` (data/datasets), encrypting
        with the profile's keyring."""
        from healthmate_features.backends import backend_for

        return cls(settings.datasets_dir, keyring=backend_for(settings).keyring)

    def __repr__(self) -> str:
        return f"DatasetRegistry({self.uri!r})"

    # ---------------------------------------------------------------- reading -------------

    def names(self) -> builtins.list[str]:
        """Dataset names that have at least one version, sorted."""
        return sorted(
            entry
            for entry, is_dir in self._entries(self.root)
            if is_dir and NAME_RE.fullmatch(entry) and self.versions(entry)
        )

    def versions(self, name: str) -> builtins.list[str]:
        """Published versions of `name`, sorted semantically (oldest first); [] if none."""
        found = [
            entry
            for entry, is_dir in self._entries(self._path(check_name(name)))
            if is_dir and VERSION_RE.fullmatch(entry)
        ]
        return sorted(found, key=parse_version)

    def latest(self, name: str) -> str:
        """The highest version of `name`; raises DatasetVersionError if it has none."""
        versions = self.versions(name)
        if not versions:
            raise DatasetNotFoundError(
                f"dataset {name!r} has no versions under {self.uri}; save one first "
                f"(datasets here: {', '.join(self.names()) or 'none'})"
            )
        return versions[-1]

    def list(self, name: str | None = None) -> builtins.list[dict[str, Any]]:
        """One summary dict per version (of `name`, or of every dataset), sorted."""
        rows = []
        for each in [check_name(name)] if name is not None else self.names():
            for version in self.versions(each):
                m = self.show(each, version)
                counts: Any = m.get("row_counts")
                redacted: builtins.list[str] = []
                tombstoned = None
                with contextlib.suppress(DatasetVersionError):  # verify reports a damaged lifecycle.json
                    state = version_state(m, self.lifecycle(each, version))
                    counts, redacted = _row_counts(state), state.redacted_by
                    if state.tombstone is not None:
                        counts, tombstoned = None, state.tombstone.get("at")
                rows.append(
                    {
                        "name": each,
                        "version": version,
                        "created_at": m.get("created_at"),
                        "parent_version": m.get("parent_version"),
                        "bump": m.get("bump", {}).get("kind"),
                        "rows": counts,
                        "feature_service": m.get("feature_service"),
                        "data_hash": m.get("data_hash"),
                        "redacted_by": redacted,
                        "tombstoned": tombstoned,
                    }
                )
        return rows

    def show(self, name: str, version: str | None = None) -> dict[str, Any]:
        """The manifest of a version (latest by default) as a dict. Does not verify it."""
        version = self._resolve(name, version)
        path = self._path(name, version, MANIFEST)
        try:
            raw = self._read_bytes(path)
        except FileNotFoundError as exc:
            raise DatasetVersionError(
                f"dataset {name}@{version} has no {MANIFEST} (an incomplete or foreign "
                f"directory {name}/{version} of the dataset root); remove it or restore the manifest"
            ) from exc
        try:
            manifest = json.loads(raw)
        except ValueError as exc:
            raise DatasetVersionError(
                f"dataset {name}@{version}: {MANIFEST} is not valid JSON ({exc}); the version is damaged, rebuild it"
            ) from exc
        if not isinstance(manifest, dict):
            raise DatasetVersionError(f"dataset {name}@{version}: {MANIFEST} is not a JSON object")
        return manifest

    def verify(self, name: str, version: str | None = None) -> VerifyReport:
        """Recompute every file's SHA-256 and the data hash of a version (latest by default).

        Returns a report listing each problem with the file it concerns: a modified, missing or
        unexpected file, an edited manifest, or data whose hash differs. Never unpickles."""
        version = self._resolve(name, version)
        report = VerifyReport(name, version)
        try:
            manifest = self.show(name, version)
        except DatasetVersionError as exc:
            report.problems.append(f"{MANIFEST}: {exc}")
            return report
        self._read_version(name, version, manifest, report, check=True)
        return report

    def lifecycle(self, name: str, version: str | None = None) -> builtins.list[dict[str, Any]]:
        """The lifecycle records of a version (latest by default), oldest first; [] when it has none.

        Raises DatasetVersionError when `lifecycle.json` is not valid (bad JSON, edited)."""
        version = self._resolve(name, version)
        try:
            raw = self._read_bytes(self._path(name, version, LIFECYCLE))
        except FileNotFoundError:
            return []
        try:
            doc = json.loads(raw)
        except ValueError as exc:
            raise DatasetVersionError(f"dataset {name}@{version}: {LIFECYCLE} is not valid JSON ({exc})") from exc
        valid = isinstance(doc, dict) and doc.get("format") == LIFECYCLE_FORMAT
        if not valid or not isinstance(doc.get("records"), list):
            raise DatasetVersionError(f"dataset {name}@{version}: {LIFECYCLE} is not a {LIFECYCLE_FORMAT} document")
        if mf.self_hash({k: v for k, v in doc.items() if k != "lifecycle_sha256"}) != doc.get("lifecycle_sha256"):
            raise DatasetVersionError(
                f"dataset {name}@{version}: {LIFECYCLE} does not match its self-hash: it was edited; "
                "restore it from a backup, or rebuild the version"
            )
        return list(doc["records"])

    def state(self, name: str, version: str | None = None) -> VersionState:
        """What a version's files must be now (the manifest followed by its lifecycle records)."""
        version = self._resolve(name, version)
        return version_state(self.show(name, version), self.lifecycle(name, version))

    def verify_all(self) -> builtins.list[VerifyReport]:
        """`verify` every version of every dataset, oldest first per name."""
        return [self.verify(name, version) for name in self.names() for version in self.versions(name)]

    def find_version(self, name: str, key: str, value: Any) -> str | None:
        """The newest version of `name` whose manifest metadata has `key` equal to `value`, or None.

        How a job finds the version an earlier attempt of it published (metadata `job_id`)."""
        for version in reversed(self.versions(name)):
            try:
                metadata = self.show(name, version).get("metadata") or {}
            except DatasetVersionError:
                continue
            if isinstance(metadata, dict) and metadata.get(key) == value:
                return version
        return None

    def load(
        self,
        name: str,
        version: str | None = None,
        *,
        verify: bool = True,
        load_pipeline: bool = True,
    ) -> ProcessedDataset:
        """Load a version (latest by default) as a ProcessedDataset.

        With `verify` (the default) every file and the data hash are checked first, on the same
        bytes that are then parsed and unpickled; any problem raises DatasetVersionError.
        `load_pipeline=False` leaves the pickled pipeline unread (see the module's trust model).
        """
        version = self._resolve(name, version)
        manifest = self.show(name, version)
        report = VerifyReport(name, version)
        dataset, raw = self._read_version(name, version, manifest, report, check=verify)
        if report.tombstoned and not report.problems:
            raise DatasetVersionError(_tombstoned_message(name, version, self.state(name, version).tombstone or {}))
        if report.problems:
            raise DatasetVersionError(
                f"dataset {name}@{version} is damaged or was modified ({len(report.problems)} "
                f"problem(s)): "
                + "; ".join(report.problems)
                + ". Do not use it: rebuild the version, or load(verify=False) to inspect it"
            )
        assert dataset is not None
        if report.redacted_by:
            dataset.metadata["redacted_by"] = list(report.redacted_by)
        if load_pipeline and PIPELINE_FILE in raw:
            import joblib

            try:
                dataset.pipeline = joblib.load(io.BytesIO(raw[PIPELINE_FILE]))
            except Exception as exc:  # unpickling fails in many ways (missing class, version)
                saved = (manifest.get("environment") or {}).get("scikit-learn")
                raise DatasetVersionError(
                    f"cannot unpickle the pipeline of {name}@{version} (saved with scikit-learn "
                    f"{saved}): {exc}; install that version or load(load_pipeline=False)"
                ) from exc
        return dataset

    def read_split(self, name: str, version: str | None, split: str) -> bytes:
        """The stored Parquet bytes of one split (e.g. "X_train") of a version (latest by default).

        The bytes are checked against the manifest's SHA-256 before they are returned
        (DatasetVersionError on a mismatch); a split the version lacks raises
        DatasetNotFoundError. Reads one file and never unpickles."""
        if split not in SPLITS:
            raise DatasetVersionError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        version = self._resolve(name, version)
        fname = f"{split}.parquet"
        state = self.state(name, version)
        if state.tombstone is not None:
            raise DatasetVersionError(_tombstoned_message(name, version, state.tombstone))
        entry = state.files.get(fname)
        if not isinstance(entry, dict):
            raise DatasetNotFoundError(f"dataset {name}@{version} has no {fname} (saved without it)")
        try:
            data = self._read_data(self._path(name, version, fname))
        except FileNotFoundError as exc:
            raise DatasetVersionError(
                f"dataset {name}@{version}: {fname} is missing (listed in the manifest); rebuild the version"
            ) from exc
        if hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise DatasetVersionError(
                f"dataset {name}@{version}: {fname} does not match its SHA-256 in the manifest "
                "(modified after it was written); do not use it, rebuild the version"
            )
        return data

    def diff(self, name: str, v1: str, v2: str) -> dict[str, Any]:
        """Compare two versions' manifests: schema, feature refs, row counts, per-column
        mean/std/null-fraction deltas, label balance and which build inputs changed."""
        return mf.diff_manifests(self.show(name, check_version(v1)), self.show(name, check_version(v2)))

    # ---------------------------------------------------------------- writing -------------

    def save(self, dataset: ProcessedDataset, name: str, *, bump: Bump | None = None) -> str:
        """Write `dataset` as a new immutable version of `name` and return the version string.

        `bump=None` applies the bump rule against the latest version (see `manifest.bump_rule`);
        an explicit bump may go higher than the rule but not lower. The first version is 1.0.0.
        Side effects: creates `<root>/<name>/<version>/` (read-only), and `<root>/<name>/` for
        a new name; a failed save leaves no version and no temporary directory behind. Safe under
        concurrent saves from threads and processes."""
        return self._save(dataset, name, bump=bump, reuse_unchanged=False)[0]

    def save_if_changed(self, dataset: ProcessedDataset, name: str) -> tuple[str, bool]:
        """Save `dataset` as a new version of `name` unless the latest version already holds it.

        "Already holds it": the bump rule finds no change at all (same data hash, Feast
        definitions, entity frame, time range, split and preprocessing configs; see
        `manifest.unchanged`). Returns (version, created): the latest version and False then,
        otherwise what `save(dataset, name)` returns and True. Writes nothing when unchanged."""
        return self._save(dataset, name, bump=None, reuse_unchanged=True)

    def _save(
        self, dataset: ProcessedDataset, name: str, *, bump: Bump | None, reuse_unchanged: bool
    ) -> tuple[str, bool]:
        check_name(name)
        if bump is not None and bump not in BUMPS:
            raise DatasetVersionError(f"invalid bump {bump!r}: use one of {', '.join(BUMPS)} or None")
        if not isinstance(dataset, ProcessedDataset):
            raise DatasetVersionError(f"save() needs a ProcessedDataset, got a {type(dataset).__name__}")
        if not self._local:
            raise DatasetVersionError(
                f"cannot save to {self.uri}: publishing a version needs an atomic rename, which "
                "only a local root guarantees; save to a local root and copy the version directory"
            )
        dataset.validate()
        content = mf.content_manifest(dataset)  # fails fast on metadata that is not JSON
        if reuse_unchanged:
            versions = self.versions(name)
            latest_kept = bool(versions) and self.state(name, versions[-1]).tombstone is None  # not its data gone
            if latest_kept and mf.unchanged(self.show(name, versions[-1]), content):
                return versions[-1], False
        name_dir = os.path.join(self.root, name)
        os.makedirs(name_dir, exist_ok=True)
        tmp = os.path.join(name_dir, f"{TMP_PREFIX}{uuid.uuid4().hex}")
        os.mkdir(tmp)
        owner = _lock_directory(tmp)  # released by the kernel if this process dies: see clean_temporary
        try:
            content["files"] = _write_payload(tmp, dataset, keyring=self._keyring_or_none())
            for _ in range(_MAX_ATTEMPTS):
                versions = self.versions(name)
                parent = versions[-1] if versions else None
                previous = self.show(name, parent) if parent else None
                kind, reasons = mf.decide_bump(previous, content, bump)
                version = next_version(parent, kind)
                manifest = mf.finalize(
                    content,
                    name=name,
                    version=version,
                    parent=parent,
                    bump={"kind": kind, "requested": bump or "auto", "reasons": reasons},
                    created_at=datetime.now(timezone.utc).isoformat(),
                )
                _write_file(tmp, MANIFEST, mf.dumps(manifest).encode(), replace=True)
                final = os.path.join(name_dir, version)
                try:
                    os.rename(tmp, final)
                except OSError as exc:
                    if isinstance(exc, FileExistsError) or exc.errno in (errno.EEXIST, errno.ENOTEMPTY):
                        continue  # another save took this version first: re-plan on top of it
                    raise DatasetVersionError(f"cannot publish {name}@{version}: {exc}") from exc
                _make_read_only(final)
                _fsync_dir(name_dir)
                return version, True
            raise DatasetVersionError(f"could not allocate a version of {name!r} after {_MAX_ATTEMPTS} attempts")
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
            if owner is not None:
                os.close(owner)

    def clean_temporary(self) -> builtins.list[str]:
        """Delete the temporary directories of saves whose process died; return their paths.

        A save holds an advisory lock on its `.tmp-*` directory until it ends, and the kernel
        drops the lock when the process dies (SIGKILL included); a directory nobody locks is
        therefore a dead save's. Live saves, and directories younger than a few seconds, are
        left alone. Local roots only (elsewhere nothing is saved)."""
        if not self._local:
            return []
        removed = []
        for name, is_dir in self._entries(self.root):
            if not is_dir or not NAME_RE.fullmatch(name):
                continue
            for entry, entry_is_dir in self._entries(self._path(name)):
                path = self._path(name, entry)
                if entry_is_dir and entry.startswith(TMP_PREFIX) and _abandoned(path):
                    _make_writable(path)
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
        return removed

    # ---------------------------------------------------------------- internals -----------

    def _path(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts]) if parts else self.root

    def _entries(self, path: str) -> builtins.list[tuple[str, bool]]:
        """(name, is a directory) of each entry of `path`; [] if it does not exist.

        Concurrent saves create and remove temporary directories while we list: a local
        listing uses the directory entry types (no stat that could race), other filesystems
        retry a listing that failed because an entry vanished."""
        if self._local:
            try:
                with os.scandir(path) as entries:
                    return [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
            except (FileNotFoundError, NotADirectoryError):
                return []
        for attempt in range(3):
            try:
                infos = self._fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
            except FileNotFoundError:
                if attempt == 2:
                    raise
                continue
            return [(i.base_name, i.type == pafs.FileType.Directory) for i in infos]
        return []

    def _read_data(self, path: str) -> bytes:
        """A data file's plaintext: unsealed when it is an HME1 envelope, as stored otherwise."""
        data = self._read_bytes(path)
        if sealed_key_id(data) is None:
            return data
        return unseal(self._ring(path), data, what=path)

    def _keyring_or_none(self) -> Keyring | None:
        """The keyring to encrypt with (built now), or None for a registry that writes plaintext."""
        return None if self._keyring is None else self._ring(self.uri)

    def _ring(self, what: str) -> Keyring:
        if self._keyring is None:
            raise EncryptionKeyError(
                f"{what} is encrypted and {self!r} has no keyring; use DatasetRegistry.from_settings"
            )
        return self._keyring if isinstance(self._keyring, Keyring) else self._keyring()

    def reencrypt(self, *, on_file: Callable[[str], None] | None = None) -> builtins.list[str]:
        """Re-encrypt every data file of every version that is not under the active data key (a
        plaintext one is encrypted); the paths rewritten. Each file is replaced atomically, so an
        interrupted run leaves each file old or new, and running it again finishes the job. No
        hash changes (the manifest hashes the plaintext). `on_file(path)` is called after each file.

        Side effects: the version directory is made writable for the rewrite and read-only again."""
        from healthmate_features.crypto import file_key_id

        if not self._local:
            raise DatasetVersionError(f"cannot re-encrypt {self.uri}: only a local root can be rewritten in place")
        keyring = self._ring(self.uri)
        active = keyring.active().key_id
        done: builtins.list[str] = []
        for name in self.names():
            for version in self.versions(name):
                directory = self._path(name, version)
                stale = [
                    entry.path
                    for entry in os.scandir(directory)
                    if entry.name in ALLOWED_FILES
                    and entry.name not in (MANIFEST, LIFECYCLE)
                    and entry.is_file(follow_symlinks=False)
                    and file_key_id(entry.path) != active
                ]
                if not stale:
                    continue
                os.chmod(directory, 0o755)
                try:
                    for path in stale:
                        blob = Path(path).read_bytes()
                        plain = unseal(keyring, blob, what=path) if sealed_key_id(blob) else blob
                        _replace_file(directory, os.path.basename(path), plain, keyring=keyring)
                        done.append(path)
                        if on_file is not None:
                            on_file(path)
                finally:
                    _make_read_only(directory)
                    _fsync_dir(directory)
        return done

    def _read_bytes(self, path: str) -> bytes:
        info = self._fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise FileNotFoundError(path)
        with self._fs.open_input_stream(path) as stream:
            return stream.read()

    def _resolve(self, name: str, version: str | None) -> str:
        check_name(name)
        if version is None:
            return self.latest(name)
        check_version(version)
        if self._fs.get_file_info(self._path(name, version)).type != pafs.FileType.Directory:
            known = ", ".join(self.versions(name)) or "none"
            raise DatasetNotFoundError(
                f"dataset {name!r} has no version {version} under {self.uri} (versions: {known})"
            )
        return version

    def _read_version(
        self,
        name: str,
        version: str,
        manifest: Mapping[str, Any],
        report: VerifyReport,
        *,
        check: bool,
    ) -> tuple[ProcessedDataset | None, dict[str, bytes]]:
        """Read (and with `check`, verify) a version's files; problems go into `report`.

        Files are checked against the version's current state: the manifest, followed by the
        records of its lifecycle.json (a redaction's new hashes); redactions become notes."""
        problems = report.problems
        if check and mf.self_hash(manifest) != manifest.get("manifest_sha256"):
            problems.append(f"{MANIFEST}: its self-hash does not match: the manifest was edited")
        if not isinstance(manifest.get("files") or {}, dict):
            problems.append(f"{MANIFEST}: 'files' is not an object")
        try:
            records = self.lifecycle(name, version)
        except DatasetVersionError as exc:
            problems.append(f"{LIFECYCLE}: {exc}")
            records = []
        state = version_state(manifest, records)
        if check:
            problems.extend(state.problems)
        if state.pending is not None and state.pending.get("kind") == "tombstone":
            problems.append(
                "the tombstoning by retention was interrupted; run `healthmate-features retention apply` again "
                "to complete it"
            )
        elif state.pending is not None:
            problems.append(
                f"the redaction by erasure {state.pending.get('erasure_id')} was interrupted; run that erasure "
                "again (`healthmate-features erase --user-id N`, the same user) to complete it"
            )
        for record in state.records:
            if record is state.pending or record.get("kind") != "redaction":
                continue
            report.redacted_by.append(str(record.get("erasure_id")))
            removed = sum(int(n) for k, n in (record.get("removed_rows") or {}).items() if k.startswith("X_"))
            report.notes.append(
                f"redacted by erasure {record.get('erasure_id')} at {record.get('at')}: {removed} row(s) removed "
                f"(data hash before: {str((record.get('previous') or {}).get('data_hash'))[:12]}...)"
            )
        if state.tombstone is not None:
            report.tombstoned = str(state.tombstone.get("at"))
            report.notes.append(
                f"tombstoned by retention on {report.tombstoned[:10]}: {state.tombstone.get('why')}; "
                "its data files were removed, the manifest is kept"
            )
        listed = state.files
        present = {entry for entry, is_dir in self._entries(self._path(name, version)) if not is_dir}
        for extra in sorted(present - set(listed) - {MANIFEST, LIFECYCLE}):
            problems.append(f"{extra}: not listed in the manifest (unexpected file)")
        raw: dict[str, bytes] = {}
        for fname in sorted(listed):
            if fname not in ALLOWED_FILES:
                problems.append(f"{MANIFEST}: lists {fname!r}, which is not a dataset file")
                continue
            if fname not in present:
                problems.append(f"{fname}: missing (listed in the manifest)")
                continue
            try:
                data = self._read_data(self._path(name, version, fname))
            except EncryptionKeyError as exc:
                if not check or "altered" not in str(exc):  # a missing or wrong key is not a damaged file
                    raise
                report.checked_files.append(fname)
                problems.append(
                    f"{fname}: SHA-256 mismatch (its encrypted content no longer opens): modified after it was written"
                )
                continue
            report.checked_files.append(fname)
            got = hashlib.sha256(data).hexdigest()
            if check and not state.accepts(fname, got):
                expected = (listed[fname] or {}).get("sha256")
                problems.append(
                    f"{fname}: SHA-256 mismatch ({'redaction record' if state.records else 'manifest'} "
                    f"{str(expected)[:12]}..., file {got[:12]}...): modified after it was written"
                )
            raw[fname] = data
        if state.tombstone is not None:
            return None, raw
        splits = manifest.get("splits")
        frames = _parse_frames(raw, splits if isinstance(splits, dict) else {}, listed, problems)
        if any(s not in frames for s in SPLITS if s not in OPTIONAL_SPLITS):
            return None, raw
        try:
            dataset = ProcessedDataset(
                feature_names=list(frames["X_train"].columns),
                pipeline=None,
                metadata=dict(manifest.get("metadata") or {}),
                ref=f"{name}@{version}",
                **frames,
            )
        except DatasetVersionError as exc:
            problems.append(f"splits are inconsistent: {exc}")
            return None, raw
        if check:
            report.data_hash = data_hash(dataset)
            accepted = {state.data_hash} | ({state.pending.get("data_hash")} if state.pending else set())
            if report.data_hash not in accepted:
                problems.append(
                    f"data hash mismatch ({'redaction record' if state.records else 'manifest'} "
                    f"{str(state.data_hash)[:12]}..., recomputed {report.data_hash[:12]}...): the stored data changed"
                )
            if state.pending is None:
                for split, value in frames.items():
                    expected_rows = state.rows.get(split)
                    if expected_rows != len(value):
                        problems.append(f"{split}.parquet: {len(value)} rows, the manifest says {expected_rows}")
        return dataset, raw

    def redact(
        self,
        name: str,
        version: str,
        select: Callable[[Any], Any],
        *,
        erasure_id: str,
        note: str | None = None,
    ) -> dict[str, Any] | None:
        """Rewrite a version's data files without the rows `select` marks; record it in lifecycle.json.

        `select(frame)` gets each joined frame (the rows before preprocessing, with user_id) and
        returns a boolean mask of the rows to remove; the same positions leave X, y and the joined
        frame of that split. Returns the redaction record, or None when the version holds no such
        row (then nothing is written: the version stays byte for byte as it was).

        Safe to interrupt: the record is written first (status "pending", with the new hashes),
        then each file is replaced atomically, then the record is marked "complete"; running the
        same erasure again completes a pending record. The pipeline file is kept as it was
        (`note` says so in the record). Raises DatasetVersionError when the version fails
        verification (other than the pending rewrite) or has no frame that shows whose rows are whose.
        """
        version = self._resolve(name, version)
        if not self._local:
            raise DatasetVersionError(
                f"cannot redact {name}@{version} in {self.uri}: only a local root can be rewritten in place"
            )
        manifest = self.show(name, version)
        if self.state(name, version).tombstone is not None:
            return None  # retention removed its data: no row of anyone is left to redact
        report = VerifyReport(name, version)
        dataset, raw = self._read_version(name, version, manifest, report, check=True)
        state = version_state(manifest, self.lifecycle(name, version))
        pending = state.pending if state.pending and state.pending.get("erasure_id") == erasure_id else None
        blocking = [p for p in report.problems if pending is None or "was interrupted" not in p]
        if blocking or dataset is None:
            raise DatasetVersionError(
                f"dataset {name}@{version} fails verification, so it is not rewritten: "
                + "; ".join(blocking or ["its splits cannot be read"])
                + "; restore or rebuild the version, then run the erasure again"
            )
        masks: dict[str, Any] = {}
        for side in ("train", "test"):
            source = getattr(dataset, f"joined_{side}")
            if source is None and "user_id" in getattr(dataset, f"X_{side}").columns:
                source = getattr(dataset, f"X_{side}")
            if source is None:
                raise DatasetVersionError(
                    f"dataset {name}@{version} has no joined frames and no user_id column, so the rows of a "
                    "person cannot be found in it; delete the version or rebuild it with the training-set builder"
                )
            masks[side] = select(source).to_numpy(dtype=bool)
        if not any(m.any() for m in masks.values()) and pending is None:
            return None
        kept: dict[str, Any] = {}
        removed: dict[str, int] = {}
        for split, value in dataset.frames():
            mask = masks[split.rsplit("_", 1)[1]]
            kept[split] = value[~mask]
            removed[split] = int(mask.sum())
        new_bytes = {f"{split}.parquet": _parquet_bytes(value) for split, value in kept.items()}
        problems: list[str] = []
        found = manifest.get("splits")
        splits: dict[str, Any] = found if isinstance(found, dict) else {}
        reread = _parse_frames(new_bytes, splits, new_bytes, problems)
        redacted = ProcessedDataset(feature_names=list(reread["X_train"].columns), **reread)
        files = dict(state.files)
        for fname, data in new_bytes.items():
            files[fname] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
        record = {
            "kind": "redaction",
            "erasure_id": erasure_id,
            "at": (pending or {}).get("at") or datetime.now(timezone.utc).isoformat(),
            "status": "pending",
            "previous": {
                "files": {f: (e or {}).get("sha256") for f, e in state.files.items()},
                "data_hash": state.data_hash,
            },
            "removed_rows": removed if pending is None else pending.get("removed_rows", removed),
            "files": files,
            "data_hash": data_hash(redacted),
            "rows": {split: len(value) for split, value in reread.items()},
            "note": note,
        }
        records = [r for r in state.records if r is not state.pending] + [record]
        directory = self._path(name, version)
        os.chmod(directory, 0o755)
        try:
            _remove_temporaries(directory)  # of an interrupted earlier run
            self._write_lifecycle(name, version, records)
            for fname, data in new_bytes.items():
                if hashlib.sha256(raw.get(fname, b"")).hexdigest() != files[fname]["sha256"]:
                    _replace_file(directory, fname, data, keyring=self._keyring_or_none())
            record["status"] = "complete"
            self._write_lifecycle(name, version, records)
        finally:
            _make_read_only(directory)
            _fsync_dir(directory)
        return record

    def tombstone(self, name: str, version: str, *, at: datetime, why: str) -> dict[str, Any] | None:
        """Remove a version's data files, keeping its manifest; record it in lifecycle.json (retention).

        `at` is when (the retention run's clock), `why` the rule, e.g. "created 2024-01-01, older
        than dataset_versions_days=365". Returns the record, or None when the version already is
        a tombstone (nothing changes). Safe to interrupt: the record is written first (pending),
        then the files are deleted, then it is marked complete; running it again completes it.
        Raises DatasetVersionError for a non-local root or a lifecycle.json that does not verify."""
        version = self._resolve(name, version)
        if not self._local:
            raise DatasetVersionError(f"cannot tombstone {name}@{version} in {self.uri}: only a local root")
        state = self.state(name, version)
        if state.problems:
            raise DatasetVersionError(f"dataset {name}@{version}: " + "; ".join(state.problems))
        if state.tombstone is not None:
            return None
        pending = state.pending if state.pending and state.pending.get("kind") == "tombstone" else None
        if state.pending is not None and pending is None:
            raise DatasetVersionError(
                f"dataset {name}@{version} has an interrupted redaction by erasure {state.pending.get('erasure_id')}; "
                "complete that erasure first, then apply retention again"
            )
        record = pending or {
            "kind": "tombstone",
            "reason": "retention",
            "why": why,
            "at": at.astimezone(timezone.utc).isoformat(),
            "status": "pending",
            "previous": {
                "files": {f: (e or {}).get("sha256") for f, e in state.files.items()},
                "data_hash": state.data_hash,
            },
            "removed_files": sorted(state.files),
            "files": {},
            "data_hash": None,
            "rows": {},
        }
        records = [r for r in state.records if r is not state.pending] + [record]
        directory = self._path(name, version)
        os.chmod(directory, 0o755)
        try:
            _remove_temporaries(directory)
            self._write_lifecycle(name, version, records)
            for fname in record["removed_files"]:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(directory, fname))
            record["status"] = "complete"
            self._write_lifecycle(name, version, records)
        finally:
            _make_read_only(directory)
            _fsync_dir(directory)
        return record

    def _write_lifecycle(self, name: str, version: str, records: builtins.list[dict[str, Any]]) -> None:
        """Replace a version's lifecycle.json atomically (its directory must be writable)."""
        doc: dict[str, Any] = {"format": LIFECYCLE_FORMAT, "records": records}
        doc["lifecycle_sha256"] = mf.self_hash(doc)
        _replace_file(self._path(name, version), LIFECYCLE, mf.dumps(doc).encode())


def _replace_file(directory: str, fname: str, data: bytes, *, keyring: Keyring | None = None) -> None:
    """Replace (or create) a file of a version atomically and durably (util.files), read-only;
    sealed under the active data key when a keyring is given."""
    path = os.path.join(directory, fname)
    atomic_write_bytes(path, seal(keyring.active(), data) if keyring is not None else data, durable=True)
    os.chmod(path, 0o444)


def _remove_temporaries(directory: str) -> None:
    """Delete what an interrupted rewrite left in a version directory (hidden `.<name>.<hex>.tmp` files)."""
    for entry in os.scandir(directory):
        if entry.name.startswith(".") and entry.name.endswith(".tmp") and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _tombstoned_message(name: str, version: str, record: Mapping[str, Any]) -> str:
    return (
        f"dataset {name}@{version} was tombstoned by retention on {str(record.get('at'))[:10]} "
        f"({record.get('why')}): its data files were removed and only its manifest is kept "
        f"(`healthmate-features datasets show {name} {version}`); build a new version from current data"
    )


def _row_counts(state: VersionState) -> dict[str, Any]:
    """A version's current rows per side, as the manifest's row_counts."""
    return {"train": state.rows.get("X_train"), "test": state.rows.get("X_test")}


def _parse_frames(
    raw: Mapping[str, bytes], splits: Mapping[str, Any], listed: Mapping[str, Any], problems: builtins.list[str]
) -> dict[str, Any]:
    """The splits of a version parsed from their Parquet bytes, dtypes restored as the manifest records them."""
    frames: dict[str, Any] = {}
    for split in SPLITS:
        fname = f"{split}.parquet"
        if fname not in raw:  # a missing listed file is reported by the caller
            if split not in OPTIONAL_SPLITS and fname not in listed:
                problems.append(f"{MANIFEST}: does not list the required {fname}")
            continue
        try:
            frame = pq.read_table(pa.BufferReader(raw[fname])).to_pandas()
        except (pa.ArrowException, ValueError, OSError) as exc:
            problems.append(f"{fname}: not readable as Parquet ({exc})")
            continue
        entry = splits.get(split) or {}
        index = entry.get("index") or []
        if len(index) == 1 and frame.index.nlevels == 1:
            frame.index = restore_resolution(frame.index, index[0].get("dtype"))
        if split.startswith("y_"):
            series = restore_resolution(frame.iloc[:, 0], entry.get("dtype"))
            series.name = entry.get("series_name")
            frames[split] = series
        else:
            for column in entry.get("columns") or []:
                if column.get("name") in frame.columns:
                    frame[column["name"]] = restore_resolution(frame[column["name"]], column.get("dtype"))
            frames[split] = frame
    return frames


def _parquet_bytes(value: Any) -> bytes:
    """One split as stored: a frame (a Series as its one-column frame), index kept, as Parquet bytes."""
    table = pa.Table.from_pandas(as_frame(value), preserve_index=None)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


def _write_payload(
    directory: str, dataset: ProcessedDataset, *, keyring: Keyring | None = None
) -> dict[str, dict[str, Any]]:
    """Write the Parquet splits and the pickled pipeline (sealed under `keyring`'s active key when
    given); return {file: {sha256, bytes}} of the plaintext."""
    files: dict[str, dict[str, Any]] = {}
    for split, value in dataset.frames():
        files[f"{split}.parquet"] = _write_file(directory, f"{split}.parquet", _parquet_bytes(value), keyring=keyring)
    if dataset.pipeline is not None:
        import joblib

        buffer = io.BytesIO()
        try:
            joblib.dump(dataset.pipeline, buffer)
        except Exception as exc:  # pickling errors come in many types
            raise DatasetVersionError(f"cannot pickle the pipeline ({type(dataset.pipeline).__name__}): {exc}") from exc
        files[PIPELINE_FILE] = _write_file(directory, PIPELINE_FILE, buffer.getvalue(), keyring=keyring)
    return files


def _write_file(
    directory: str, fname: str, data: bytes, *, replace: bool = False, keyring: Keyring | None = None
) -> dict[str, Any]:
    """Write bytes durably (fsync), read-only, sealed when `keyring` is given; with `replace`,
    atomically replace an old copy. Returns the plaintext's {sha256, bytes}."""
    path = os.path.join(directory, fname)
    target = path + ".part" if replace else path
    with open(target, "xb") as handle:
        handle.write(seal(keyring.active(), data) if keyring is not None else data)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(target, 0o444)
    if replace:
        os.replace(target, path)
    return {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}


def _lock_directory(path: str) -> int | None:
    """Hold an exclusive advisory lock on a directory; the open descriptor (None without flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover  (Windows: no flock; clean_temporary then keeps everything)
        return None
    fd = os.open(path, os.O_RDONLY)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    return fd


def _abandoned(path: str) -> bool:
    """True when no live process holds the lock of a temporary save directory (and it is not brand new)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return False
    try:
        if time.time() - os.stat(path).st_mtime < _TMP_GRACE_S:
            return False
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # gone meanwhile: published or cleaned by another process
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False  # a live save holds it
    finally:
        os.close(fd)
    return True


def _make_writable(directory: str) -> None:
    """Undo read-only bits inside a temporary directory so it can be deleted (its files are 0o444)."""
    with contextlib.suppress(OSError):
        os.chmod(directory, 0o755)


def _make_read_only(directory: str) -> None:
    for entry in os.scandir(directory):
        os.chmod(entry.path, 0o444)
    os.chmod(directory, 0o555)


def _fsync_dir(directory: str) -> None:
    """Make a rename durable; a no-op where directories cannot be opened (Windows)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
