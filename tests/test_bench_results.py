"""Where benchmark results land: under the current directory, never inside the package."""

import json
from pathlib import Path

import shared_schema
from shared_schema.bench_results import RESULTS_DIR_ENV, write_result


def test_results_go_under_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.delenv(RESULTS_DIR_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    path = write_result("probe", {"ratio": 0.5})
    assert path.parent == tmp_path / "benchmarks" / "results"
    package = Path(shared_schema.__file__).resolve().parent
    assert package not in path.resolve().parents


def test_an_explicit_directory_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(RESULTS_DIR_ENV, str(tmp_path / "env"))
    assert write_result("probe", {}).parent == tmp_path / "env"
    assert write_result("probe", {}, tmp_path / "flag").parent == tmp_path / "flag"


def test_a_result_says_what_ran_where_and_when(tmp_path):
    record = json.loads(write_result("probe", {"fps": 3.0}, tmp_path).read_text())
    assert record["benchmark"] == "probe" and record["results"] == {"fps": 3.0}
    assert record["machine"]["cpu_count"] >= 1 and record["machine"]["python"]
    assert record["date"].endswith("+00:00") and record["version"]
    assert "commit" in record  # None for an installed wheel, a hash in a checkout


def test_a_result_names_the_settings_that_change_its_speed(tmp_path, monkeypatch):
    monkeypatch.setenv("GOMP_SPINCOUNT", "300000")
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    record = json.loads(write_result("probe", {}, tmp_path).read_text())
    assert record["machine"]["environment"]["GOMP_SPINCOUNT"] == "300000"
    assert "GLIBC_TUNABLES" not in record["machine"]["environment"]
