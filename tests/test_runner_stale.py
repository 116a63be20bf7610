"""tb/runner.py refuses to build (or reuse a build) when the RTL changed after the process
imported it: the Verilog would come from the old modules in memory under the new files' key."""

import pytest

import hdl.params  # noqa: F401  (an imported hdl module)
import tb.runner as runner


def test_fresh_process_passes():
    runner._check_sources_not_stale()


def test_edit_after_start_is_refused(monkeypatch):
    monkeypatch.setattr(runner, "_process_start_time", lambda: 0.0)   # "started long ago"
    with pytest.raises(runner.StaleSourcesError, match=r"params\.py.*restart"):
        runner._check_sources_not_stale()


def test_unknown_start_time_skips_the_check(monkeypatch):
    monkeypatch.setattr(runner, "_process_start_time", lambda: None)
    runner._check_sources_not_stale()
