"""A dataset version as `name@version`: the one definition the registry, tracking, the CLI and the API share.

Names are 1-128 letters, digits, '.', '_', '-' starting with a letter or digit (safe as a
directory name: no separators, no '..', nothing hidden). A reference's version is a label of up
to 64 such characters (and '+'): the registry's own versions are MAJOR.MINOR.PATCH; model
tracking accepts the labels other registries use (`health_risk@v3`) only for a run that says its
dataset is external (`--external-dataset`), and checks every other reference against the registry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from healthmate_features.errors import DatasetRefError

NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}"
VERSION_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,63}"
REF_PATTERN = rf"^{NAME_PATTERN}@{VERSION_PATTERN}$"  # for request models and OpenAPI
NAME_RE = re.compile(NAME_PATTERN)
_VERSION_RE = re.compile(VERSION_PATTERN)


@dataclass(frozen=True)
class DatasetRef:
    """A dataset version as `name@version` (the form the CLI, API and tables use)."""

    name: str
    version: str

    @classmethod
    def parse(cls, text: str | DatasetRef) -> DatasetRef:
        """Parse `name@version`; DatasetRefError when either part is missing or not a plain name."""
        if isinstance(text, DatasetRef):
            return text
        name, sep, version = str(text).partition("@")
        if not sep or not NAME_RE.fullmatch(name) or not _VERSION_RE.fullmatch(version):
            raise DatasetRefError(
                f"dataset {text!r} is not NAME@VERSION; pass a dataset version, e.g. health_risk@1.0.0 "
                "(letters, digits, '_', '.', '-')"
            )
        return cls(name, version)

    def __str__(self) -> str:
        return f"{self.name}@{self.version}"
