"""`dns-tf bench all`: every benchmark's defaults parse, results land in one JSON and Markdown."""

import json

import pytest

from dns_tf.bench.registry import BENCHMARKS, default_arguments
from dns_tf.cli import main


@pytest.mark.parametrize("name", [b for b in BENCHMARKS if b != "all"])
def test_every_benchmark_has_defaults(name):
    assert default_arguments(name, quick=True).quick is True


def test_bench_all_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["bench", "all", "--quick", "--only", "train", "--out", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["benchmarks"] == {"train": "ok"}
    report = json.loads((out / "bench.json").read_text())
    train = report["benchmarks"]["train"]
    assert train["steps_per_s"] > 0 and train["settings"]["steps"] == 3
    markdown = (out / "bench.md").read_text()
    assert "## train" in markdown and "| steps_per_s |" in markdown
