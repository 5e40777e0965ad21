"""``compute`` never imports or names ``virt`` (layering rule).

The redirect endpoint and orchestration get what they need from the
driver by injection (``RedirectHost``, ``Redirector(check_destination=,
require_agent=, cleanups=)``); the driver wires them. This test fails as
soon as a module of ``nova_dcmigrate/compute`` imports a ``virt`` module
(ours or Nova's), also under ``TYPE_CHECKING`` or inside a function, or
names ``nova_dcmigrate.virt`` in its text.
"""

from __future__ import annotations

import ast
import pathlib

import nova_dcmigrate.compute

PACKAGE = pathlib.Path(nova_dcmigrate.compute.__file__).parent
FORBIDDEN = ("nova_dcmigrate.virt", "nova.virt")


def _imports(tree: ast.AST) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            names.append(base)
            names.extend("%s.%s" % (base, a.name) for a in node.names)
    return names


def _violations(path: pathlib.Path) -> list[str]:
    text = path.read_text()
    bad = [name for name in _imports(ast.parse(text))
           if any(name == f or name.startswith(f + ".") for f in FORBIDDEN)
           or name.startswith("..virt")]
    if "nova_dcmigrate.virt" in text:
        bad.append("names nova_dcmigrate.virt")
    return bad


def test_compute_does_not_import_virt() -> None:
    modules = sorted(PACKAGE.glob("*.py"))
    assert len(modules) >= 6
    found = {p.name: _violations(p) for p in modules}
    assert {k: v for k, v in found.items() if v} == {}


def test_the_check_catches_an_import(tmp_path: pathlib.Path) -> None:
    # The check itself must be able to fail.
    for line in ("from nova_dcmigrate.virt.libvirt import driver\n",
                 "import nova.virt.libvirt.driver\n",
                 "if TYPE_CHECKING:\n    from nova_dcmigrate.virt import x\n"):
        bad = tmp_path / "bad.py"
        bad.write_text(line)
        assert _violations(bad)
