"""Data-key rotation and the encryption of existing files (`keys rotate-data-key`, `keys encrypt-files`).

A rotation, resumable at every step:

1. unless one is under way (the keyring holds a "rotating" key), create a new data key: it becomes
   active (every new write uses it) and the old one "rotating";
2. re-encrypt every file of the package's (`package_files`: ingested tables and rejects, feature
   tables, dataset versions) that is not under the active key, one at a time, each replaced
   atomically: an interruption leaves every file either old or new, and the next run picks up the
   rest. A plaintext file (from a checkout before encryption) is encrypted the same way;
3. re-encrypt the online store's values through its hook (`ONLINE_HOOK`), when it has one;
4. mark the rotating keys retired (`Keyring.finish_rotation`).

Retired keys stay in the keyring (a backup or a file written by a process that had not yet seen
the new key still opens). Dataset versions keep their identity: the registry hashes the plaintext
(datasets.registry), so re-encryption changes no manifest and no hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthmate_features import _feast
from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto import file_key_id, reencrypt_file
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import FeatureRepoError
from healthmate_features.util.text import repo_relative

#: The method an online store (Feast OnlineStore instance) may define to re-encrypt its values
#: under the active data key: `reencrypt_values(config: RepoConfig) -> int` (values rewritten).
#: Stores without it hold no encrypted values of ours; the rotation says so.
ONLINE_HOOK = "reencrypt_values"


@dataclass
class RotationReport:
    """What a rotation (or `encrypt-files`) did: the key ids, the files rewritten, the online store."""

    active: str
    created: bool
    resumed_from: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    online: int | None = None
    online_note: str = ""
    retired: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "active": self.active,
            "created": self.created,
            "resumed_from": self.resumed_from,
            "files_reencrypted": len(self.files),
            "files": self.files,
            "online_values_reencrypted": self.online,
            "online_note": self.online_note,
            "retired": self.retired,
        }


def package_files(settings: Settings) -> list[Path]:
    """The package's encrypted-at-rest files outside dataset versions: ingested tables, rejects
    files and feature tables (the files that exist). Dataset versions: DatasetRegistry.reencrypt."""
    found: list[Path] = []
    if settings.ingested_dir.is_dir():
        found += sorted(settings.ingested_dir.glob("*.parquet")) + sorted(settings.ingested_dir.glob("*.rejects.csv"))
    if settings.features_dir.is_dir():
        found += sorted(settings.features_dir.glob("*.parquet"))
    return [p for p in found if p.is_file()]


def data_keys(settings: Settings) -> dict[str, str]:
    """Every data key's id and state (active, rotating, retired), oldest first."""
    return backend_for(settings).keyring().key_ids()


def rotate_data_key(
    settings: Settings, *, new_key: bool = True, on_file: Callable[[str], None] | None = None
) -> RotationReport:
    """Rotate the data key (see the module docstring) and re-encrypt everything under the new one.

    With `new_key=False` (`keys encrypt-files`) no key is created: files that are plaintext or
    under an old key are (re-)encrypted under the active one, and rotating keys are retired only
    when a rotation was under way. `on_file(path)` is called after each file is rewritten.
    Raises EncryptionKeyError when a file does not open with any key of the keyring (it is left as it was).
    """
    backend = backend_for(settings)
    keyring = backend.keyring()
    rotating = keyring.rotating()
    created = False
    if new_key and not rotating:
        keyring.rotate()
        created = True
        rotating = keyring.rotating()
    active = keyring.active().key_id
    report = RotationReport(active=active, created=created, resumed_from=[] if created else rotating)

    def done(path: str) -> None:
        report.files.append(repo_relative(Path(path), settings.repo_path))
        if on_file is not None:
            on_file(path)

    for path in package_files(settings):
        if file_key_id(path) != active and reencrypt_file(keyring, path):
            done(str(path))
    if settings.datasets_dir.is_dir():
        DatasetRegistry.from_settings(settings).reencrypt(on_file=done)
    report.online, report.online_note = _reencrypt_online(settings)
    if rotating:
        report.retired = keyring.finish_rotation()
    return report


def _reencrypt_online(settings: Settings) -> tuple[int | None, str]:
    """Run the online store's re-encryption hook; (values rewritten or None, a note for the user)."""
    backend = backend_for(settings)
    try:
        with backend.service_errors():
            store = backend.open_feature_store()
    except FeatureRepoError:
        return None, "no Feast repository applied: the online store holds nothing yet"
    online = _feast.online_store(store)
    hook = getattr(online, ONLINE_HOOK, None)
    if hook is None:
        return None, (
            f"the online store ({type(online).__name__}) has no {ONLINE_HOOK}() hook: it holds no values "
            "encrypted by this package, nothing to re-encrypt"
        )
    return int(hook(store.config)), ""
