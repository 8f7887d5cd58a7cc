"""Master keys: what wraps the data keys (the envelope's outer layer), behind one small interface.

A `MasterKey` has an id and wraps/unwraps data keys; nothing else ever sees it. `LocalMasterKey`
holds 32 bytes in memory and wraps with AES-256-GCM; its id is a fingerprint of the key
(`local:<12 hex>`), so a data key wrapped under another master key is named as such instead of
failing as garbage. A cloud KMS is another `MasterKey` whose `wrap`/`unwrap` call the KMS.

Where the local key comes from (`master_key(settings)`): HM_MASTER_KEY (base64 of 32 bytes), else
the file `Settings.master_key_path` (HM_MASTER_KEY_FILE, default `.healthmate/master.key` outside
data/). The file is created (mode 0600) only when the caller says a new deployment may start
(`create=True`: the keyring holds no data key yet); otherwise a missing key is an error, since a
fresh key could not open anything already written.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import secrets
from typing import Protocol

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from healthmate_features.config import Settings
from healthmate_features.errors import EncryptionKeyError
from healthmate_features.util.files import fsync_directory, temporary_sibling

KEY_BYTES = 32
NONCE_BYTES = 12


class MasterKey(Protocol):
    """Wraps and unwraps data keys. `context` is bound to the wrapped key (AES-GCM associated
    data): the data key's id, so a wrapped key cannot be swapped for another's."""

    key_id: str

    def wrap(self, data_key: bytes, *, context: bytes) -> bytes: ...

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes: ...


class LocalMasterKey:
    """A master key held in memory (from the environment or a file); AES-256-GCM key wrapping."""

    def __init__(self, secret: bytes, *, source: str) -> None:
        if len(secret) != KEY_BYTES:
            raise EncryptionKeyError(
                f"the master key from {source} has {len(secret)} bytes; it must be {KEY_BYTES} random bytes (base64 "
                "in HM_MASTER_KEY: `python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'`)"
            )
        self._aead = AESGCM(secret)
        self.key_id = "local:" + hashlib.sha256(b"healthmate master key id\0" + secret).hexdigest()[:12]
        self.source = source

    def __repr__(self) -> str:
        return f"LocalMasterKey({self.key_id}, from {self.source})"

    def wrap(self, data_key: bytes, *, context: bytes) -> bytes:
        nonce = os.urandom(NONCE_BYTES)
        return nonce + self._aead.encrypt(nonce, data_key, context)

    def unwrap(self, wrapped: bytes, *, context: bytes) -> bytes:
        try:
            return self._aead.decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], context)
        except InvalidTag:
            raise EncryptionKeyError(
                f"the master key {self.key_id} (from {self.source}) does not unwrap data key "
                f"{context.decode(errors='replace')}: the wrapped key was altered"
            ) from None


def master_key(settings: Settings, *, create: bool = False) -> LocalMasterKey:
    """The deployment's master key: HM_MASTER_KEY, else the key file (created when `create`).

    Raises EncryptionKeyError when there is no key (and `create` is false), or it is malformed."""
    if settings.master_key:
        try:
            secret = base64.b64decode(settings.master_key.strip(), validate=True)
        except (binascii.Error, ValueError):
            raise EncryptionKeyError(
                "HM_MASTER_KEY is not base64; set it to 32 random bytes in base64, e.g. "
                "`python -c 'import os,base64; print(base64.b64encode(os.urandom(32)).decode())'`"
            ) from None
        return LocalMasterKey(secret, source="HM_MASTER_KEY")
    path = settings.master_key_path
    if not path.exists():
        if not create:
            raise EncryptionKeyError(
                f"no master key: {path} does not exist and HM_MASTER_KEY is unset, but data keys exist "
                "that only the original master key opens; restore that file (or set HM_MASTER_KEY / "
                "HM_MASTER_KEY_FILE to it)"
            )
        _create_key_file(path)
    try:
        text = path.read_text().strip()
        secret = base64.b64decode(text, validate=True)
    except OSError as exc:
        raise EncryptionKeyError(f"cannot read the master key file {path}: {exc.strerror}") from None
    except (binascii.Error, ValueError):
        raise EncryptionKeyError(f"the master key file {path} does not hold base64 (32 random bytes)") from None
    return LocalMasterKey(secret, source=str(path))


def _create_key_file(path) -> None:
    """Write 32 random bytes (base64) to `path`, mode 0600, atomically; never replace an existing key."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode() + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, path)  # fails if another process created the key first: keep theirs
        except FileExistsError:
            pass
        fsync_directory(path.parent)
    finally:
        tmp.unlink(missing_ok=True)
