"""The decode GEMV kernel without a simulator (``sw/kernels/gemv.py``): the constants blob
against its documented layout, the AGCU programs replayed over the blob (an address-level model
of the mapping must reproduce ``GoldenDecoder.gemv``, at every iteration of a per-layer
stride), every mapping variant routing on the default chip, and the error messages.

The bit-exact runs on the Verilator chip are in ``tb/test_gemv.py``.
"""

import numpy as np
import pytest

from hdl.params import DEFAULT_PARAMS
from sw.golden import GoldenDecoder
from sw.kernels.builder import KernelError
from sw.kernels.gemv import (REDUCED_PARAMS, GemvError, build_decode_gemv, decode_gemv_layout,
                             gemv_case, gemv_constants)
from sw.kernels.kernel import Ref
from sw.kernels.patterns import PatternError

P = DEFAULT_PARAMS
BB = P.beat_bytes
L = P.lanes


def _data(rows, cols, x_bits, seed):
    rng = np.random.default_rng(seed)
    w = rng.integers(-128, 128, (rows, cols)).astype(np.int8)
    lim = 1 << (x_bits - 1)
    x = rng.integers(-lim, lim, cols).astype(np.int8 if x_bits == 8 else np.int16)
    m = rng.integers(0, 1 << 15, rows)
    s = rng.integers(8 if x_bits == 8 else 16, 30, rows)
    return w, x, m, s


def _beats(blob):
    return np.frombuffer(blob, np.uint8).reshape(-1, BB)


# ---- the blob ---------------------------------------------------------------------------------

@pytest.mark.parametrize("rows,cols", [(1, 1), (16, 64), (17, 32), (48, 96), (64, 192),
                                       (100, 130), (512, 64)])
def test_blob_layout(rows, cols):
    """Decode the blob by the module docstring's description: sub-block j of the rows in half
    j % 2 at (j // 2) * S, its W rows then its words beat, zero everywhere else."""
    w, _, m, s = _data(rows, cols, 8, rows * 1000 + cols)
    blob = gemv_constants(P, w, m, s)
    lay = decode_gemv_layout(P, rows, cols)
    beats = _beats(blob)
    assert len(blob) == lay.blob_bytes(P) == 2 * lay.half_beats * BB
    nb = -(-cols // BB)
    S = L * nb + 1
    assert (lay.nb, lay.sub_beats) == (nb, S)
    assert lay.nsub % 2 == 0 and lay.nsub - lay.nblk in (0, 1) and lay.nblk == -(-rows // L)
    assert lay.half_beats % P.hbm_burst_beats == 0 and lay.half_beats >= lay.nsub // 2 * S
    seen = np.zeros(len(beats), bool)
    for j in range(lay.nsub):
        base = (j % 2) * lay.half_beats + (j // 2) * S
        sub = beats[base:base + S]
        seen[base:base + S] = True
        wrows = sub[:L * nb].view(np.int8).reshape(L, nb * BB)
        words = sub[L * nb].view("<u4")
        for i in range(L):
            r = j * L + i
            if r < rows:
                assert np.array_equal(wrows[i, :cols], w[r]), (j, i)
                assert not wrows[i, cols:].any()
                assert words[i] == m[r] | s[r] << 16
            else:
                assert not wrows[i].any() and words[i] == 0
    assert not beats[~seen].any()          # the padding of the halves is zero


def test_blob_words_broadcast_and_sizes_of_the_model():
    w = np.ones((32, 64), np.int8)
    a = gemv_constants(P, w, 1234, 7)
    b = gemv_constants(P, w, np.full(32, 1234), np.full(32, 7))
    assert a == b
    # the default model's shapes: compact halves (each below the spreading threshold), except
    # that lm_head's 272-beat halves are already conflict-free
    for rows, cols, blob_beats in [(64, 64, 2 * 36), (32, 64, 2 * 20), (192, 64, 2 * 104),
                                   (64, 192, 2 * 100), (512, 64, 2 * 272)]:
        assert decode_gemv_layout(P, rows, cols).blob_beats == blob_beats, (rows, cols)


def test_half_offset_avoids_bank_conflicts():
    """Two streams of 544 beats: the compact offset (544) shares banks with the other stream
    (measured 1,200 cycles against 730 at 768 on the HBM benchmark); the layout moves it."""
    from sw.kernels.gemv import _conflicts
    lay = decode_gemv_layout(P, 1024, 64)
    assert lay.nsub // 2 * lay.sub_beats == 544
    assert _conflicts(P, 544, 544) > 0
    assert lay.half_beats > 544 and _conflicts(P, lay.half_beats, 544) == 0


# ---- an address-level model of the mapping --------------------------------------------------

def _addresses(prog, iteration):
    addr = np.array([prog.base + iteration * prog.iter_stride], np.int64)
    for c, st in zip(reversed(prog.counts), reversed(prog.strides)):
        addr = (addr[:, None] + np.arange(c)[None, :] * st).reshape(-1)
    rb, rn = prog.region
    assert ((addr >= rb) & (addr < rb + rn)).all(), "an address outside the AGCU region"
    return addr


def _model(k, hbm: np.ndarray, iteration: int) -> bytes:
    """What the mapping computes, from the AGCU programs and the HBM contents: each weight
    stream is cut into sub-blocks (W rows, then the words beat); each compute PCU requantises
    its rows (words from its own stream); C takes one 16-row beat of each in turn; the y
    program writes the first y_beats beats."""
    lay, progs = k.info["layout"], k.info["agcu_programs"]
    nb, S = lay.nb, lay.sub_beats
    xs = hbm[_addresses(progs["ax"], iteration)]
    if lay.x_bits == 8:
        x = xs.view(np.int8).reshape(-1)[:nb * BB].astype(np.int64)
    else:
        n = lay.x_beats
        assert np.array_equal(xs[:n], xs[n:])               # read twice
        x = np.zeros(nb * BB, np.int64)
        v = xs[:n].view("<i2").reshape(-1).astype(np.int64)
        x[:min(v.size, x.size)] = v[:x.size]
    streams = ["aWB", "aWA"] if k.info["pcus"] == 2 else ["aWB"]
    outs = []
    for role in streams:
        st = hbm[_addresses(progs[role], iteration)]
        assert len(st) % S == 0
        vals = []
        for sub in st.reshape(-1, S, BB):
            wr = sub[:L * nb].view(np.int8).reshape(L, nb * BB).astype(np.int64)
            words = sub[L * nb].view("<u4").astype(np.int64)
            acc = (wr @ x).astype(np.int64)
            acc = ((acc + (1 << 31)) % (1 << 32)) - (1 << 31)      # the lanes wrap at 32 bit
            from sw import intops
            vals.append(intops.requant(acc, words & 0x7FFF, (words >> 16) & 63,
                                       lay.out_bits).astype(np.int64))
        outs.append(vals)
    merged = [v for pair in zip(*outs) for v in pair] if len(outs) == 2 else outs[0]
    y = np.concatenate(merged).astype({8: "<i1", 16: "<i2", 32: "<i4"}[lay.out_bits])
    nbytes = lay.y_beats * BB
    raw = y.tobytes()
    raw = raw + bytes(max(0, nbytes - len(raw)))
    wa = _addresses(progs["ay"], iteration)
    assert len(wa) == lay.y_beats
    return raw[:nbytes]


@pytest.mark.parametrize("rows,cols,x_bits,out_bits,pcus", [
    (64, 64, 8, 16, 2), (32, 64, 8, 8, 2), (192, 64, 8, 8, 2), (64, 192, 16, 16, 2),
    (512, 64, 8, 32, 2), (48, 96, 16, 32, 2), (40, 32, 8, 8, 1), (272, 96, 8, 32, 1),
    (1024, 64, 8, 32, 2), (17, 130, 16, 16, 2)])
def test_address_model_matches_golden(rows, cols, x_bits, out_bits, pcus):
    """Three layers of different weights one stride apart; the kernel launched at each
    iteration reads exactly that layer (ITER_STRIDE) and the model of its streams gives the
    golden bytes, padding zeros included."""
    layers = [_data(rows, cols, x_bits, 10 * rows + l)[:1] + _data(rows, cols, x_bits,
              10 * rows + l)[2:] for l in range(3)]
    x = _data(rows, cols, x_bits, 7)[1]
    case = None
    for it in range(3):
        case = gemv_case(P, layers, x, out_bits, iteration=it, pcus=pcus)
        hbm = np.zeros((P.hbm_beats, BB), np.uint8)
        for im in case.images:
            d = np.frombuffer(im.data, np.uint8)
            hbm.reshape(-1)[im.addr:im.addr + d.size] = d
        k = build_decode_gemv(P, rows=rows, cols=cols, x_bits=x_bits, out_bits=out_bits,
                              w=Ref(case.images[0].addr, case.images[1].addr),
                              x=case.images[-1].addr, y=case.output.addr, iterations=3,
                              pcus=pcus)
        assert _model(k, hbm, it) == case.expected, it
        w, m, s = layers[it]
        gold = GoldenDecoder.gemv(w, x, m, s, out_bits)
        assert np.array_equal(case.golden, gold)
    # the layers differ, so reading the wrong one would fail
    assert not np.array_equal(GoldenDecoder.gemv(layers[0][0], x, *layers[0][1:], out_bits),
                              GoldenDecoder.gemv(layers[1][0], x, *layers[1][1:], out_bits))


# ---- mapping variants and the kernel contract -------------------------------------------------

@pytest.mark.parametrize("pcus", [1, 2])
@pytest.mark.parametrize("x_bits", [8, 16])
@pytest.mark.parametrize("trim", [False, True])
def test_every_variant_routes_on_the_default_chip(pcus, x_bits, trim):
    rows, out_bits = (48, 32) if trim else (64, 16)
    k = build_decode_gemv(P, rows=rows, cols=192, x_bits=x_bits, out_bits=out_bits,
                          w=Ref(0, 1 << 16), x=1 << 20, y=(1 << 20) + 4096, iterations=5,
                          pcus=pcus)
    lay = k.info["layout"]
    assert lay.trim == trim and k.info["pcus"] == pcus
    roles = set(k.roles)
    assert ("C" in roles) == (pcus == 2) and ("X" in roles) == (x_bits == 16)
    assert ("MY" in roles) == trim
    assert k.reads == {"w": lay.nsub * lay.sub_beats * BB,
                       "x": lay.x_beats * BB * (2 if x_bits == 16 else 1)}
    assert k.writes == {"y": -(-rows * out_bits // 8 // BB) * BB}
    assert k.outputs == {"y": Ref((1 << 20) + 4096)}
    assert len(k.to_bytes()) > 0 and "merge" in k.describe() or pcus == 1
    progs = k.info["agcu_programs"]
    assert progs["aWB"].iter_stride == (1 << 16) // BB and progs["ax"].iter_stride == 0


def test_default_model_shapes_build():
    """The eight GEMVs of the default model (dim 64, hidden 192, vocab 512) with the compiler's
    arguments; pcus defaults to 2."""
    for rows, cols, xb, ob in [(64, 64, 8, 16), (32, 64, 8, 16), (32, 64, 8, 8), (64, 64, 8, 16),
                               (192, 64, 8, 8), (192, 64, 8, 16), (64, 192, 16, 16),
                               (512, 64, 8, 32)]:
        k = build_decode_gemv(P, rows=rows, cols=cols, x_bits=xb, out_bits=ob,
                              w=Ref(0, 1 << 17), x=1 << 20, y=(1 << 20) + 1024, iterations=5)
        assert k.info["pcus"] == 2 and k.pattern == "gemv"


# ---- errors -----------------------------------------------------------------------------------

def _build(**kw):
    args = dict(rows=64, cols=64, x_bits=8, out_bits=16, w=0, x=1 << 20, y=(1 << 20) + 1024)
    args.update(kw)
    return build_decode_gemv(P, **args)


@pytest.mark.parametrize("kw,msg", [
    ({"out_bits": 12}, "out_bits 12: the packer writes 8, 16 or 32 bit"),
    ({"x_bits": 4}, "x_bits 4: x is int8 or int16"),
    ({"rows": 0}, "rows and cols must be positive"),
    ({"cols": -3}, "rows and cols must be positive"),
    ({"rows": 2.5}, "gemv rows must be an integer"),
    ({"cols": 1024}, "exceeds a PMU (256 beats); the largest cols is 960"),
    ({"rows": 1 << 20}, "exceed the 16-bit counters"),
    ({"pcus": 3}, "pcus=3: the decode GEMV streams weights through 1 or 2 PCUs"),
    ({"iterations": 0}, "iterations must be >= 1"),
    ({"w": 100}, "HBM address 100 is not a multiple of the 64-byte beat"),
    ({"w": Ref(0, 96)}, "per-iteration stride 96 is not a multiple of the 64-byte beat"),
    ({"roles": {"B": "pcu0"}}, "gemv roles: missing"),
    ({"roles": {"B": "pcu0", "A": "pcu0", "C": "pcu1", "WB": "pmu0", "SB": "pmu1", "WA": "pmu2",
                "SA": "pmu3", "MX": "pmu4", "aWB": "agcu0", "aWA": "agcu1", "ax": "agcu2",
                "ay": "agcu3"}}, "pcu0 is configured twice"),
])
def test_build_errors(kw, msg):
    with pytest.raises((GemvError, KernelError)) as e:
        _build(**kw)
    assert msg in str(e.value)


def test_errors_are_pattern_errors():
    with pytest.raises(PatternError):
        _build(out_bits=4)


def test_chip_too_small():
    with pytest.raises(GemvError, match=r"needs 3 PCUs and 5 PMUs; the chip has 3 and 3 "
                                        r"\(try pcus=1\)"):
        build_decode_gemv(REDUCED_PARAMS, rows=64, cols=64, x_bits=8, out_bits=8, w=0,
                          x=1 << 16, y=(1 << 16) + 64, pcus=2)
    with pytest.raises(GemvError, match="int16-x gemv needs PCUs with 3 vector inputs"):
        build_decode_gemv(REDUCED_PARAMS.replace(grid_rows=4, grid_cols=4), rows=64, cols=64,
                          x_bits=16, out_bits=8, w=0, x=1 << 16, y=(1 << 16) + 64, pcus=1)
    with pytest.raises(GemvError, match="needs PCUs with >= 5 FU stages; the chip has 2"):
        build_decode_gemv(REDUCED_PARAMS.replace(grid_rows=4, grid_cols=4, pcu_vector_inputs=3),
                          rows=64, cols=64, x_bits=16, out_bits=8, w=0, x=1 << 16,
                          y=(1 << 16) + 64, pcus=1)
    # pcus=None falls back to one weight stream where two do not fit
    k = build_decode_gemv(REDUCED_PARAMS, rows=64, cols=64, x_bits=8, out_bits=8, w=0,
                          x=1 << 16, y=(1 << 16) + 64)
    assert k.info["pcus"] == 1


@pytest.mark.parametrize("args,msg", [
    ((np.zeros((4, 4), np.float32), 1, 1), "gemv weights must be int8 integers"),
    ((np.full((4, 4), 300), 1, 1), "does not fit int8"),
    ((np.zeros(4, np.int8), 1, 1), "non-empty 2-D (rows, cols) array, got shape (4,)"),
    ((np.zeros((4, 4), np.int8), np.ones(3, int), 1), "one entry per row (4) or one for all"),
    ((np.zeros((4, 4), np.int8), 1 << 15, 1), "REQUANT pair of row 0 (m=32768, s=1) out of "
                                               "range"),
    ((np.zeros((4, 4), np.int8), np.array([1, 1, 1, 1]), np.array([0, 0, 64, 0])),
     "REQUANT pair of row 2 (m=1, s=64)"),
    ((np.zeros((4, 4), np.int8), 1.5, 1), "gemv REQUANT m, s must be integers"),
])
def test_constants_errors(args, msg):
    with pytest.raises(GemvError) as e:
        gemv_constants(P, *args)
    assert msg in str(e.value)


def test_case_errors():
    w = np.zeros((16, 64), np.int8)
    with pytest.raises(GemvError, match="1-D int8 or int16 array, got int32"):
        gemv_case(P, [(w, 1, 1)], np.zeros(64, np.int32), 8)
    with pytest.raises(GemvError, match="x has 32 elements, W has 64 columns"):
        gemv_case(P, [(w, 1, 1)], np.zeros(32, np.int8), 8)
    with pytest.raises(GemvError, match="iteration 1 outside the 1 layers given"):
        gemv_case(P, [(w, 1, 1)], np.zeros(64, np.int8), 8, iteration=1)
