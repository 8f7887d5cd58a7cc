"""The package's public face: every exported name resolves, and importing the package stays cheap."""

from __future__ import annotations

import subprocess
import sys

import healthmate_features


def test_every_exported_name_resolves_to_the_object_of_its_module():
    import importlib

    for name, module in healthmate_features._EXPORTS.items():
        assert getattr(healthmate_features, name) is getattr(importlib.import_module(module), name), name
    assert set(healthmate_features.__all__) == {"__version__", *healthmate_features._EXPORTS}


def test_an_unknown_name_is_an_attribute_error_naming_it():
    try:
        healthmate_features.no_such_thing  # noqa: B018
    except AttributeError as exc:
        assert "no_such_thing" in str(exc)
    else:
        raise AssertionError("an unknown attribute resolved")


def test_importing_the_package_loads_neither_pandas_nor_feast():
    code = (
        "import sys, healthmate_features, healthmate_features.cli; "
        "print(sorted({'pandas', 'feast'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
