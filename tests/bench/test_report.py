"""Each benchmark writes its figures under its own key of one JSON file, keeping the others'."""

from __future__ import annotations

import json
from pathlib import Path

from bench.report import save_result


def test_save_result_keeps_other_benchmarks_figures(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    save_result("wire", {"ratio": 1.5}, path)
    save_result("round", {"started": Path("x")}, path)  # not JSON: written as a string
    save_result("wire", {"ratio": 2.0}, path)
    assert json.loads(path.read_text()) == {"wire": {"ratio": 2.0}, "round": {"started": "x"}}


def test_save_result_replaces_a_file_that_is_not_a_json_object(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    path.write_text("[1, 2")
    save_result("scale", {"n": 1}, path)
    assert json.loads(path.read_text()) == {"scale": {"n": 1}}
