"""What the bench records about the machine's free page reporting."""

from __future__ import annotations

from nova_dcmigrate.bench import machine


def test_free_page_reporting_reads_numbers_and_words(tmp_path):
    (tmp_path / "min_free_ms").write_text("0\n")
    (tmp_path / "reported_kib").write_text("268043732\n")
    (tmp_path / "free_bitmap_enable").write_text("Y\n")
    assert machine.free_page_reporting(str(tmp_path)) == {
        "free_bitmap_enable": "Y", "min_free_ms": 0,
        "reported_kib": 268043732}


def test_no_free_page_reporting_is_none(tmp_path):
    assert machine.free_page_reporting(str(tmp_path / "absent")) is None


def test_unreadable_parameter_is_left_out(tmp_path):
    (tmp_path / "page_reporting_order").write_text("9")
    (tmp_path / "a_directory").mkdir()          # reading it fails
    assert machine.free_page_reporting(str(tmp_path)) == {
        "page_reporting_order": 9}
