"""The gate job (.zuul.yaml) configures what the lab cloud configures.

Why: the job cannot run here; these checks keep its structure and its
shared settings (nova_dcmigrate/lab/cloud/gate.py, which the lab cloud
uses) in step.
"""

from __future__ import annotations

from pathlib import Path
import re
from typing import Any

import yaml

from nova_dcmigrate.lab.cloud import gate

ZUUL = Path(__file__).resolve().parents[2] / ".zuul.yaml"
PLUGIN = "devstack/plugin.sh"


def _load() -> dict[str, dict[str, Any]]:
    items = yaml.safe_load(ZUUL.read_text())
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        ((kind, body),) = item.items()
        out[kind] = body
    return out


def _ini(value: Any) -> str:
    """YAML ``true``/``3`` as the string an ini file or localrc gets."""
    return str(value)


def test_structure() -> None:
    zuul = _load()
    assert set(zuul) == {"nodeset", "job", "project"}
    job, nodeset = zuul["job"], zuul["nodeset"]
    assert job["parent"] == "nova-live-migration"
    assert job["nodeset"] == nodeset["name"]
    assert len(nodeset["nodes"]) == 3
    groups = {g["name"]: g["nodes"] for g in nodeset["groups"]}
    assert len(groups["subnode"]) == 2
    assert job["name"] in zuul["project"]["check"]["jobs"]
    assert "x/nova-dcmigrate" in job["required-projects"]


def test_devstack_plugin_line() -> None:
    job = _load()["job"]
    repo = Path(__file__).resolve().parents[2]
    assert (repo / PLUGIN).is_file()
    for section in (job["vars"], job["group-vars"]["subnode"]):
        url = section["devstack_plugins"]["nova-dcmigrate"]
        assert url.endswith("/x/nova-dcmigrate"), url
    assert job["vars"]["tempest_plugins"] == ["nova-dcmigrate"]
    services = job["vars"]["devstack_services"]
    assert all(services[s] for s in (
        "dcmigrate-agent", "dcmigrate-api", "dcmigrate-scheduler"))
    sub = job["group-vars"]["subnode"]["devstack_services"]
    assert sub == {"dcmigrate-agent": True, "dcmigrate-api": False,
                   "dcmigrate-scheduler": False}


def test_localrc_matches_lab() -> None:
    job = _load()["job"]
    localrc = {k: _ini(v) for k, v in job["vars"]["devstack_localrc"].items()}
    assert localrc == gate.DEVSTACK_LOCALRC
    sub = {k: _ini(v) for k, v in
           job["group-vars"]["subnode"]["devstack_localrc"].items()}
    assert sub == {k: gate.DEVSTACK_LOCALRC[k] for k in gate.COMPUTE_LOCALRC}


def test_localrc_variables_exist_in_plugin() -> None:
    settings = (Path(__file__).resolve().parents[2] / "devstack" /
                "settings").read_text()
    for name in gate.DEVSTACK_LOCALRC:
        if name.startswith("DCMIGRATE_"):
            assert re.search(r"^%s=" % name, settings, re.M), name


def test_tempest_conf_matches_lab() -> None:
    conf = _load()["job"]["vars"]["devstack_local_conf"]["test-config"][
        "$TEMPEST_CONFIG"]
    got = {group: {k: _ini(v) for k, v in opts.items()}
           for group, opts in conf.items()}
    assert got == gate.TEMPEST_CONF


def test_tempest_regex_matches_lab() -> None:
    regex = _load()["job"]["vars"]["tempest_test_regex"]
    assert regex == gate.TEMPEST_REGEX
    assert re.match(regex, "nova_dcmigrate_tempest_plugin.tests.api.x")
