"""Packaging: base requirements for compute hosts, [lab] extra, plugin name.

Compute hosts install nova-dcmigrate next to nova-compute; they must not
pull in the lab and benchmark stack. The tempest plugin's importable
package must not be called ``tempest_plugin`` (other projects use that
name); its folder is.
"""

from __future__ import annotations

import ast
import configparser
import pathlib

ROOT = pathlib.Path(__file__).parents[2]
LAB_ONLY = ("pyroute2", "qemu.qmp", "matplotlib", "rich")


def _cfg() -> configparser.ConfigParser:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    return cfg


def _names(lines: str) -> set[str]:
    names = set()
    for line in lines.splitlines():
        line = line.split("#")[0].strip()
        if line:
            for sep in "<>=!;[ ":
                line = line.split(sep)[0]
            names.add(line.lower())
    return names


def test_lab_dependencies_only_in_the_extra() -> None:
    base = _names((ROOT / "requirements.txt").read_text())
    assert not base & set(LAB_ONLY)
    assert _names(_cfg()["extras"]["lab"]) == set(LAB_ONLY)


def test_tempest_plugin_package_name() -> None:
    cfg = _cfg()
    assert "tempest_plugin" not in cfg["files"]["packages"].split()
    entry = cfg["entry_points"]["tempest.test_plugins"].strip()
    assert entry == ("nova_dcmigrate = nova_dcmigrate_tempest_plugin."
                     "plugin:DcmigrateTempestPlugin")
    # Inside the folder, the package refers to itself relatively only.
    for path in (ROOT / "tempest_plugin").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("tempest_plugin"), \
                    path
            if isinstance(node, ast.Import):
                assert not any(a.name.startswith("tempest_plugin")
                               for a in node.names), path
