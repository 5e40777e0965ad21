"""Command-line parsing of dcmigrate-bench."""

from __future__ import annotations

import pytest

from nova_dcmigrate.bench import options


def parse(*argv):
    return options.config_from_args(options.build_parser().parse_args(argv))


def test_defaults_are_the_demo():
    cfg = parse()
    assert cfg.memory_mib == 256
    assert cfg.redirect_at == (0.5,)
    assert cfg.route == ("old", "new")
    assert cfg.methods == ("dcmigrate", "restart")
    assert cfg.links == options.DEFAULT_LINKS
    assert cfg.hosts == ("src", "old", "new")
    assert cfg.via == "libvirt"
    assert parse("--via", "qmp").via == "qmp"


def test_links_per_host_and_asymmetric():
    cfg = parse("--link", "src=300mbit", "old=300mbit/1gbit",
                "--link", "new=300mbit/1gbit")
    assert cfg.links == {"src": "300mbit", "old": "300mbit/1gbit",
                         "new": "300mbit/1gbit"}
    assert cfg.rates()["old"] == (300_000_000, 1_000_000_000)


def test_several_redirects_add_fresh_hosts_that_inherit_new():
    cfg = parse("--redirect-at", "0.3,0.6,0.8", "--link", "new=200mbit")
    assert cfg.route == ("old", "new", "new2", "new3")
    assert cfg.links["new2"] == cfg.links["new3"] == "200mbit"
    assert cfg.final_host == "new3"


def test_no_redirect_goes_to_new():
    cfg = parse("--redirect-at", "none")
    assert cfg.redirect_at == ()
    assert cfg.route == ("new",)
    assert not cfg.redirecting
    assert cfg.hosts == ("src", "new")


def test_custom_route_back_to_the_first_host():
    cfg = parse("--redirect-at", "0.3,0.6", "--route", "old,new,old")
    assert cfg.route == ("old", "new", "old")
    assert cfg.hosts == ("src", "old", "new")


@pytest.mark.parametrize("argv, message", [
    (("--redirect-at", "0.6,0.3"), "increase"),
    (("--redirect-at", "x"), "not a number"),
    (("--redirect-at", "0"), "outside"),
    (("--methods", "dcmigrate,teleport"), "unknown method"),
    (("--link", "src"), "HOST=RATE"),
    (("--link", "src=fast"), "cannot parse"),
    (("--link", "elsewhere=1gbit"), "not in this run"),
    (("--route", "old"), "destinations"),
    (("--route", "old,src"), "bad destination"),
    (("--dirty-mib", "250"), "32 MiB below"),
    (("--repeat", "0"), "at least 1"),
])
def test_bad_values(argv, message):
    with pytest.raises(options.OptionError, match=message):
        parse(*argv)


def test_parse_exits_with_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        options.parse(["--methods", "nope"])
    assert exc.value.code == 2
    assert "unknown method" in capsys.readouterr().err


def test_methods_keep_order_without_duplicates():
    assert parse("--methods", "restart,dcmigrate,restart").methods == \
        ("restart", "dcmigrate")


def test_describe_is_json_friendly():
    import json
    json.dumps(parse("--redirect-at", "0.3,0.6").describe())
