"""Governance: erasure, retention and pseudonymized exports (README "Erasure, retention and exports").

    erasure   erase_user (every store, resumable, a certificate), scan_user (`erase --verify`)
    retention the policy (configs/retention.yaml) and apply_retention (`retention apply`, a scheduled job)
    exports   pseudonymized exports: user_id as a keyed hash, direct identifiers dropped
    rows      one user's rows, or rows older than a time, out of a Parquet or CSV file, atomically
    data_keys data-key rotation: re-encrypt every file (and the online store's values) under a new key

The ledger of erased people (keyed hashes) lives in `backends.ledger`, below `raw` and
`training`, which read it at ingest and build time.
"""

from __future__ import annotations

from healthmate_features.governance.erasure import ErasureResult, ScanResult, erase_user, list_erasures, scan_user
from healthmate_features.governance.exports import export_key, pseudonymize_dataset
from healthmate_features.governance.retention import RetentionPolicy, RetentionResult, apply_retention, load_policy

__all__ = [
    "ErasureResult",
    "RetentionPolicy",
    "RetentionResult",
    "ScanResult",
    "apply_retention",
    "erase_user",
    "export_key",
    "list_erasures",
    "load_policy",
    "pseudonymize_dataset",
    "scan_user",
]
