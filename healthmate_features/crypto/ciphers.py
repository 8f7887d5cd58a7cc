"""Encrypting bytes and Parquet files under a data key, and finding which key a ciphertext needs.

Bytes (online values, pickled pipelines, JSON): AES-256-GCM in a small envelope,

    b"HME1" | len(key id) (1 byte) | key id (ASCII) | nonce (12 bytes) | ciphertext | tag (16 bytes)

with the header and the caller's `aad` (e.g. which entity and field a value belongs to, so a
value cannot be moved to another user's key) as associated data. Any change fails the tag.

Files: `write_parquet`/`write_sealed` write under the active key; `open_parquet`, `parquet_dataset`
and `duckdb_scan` read encrypted and plaintext (pre-encryption) files alike; `file_key_id` says
which key a file needs (None: plaintext); `reencrypt_file` moves one file to the active key,
atomically (a rotation); `content_sha256` hashes what a file holds, not its ciphertext.

Parquet: Parquet modular encryption (AES_GCM_V1, footer and every column under the data key,
footer encrypted) written and read by pyarrow (`create_encryption_properties`). The file's AAD
prefix, stored in plain in its crypto metadata, is `healthmate-data-key:<id>;`: it names the key
without opening the file (`parquet_key_id`). DuckDB refuses such a file without the key; the
package scans it through pyarrow (`parquet_dataset`), not DuckDB's own decryption (DuckDB 1.5's
reader fails the tag check on pyarrow-written string and unstatisticked columns, and writing
needs its httpfs extension, which cannot be installed offline: README "Security and compliance").
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from healthmate_features.crypto.keyring import DataKey, Keyring
from healthmate_features.crypto.master import NONCE_BYTES
from healthmate_features.errors import EncryptionKeyError

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

MAGIC = b"HME1"
TAG_BYTES = 16
_AAD_PREFIX = b"healthmate-data-key:"
_AAD_PATTERN = re.compile(rb"healthmate-data-key:(dk-[0-9a-f]{1,32});")
_PARQUET_TAIL_SCAN = 4096  # the crypto metadata (with the AAD prefix) opens the footer region


# -- bytes ------------------------------------------------------------------------------------


def seal(key: DataKey, plaintext: bytes, *, aad: bytes = b"") -> bytes:
    """`plaintext` encrypted under `key`, in the envelope above."""
    key_id = key.key_id.encode("ascii")
    header = MAGIC + bytes((len(key_id),)) + key_id
    nonce = os.urandom(NONCE_BYTES)
    return header + nonce + _aead(key).encrypt(nonce, plaintext, header + aad)


def sealed_key_id(blob: bytes) -> str | None:
    """The data key id an envelope names, or None if `blob` is not one (e.g. a plaintext value)."""
    if len(blob) < len(MAGIC) + 1 or not blob.startswith(MAGIC):
        return None
    size = blob[len(MAGIC)]
    end = len(MAGIC) + 1 + size
    if len(blob) < end + NONCE_BYTES + TAG_BYTES:
        return None
    return blob[len(MAGIC) + 1 : end].decode("ascii", errors="replace")


def unseal(keyring: Keyring, blob: bytes, *, what: str, aad: bytes = b"") -> bytes:
    """The plaintext of an envelope; EncryptionKeyError naming `what` and the key when it does not open."""
    key_id = sealed_key_id(blob)
    if key_id is None:
        raise EncryptionKeyError(
            f"{what} is not encrypted by this package (no HME1 envelope); it was written without "
            "encryption or is damaged"
        )
    key = keyring.get(key_id, what=what)
    header_end = len(MAGIC) + 1 + len(key_id)
    nonce = blob[header_end : header_end + NONCE_BYTES]
    try:
        return _aead(key).decrypt(nonce, blob[header_end + NONCE_BYTES :], blob[:header_end] + aad)
    except InvalidTag:
        raise EncryptionKeyError(
            f"{what} does not decrypt under data key {key_id}: it was altered, or moved from another place"
        ) from None


def seal_many(key: DataKey, plaintexts: Sequence[bytes], aads: Sequence[bytes]) -> list[bytes]:
    """`seal(key, p, aad=a)` of each pair, faster: one header, one random read for every nonce.

    Each result is an ordinary envelope (`unseal` opens it); nonces are 96 random bits each."""
    key_id = key.key_id.encode("ascii")
    header = MAGIC + bytes((len(key_id),)) + key_id
    nonces = os.urandom(NONCE_BYTES * len(plaintexts))
    encrypt = _aead(key).encrypt
    out = []
    for index, (plaintext, aad) in enumerate(zip(plaintexts, aads, strict=True)):
        nonce = nonces[index * NONCE_BYTES : (index + 1) * NONCE_BYTES]
        out.append(header + nonce + encrypt(nonce, plaintext, header + aad))
    return out


def unseal_many(keyring: Keyring, blobs: Sequence[bytes], aads: Sequence[bytes], *, what: str) -> list[bytes]:
    """`unseal(keyring, b, aad=a, what=what)` of each pair, the key of each envelope looked up once.

    The envelopes of one call are mostly under one key: the last key's header is tried first
    (one prefix test per value), other keys' from a table."""
    keys: dict[bytes, tuple[int, Callable[..., bytes]]] = {}  # envelope header -> (length, its key's decrypt)
    header, start = b"", 0  # the last key's
    decrypt: Callable[..., bytes] | None = None
    out: list[bytes] = []
    append = out.append
    for blob, aad in zip(blobs, aads, strict=True):
        if decrypt is None or not blob.startswith(header):
            key_id = sealed_key_id(blob)
            if key_id is None:
                append(unseal(keyring, blob, what=what, aad=aad))  # the error
                continue
            start = len(MAGIC) + 1 + blob[len(MAGIC)]
            header = blob[:start]
            found = keys.get(header)
            if found is None:
                found = keys[header] = (start, _aead(keyring.get(key_id, what=what)).decrypt)
            start, decrypt = found
        try:
            append(decrypt(blob[start : start + NONCE_BYTES], blob[start + NONCE_BYTES :], header + aad))
        except InvalidTag:
            raise EncryptionKeyError(
                f"{what} does not decrypt under data key {sealed_key_id(blob)}: it was altered, or moved from "
                "another place"
            ) from None
    return out


_AEADS: dict[str, AESGCM] = {}


def _aead(key: DataKey) -> AESGCM:
    aead = _AEADS.get(key.key_id)
    if aead is None:
        aead = _AEADS[key.key_id] = AESGCM(key.secret)
    return aead


# -- Parquet ----------------------------------------------------------------------------------


def parquet_encryption(key: DataKey, *, plaintext_footer: bool = False):
    """pyarrow FileEncryptionProperties for a file under `key` (pass to ParquetWriter/write_table).

    `plaintext_footer`: the footer (column names and types, row counts; no statistics) stays
    readable without the key, every column's values are encrypted. For sources whose schema Feast
    reads with plain pyarrow before it writes to them (the push table: `write_to_offline_store`)."""
    import pyarrow.parquet.encryption as pe

    return pe.create_encryption_properties(
        key.secret, aad_prefix=_AAD_PREFIX + key.key_id.encode("ascii") + b";", plaintext_footer=plaintext_footer
    )


def parquet_decryption(key: DataKey):
    """pyarrow FileDecryptionProperties for files under `key` (ParquetFile, read_table, datasets)."""
    import pyarrow.parquet.encryption as pe

    return pe.create_decryption_properties(key.secret)


def parquet_key_id(path: str | Path) -> str | None:
    """The data key id an encrypted Parquet file was written under; None for a plaintext file.

    Reads only the file's tail (the crypto metadata is stored in plain; with a plaintext footer,
    the algorithm and its AAD prefix end the footer). Raises EncryptionKeyError for an encrypted
    file this package did not write (no key id in it)."""
    magic, region = _parquet_tail(path)
    if magic is None:
        return None
    if magic == b"PAR1":
        found = _AAD_PATTERN.search(region[-_PARQUET_TAIL_SCAN:])
        return found.group(1).decode("ascii") if found else None
    found = _AAD_PATTERN.search(region[:_PARQUET_TAIL_SCAN])
    if not found:
        raise EncryptionKeyError(f"{path} is an encrypted Parquet file that names no healthmate data key")
    return found.group(1).decode("ascii")


def parquet_footer_is_plain(path: str | Path) -> bool:
    """Whether the Parquet file `path` is encrypted with a readable footer (`plaintext_footer`);
    False for a missing, plaintext or fully encrypted file."""
    try:
        magic, region = _parquet_tail(path)
    except (FileNotFoundError, EncryptionKeyError):
        return False
    return magic == b"PAR1" and _AAD_PATTERN.search(region[-_PARQUET_TAIL_SCAN:]) is not None


def _parquet_tail(path: str | Path) -> tuple[bytes | None, bytes]:
    """(the closing magic, PAR1 or PARE, and the footer's bytes); (None, b"") for a file too short."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        if size < 12:
            return None, b""
        handle.seek(size - 8)
        tail = handle.read(8)
        if tail[4:] not in (b"PAR1", b"PARE"):
            raise EncryptionKeyError(f"{path} is not a Parquet file (no PAR1/PARE magic at its end)")
        footer_len = int.from_bytes(tail[:4], "little")
        start = max(0, size - 8 - footer_len)
        if tail[4:] == b"PARE":
            handle.seek(start)
            return b"PARE", handle.read(min(footer_len, _PARQUET_TAIL_SCAN))
        # A plaintext footer ends with the encryption algorithm (AAD prefix) and the footer's signature.
        handle.seek(max(start, size - 8 - _PARQUET_TAIL_SCAN))
        return b"PAR1", handle.read()


def parquet_key(keyring: Keyring, path: str | Path) -> DataKey:
    """The data key that opens the encrypted Parquet file `path` (EncryptionKeyError if plaintext)."""
    key_id = parquet_key_id(path)
    if key_id is None:
        raise EncryptionKeyError(
            f"{path} is a plaintext Parquet file where an encrypted one was expected; re-run the step "
            "that wrote it, or `healthmate-features keys rotate-data-key` to encrypt existing files"
        )
    return keyring.get(key_id, what=str(path))


def read_parquet(keyring: Keyring, path: str | Path, *, columns: Iterable[str] | None = None) -> pa.Table:
    """The whole encrypted Parquet file `path` as an Arrow table (the columns asked for)."""
    import pyarrow.parquet as pq

    key = parquet_key(keyring, path)
    try:
        return pq.read_table(
            path, columns=list(columns) if columns is not None else None, decryption_properties=parquet_decryption(key)
        )
    except OSError as exc:
        if "decrypt" in str(exc).lower():
            raise EncryptionKeyError(f"{path} does not decrypt under data key {key.key_id}: it was altered") from None
        raise


KeyringSource = Keyring | Callable[[], Keyring] | None
"""A keyring, or a callable that builds one (called only when a file turns out to be encrypted)."""


def _key(keyring: KeyringSource, key_id: str, *, what: str) -> DataKey:
    return _key_ring(keyring, key_id, what=what).get(key_id, what=what)


def open_parquet(keyring: KeyringSource, path: str | Path) -> pq.ParquetFile:
    """A pyarrow ParquetFile over `path`, decrypting when it is encrypted (plaintext files, written
    before encryption, open as they are). `keyring` may be a callable, called only when needed."""
    import pyarrow.parquet as pq

    key_id = parquet_key_id(path)
    if key_id is None:
        return pq.ParquetFile(path)
    key = _key(keyring, key_id, what=str(path))
    return pq.ParquetFile(path, decryption_properties=parquet_decryption(key))


def parquet_dataset(keyring: KeyringSource, paths: str | Path | Sequence[str | Path]) -> ds.Dataset:
    """A pyarrow dataset over Parquet files, for DuckDB to scan lazily (register it on a
    connection: projections and filters are pushed into the scan). Encrypted files are decrypted
    under the key each names; plaintext files (written before encryption) are read as they are.

    `keyring` may be a callable that builds one: it is called only when a file is encrypted."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    files = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not files:
        raise EncryptionKeyError("no Parquet files to scan")
    sealed = [f for f in files if _is_sealed(f)]
    if sealed:
        # Parquet bytes inside an HME1 envelope (a dataset version's file): decrypted into memory.
        parts = [ds.dataset(pq.read_table(pa.BufferReader(_unseal_file(keyring, f)))) for f in sealed]
        rest = [f for f in files if f not in sealed]
        return ds.dataset(parts + ([parquet_dataset(keyring, rest)] if rest else []))
    by_key: dict[str | None, list[str]] = {}
    for file in files:
        by_key.setdefault(parquet_key_id(file), []).append(file)
    if len(by_key) > 1:
        # Files under different keys (a rotation under way, or plaintext left over): one dataset per key, unioned.
        return ds.dataset([parquet_dataset(keyring, group) for _, group in sorted(by_key.items(), key=str)])
    key_id, group = by_key.popitem()
    if key_id is None:
        return ds.dataset(group, format="parquet")
    key = _key(keyring, key_id, what=group[0])
    options = ds.ParquetFragmentScanOptions(decryption_properties=parquet_decryption(key))
    return ds.dataset(group, format=ds.ParquetFileFormat(default_fragment_scan_options=options))


def _unseal_file(keyring: KeyringSource, path: str) -> bytes:
    blob = Path(path).read_bytes()
    return unseal(_key_ring(keyring, str(sealed_key_id(blob)), what=path), blob, what=path)


def _head(path: str | Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC) + 1 + 255 + NONCE_BYTES + TAG_BYTES)


def _is_sealed(path: str | Path) -> bool:
    return _head(path).startswith(MAGIC)


def file_key_id(path: str | Path) -> str | None:
    """The data key id the file at `path` is encrypted under (an HME1 envelope, or Parquet with
    modular encryption); None for a plaintext file. Reads the file's head (and a Parquet tail)."""
    head = _head(path)
    if head.startswith(MAGIC):
        return sealed_key_id(head)
    if head.startswith((b"PAR1", b"PARE")):
        return parquet_key_id(path)
    return None


def duckdb_scan(
    con: duckdb.DuckDBPyConnection, paths: str | Path | Sequence[str | Path], keyring: KeyringSource
) -> str:
    """A DuckDB table expression that reads the Parquet file(s) `paths` on `con`.

    Plaintext files only: DuckDB's own `read_parquet([...])` (fastest). Otherwise a pyarrow dataset
    (`parquet_dataset`) registered on `con` under a name derived from the paths, which DuckDB scans
    lazily, decrypting as it reads. Side effect: may register a view on `con`."""
    import hashlib

    files = [str(p) for p in ([paths] if isinstance(paths, (str, Path)) else paths)]
    if not any(file_key_id(f) for f in files):
        return "read_parquet([" + ", ".join("'" + f.replace("'", "''") + "'" for f in files) + "])"
    name = "__hm_enc_" + hashlib.sha256("\0".join(files).encode()).hexdigest()[:16]
    con.register(name, parquet_dataset(keyring, files))
    return name


def write_parquet(
    keyring: Keyring,
    data: pa.Table | pa.RecordBatchReader,
    path: str | Path,
    *,
    compression: str = "zstd",
    plaintext_footer: bool | None = None,
) -> int:
    """Write `data` to `path` as Parquet encrypted under the active data key, atomically; the row count.

    A RecordBatchReader (e.g. DuckDB's `to_arrow_reader()`) is streamed batch by batch.
    `plaintext_footer` (see parquet_encryption): None keeps the readable footer of an encrypted
    file at `path` that has one (erasure, retention and rotation rewrite the push table); anything
    else gets an encrypted footer."""
    if plaintext_footer is None:
        plaintext_footer = parquet_footer_is_plain(path)
    properties = parquet_encryption(keyring.active(), plaintext_footer=plaintext_footer)
    return write_encrypted_parquet(data, path, properties, compression=compression)


def write_encrypted_parquet(
    data: pa.Table | pa.RecordBatchReader, path: str | Path, properties: Any, *, compression: str = "zstd"
) -> int:
    """Write `data` to `path` as Parquet with pyarrow FileEncryptionProperties `properties`,
    atomically (renamed into place once complete); the row count. A RecordBatchReader is streamed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from healthmate_features.util.files import atomic_path

    rows = 0
    with atomic_path(path) as tmp:
        with pq.ParquetWriter(tmp, data.schema, encryption_properties=properties, compression=compression) as writer:
            if isinstance(data, pa.Table):
                writer.write_table(data)
                rows = data.num_rows
            else:
                for batch in data:
                    writer.write_batch(batch)
                    rows += batch.num_rows
    return rows


def write_sealed(keyring: Keyring, path: str | Path, data: bytes) -> None:
    """Write `data` to `path` encrypted under the active data key (an HME1 envelope), atomically."""
    from healthmate_features.util.files import atomic_write_bytes

    atomic_write_bytes(path, seal(keyring.active(), data))


def read_sealed(keyring: Keyring, path: str | Path) -> bytes:
    """The plaintext of a file written by `write_sealed`."""
    return unseal(keyring, Path(path).read_bytes(), what=str(path))


def reencrypt_file(keyring: Keyring, path: str | Path) -> bool:
    """Re-encrypt the file `path` under the active data key, atomically (a temporary sibling
    renamed over it: an interruption leaves the old file or the new one, never half of each).
    A plaintext file is encrypted. Parquet stays Parquet (modular encryption, streamed batch by
    batch), anything else becomes an HME1 envelope. Returns False when it already was under the
    active key. The file's mode is kept (dataset files are read-only)."""
    import pyarrow as pa

    path = Path(path)
    if file_key_id(path) == keyring.active().key_id:
        return False
    mode = path.stat().st_mode & 0o777
    if _head(path).startswith((b"PAR1", b"PARE")):
        source = open_parquet(keyring, path)
        try:
            batches = source.iter_batches(batch_size=65_536)
            write_parquet(keyring, pa.RecordBatchReader.from_batches(source.schema_arrow, batches), path)
        finally:
            source.close()
    else:
        write_sealed(keyring, path, _unseal_file(keyring, str(path)) if _is_sealed(path) else path.read_bytes())
    os.chmod(path, mode)
    return True


def content_sha256(keyring: KeyringSource, path: str | Path) -> str:
    """A SHA-256 of the file's content that re-encryption does not change: of its bytes when it is
    plaintext (as `sha256sum` gives), of the plaintext inside an HME1 envelope, and of an encrypted
    Parquet file's decrypted rows (Arrow IPC messages, prefixed so it never equals a file's hash)."""
    import hashlib

    digest = hashlib.sha256()
    if file_key_id(path) is None:
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    elif _is_sealed(path):
        digest.update(_unseal_file(keyring, str(path)))
    else:
        source = open_parquet(keyring, path)
        digest.update(b"healthmate-decrypted-parquet\0")
        digest.update(source.schema_arrow.serialize())
        for batch in source.iter_batches(batch_size=65_536):
            digest.update(batch.serialize())
    return digest.hexdigest()


def _key_ring(keyring: KeyringSource, key_id: str, *, what: str) -> Keyring:
    if keyring is None:
        raise EncryptionKeyError(f"{what} is encrypted under data key {key_id}, and no keyring was given to read it")
    return keyring if isinstance(keyring, Keyring) else keyring()
