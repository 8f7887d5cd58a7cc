"""Governance: erasure of one person everywhere (README "Erasure, retention and exports").

    erasure   erase_user (every store, resumable, a certificate), scan_user (`erase --verify`)
    rows      one user's rows out of a Parquet or CSV file, atomically

The ledger of erased people (keyed hashes) lives in `backends.ledger`, below `raw` and
`training`, which read it at ingest and build time.
"""

from __future__ import annotations

from healthmate_features.governance.erasure import ErasureResult, ScanResult, erase_user, list_erasures, scan_user

__all__ = ["ErasureResult", "ScanResult", "erase_user", "list_erasures", "scan_user"]
