"""Pattern Compute Unit (PCU): an L-lane x S-stage SIMD pipeline configured by registers.

Block diagram (one beat = one vector of ``L = params.lanes`` 32-bit lanes)::

    vin[k] -> FIFO -> unpack -+
    sin[k] -> FIFO -----------+-> ENTRY (counter chain, token wait) -> R0
                                R0 -> FU stage 0 -> R1 -> ... -> FU stage S-1 -> RS
                                RS -> emit filter -> reduction tree (log2 L levels) -> RT
                                RT -> post (scalar) FU stage -> RQ -> packer -> vout / sout

Entry
    A beat enters when the unit is running (between ``ctrl.start`` and the last beat of the
    program), every *enabled* input FIFO (``VIN_k``/``SIN_k`` register bit 0) has a head,
    every enabled input token (``TOKIN_j``) needed by this beat is present, and the pipeline
    advances (see back-pressure). The beat carries the heads of all vin/sin FIFOs (disabled
    inputs read as 0) and the counter-chain flags ``first[k]``/``last[k]``.

Counter chain (``n_ctr = pcu_counters``, default 3; ``CTR_i`` holds iterations - 1)
    One beat = one step of the innermost counter ``c0``; ``c1`` steps when ``c0`` wraps, etc.
    A *level-k group* is one full run of counters ``c0..c(k-1)``: level 0 = one beat, level 1 =
    ``CTR0+1`` beats, ..., level ``n_ctr`` = the whole program. For a beat, ``first[k]`` = it is
    the first beat of its level-k group (counters below k all zero) and ``last[k]`` = it is the
    last (counters below k all at their maximum). Every "level" field below uses this meaning:

    - input pop level (``VIN_k``/``SIN_k`` bits 2:1): the FIFO head is *read* by every beat and
      *popped* after the last beat of each level-k group (0: every beat; e.g. weights pop every
      beat while a one-beat ``x`` pops at level 2, reused by every row).
    - accumulate level (``STAGE_s_CFG``/``POST_CFG``): the accumulator combines the results of
      a level-k group and restarts with the group's first beat (0: no accumulator).
    - emit level (``EMIT``): only the last beat of each level-k group leaves the FU stages for
      the reduction tree; the others are dropped there (e.g. GEMV: level 1, one per row).
    - flush level (``OUT`` bits 5:4): the packer emits a partial vector at the end of each
      level-k group (it always flushes at the end of the program).
    - ``done``: after the last beat of the program has left through the outputs.

Unpack (``VIN_k`` bits 4:3 = 1: int16, 2: int8)
    A packed input beat (2 int16 or 4 int8 per lane, element ``e`` in bits ``[e*w, e*w+w)`` of
    the beat) is presented as 2 or 4 consecutive *virtual* beats of sign-extended 32-bit lanes,
    virtual beat ``j`` lane ``i`` = element ``j*L + i``; pop levels count virtual beats.

FU stages (``S = params.pcu_stages``)
    Stage ``s`` has one :class:`hdl.fu.Fu` per lane computing ``r = op(A, B, C)``; each operand
    has a source (:class:`Src`): PREV (the previous stage's lane; stage 0: vin0's lane), VIN k
    (the beat's vin k lane), SIN k (the beat's sin k scalar, broadcast), IMM (the stage's
    ``STAGE_s_IMM`` register, broadcast), ACC (this lane's accumulator of this stage), ZERO.
    With an accumulate level ``> 0`` the stage outputs ``acc' = first ? r : acc (+|max|min) r``
    (and stores it), else ``r``. Ops: see :mod:`hdl.fu` (PASS ADD SUB MUL(+C) DP4(+C) DP4U(+C)
    MAX MIN SHL SHR_ROUND SHLR REQUANT ADD_SAT SELECT CLZ AND).

Reduction tree (``REDUCE``; :class:`Red`)
    OFF (vector mode: the lanes pass through), SUM (wraps at 32), MAX, MIN, MAXIDX (MAX that
    also carries the lane index, lowest index on ties = ``intops.argmax_first``), FIRST (lane 0).
    It is an in-place binary tree with one register per level (``log2 L`` levels).
    Segmented mode (``REDUCE`` bits 5:3 = g, 0 < g < log2 L): only the first g levels combine,
    giving ``L >> g`` results per beat (groups of ``2**g`` adjacent lanes, e.g. attention scores
    of 8 heads x head_dim 8 per int8 beat, g = 1 at 16 lanes); they go to the packer as a chunk
    of ``L >> g`` elements (like vector mode; no post stage, no ``sout``).

Post stage (``POST_CFG``/``POST_IMM``; scalar-mode only)
    One FU on the reduced scalar. Sources: PREV = the reduced value, VIN0's code (4) = the
    reduced lane index (MAXIDX), SIN k, IMM, ACC, ZERO. Accumulate ops as in the lanes plus
    ARGMAX: keeps (max value, index) over the group, index = (emitted beat number in the group)
    * L + lane index, lowest index on ties; the stage's output is then the index. With an
    accumulate level ``k > 0`` the post stage produces one result per level-k group (``k`` must
    be ``>=`` the emit level), else one per reduced beat. E.g. GEMV: REQUANT with (m, s) from
    SIN0 popped once per row; argmax: ARGMAX over the whole program.

Outputs (``OUT``)
    Vector mode (REDUCE = OFF): each emitted beat goes to the packer as a chunk of ``L`` elements.
    Scalar mode: each post-stage result goes to ``sout`` (bit 1) and/or to the packer as one
    element (bit 0 enables ``vout``). The packer (bits 3:2 = :class:`hdl.fu.OutBits`: 32, 8 or
    16 bits per element, truncating) fills an output beat element by element (element ``e`` at
    bits ``[e*w, e*w+w)``, unused elements 0) and sends it on ``vout`` when full or flushed. In
    vector mode with 32-bit elements every emitted beat is sent unchanged.

Tokens (``ctl_in``/``ctl_out``, payload-less streams)
    ``TOKIN_j`` (bit 0 enable, bits 2:1 level k): the first beat of each level-k group waits for
    (and consumes) one token on ``ctl_in[j]`` (e.g. "PMU buffer full, go"). ``TOKOUT_j`` (bit 0
    enable, bits 2:1 level k, bits 4:3 :class:`TokSrc`): one token per event — ENTRY: the last
    beat of a level-k group entered (its inputs are consumed: "buffer free"); EXIT: the result
    of a level-k group reached the output registers (k >= emit/post level); VOUT: a ``vout``
    beat was produced; DONE: the program finished. Output tokens are counted (up to 15 pending,
    then the producing side stalls), so none is lost while ``ctl_out`` is not ready.

Unit control (``ctrl``)
    ``start`` (ignored while busy) clears the counter chain, unpackers and packer and starts the
    program; ``busy`` is high from the next cycle until ``done`` (one-cycle pulse), which fires
    once the last beat has left the pipeline, ``vout``/``sout`` are empty and all output tokens
    have been taken. ``iteration`` is unused (the PCU has no addresses); ``status`` is always 0.

Cycle-level contract
    - Latency: a beat that enters in cycle t (FIFO head consumed) is in ``R0`` at t+1, ``RS`` at
      t+1+S, ``RT`` at t+1+S+log2(L), ``RQ`` at t+2+S+log2(L), and valid on ``vout``/``sout``
      at t+3+S+log2(L) (16 lanes, 6 stages: t+13). The input FIFOs
      (``lib.fifo.SyncFIFOBuffered``) add 2 cycles from ``vin.valid`` to a readable head, so
      input-to-output is S + log2(L) + 5 cycles when nothing stalls (15 at the defaults;
      pinned by ``tests/test_pcu.py``).
    - Throughput: one beat per cycle when the inputs are available and the outputs ready.
    - Back-pressure: the whole pipeline (entry, stages, tree, post, packer) advances in a cycle
      iff ``vout`` and ``sout`` are each empty or transferring this cycle (and no enabled
      EXIT/VOUT token counter is full). A stalled pipeline holds every register; no beat is
      lost or duplicated; inputs keep filling their FIFOs (``vin.ready`` = FIFO not full).
    - Config registers are plain flops (any cycle); change them only while the unit is idle.

Register map (``cfg`` writes with ``cfg.unit == unit_id``; other addresses are ignored)

=================  =====  ======================================================================
register           addr   bits
=================  =====  ======================================================================
CTR0..CTR3         00-03  [15:0] iterations - 1 of counter i (i < n_ctr; c0 innermost)
VIN0..VIN3         04-07  [0] enable (beats wait for a head) [2:1] pop level [4:3] unpack
                          (0 none, 1 int16, 2 int8)
SIN0..SIN3         08-0B  [0] enable [2:1] pop level
TOKIN0..1          0C-0D  [0] enable [2:1] level
TOKOUT0..1         0E-0F  [0] enable [2:1] level [4:3] source (0 ENTRY 1 EXIT 2 VOUT 3 DONE)
EMIT               10     [1:0] emit level (FU stages -> tree)
REDUCE             11     [2:0] :class:`Red` [5:3] segment log2 (0: whole vector)
OUT                12     [0] vout enable [1] sout enable (scalar mode) [3:2] pack width
                          (0: 32, 1: 8, 2: 16 bit) [5:4] flush level
STAGEs_CFG         20+2s  [3:0] op [7:4] A src [11:8] B src [15:12] C src [17:16] out bits
                          (REQUANT/ADD_SAT) [19:18] acc op (0 SUM 1 MAX 2 MIN 3 ARGMAX) [21:20]
                          acc level (0 = none)
STAGEs_IMM         21+2s  [31:0] immediate operand (REQUANT: m in [14:0], s in [21:16])
POST_CFG           40     as STAGEs_CFG, for the post-reduction scalar stage
POST_IMM           41     as STAGEs_IMM
=================  =====  ======================================================================

All registers reset to 0: the unit then runs one beat with every input disabled and stage
ops PASS. Source codes (:class:`Src`): 0 PREV, 1 IMM, 2 ACC, 3 ZERO, 4+k VIN k, 8+k SIN k.
Accumulators are not cleared by ``start`` (the first beat of each group overwrites them); ACC
as an operand of a stage without an accumulate level reads a stale value.

Golden-model patterns (``sw/golden.py``) and how they map (T = tested in tests/test_pcu.py)

==============  =================================================================================
pattern         PCU program(s)
==============  =================================================================================
gemv (int8 x)   :meth:`PcuConfig.gemv`: DP4 + row accumulate, SUM tree, post REQUANT with per-row
                (m, s) from sin0, packed int8/16/32 on vout (T). lm_head = 32-bit output (T).
gemv (int16 x)  needs a third vector input (``pcu_vector_inputs = 3``): DP4 hi, SHL 8, DP4U lo (T)
rmsnorm         pass 1: SHR_ROUND, MUL self, accumulate, SUM tree, post ADD eps -> sout (T);
                scalar: CLZ/SUB/AND/SHLR give the rsqrt index (T) and, in a second lane chain or
                PCU, half_k; PMU LUT; pass 2 (x re-read from a PMU): MUL(x, sin r), REQUANT with
                per-channel (m, s) words on vin1 and C = sin half_k, pack 8 (ops T)
rope            MUL accumulated over 2-beat groups ((x1, cos), (x2, -sin)), REQUANT, pack 8 (T)
attn_scores     DP4, segmented SUM tree (a group of lanes per head), q reused (T)
softmax_num     MAX: lane MAX accumulators + MAX tree -> sout (T); pass 2 over the buffered
                scores: SUB(sin mx, vin), REQUANT 16, MIN N-1 -> LUT indices on vout; PMU LUT;
                SUM tree + post SUM accumulator (T)
attn_wsum       MUL(vin V, sin e_t) accumulated over t; scalar chain CLZ/SHLR for recip_index;
                REQUANT(acc, B = sin (mh | s_a << 16), C = sin E)
swiglu          MUL(vin LUT(g), vin u16 unpacked), REQUANT, pack 8 (T)
residual        ADD_SAT 16 on unpacked int16, pack 16 (T)
argmax          MAXIDX tree + post ARGMAX accumulator -> sout (T)
==============  =================================================================================
"""

import enum

from amaranth import *
from amaranth.lib import fifo, wiring
from amaranth.lib.wiring import In, Out

from . import shared
from .bus import config_bus_signature
from .fu import Fu, FuOp, OutBits
from .links import control_link, scalar_link, unit_control_signature, vector_link
from .params import RduParams

__all__ = ["Pcu", "PcuReg", "PCU_N_REGS", "Src", "Red", "AccOp", "TokSrc", "FuOp", "OutBits",
           "pcu_geometry", "stage_cfg", "PcuConfig"]

MAX_STAGES = 16
MAX_CTRS = 4
MAX_VIN = 4
MAX_SIN = 4
TOKEN_BITS = 4


class Src(enum.IntEnum):
    PREV = 0
    IMM = 1
    ACC = 2
    ZERO = 3
    VIN0 = 4
    VIN1 = 5
    VIN2 = 6
    VIN3 = 7
    SIN0 = 8
    SIN1 = 9
    SIN2 = 10
    SIN3 = 11
    IDX = 4          # post stage only: the reduced lane index (same code as VIN0)


class Red(enum.IntEnum):
    OFF = 0
    SUM = 1
    MAX = 2
    MIN = 3
    MAXIDX = 4
    FIRST = 5


class AccOp(enum.IntEnum):
    SUM = 0
    MAX = 1
    MIN = 2
    ARGMAX = 3       # post stage; lanes treat it as MAX


class TokSrc(enum.IntEnum):
    ENTRY = 0
    EXIT = 1
    VOUT = 2
    DONE = 3


def _regs():
    d = {}
    for i in range(MAX_CTRS):
        d[f"CTR{i}"] = 0x00 + i
    for k in range(MAX_VIN):
        d[f"VIN{k}"] = 0x04 + k
    for k in range(MAX_SIN):
        d[f"SIN{k}"] = 0x08 + k
    for j in range(2):
        d[f"TOKIN{j}"] = 0x0C + j
        d[f"TOKOUT{j}"] = 0x0E + j
    d["EMIT"] = 0x10
    d["REDUCE"] = 0x11
    d["OUT"] = 0x12
    for s in range(MAX_STAGES):
        d[f"STAGE{s}_CFG"] = 0x20 + 2 * s
        d[f"STAGE{s}_IMM"] = 0x21 + 2 * s
    d["POST_CFG"] = 0x40
    d["POST_IMM"] = 0x41
    return d


PcuReg = enum.IntEnum("PcuReg", _regs())
PcuReg.__doc__ = "PCU configuration register addresses (see the module docstring's table)."
PCU_N_REGS = 0x42


def pcu_geometry(p: RduParams) -> dict:
    """PCU sizes derived from the params (with defaults until RduParams grows these fields)."""
    g = {
        "lanes": p.lanes,
        "stages": p.pcu_stages,
        "n_vin": getattr(p, "pcu_vector_inputs", 2),
        "n_sin": getattr(p, "pcu_scalar_inputs", 2),
        "n_ctr": getattr(p, "pcu_counters", 3),
        "fifo_depth": getattr(p, "pcu_fifo_depth", 4),
    }
    if not (1 <= g["stages"] <= MAX_STAGES and 1 <= g["n_vin"] <= MAX_VIN
            and 1 <= g["n_sin"] <= MAX_SIN and 1 <= g["n_ctr"] <= MAX_CTRS and g["lanes"] >= 2):
        raise ValueError(f"unsupported PCU geometry {g}")
    return g


def stage_cfg(op, a=Src.PREV, b=Src.ZERO, c=Src.ZERO, bits=32, acc_op=AccOp.SUM,
              acc_level=0) -> int:
    """Encode a ``STAGEs_CFG``/``POST_CFG`` value."""
    if not 0 <= acc_level <= MAX_CTRS:
        raise ValueError(f"accumulate level {acc_level} out of range")
    return (int(op) | int(a) << 4 | int(b) << 8 | int(c) << 12 | int(OutBits.of(bits)) << 16
            | int(acc_op) << 18 | int(acc_level) << 20)


class Pcu(wiring.Component):
    """Pattern Compute Unit; see the module docstring for the full contract."""

    def __init__(self, params: RduParams, unit_id: int | None):
        """``unit_id=None``: the id is an input port ``unit_id`` (see :mod:`hdl.shared`)."""
        self.params = params
        g = self.geom = pcu_geometry(params)
        members = shared.unit_id_member(self, unit_id)
        super().__init__({
            **members,
            "vin": In(vector_link(params)).array(g["n_vin"]),
            "sin": In(scalar_link(params)).array(g["n_sin"]),
            "vout": Out(vector_link(params)),
            "sout": Out(scalar_link(params)),
            "ctl_in": In(control_link()).array(2),
            "ctl_out": Out(control_link()).array(2),
            "cfg": In(config_bus_signature()),
            "ctrl": In(unit_control_signature()),
        })

    def elaborate(self, platform):
        if shared.active() and isinstance(self.unit_id, int):
            return shared.instance(self, "", lambda: Pcu(self.params, None))
        m = Module()
        g = self.geom
        L, S, NV, NS, NC = g["lanes"], g["stages"], g["n_vin"], g["n_sin"], g["n_ctr"]
        T = (L - 1).bit_length()          # tree levels
        W = 32
        IDXW = max(1, T)

        # ---------------- configuration registers ----------------
        def reg(name, width):
            return Signal(width, name=f"cfg_{name.lower()}")

        ctr_max = [reg(f"CTR{i}", 16) for i in range(NC)]
        vin_cfg = [reg(f"VIN{k}", 5) for k in range(NV)]
        sin_cfg = [reg(f"SIN{k}", 3) for k in range(NS)]
        tokin_cfg = [reg(f"TOKIN{j}", 3) for j in range(2)]
        tokout_cfg = [reg(f"TOKOUT{j}", 5) for j in range(2)]
        emit_cfg = reg("EMIT", 2)
        red_cfg = reg("REDUCE", 6)
        out_cfg = reg("OUT", 6)
        st_cfg = [reg(f"STAGE{s}_CFG", 22) for s in range(S)]
        st_imm = [reg(f"STAGE{s}_IMM", 32) for s in range(S)]
        post_cfg = reg("POST_CFG", 22)
        post_imm = reg("POST_IMM", 32)
        table = {}
        for i in range(NC):
            table[PcuReg[f"CTR{i}"]] = ctr_max[i]
        for k in range(NV):
            table[PcuReg[f"VIN{k}"]] = vin_cfg[k]
        for k in range(NS):
            table[PcuReg[f"SIN{k}"]] = sin_cfg[k]
        for j in range(2):
            table[PcuReg[f"TOKIN{j}"]] = tokin_cfg[j]
            table[PcuReg[f"TOKOUT{j}"]] = tokout_cfg[j]
        table[PcuReg.EMIT] = emit_cfg
        table[PcuReg.REDUCE] = red_cfg
        table[PcuReg.OUT] = out_cfg
        for s in range(S):
            table[PcuReg[f"STAGE{s}_CFG"]] = st_cfg[s]
            table[PcuReg[f"STAGE{s}_IMM"]] = st_imm[s]
        table[PcuReg.POST_CFG] = post_cfg
        table[PcuReg.POST_IMM] = post_imm
        with m.If(self.cfg.we & (self.cfg.unit == self.unit_id)):
            with m.Switch(self.cfg.addr):
                for addr, sig in table.items():
                    with m.Case(int(addr)):
                        m.d.sync += sig.eq(self.cfg.data)

        red_op = red_cfg[0:3]
        seg = red_cfg[3:6]                 # segmented tree: groups of 2**seg lanes (0: all)
        vector_mode = red_op == Red.OFF
        seg_mode = ~vector_mode & (seg != 0) & (seg < T)
        vec_like = vector_mode | seg_mode  # results bypass the post stage and sout
        out_vout_en, out_sout_en = out_cfg[0], out_cfg[1]
        pack_code, flush_level = out_cfg[2:4], out_cfg[4:6]

        # ---------------- input FIFOs ----------------
        vfifo, sfifo = [], []
        for k in range(NV):
            f = fifo.SyncFIFOBuffered(width=self.params.beat_bits, depth=g["fifo_depth"])
            m.submodules[f"vin{k}_fifo"] = f
            m.d.comb += [f.w_data.eq(self.vin[k].payload), f.w_en.eq(self.vin[k].valid),
                         self.vin[k].ready.eq(f.w_rdy)]
            vfifo.append(f)
        for k in range(NS):
            f = fifo.SyncFIFOBuffered(width=W, depth=g["fifo_depth"])
            m.submodules[f"sin{k}_fifo"] = f
            m.d.comb += [f.w_data.eq(self.sin[k].payload), f.w_en.eq(self.sin[k].valid),
                         self.sin[k].ready.eq(f.w_rdy)]
            sfifo.append(f)

        # ---------------- control state ----------------
        busy = Signal()
        running = Signal()          # beats remain to enter
        ctr = [Signal(16, name=f"ctr{i}") for i in range(NC)]
        m.d.comb += self.ctrl.busy.eq(busy)
        m.d.comb += self.ctrl.status.eq(0)

        # flags of the beat at the entry: first[k], last[k] for k = 0..NC
        at_max = [ctr[i] == ctr_max[i] for i in range(NC)]
        at_zero = [ctr[i] == 0 for i in range(NC)]
        # Built from separate prefix-AND terms, not bit by bit from itself: a signal whose bits
        # feed each other is a combinational loop to Verilator (re-evaluated until it settles).
        e_first = Signal(NC + 1)
        e_last = Signal(NC + 1)
        firsts, lasts = [Const(1)], [Const(1)]
        for k in range(NC):
            firsts.append(firsts[-1] & at_zero[k])
            lasts.append(lasts[-1] & at_max[k])
        m.d.comb += [e_first.eq(Cat(*firsts)), e_last.eq(Cat(*lasts))]

        def lvl(flags, level):
            return flags.bit_select(level, 1) if NC + 1 > 1 else flags[0]

        # pipeline advance (computed below from the output side)
        adv = Signal()
        fire = Signal()

        # unpack state and virtual heads
        vhead = []              # per vin: list of L lane values (32 bit)
        vin_ok = []
        vin_pop = []
        for k in range(NV):
            f = vfifo[k]
            en, plevel, unpack = vin_cfg[k][0], vin_cfg[k][1:3], vin_cfg[k][3:5]
            chunk = Signal(2, name=f"vin{k}_chunk")
            last_chunk = Signal(2, name=f"vin{k}_last_chunk")
            m.d.comb += last_chunk.eq(Mux(unpack == 1, 1, Mux(unpack == 2, 3, 0)))
            lanes = []
            for i in range(L):
                v = Signal(W, name=f"vin{k}_lane{i}")
                raw = f.r_data
                with m.Switch(unpack):
                    with m.Case(1):
                        with m.Switch(chunk[0]):
                            for j in range(2):
                                with m.Case(j):
                                    e = j * L + i
                                    m.d.comb += v.eq(raw[16 * e:16 * e + 16].as_signed())
                    with m.Case(2):
                        with m.Switch(chunk):
                            for j in range(4):
                                with m.Case(j):
                                    e = j * L + i
                                    m.d.comb += v.eq(raw[8 * e:8 * e + 8].as_signed())
                    with m.Default():
                        m.d.comb += v.eq(raw[W * i:W * i + W])
                lanes.append(Mux(en, v, 0))
            vhead.append(lanes)
            vin_ok.append(~en | f.r_rdy)
            vpop = Signal(name=f"vin{k}_vpop")
            m.d.comb += vpop.eq(fire & en & lvl(e_last, plevel))
            m.d.comb += f.r_en.eq(vpop & (chunk == last_chunk))
            with m.If(vpop):
                m.d.sync += chunk.eq(Mux(chunk == last_chunk, 0, chunk + 1))
            with m.If(self.ctrl.start & ~busy):
                m.d.sync += chunk.eq(0)
            vin_pop.append(vpop)

        shead = []
        sin_ok = []
        for k in range(NS):
            f = sfifo[k]
            en, plevel = sin_cfg[k][0], sin_cfg[k][1:3]
            shead.append(Mux(en, f.r_data, 0))
            sin_ok.append(~en | f.r_rdy)
            m.d.comb += f.r_en.eq(fire & en & lvl(e_last, plevel))

        # input tokens
        tok_ok = []
        for j in range(2):
            en, level = tokin_cfg[j][0], tokin_cfg[j][1:3]
            need = Signal(name=f"tokin{j}_need")
            m.d.comb += need.eq(en & lvl(e_first, level))
            tok_ok.append(~need | self.ctl_in[j].valid)
            m.d.comb += self.ctl_in[j].ready.eq(fire & need)

        # output token counters (stall conditions computed per source)
        tok_cnt = [Signal(TOKEN_BITS, name=f"tokout{j}_pending") for j in range(2)]
        tok_full = [tok_cnt[j] == (1 << TOKEN_BITS) - 1 for j in range(2)]
        tok_en = [tokout_cfg[j][0] for j in range(2)]
        tok_level = [tokout_cfg[j][1:3] for j in range(2)]
        tok_src = [tokout_cfg[j][3:5] for j in range(2)]
        entry_tok_stall = Signal()
        m.d.comb += entry_tok_stall.eq(Cat(*[tok_en[j] & (tok_src[j] == TokSrc.ENTRY) & tok_full[j]
                                             for j in range(2)]).any())

        inputs_ok = Signal()
        m.d.comb += inputs_ok.eq(Cat(*vin_ok, *sin_ok, *tok_ok).all())
        m.d.comb += fire.eq(running & inputs_ok & adv & ~entry_tok_stall)

        # counter chain advance
        with m.If(fire):
            for i in range(NC):
                with m.If(e_last[i]):      # all counters below i at max: counter i steps
                    m.d.sync += ctr[i].eq(Mux(at_max[i], 0, ctr[i] + 1))
            with m.If(e_last[NC]):
                m.d.sync += running.eq(0)

        # ---------------- pipeline registers ----------------
        def beat_regs(tag):
            return {
                "valid": Signal(name=f"{tag}_valid"),
                "lanes": [Signal(W, name=f"{tag}_l{i}") for i in range(L)],
                "vin": [[Signal(W, name=f"{tag}_v{k}_{i}") for i in range(L)] for k in range(NV)],
                "sin": [Signal(W, name=f"{tag}_s{k}") for k in range(NS)],
                "first": Signal(NC + 1, name=f"{tag}_first"),
                "last": Signal(NC + 1, name=f"{tag}_last"),
            }

        R = [beat_regs(f"r{s}") for s in range(S + 1)]
        with m.If(adv):
            m.d.sync += R[0]["valid"].eq(fire)
            m.d.sync += [R[0]["first"].eq(e_first), R[0]["last"].eq(e_last)]
            for i in range(L):
                m.d.sync += R[0]["lanes"][i].eq(vhead[0][i])
                for k in range(NV):
                    m.d.sync += R[0]["vin"][k][i].eq(vhead[k][i])
            for k in range(NS):
                m.d.sync += R[0]["sin"][k].eq(shead[k])

        def operand(m, sel, prev, vins, sins, imm, acc):
            o = Signal(W)
            with m.Switch(sel):
                with m.Case(Src.PREV):
                    m.d.comb += o.eq(prev)
                with m.Case(Src.IMM):
                    m.d.comb += o.eq(imm)
                with m.Case(Src.ACC):
                    m.d.comb += o.eq(acc)
                for k, v in enumerate(vins):
                    with m.Case(Src.VIN0 + k):
                        m.d.comb += o.eq(v)
                for k, v in enumerate(sins):
                    with m.Case(Src.SIN0 + k):
                        m.d.comb += o.eq(v)
                with m.Default():
                    m.d.comb += o.eq(0)
            return o

        def combine(acc_op, acc, r):
            a, b = acc.as_signed(), r.as_signed()
            return Mux(acc_op == AccOp.SUM, (acc + r)[:W],
                       Mux(acc_op == AccOp.MIN, Mux(b < a, b, a), Mux(b > a, b, a)))

        for s in range(S):
            cur, nxt = R[s], R[s + 1]
            cfgw = st_cfg[s]
            op, asel, bsel, csel = cfgw[0:4], cfgw[4:8], cfgw[8:12], cfgw[12:16]
            bits, acc_op, acc_level = cfgw[16:18], cfgw[18:20], cfgw[20:22]
            acc_reset = lvl(cur["first"], acc_level)
            with m.If(adv):
                m.d.sync += [nxt["valid"].eq(cur["valid"]), nxt["first"].eq(cur["first"]),
                             nxt["last"].eq(cur["last"])]
                for k in range(NV):
                    m.d.sync += [nxt["vin"][k][i].eq(cur["vin"][k][i]) for i in range(L)]
                m.d.sync += [nxt["sin"][k].eq(cur["sin"][k]) for k in range(NS)]
            for i in range(L):
                fu = Fu()
                m.submodules[f"fu_s{s}_l{i}"] = fu
                acc = Signal(W, name=f"acc_s{s}_l{i}")
                vins = [cur["vin"][k][i] for k in range(NV)]
                m.d.comb += [
                    fu.op.eq(op), fu.bits.eq(bits),
                    fu.a.eq(operand(m, asel, cur["lanes"][i], vins, cur["sin"], st_imm[s], acc)),
                    fu.b.eq(operand(m, bsel, cur["lanes"][i], vins, cur["sin"], st_imm[s], acc)),
                    fu.c.eq(operand(m, csel, cur["lanes"][i], vins, cur["sin"], st_imm[s], acc)),
                ]
                new_acc = Signal(W, name=f"acc_s{s}_l{i}_next")
                m.d.comb += new_acc.eq(Mux(acc_reset, fu.r, combine(acc_op, acc, fu.r)))
                with m.If(adv):
                    m.d.sync += nxt["lanes"][i].eq(Mux(acc_level != 0, new_acc, fu.r))
                    with m.If(cur["valid"] & (acc_level != 0)):
                        m.d.sync += acc.eq(new_acc)

        # ---------------- reduction tree ----------------
        RS = R[S]
        tv = [Signal(name=f"t{j}_valid") for j in range(T + 1)]
        tval = [[Signal(W, name=f"t{j}_v{i}") for i in range(L)] for j in range(T + 1)]
        tidx = [[Signal(IDXW, name=f"t{j}_i{i}") for i in range(L)] for j in range(T + 1)]
        tsin = [[Signal(W, name=f"t{j}_s{k}") for k in range(NS)] for j in range(T + 1)]
        tfirst = [Signal(NC + 1, name=f"t{j}_first") for j in range(T + 1)]
        tlast = [Signal(NC + 1, name=f"t{j}_last") for j in range(T + 1)]
        # level 0 is combinational from RS: drop beats that are not emitted
        m.d.comb += [tv[0].eq(RS["valid"] & lvl(RS["last"], emit_cfg)),
                     tfirst[0].eq(RS["first"]), tlast[0].eq(RS["last"])]
        m.d.comb += [tval[0][i].eq(RS["lanes"][i]) for i in range(L)]
        m.d.comb += [tidx[0][i].eq(i) for i in range(L)]
        m.d.comb += [tsin[0][k].eq(RS["sin"][k]) for k in range(NS)]
        for j in range(T):
            step = 1 << j
            with m.If(adv):
                m.d.sync += [tv[j + 1].eq(tv[j]), tfirst[j + 1].eq(tfirst[j]),
                             tlast[j + 1].eq(tlast[j])]
                m.d.sync += [tsin[j + 1][k].eq(tsin[j][k]) for k in range(NS)]
                for i in range(L):
                    a_v, a_i = tval[j][i], tidx[j][i]
                    if i % (2 * step) == 0 and i + step < L:
                        b_v, b_i = tval[j][i + step], tidx[j][i + step]
                        take_b = Signal(name=f"t{j}_take{i}")
                        m.d.comb += take_b.eq(
                            Mux(red_op == Red.MIN, b_v.as_signed() < a_v.as_signed(),
                                ((red_op == Red.MAX) | (red_op == Red.MAXIDX))
                                & (b_v.as_signed() > a_v.as_signed())))
                        active = (seg == 0) | (seg > j)
                        with m.Switch(Mux(active, red_op, Red.OFF)):
                            with m.Case(Red.SUM):
                                m.d.sync += [tval[j + 1][i].eq(a_v + b_v), tidx[j + 1][i].eq(a_i)]
                            with m.Case(Red.MAX, Red.MAXIDX, Red.MIN):
                                m.d.sync += [tval[j + 1][i].eq(Mux(take_b, b_v, a_v)),
                                             tidx[j + 1][i].eq(Mux(take_b, b_i, a_i))]
                            with m.Default():          # OFF, FIRST: pass through
                                m.d.sync += [tval[j + 1][i].eq(a_v), tidx[j + 1][i].eq(a_i)]
                    else:
                        m.d.sync += [tval[j + 1][i].eq(a_v), tidx[j + 1][i].eq(a_i)]
        RT = T

        # ---------------- post (scalar) stage ----------------
        pop_, pasel, pbsel, pcsel = post_cfg[0:4], post_cfg[4:8], post_cfg[8:12], post_cfg[12:16]
        pbits, pacc_op, pacc_level = post_cfg[16:18], post_cfg[18:20], post_cfg[20:22]
        pfu = Fu()
        m.submodules.fu_post = pfu
        pacc = Signal(W)
        pacc_idx = Signal(32)
        pfresh = Signal(init=1)           # next post item starts a new accumulation group
        pbeat = Signal(32 - IDXW)         # emitted-beat number inside the group
        red_val, red_idx = tval[RT][0], tidx[RT][0]
        pvins = [red_idx] + [Const(0, W)] * (MAX_VIN - 1)
        m.d.comb += [
            pfu.op.eq(pop_), pfu.bits.eq(pbits),
            pfu.a.eq(operand(m, pasel, red_val, pvins[:1], tsin[RT], post_imm, pacc)),
            pfu.b.eq(operand(m, pbsel, red_val, pvins[:1], tsin[RT], post_imm, pacc)),
            pfu.c.eq(operand(m, pcsel, red_val, pvins[:1], tsin[RT], post_imm, pacc)),
        ]
        cand_idx = Signal(32)
        cur_beat = Signal(32 - IDXW)
        m.d.comb += cur_beat.eq(Mux(pfresh, 0, pbeat + 1))
        m.d.comb += cand_idx.eq(Cat(red_idx, cur_beat) if T > 0 else cur_beat)
        p_acc_next = Signal(W)
        p_idx_next = Signal(32)
        take = Signal()
        m.d.comb += take.eq(pfu.r.as_signed() > pacc.as_signed())
        with m.If(pfresh):
            m.d.comb += [p_acc_next.eq(pfu.r), p_idx_next.eq(cand_idx)]
        with m.Elif(pacc_op == AccOp.ARGMAX):
            m.d.comb += [p_acc_next.eq(Mux(take, pfu.r, pacc)),
                         p_idx_next.eq(Mux(take, cand_idx, pacc_idx))]
        with m.Else():
            m.d.comb += [p_acc_next.eq(combine(pacc_op, pacc, pfu.r)), p_idx_next.eq(0)]
        p_group_end = lvl(tlast[RT], pacc_level)
        p_emit = Signal()
        p_result = Signal(W)
        m.d.comb += p_emit.eq(tv[RT] & (vec_like | (pacc_level == 0) | p_group_end))
        m.d.comb += p_result.eq(Mux(pacc_level == 0, pfu.r,
                                    Mux(pacc_op == AccOp.ARGMAX, p_idx_next, p_acc_next)))
        with m.If(adv & tv[RT] & ~vec_like & (pacc_level != 0)):
            m.d.sync += [pacc.eq(p_acc_next), pacc_idx.eq(p_idx_next), pbeat.eq(cur_beat),
                         pfresh.eq(p_group_end)]

        q_valid = Signal()
        q_vec = [Signal(W, name=f"q_l{i}") for i in range(L)]
        q_scalar = Signal(W)
        q_last = Signal(NC + 1)
        with m.If(adv):
            m.d.sync += [q_valid.eq(p_emit), q_scalar.eq(p_result), q_last.eq(tlast[RT])]
            m.d.sync += [q_vec[i].eq(tval[RT][i]) for i in range(L)]

        # ---------------- packer and outputs ----------------
        beat_bits = self.params.beat_bits
        vout_valid = Signal()
        vout_data = Signal(beat_bits)
        sout_valid = Signal()
        sout_data = Signal(W)
        m.d.comb += [self.vout.valid.eq(vout_valid), self.vout.payload.eq(vout_data),
                     self.sout.valid.eq(sout_valid), self.sout.payload.eq(sout_data)]
        with m.If(self.vout.ready):
            m.d.sync += vout_valid.eq(0)
        with m.If(self.sout.ready):
            m.d.sync += sout_valid.eq(0)

        pk_data = Signal(beat_bits)
        pk_pos = Signal(range(beat_bits // 8 + 1))
        pk_merged = Signal(beat_bits)
        pk_full = Signal()
        # chunk = L elements (vector mode), L >> seg (segmented tree: lanes 0, 2**seg, ...) or
        # 1 element (scalar mode, the post stage's result), each 8/16/32 bits
        mode = Signal(range(T + 2))        # 0: scalar, 1..T-1: segmented, T: vector
        m.d.comb += mode.eq(Mux(vector_mode, T, Mux(seg_mode, seg, 0)))
        m.d.comb += pk_merged.eq(pk_data)
        with m.Switch(Cat(pack_code, mode)):
            for code in OutBits:
                w = code.width
                for md in range(T + 1):
                    with m.Case(int(code) | md << 2):
                        if md == 0:
                            n_el, chunk_val = 1, q_scalar[:w]
                        else:
                            step = 1 << (md if md < T else 0)
                            n_el = L // step
                            chunk_val = Cat(*[q_vec[i * step][:w] for i in range(n_el)])
                        cw = w * n_el
                        n_chunks = beat_bits // cw
                        with m.Switch(pk_pos):
                            for pos in range(n_chunks):
                                with m.Case(pos):
                                    m.d.comb += pk_merged[pos * cw:(pos + 1) * cw].eq(chunk_val)
                        m.d.comb += pk_full.eq(pk_pos == n_chunks - 1)
        pk_send = Signal()
        m.d.comb += pk_send.eq(pk_full | lvl(q_last, flush_level) | q_last[NC])
        produce_vout = Signal()
        m.d.comb += produce_vout.eq(adv & q_valid & out_vout_en & pk_send)
        with m.If(adv & q_valid & out_vout_en):
            with m.If(pk_send):
                m.d.sync += [pk_data.eq(0), pk_pos.eq(0), vout_valid.eq(1),
                             vout_data.eq(pk_merged)]
            with m.Else():
                m.d.sync += [pk_data.eq(pk_merged), pk_pos.eq(pk_pos + 1)]
        with m.If(adv & q_valid & out_sout_en & ~vec_like):
            m.d.sync += [sout_valid.eq(1), sout_data.eq(q_scalar)]

        # ---------------- output tokens ----------------
        exit_tok_stall = Signal()
        m.d.comb += exit_tok_stall.eq(Cat(*[
            tok_en[j] & ((tok_src[j] == TokSrc.EXIT) | (tok_src[j] == TokSrc.VOUT)) & tok_full[j]
            for j in range(2)]).any())
        m.d.comb += adv.eq(~(vout_valid & ~self.vout.ready) & ~(sout_valid & ~self.sout.ready)
                           & ~exit_tok_stall)

        done = Signal()
        for j in range(2):
            ev = Signal(name=f"tokout{j}_event")
            with m.Switch(tok_src[j]):
                with m.Case(TokSrc.ENTRY):
                    m.d.comb += ev.eq(fire & lvl(e_last, tok_level[j]))
                with m.Case(TokSrc.EXIT):
                    m.d.comb += ev.eq(adv & q_valid & lvl(q_last, tok_level[j]))
                with m.Case(TokSrc.VOUT):
                    m.d.comb += ev.eq(produce_vout)
                with m.Case(TokSrc.DONE):
                    m.d.comb += ev.eq(done)
            inc = ev & tok_en[j] & ~tok_full[j]
            dec = self.ctl_out[j].valid & self.ctl_out[j].ready
            m.d.comb += self.ctl_out[j].valid.eq(tok_cnt[j] != 0)
            with m.If(inc & ~dec):
                m.d.sync += tok_cnt[j].eq(tok_cnt[j] + 1)
            with m.Elif(dec & ~inc):
                m.d.sync += tok_cnt[j].eq(tok_cnt[j] - 1)

        # ---------------- start / done ----------------
        pipe_busy = Signal()
        m.d.comb += pipe_busy.eq(Cat(*[R[s]["valid"] for s in range(S + 1)],
                                     *tv[1:], q_valid, vout_valid, sout_valid).any())
        tok_pending = Cat(*[tok_en[j] & (tok_src[j] != TokSrc.DONE) & (tok_cnt[j] != 0)
                            for j in range(2)]).any()
        m.d.comb += done.eq(busy & ~running & ~pipe_busy & ~tok_pending)
        m.d.comb += self.ctrl.done.eq(done)
        with m.If(done):
            m.d.sync += busy.eq(0)
        with m.If(self.ctrl.start & ~busy):
            m.d.sync += [busy.eq(1), running.eq(1), pk_pos.eq(0), pk_data.eq(0), pfresh.eq(1)]
            m.d.sync += [c.eq(0) for c in ctr]
        return m


# ---------------------------------------------------------------------------------------------
# Configuration helper
# ---------------------------------------------------------------------------------------------

def _level_ok(level, n_ctr):
    if not 0 <= level <= n_ctr:
        raise ValueError(f"level {level} out of range 0..{n_ctr}")
    return level


class PcuConfig:
    """High-level builder of a PCU configuration: ``writes()`` -> list of (PcuReg, value).

    Start from ``PcuConfig(params)`` and call the setters, or use a pattern constructor
    (:meth:`gemv`, :meth:`elementwise`, :meth:`reduce`, :meth:`argmax`). Unset stages are PASS.
    """

    def __init__(self, params: RduParams = None):
        self.params = params or RduParams()
        self.geom = pcu_geometry(self.params)
        self.regs = {}

    # ---- low-level setters ----
    def counters(self, *counts):
        """Iteration counts, innermost first (missing outer counters run once)."""
        if len(counts) > self.geom["n_ctr"]:
            raise ValueError(f"at most {self.geom['n_ctr']} counters")
        for i in range(self.geom["n_ctr"]):
            n = counts[i] if i < len(counts) else 1
            if not 1 <= n <= 1 << 16:
                raise ValueError(f"counter {i}: count {n} out of range 1..65536")
            self.regs[PcuReg[f"CTR{i}"]] = n - 1
        return self

    def vin(self, k, pop_level=0, unpack=32):
        if not 0 <= k < self.geom["n_vin"]:
            raise ValueError(f"no vector input {k}")
        code = {32: 0, 16: 1, 8: 2}[unpack]
        self.regs[PcuReg[f"VIN{k}"]] = 1 | _level_ok(pop_level, self.geom["n_ctr"]) << 1 | code << 3
        return self

    def sin(self, k, pop_level=0):
        if not 0 <= k < self.geom["n_sin"]:
            raise ValueError(f"no scalar input {k}")
        self.regs[PcuReg[f"SIN{k}"]] = 1 | _level_ok(pop_level, self.geom["n_ctr"]) << 1
        return self

    def token_in(self, j, level):
        self.regs[PcuReg[f"TOKIN{j}"]] = 1 | _level_ok(level, self.geom["n_ctr"]) << 1
        return self

    def token_out(self, j, source, level=0):
        self.regs[PcuReg[f"TOKOUT{j}"]] = (1 | _level_ok(level, self.geom["n_ctr"]) << 1
                                           | int(source) << 3)
        return self

    def stage(self, s, op, a=Src.PREV, b=Src.ZERO, c=Src.ZERO, imm=0, bits=32,
              acc_op=AccOp.SUM, acc_level=0):
        if not 0 <= s < self.geom["stages"]:
            raise ValueError(f"no stage {s}")
        self.regs[PcuReg[f"STAGE{s}_CFG"]] = stage_cfg(op, a, b, c, bits, acc_op, acc_level)
        self.regs[PcuReg[f"STAGE{s}_IMM"]] = imm & 0xFFFFFFFF
        return self

    def post(self, op, a=Src.PREV, b=Src.ZERO, c=Src.ZERO, imm=0, bits=32, acc_op=AccOp.SUM,
             acc_level=0):
        self.regs[PcuReg.POST_CFG] = stage_cfg(op, a, b, c, bits, acc_op, acc_level)
        self.regs[PcuReg.POST_IMM] = imm & 0xFFFFFFFF
        return self

    def emit(self, level):
        self.regs[PcuReg.EMIT] = _level_ok(level, self.geom["n_ctr"])
        return self

    def reduce(self, red, segment_log2=0):
        """Reduction op; ``segment_log2`` = g > 0 reduces groups of ``2**g`` lanes."""
        T = (self.geom["lanes"] - 1).bit_length()
        if segment_log2 and not 0 < segment_log2 < T:
            raise ValueError(f"segment_log2 must be in 1..{T - 1}")
        self.regs[PcuReg.REDUCE] = int(red) | segment_log2 << 3
        return self

    def output(self, vout=True, sout=False, pack_bits=32, flush_level=None):
        fl = self.geom["n_ctr"] if flush_level is None else _level_ok(flush_level, self.geom["n_ctr"])
        self.regs[PcuReg.OUT] = (int(vout) | int(sout) << 1 | int(OutBits.of(pack_bits)) << 2
                                 | fl << 4)
        return self

    def writes(self):
        """All register writes, every register of this geometry included (unset ones are 0)."""
        g = self.geom
        names = ([f"CTR{i}" for i in range(g["n_ctr"])] + [f"VIN{k}" for k in range(g["n_vin"])]
                 + [f"SIN{k}" for k in range(g["n_sin"])] + ["TOKIN0", "TOKIN1", "TOKOUT0",
                 "TOKOUT1", "EMIT", "REDUCE", "OUT"]
                 + [f"STAGE{s}_{x}" for s in range(g["stages"]) for x in ("CFG", "IMM")]
                 + ["POST_CFG", "POST_IMM"])
        return [(PcuReg[n], self.regs.get(PcuReg[n], 0)) for n in names]

    # ---- patterns ----
    @staticmethod
    def requant_word(m, s) -> int:
        """The packed (m, s) operand of REQUANT: m in bits 14:0, s in bits 21:16."""
        if not (0 <= m < 1 << 15 and 0 <= s <= 63):
            raise ValueError(f"requant (m={m}, s={s}) out of range")
        return m | s << 16

    @classmethod
    def gemv(cls, params, rows, cols_beats, m=None, s=None, out_bits=8, x_reuse=False,
             scales_from_sin=False, sout=False, x_bits=8):
        """GEMV ``y = requant(W @ x, m, s, out_bits)`` with int8 W and int8 (or int16) x.

        vin0: W, ``cols_beats`` beats per row (64 int8 per beat at 16 lanes), one per cycle.
        vin1: x, the same ``cols_beats`` beats per row (re-sent per row), or, with
        ``x_reuse`` (``cols_beats`` must be 1), a single beat used by every row.
        Per-row (m, s): one REQUANT word per row on sin0 (``scales_from_sin``; see
        :meth:`requant_word`), else the constants ``m``, ``s`` in POST_IMM.
        Stage 0: DP4(vin0, vin1) accumulated over the row; SUM reduce; post REQUANT; results
        packed ``out_bits`` wide on vout (a partial last vector is zero-filled), optionally
        also each row on sout.

        ``x_bits=16`` needs a third vector input (``pcu_vector_inputs >= 3``): vin1 carries
        the high bytes ``x >> 8`` and vin2 the low bytes ``x & 0xFF`` of the same 64 columns
        (both int8-packed like W), and the lanes compute
        ``(DP4(W, hi) << 8) + DP4U(W, lo)`` (stages 0-2) before accumulating, as
        ``intops.gemv(w, x, 16)``.
        """
        c = cls(params)
        c.counters(cols_beats, rows)
        c.vin(0, pop_level=0)
        xs = [1] if x_bits == 8 else [1, 2]
        if x_bits not in (8, 16):
            raise ValueError(f"x_bits must be 8 or 16, not {x_bits}")
        if x_bits == 16 and c.geom["n_vin"] < 3:
            raise ValueError("an int16-input GEMV needs pcu_vector_inputs >= 3")
        for k in xs:
            if x_reuse:
                if cols_beats != 1:
                    raise ValueError("x_reuse needs cols_beats == 1 (a FIFO cannot replay beats)")
                c.vin(k, pop_level=c.geom["n_ctr"])
            else:
                c.vin(k, pop_level=0)
        if x_bits == 8:
            c.stage(0, FuOp.DP4, Src.VIN0, Src.VIN1, Src.ZERO, acc_op=AccOp.SUM, acc_level=1)
        else:
            c.stage(0, FuOp.DP4, Src.VIN0, Src.VIN1, Src.ZERO)
            c.stage(1, FuOp.SHL, Src.PREV, Src.IMM, imm=8)
            c.stage(2, FuOp.DP4U, Src.VIN0, Src.VIN2, Src.PREV, acc_op=AccOp.SUM, acc_level=1)
        c.emit(1)
        c.reduce(Red.SUM)
        if scales_from_sin:
            c.sin(0, pop_level=1)
            c.post(FuOp.REQUANT, Src.PREV, Src.SIN0, Src.ZERO, bits=out_bits)
        else:
            c.post(FuOp.REQUANT, Src.PREV, Src.IMM, Src.ZERO, imm=cls.requant_word(m, s),
                   bits=out_bits)
        c.output(vout=True, sout=sout, pack_bits=out_bits)
        return c

    @classmethod
    def argmax(cls, params, beats):
        """Index of the first maximum of ``beats`` int32 beats on vin0 (to sout)."""
        c = cls(params)
        c.counters(beats)
        c.vin(0)
        c.emit(0)
        c.reduce(Red.MAXIDX)
        c.post(FuOp.PASS, Src.PREV, acc_op=AccOp.ARGMAX, acc_level=1)
        c.output(vout=False, sout=True)
        return c
