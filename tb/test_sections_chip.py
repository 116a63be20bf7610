"""Programs of sections on the Verilator chip (``hdl/sections.py`` through ``tb/sections_tb.py``):
two residual-add sections chained through HBM, three iterations with per-iteration offsets,
run as one looped call and as one call per iteration, bit-exact against numpy; a corrupt
section, the sequencer's refusals and a hanging section each fail clearly."""

import dataclasses
import json

import numpy as np
import pytest

from hdl.chip import Chip
from hdl.params import DEFAULT_PARAMS as P
from sw.bitstream import Bitstream, Kernel
from sw.compiler.delta import section_deltas
from sw.kernels.kernel import Ref
from sw.kernels.patterns import residual_kernel
from tb.runner import build, check_results, run

pytestmark = pytest.mark.verilator

DIM, ITERS = 64, 3
STRIDE = 256                     # bytes between one iteration's vectors and the next's
H, A, B = 0x10000, 0x11000, 0x12000
SLOTS = 0x20000


def _sat16(v):
    return np.clip(v, -32768, 32767)


def test_section_programs_on_chip(tmp_path):
    rng = np.random.default_rng(5)
    h = np.zeros((ITERS + 1, STRIDE // 2), np.int16)
    a = np.zeros((ITERS, STRIDE // 2), np.int16)
    b = np.zeros((ITERS, STRIDE // 2), np.int16)
    h[0, :DIM] = rng.integers(-30000, 30000, DIM)
    a[:, :DIM] = rng.integers(-20000, 20000, (ITERS, DIM))
    b[:, :DIM] = rng.integers(-20000, 20000, (ITERS, DIM))
    want = h.copy()
    for l in range(ITERS):           # h[l+1] = sat(sat(h[l] + a[l]) + b[l]): a chain through
        s = _sat16(want[l, :DIM].astype(np.int64) + a[l, :DIM])      # both sections and
        want[l + 1, :DIM] = _sat16(s + b[l, :DIM])                     # every iteration
    k_a = residual_kernel(P, dim=DIM, x=Ref(H, STRIDE), y=Ref(A, STRIDE),
                          out=Ref(H + STRIDE, STRIDE), iterations=ITERS, name="addA")
    k_b = residual_kernel(P, dim=DIM, x=Ref(H + STRIDE, STRIDE), y=Ref(B, STRIDE),
                          out=Ref(H + STRIDE, STRIDE), iterations=ITERS, name="addB")
    # section B is stored as its delta against A (sw/compiler/delta.py): it must still run
    # bit-exact after A, in every iteration
    (good_a, _), (good_b, n_b) = section_deltas([k_a.to_bytes(), k_b.to_bytes()], P,
                                                ["addA", "addB"])
    assert n_b < len(Bitstream.from_bytes(k_b.to_bytes(), P).writes)
    corrupt = bytearray(good_a)
    corrupt[len(corrupt) // 2] ^= 0x10
    bs = Bitstream.from_bytes(good_a, P)
    kern = bs.kernels[0]
    pcus = [u for u in kern.units if _kind(u) == "pcu"]
    assert pcus, "the residual kernel has a PCU"
    # the same configuration, but only its PCU is launched: it waits for beats forever
    hang = dataclasses.replace(bs, kernels=[Kernel(kern.id, "addA-pcu", tuple(pcus[:1]))]
                               ).to_bytes()
    blobs = [good_a, good_b, bytes(corrupt), hang]
    images, table = [], []
    addr = SLOTS
    for i, blob in enumerate(blobs):
        f = tmp_path / f"section{i}.rbit"
        f.write_bytes(blob)
        images.append([addr, str(f)])
        table.append([addr, len(blob)])
        addr += -(-len(blob) // 64) * 64
    for name, arr, base in (("a", a, A), ("b", b, B)):
        f = tmp_path / f"{name}.bin"
        f.write_bytes(arr.tobytes())
        images.append([base, str(f)])
    (tmp_path / "h0.bin").write_bytes(h.tobytes())
    (tmp_path / "want.bin").write_bytes(want.tobytes())
    result = tmp_path / "result.json"
    args = {"params": P.to_dict(), "images": images, "table": table,
            "state": {"addr": H, "initial": str(tmp_path / "h0.bin"),
                      "expected": str(tmp_path / "want.bin")},
            "program": [0, 2, ITERS], "corrupt_entry": 2, "hang_entry": 3,
            "result": str(result)}
    b_ = build(Chip(P), "rdu_chip")
    check_results(run(b_, "tb.sections_tb", env={"MINIRDU_ARGS": json.dumps(args)},
                      test_dir=tmp_path))
    res = json.loads(result.read_text())
    # the looped call pays one launch for all iterations; per-iteration calls one each
    assert res["looped"]["launches"] == 1 and res["layer"]["launches"] == ITERS
    assert res["looped"]["sections"] == res["layer"]["sections"] == 2 * ITERS


def _kind(uid):
    from hdl.unitmap import unit_by_id
    return unit_by_id(P, uid).kind
