"""How the per-page code is chosen (native extension or pure Python)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

from nova_dcmigrate.stream import fastpath


def _probe(**env: str) -> str:
    code = ("from nova_dcmigrate.stream import fastpath; "
            "print(fastpath.native is not None, fastpath.reason)")
    out = subprocess.run([sys.executable, "-c", code], check=True,
                         capture_output=True, text=True,
                         env=dict(os.environ, **env))
    return out.stdout.strip()


def test_env_var_forces_pure_python() -> None:
    assert _probe(DCMIGRATE_NO_NATIVE="1") == \
        "False disabled by DCMIGRATE_NO_NATIVE"


def test_native_by_default_when_built() -> None:
    # Whether it was built, even if DCMIGRATE_NO_NATIVE disables it here.
    built = importlib.util.find_spec(
        "nova_dcmigrate.stream._speedups") is not None
    expect = "True native" if built else "False not built"
    assert _probe(DCMIGRATE_NO_NATIVE="").startswith(expect)


def test_forcing_native_without_the_extension_is_an_error(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fastpath, "_available", None)
    with pytest.raises(RuntimeError):
        with fastpath.forced(True):
            pass
    with fastpath.forced(False):
        assert not fastpath.enabled()
