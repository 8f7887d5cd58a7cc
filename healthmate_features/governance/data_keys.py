"""Data-key rotation and the encryption of existing files (`keys rotate-data-key`, `keys encrypt-files`).

A rotation, resumable at every step:

1. unless one is under way (the keyring holds a "rotating" key), create a new data key: it becomes
   active (every new write uses it) and the old one "rotating";
2. re-encrypt every file of the package's (`package_files`: ingested tables and rejects, feature
   tables, dataset versions) that is not under the active key, one at a time, each replaced
   atomically: an interruption leaves every file either old or new, and the next run picks up the
   rest. A plaintext file (from a checkout before encryption) is encrypted the same way;
3. re-encrypt the online store's values (`ONLINE_HOOK`, the encrypting online stores' rotation);
4. mark the rotating keys retired (`Keyring.finish_rotation`).

Retired keys stay in the keyring (a backup or a file written by a process that had not yet seen
the new key still opens). Dataset versions keep their identity: the registry hashes the plaintext
(datasets.registry), so re-encryption changes no manifest and no hash.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from healthmate_features.backends import backend_for
from healthmate_features.config import Settings
from healthmate_features.crypto import file_key_id, reencrypt_file
from healthmate_features.datasets.registry import DatasetRegistry
from healthmate_features.errors import ConfigError
from healthmate_features.util.text import repo_relative

#: The online store's re-encryption (the encrypting online stores' module, its own helper's work):
#: `reencrypt_online_values(settings) -> Reencrypted` (.reencrypted: values re-sealed). Looked up
#: by name, so a checkout without encrypting online stores rotates its files and says so.
ONLINE_HOOK = ("healthmate_features.stores.encrypted_online", "reencrypt_online_values")


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
    files, feature tables and the last build's state (data/features/_build: per-user
    fingerprints), served-feature logs (the files that exist). Dataset versions:
    DatasetRegistry.reencrypt."""
    from healthmate_features.backends.embedded import STATE_DIR
    from healthmate_features.governance.erasure import feature_log_files

    found: list[Path] = []
    if settings.ingested_dir.is_dir():
        found += sorted(settings.ingested_dir.glob("*.parquet")) + sorted(settings.ingested_dir.glob("*.rejects.csv"))
    if settings.features_dir.is_dir():
        found += sorted(settings.features_dir.glob("*.parquet"))
        found += sorted((settings.features_dir / STATE_DIR).glob("*.parquet"))
    found += feature_log_files(settings)
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
    """Run the online store's re-encryption (ONLINE_HOOK); (values re-sealed or None, a note for the user)."""
    module_name, function = ONLINE_HOOK
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError:
        return None, f"no online-store re-encryption in this installation ({module_name}.{function}): nothing re-sealed"
    if not backend_for(settings).feature_store_yaml.exists():
        return None, "no Feast configuration: the online store holds nothing"
    try:
        done = getattr(module, function)(settings)
    except ConfigError as exc:  # the configured online store does not encrypt: nothing of ours in it
        return None, str(exc)
    return int(done.reencrypted), ""
