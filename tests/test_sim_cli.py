"""``rdu sim`` argument handling that needs no chip (sw/runtime/cli.py): the default mode is
looped, --check needs op mode, bad input is a one-line error before anything is built."""

from sw.cli import main


def _rdu(capsys, *argv):
    rc = main([str(a) for a in argv])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_default_mode_is_looped(capsys):
    import pytest
    with pytest.raises(SystemExit):
        main(["sim", "--help"])
    out = capsys.readouterr().out
    assert "looped (default)" in " ".join(out.split())


def test_check_needs_op_mode(capsys, tmp_path):
    for argv in (["--check"], ["--check", "--mode", "layer"]):
        rc, out, err = _rdu(capsys, "sim", *argv, "--tokens", 1, "--out", tmp_path / "x")
        assert rc == 2, (out, err)
        assert err.count("\n") == 1 and err.startswith("rdu: error: ")
        assert "--check compares every kernel's output, which needs --mode op" in err
    assert not (tmp_path / "x").exists()


def test_compile_error_is_one_line(capsys, tmp_path):
    rc, out, err = _rdu(capsys, "sim", "--context", 100000, "--out", tmp_path / "x")
    assert rc == 2 and err.count("\n") == 1 and "context 100000 must be in" in err
    assert not (tmp_path / "x").exists()
