"""Full-chip bring-up on Verilator through the host ports (see tb/chip_bringup_tb.py)."""

import json

import pytest

from hdl.chip import Chip
from hdl.params import DEFAULT_PARAMS
from tb.runner import build, check_results, run

pytestmark = pytest.mark.verilator


@pytest.mark.parametrize("seed", [3])
def test_chip_bringup(tmp_path, seed):
    b = build(Chip(DEFAULT_PARAMS), "rdu_chip")
    result = tmp_path / "bringup.json"
    args = {"params": DEFAULT_PARAMS.to_dict(), "seed": seed, "bytes": 8192,
            "result": str(result)}
    check_results(run(b, "tb.chip_bringup_tb", env={"MINIRDU_ARGS": json.dumps(args)},
                      test_dir=tmp_path))
    res = json.loads(result.read_text())
    assert res["ok"] and res["counters"]["cycles"] > 0
