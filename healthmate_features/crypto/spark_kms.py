"""Encrypted Parquet that Spark (parquet-mr) and this package both read: keys through a KMS client.

`ciphers.write_parquet` hands pyarrow the data key itself (`create_encryption_properties`): the
file carries no key metadata parquet-mr understands, so Spark cannot open it. parquet-mr opens
files written through its key-management tools (PropertiesDrivenCryptoFactory), which pyarrow
implements too (`pyarrow.parquet.encryption.CryptoFactory`): every file gets a random data
encryption key (DEK), wrapped by a key-encryption key (KEK, double wrapping), wrapped by a *master
key* through a KMS client; the wrapped keys and the master key's id are stored in the file's
footer crypto metadata (in plain, never a key in clear).

Here the master keys are the keyring's data keys (ids `dk-<hex>`), and the KMS client wraps
locally: AES-GCM under the master key, the master key id (UTF-8) as associated data, base64 of
nonce | ciphertext | tag. `KeyringKmsClient` does it in Python for pyarrow;
`java/KeyListKmsClient.java` does it in the JVM for Spark (the format of parquet-mr's test-only
InMemoryKMS, which PySpark does not ship), with the keys from the Hadoop property
`parquet.encryption.key.list`. `spark_kms_jar` compiles that class against Spark's own jars
(javac, a JDK 17+; no download), `spark_encryption_conf` gives the session settings. DEKs and
KEKs are 256-bit AES-GCM (AES_GCM_V1), every column and the footer under them.

    write_kms_parquet / read_kms_parquet   pyarrow side, streamed like ciphers.write_parquet
    kms_parquet_key_id                     which data key a file (or a Spark output directory) needs
    spark_kms_jar, spark_encryption_conf   the JVM side: a SparkSession.builder's settings
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import weakref
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow.parquet.encryption as pe
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from healthmate_features.crypto.ciphers import _parquet_tail, write_encrypted_parquet
from healthmate_features.crypto.keyring import Keyring
from healthmate_features.crypto.master import NONCE_BYTES
from healthmate_features.errors import ConfigError, EncryptionKeyError

if TYPE_CHECKING:
    import pyarrow as pa

CRYPTO_FACTORY_CLASS = "org.apache.parquet.crypto.keytools.PropertiesDrivenCryptoFactory"
KMS_CLIENT_CLASS = "org.healthmate.parquet.KeyListKmsClient"
KEY_BITS = 256
JAVA_SOURCE = Path(__file__).with_name("java") / "KeyListKmsClient.java"
# Spark's default redaction, plus the master key list (the Spark UI and event logs show the conf).
REDACTION_REGEX = r"(?i)secret|password|token|access[.]?key|encryption[.]key[.]list"
_MASTER_KEY_ID = re.compile(rb'"masterKeyID":"(dk-[0-9a-f]{1,32})"')


class KeyringKmsClient(pe.KmsClient):
    """A pyarrow KmsClient whose master keys are the keyring's data keys, wrapping locally
    (byte-compatible with KeyListKmsClient.java and parquet-mr's InMemoryKMS)."""

    def __init__(self, keyring: Keyring) -> None:
        super().__init__()
        self._keyring = keyring

    def wrap_key(self, key_bytes: bytes, master_key_identifier: str) -> str:
        master = self._keyring.get(master_key_identifier, what="a Parquet key-encryption key")
        nonce = os.urandom(NONCE_BYTES)
        wrapped = AESGCM(master.secret).encrypt(nonce, key_bytes, master_key_identifier.encode())
        return base64.b64encode(nonce + wrapped).decode("ascii")

    def unwrap_key(self, wrapped_key: str | bytes, master_key_identifier: str) -> bytes:
        master = self._keyring.get(master_key_identifier, what="a Parquet file's key-encryption key")
        raw = base64.b64decode(wrapped_key)
        try:
            return AESGCM(master.secret).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], master_key_identifier.encode())
        except InvalidTag:
            raise EncryptionKeyError(
                f"a Parquet file's key-encryption key does not unwrap under data key {master_key_identifier}: "
                "its key metadata was altered"
            ) from None


_FACTORIES: weakref.WeakKeyDictionary[Keyring, pe.CryptoFactory] = weakref.WeakKeyDictionary()


def _factory(keyring: Keyring) -> pe.CryptoFactory:
    """One CryptoFactory per keyring (it caches unwrapped KEKs; keys of one keyring never serve another)."""
    factory = _FACTORIES.get(keyring)
    if factory is None:
        factory = _FACTORIES[keyring] = pe.CryptoFactory(lambda _config: KeyringKmsClient(keyring))
    return factory


def kms_encryption(keyring: Keyring, *, plaintext_footer: bool = False) -> pe.FileEncryptionProperties:
    """pyarrow FileEncryptionProperties for one file under the active data key as master key."""
    config = pe.EncryptionConfiguration(
        footer_key=keyring.active().key_id,
        uniform_encryption=True,
        plaintext_footer=plaintext_footer,
        double_wrapping=True,
        data_key_length_bits=KEY_BITS,
    )
    return _factory(keyring).file_encryption_properties(pe.KmsConnectionConfig(), config)


def kms_decryption(keyring: Keyring) -> pe.FileDecryptionProperties:
    """pyarrow FileDecryptionProperties for files written by `write_kms_parquet` or by Spark."""
    return _factory(keyring).file_decryption_properties(pe.KmsConnectionConfig(), pe.DecryptionConfiguration())


def write_kms_parquet(
    keyring: Keyring,
    data: pa.Table | pa.RecordBatchReader,
    path: str | Path,
    *,
    compression: str = "zstd",
    plaintext_footer: bool = False,
) -> int:
    """Write `data` to `path` as Parquet Spark can read, encrypted under the active data key, atomically;
    the row count. A RecordBatchReader is streamed batch by batch."""
    properties = kms_encryption(keyring, plaintext_footer=plaintext_footer)
    return write_encrypted_parquet(data, path, properties, compression=compression)


def read_kms_parquet(keyring: Keyring, path: str | Path, *, columns: Iterable[str] | None = None) -> pa.Table:
    """A KMS-encrypted Parquet file, or a directory of them (a Spark output), as an Arrow table."""
    import pyarrow.parquet as pq

    for file in _parquet_files(path):
        kms_parquet_key_id(file, required=True)
    try:
        return pq.read_table(
            path, columns=list(columns) if columns is not None else None, decryption_properties=kms_decryption(keyring)
        )
    except OSError as exc:
        if "decrypt" in str(exc).lower() or "tag" in str(exc).lower():
            raise EncryptionKeyError(
                f"{path} does not decrypt under the keys its metadata names: it was altered"
            ) from None
        raise


def kms_parquet_key_id(path: str | Path, *, required: bool = False) -> str | None:
    """The data key id a KMS-encrypted Parquet file names as its master key (read from its footer
    crypto metadata, in plain); None for any other file (`required`: EncryptionKeyError instead)."""
    magic, region = _parquet_tail(path)
    found = _MASTER_KEY_ID.search(region) if magic else None
    if found is None and required:
        raise EncryptionKeyError(
            f"{path} is not Parquet encrypted through the keyring's KMS client (no master key id in its "
            "footer); files of ciphers.write_parquet are read with ciphers.read_parquet"
        )
    return found.group(1).decode("ascii") if found else None


def _parquet_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if not path.is_dir():
        return [path]
    return sorted(p for p in path.rglob("*.parquet") if not p.name.startswith(("_", ".")))


# -- Spark ------------------------------------------------------------------------------------


def spark_jars_dir() -> Path:
    """The directory of the installed PySpark's jars (ConfigError when PySpark is not installed)."""
    try:
        import pyspark
    except ImportError:
        raise ConfigError("PySpark is not installed; install the spark extra: pip install -e '.[spark]'") from None
    jars = Path(pyspark.__file__).parent / "jars"
    if not any(jars.glob("parquet-hadoop-*.jar")):
        raise ConfigError(f"no parquet-hadoop jar under {jars}; the PySpark installation is incomplete")
    return jars


def spark_kms_jar(cache_dir: str | Path, *, jars_dir: Path | None = None) -> Path:
    """A jar holding KeyListKmsClient, compiled against Spark's jars on first use and cached in
    `cache_dir` (named by a hash of the source and of the parquet-hadoop jar it was built against).

    Needs `javac` (JDK 17+) on PATH or under JAVA_HOME; ConfigError naming the fix otherwise.
    Side effect: writes the jar (about 3 kB) into `cache_dir`."""
    jars = jars_dir or spark_jars_dir()
    source = JAVA_SOURCE.read_bytes()
    parquet_jar = sorted(jars.glob("parquet-hadoop-*.jar"))[-1].name
    digest = hashlib.sha256(source + b"\0" + parquet_jar.encode()).hexdigest()[:16]
    target = Path(cache_dir) / f"healthmate-parquet-kms-{digest}.jar"
    if target.exists():
        return target
    javac = _javac()
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        classes = Path(work) / "classes"
        result = subprocess.run(
            [javac, "--release", "17", "-nowarn", "-d", str(classes), "-cp", str(jars / "*"), str(JAVA_SOURCE)],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise ConfigError(f"javac could not compile {JAVA_SOURCE.name} against {jars}: {result.stderr.strip()}")
        staged = Path(work) / target.name
        with zipfile.ZipFile(staged, "w", zipfile.ZIP_DEFLATED) as jar:
            jar.writestr("META-INF/MANIFEST.MF", "Manifest-Version: 1.0\r\n\r\n")
            for file in sorted(classes.rglob("*.class")):
                jar.write(file, file.relative_to(classes).as_posix())
        os.replace(staged, target)
    return target


def _javac() -> str:
    home = os.environ.get("JAVA_HOME")
    candidates = [str(Path(home) / "bin" / "javac")] if home else []
    candidates.append(shutil.which("javac") or "")
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise ConfigError(
        "javac was not found (JAVA_HOME/bin or PATH); Spark's Parquet encryption needs a small KMS client class "
        "compiled once: install a JDK 17+ (e.g. openjdk-17-jdk-headless)"
    )


def spark_encryption_conf(keyring: Keyring, *, jar: str | Path) -> dict[str, str]:
    """SparkSession.builder settings under which Spark reads files of `write_kms_parquet` and
    writes every Parquet file encrypted under the keyring's active data key (256-bit keys, footer
    encrypted); temporary shuffle and spill files are encrypted too (spark.io.encryption).

    The settings hold every data key of the keyring (base64): build the session with them, never
    log them; the key list is redacted from the Spark UI and event logs. `jar` (spark_kms_jar) must
    be at that path on the driver and on every executor."""
    active = keyring.active()  # the first data key is created on first use
    keys = [keyring.get(key_id, what="Spark's Parquet key list") for key_id in keyring.key_ids()]
    key_list = ",".join(f"{key.key_id}:{base64.b64encode(key.secret).decode('ascii')}" for key in keys)
    # parquet-mr caches KMS clients (and unwrapped key-encryption keys) per access token, JVM-wide,
    # for 10 minutes: with the default token a new session (another keyring, or this one after a
    # rotation) reused a client holding the old key list and could not read or write. The token
    # names the key set (a digest of the key ids, no secret), so a changed set gets a fresh client.
    token = hashlib.sha256(",".join(sorted(key.key_id for key in keys)).encode()).hexdigest()[:32]
    return {
        "spark.driver.extraClassPath": str(jar),
        "spark.executor.extraClassPath": str(jar),
        "spark.redaction.regex": REDACTION_REGEX,
        "spark.io.encryption.enabled": "true",
        "spark.hadoop.parquet.crypto.factory.class": CRYPTO_FACTORY_CLASS,
        "spark.hadoop.parquet.encryption.kms.client.class": KMS_CLIENT_CLASS,
        "spark.hadoop.parquet.encryption.key.list": key_list,
        "spark.hadoop.parquet.encryption.key.access.token": token,
        "spark.hadoop.parquet.encryption.uniform.key": active.key_id,
        "spark.hadoop.parquet.encryption.data.key.length.bits": str(KEY_BITS),
        "spark.hadoop.parquet.encryption.kek.length.bits": str(KEY_BITS),
        "spark.hadoop.parquet.encryption.double.wrapping": "true",
        # Timestamps as INT64 microseconds (UTC-adjusted), which pyarrow reads back as they were written.
        "spark.sql.parquet.outputTimestampType": "TIMESTAMP_MICROS",
    }
