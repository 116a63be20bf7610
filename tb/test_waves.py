"""``rdu sim --waves`` on the Verilator chip: a 1-token decode of a tiny model with tracing,
then ``DIR/waves.vcd`` and ``DIR/waves.gtkw`` (``sw/runtime/waves.py``).

The waves build of the default chip is its own Verilator build (lean trace, ``tb/runner.py``;
8-11 minutes on the shared 2-core machine the first time, cached after); the run itself is a few
thousand cycles.
"""

import re

import pytest

from sw.model import LlamaConfig, random_model
from sw.frontend.hf import save_hf
from sw.runtime.sim import run_decode
from sw.runtime.waves import GTKW_NAME, VCD_NAME, scan_first_events, scan_header

pytestmark = pytest.mark.verilator


def _gtkw_traces(text):
    out = []
    for ln in text.splitlines():
        ln = ln.strip()
        if ln and ln[0] not in "[*@-#":
            out.append(re.sub(r"^\+\{[^}]*\}\s*", "", ln))
    return out


def test_waves_one_token(tmp_path):
    cfg = LlamaConfig(dim=32, n_layers=1, n_heads=4, n_kv_heads=4, hidden_dim=64,
                      vocab_size=256, max_seq_len=8)
    folder = save_hf(random_model(cfg, seed=3, name="waves-tiny"), tmp_path / "model")
    out = tmp_path / "run"
    res = run_decode(folder, prompt_ids=[1], tokens=1, mode="op", out=out, waves=True,
                     progress=False, launch_overhead_cycles=0)
    assert res["bit_exact"], res
    vcd, gtkw = out / VCD_NAME, out / GTKW_NAME
    assert vcd.is_file() and gtkw.is_file() and not (out / "dump.vcd").exists()

    h = scan_header(vcd)
    names = {v.gtkw_name for v in h.vars.values()}
    traces = _gtkw_traces(gtkw.read_text())
    assert traces and set(traces) <= names, sorted(set(traces) - names)[:10]
    assert f"[dumpfile] \"{vcd.resolve()}\"" in gtkw.read_text()

    # what a person looks at first is there (the lean trace kept it) ...
    dut = "rdu_chip.dut"
    for want in ("rdu_chip.clk", "rdu_chip.run_done", f"{dut}.host.sequencer.launch",
                 f"{dut}.host.sequencer.busy", f"{dut}.host.sequencer.done",
                 f"{dut}.config.busy", f"{dut}.config.status[3:0]",
                 f"{dut}.memsys.hbm.ch0.rd_beat", f"{dut}.memsys.hbm.ch1.wr_beat",
                 f"{dut}.memsys.hbm.ch0.refresh_stall", f"{dut}.memsys.hbm.ports__0__req__valid",
                 f"{dut}.memsys.agcu0.rd__valid", f"{dut}.memsys.agcu3.wr__ready",
                 f"{dut}.memsys.agcu2.busy", f"{dut}.fabric.pcu0.vin__0__valid",
                 f"{dut}.fabric.pcu7.vout__ready", f"{dut}.fabric.pcu3.ctrl__busy",
                 f"{dut}.fabric.pmu0.rout__valid", f"{dut}.fabric.pmu7.win__ready",
                 f"{dut}.fabric.pmu5.ctrl__done"):
        assert want in traces, want
    # ... and the unit internals and Amaranth temporaries are not traced
    assert not any(".shared." in p for p in h.vars)
    assert not any(p.rsplit(".", 1)[1].startswith("$") for p in h.vars)

    # the view opens on the first kernel call
    ev = scan_first_events(vcd, h)
    assert ev.period == 10_000                                   # 10 ns clock, 1 ps timescale
    assert ev.launch is not None and ev.call_done is not None and ev.call_done > ev.launch
    assert re.search(rf"^\*-?[\d.]+ {ev.launch} ", gtkw.read_text(), re.M)
