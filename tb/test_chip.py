"""Chip bring-up on Verilator through the host ports (see tb/chip_bringup_tb.py) at the default
geometry, without the compute fabric (its default-geometry build is too slow for the regression:
see tb/geometries.py). The whole chip with its fabric is exercised by the GEMV tests."""

import json

import pytest

from hdl.chip import Chip
from hdl.params import DEFAULT_PARAMS
from tb.runner import build, check_results, run

pytestmark = pytest.mark.verilator


@pytest.mark.parametrize("params,fabric,seed", [
    (DEFAULT_PARAMS, False, 3),
], ids=["default-memsys"])
def test_chip_bringup(tmp_path, params, fabric, seed):
    b = build(Chip(params, fabric=fabric), "rdu_chip", key=f"fabric={fabric}")
    result = tmp_path / "bringup.json"
    args = {"params": params.to_dict(), "seed": seed, "bytes": 8192, "result": str(result)}
    check_results(run(b, "tb.chip_bringup_tb", env={"MINIRDU_ARGS": json.dumps(args)},
                      test_dir=tmp_path))
    res = json.loads(result.read_text())
    assert res["ok"] and res["counters"]["cycles"] > 0
