"""The static performance check: every CUDA kernel, as NVRTC and ptxas build it for sm_80 and
sm_90, read without a GPU (gpugd.kernel_report; `gpugd info --kernels` prints the table).

Asserted per kernel: no spills; no local memory; resident blocks per multiprocessor at or
above its family's floor (registers within budget); in the streaming kernels, a main loop
whose global bytes move mostly in 128-bit accesses and which keeps enough loads in flight
for an H200 (~26–36 KB per multiprocessor to stream at full rate). The parser itself is tested on
hand-written SASS first.
"""

from __future__ import annotations

import re

import pytest

from gpugd import _nvrtc
from gpugd import kernel_report as kr

try:
    kr.ptxas(), kr.cuobjdump()
    _nvrtc.nvrtc_version()
    _TOOLS = None
except (kr.ToolUnavailableError, _nvrtc.NvrtcUnavailableError) as exc:  # pragma: no cover
    _TOOLS = str(exc)

needs_tools = pytest.mark.skipif(_TOOLS is not None, reason=f"static check tools: {_TOOLS}")

# ---- the parser and the occupancy rule, on known inputs


def test_occupancy_rule_matches_the_cuda_calculator():
    """Register tiers at 256 threads on sm_90 (CUDA occupancy calculator: registers are
    allocated per warp in units of 256, the file split over 4 schedulers), then the warp,
    block and shared-memory limits."""
    a = kr.ARCHS["sm_90"]
    tiers = {16: 8, 32: 8, 33: 6, 40: 6, 41: 5, 48: 5, 56: 4, 64: 4, 72: 3, 80: 3, 96: 2}
    tiers.update({128: 2, 168: 1, 255: 1})
    for regs, blocks in tiers.items():
        assert kr.blocks_per_sm(a, regs, 0) == blocks, regs
    assert kr.blocks_per_sm(a, 16, 0, threads=64) == 32  # the 32-block limit
    assert kr.blocks_per_sm(a, 16, 0, threads=1024) == 2  # the 64-warp limit
    assert kr.blocks_per_sm(a, 16, 48 * 1024) == 4  # 49 KiB per block of 228 KiB
    assert kr.blocks_per_sm(kr.ARCHS["sm_80"], 16, 48 * 1024) == 3  # of 164 KiB
    # the sub-partition rule: 40 registers × 32 = 1280 per warp; 16384 // 1280 = 12 warps in
    # each of 4 sub-partitions, 48 warps = 24 blocks of 2 warps (the whole file, 65536 //
    # 1280 = 51 warps, would give 25)
    assert kr.blocks_per_sm(a, 40, 0, threads=64) == 24
    # the 1 KiB reserved per block: (57600 + 1024) rounded to 128 = 58624 B; 233472 // 58624
    # = 3 blocks (without the reservation, 233472 // 57600 = 4)
    assert kr.blocks_per_sm(a, 16, 57600) == 3
    assert kr.blocks_per_sm(a, 16, 227 * 1024) == 1  # the most one block may use
    assert kr.blocks_per_sm(a, 16, 227 * 1024 + 1) == 0
    assert kr.blocks_per_sm(a, 255, 0, threads=1024) == 0  # 255 × 1024 > 64 K per block


def test_occupancy_rule_takes_any_integer_type():
    import numpy as np

    a = kr.ARCHS["sm_90"]
    assert kr.blocks_per_sm(a, np.int32(40), np.int64(0), np.int64(64)) == 24


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        (("sm_90", 32, 0), TypeError, "arch: expected a kernel_report.Arch"),
        ((None, 32.0, 0), TypeError, "registers: expected an int, got float"),
        ((None, True, 0), TypeError, "registers: expected an int, got bool"),
        ((None, 256, 0), ValueError, r"registers: expected 0\.\.255, got 256"),
        ((None, -1, 0), ValueError, "registers: expected 0"),
        ((None, 32, "0"), TypeError, "smem: expected an int, got str"),
        ((None, 32, -4), ValueError, "smem: expected 0"),
        ((None, 32, 0, 0), ValueError, r"threads: expected 1\.\.1024, got 0"),
        ((None, 32, 0, 2048), ValueError, "threads: expected 1"),
        ((None, 32, 0, 256.0), TypeError, "threads: expected an int, got float"),
    ],
)
def test_occupancy_rule_refuses_bad_arguments(args, error, match):
    arch, *rest = args
    with pytest.raises(error, match=match):
        kr.blocks_per_sm(kr.ARCHS["sm_90"] if arch is None else arch, *rest)


_SASS = """
        Function : k_stream
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   LDG.E.128 R8, desc[UR4][R2.64+0x10] ;
        /*0030*/                   LDG.E R12, desc[UR4][R14.64] ;
        /*0040*/                   FMUL R4, R4, R0 ;
        /*0050*/                   STG.E.128 desc[UR4][R2.64], R4 ;
        /*0060*/                   STG.E.128 desc[UR4][R2.64+0x10], R8 ;
        /*0070*/               @P0 BRA 0x10 ;
        /*0080*/                   LDL R3, [R1] ;
        /*0090*/                   STG.E.U8 desc[UR4][R2.64], R3 ;
        /*00a0*/                   EXIT ;
        Function : k_nested
        /*0000*/                   LDG.E.64 R4, desc[UR4][R2.64] ;
        /*0010*/                   LDG.E.64 R6, desc[UR4][R8.64] ;
        /*0020*/                   DADD R10, R4, R6 ;
        /*0030*/              @!P1 BRA 0x10 ;
        /*0040*/                   STG.E.64 desc[UR4][R2.64], R10 ;
        /*0050*/                   BRA 0x0 ;
"""


# loads waited on by instructions that name only part of the loaded registers
_SASS_PAIRS = """
        Function : k_double
        /*0000*/                   LDG.E.64 R8, desc[UR4][R2.64] ;
        /*0010*/                   LDG.E R5, desc[UR4][R2.64+0x10] ;
        /*0020*/                   DADD R10, R4, R6 ;
        /*0030*/                   LDG.E.64 R12, desc[UR4][R2.64+0x20] ;
        /*0040*/                   STG.E.64 desc[UR4][R2.64], R10 ;
        /*0050*/               @P0 BRA 0x0 ;
        Function : k_dwrite
        /*0000*/                   LDG.E R11, desc[UR4][R2.64] ;
        /*0010*/                   DMUL R10, R6, R6 ;
        /*0020*/                   LDG.E.64 R12, desc[UR4][R2.64+0x10] ;
        /*0030*/                   STG.E.64 desc[UR4][R2.64], R10 ;
        /*0040*/               @P0 BRA 0x0 ;
        Function : k_red
        /*0000*/                   LDG.E.64 R6, desc[UR4][R2.64] ;
        /*0010*/                   LDG.E R9, desc[UR4][R2.64+0x10] ;
        /*0020*/                   RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R6.64], R0 ;
        /*0030*/                   LDG.E R10, desc[UR4][R2.64+0x20] ;
        /*0040*/               @P0 BRA 0x0 ;
        Function : k_atom
        /*0000*/                   LDG.E R13, desc[UR4][R2.64] ;
        /*0010*/                   ATOMG.E.ADD.F64.RN.STRONG.GPU PT, R0, desc[UR4][R4.64], R12 ;
        /*0020*/                   LDG.E.128 R16, desc[UR4][R2.64+0x10] ;
        /*0030*/               @P0 BRA 0x0 ;
        Function : k_stg_wide
        /*0000*/                   LDG.E R6, desc[UR4][R2.64] ;
        /*0010*/                   LDG.E R9, desc[UR4][R2.64+0x10] ;
        /*0020*/                   STG.E.128 desc[UR4][R14.64], R4 ;
        /*0030*/                   LDG.E R10, desc[UR4][R2.64+0x20] ;
        /*0040*/               @P0 BRA 0x0 ;
"""


def test_in_flight_counts_64_bit_pairs_and_red_atom_addresses():
    """DADD R10, R4, R6 reads R4:R5 (R5 still loading: 8 + 4 B in flight, not 20); DMUL
    writes R10:R11 (R11 loading: 4 B); RED's address R6.64 is a loaded pair; a 64-bit ATOM's
    data R12 is R12:R13; STG.E.128 R4 reads R4…R7."""
    funcs = kr.parse_sass(_SASS_PAIRS)
    got = {name: kr.main_loop(body).in_flight for name, body in funcs.items()}
    assert got == {"k_double": 12, "k_dwrite": 4, "k_red": 12, "k_atom": 4, "k_stg_wide": 8}
    insn = kr._Insn(0, "F2F.F64.F32", "R4, R9")
    assert kr._operand_regs(insn) == {4, 5, 9}
    assert kr._operand_regs(kr._Insn(0, "IMAD.WIDE", "R2, R7, 0x4, R2")) == {2, 3, 7}


def test_sass_parser_finds_the_main_loop_widths_and_loads_in_flight():
    funcs = kr.parse_sass(_SASS)
    assert set(funcs) == {"k_stream", "k_nested"}
    loop = kr.main_loop(funcs["k_stream"])
    # 0x10..0x70: three loads (16 + 16 + 4 B) issued before FMUL reads R4
    assert loop == kr.Loop(
        instructions=7,
        load_bytes=36,
        store_bytes=32,
        in_flight=36,
        load_widths=(4, 16),
        store_widths=(16,),
        wide_bytes=64,
    )
    assert loop.wide_share == 64 / 68
    st = kr._kernel_stats("k_stream", "x", "sm_90", dict.fromkeys(_INFO, 0), funcs["k_stream"])
    assert st.loads == {4: 1, 16: 2} and st.stores == {1: 1, 16: 2} and st.local_accesses == 1
    nested = kr.main_loop(funcs["k_nested"])  # the inner loop, 0x10..0x30, not the outer one
    assert (nested.instructions, nested.load_bytes, nested.in_flight) == (3, 8, 8)


_INFO = ("registers", "stack", "spill_stores", "spill_loads", "smem")


def test_ptxas_log_parser():
    log = """ptxas info    : Compiling entry function 'gpugd_a' for 'sm_90'
ptxas info    : Function properties for gpugd_a
    8 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem
ptxas info    : Compiling entry function 'gpugd_b' for 'sm_90'
ptxas info    : Function properties for gpugd_b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers"""
    assert kr.parse_ptxas(log) == {
        "gpugd_a": {"registers": 40, "stack": 8, "spill_stores": 4, "spill_loads": 4, "smem": 256},
        "gpugd_b": {"registers": 18, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0},
    }


def test_ptxas_log_parser_keeps_a_callees_block_apart():
    """A non-inlined callee's "Function properties" block, printed after its entry's own
    and before the entry's "Used" line (and one before any entry), gives the entry none of
    its stack or spills."""
    log = """ptxas info    : 0 bytes gmem
ptxas info    : Function properties for _Z6helperPKdi
    24 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads
ptxas info    : Compiling entry function 'gpugd_a' for 'sm_90'
ptxas info    : Function properties for gpugd_a
    8 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Function properties for _Z4walkPfl
    48 bytes stack frame, 40 bytes spill stores, 40 bytes spill loads
ptxas info    : Used 40 registers, used 1 barriers, 256 bytes smem
ptxas info    : Compiling entry function 'gpugd_b' for 'sm_90'
ptxas info    : Function properties for gpugd_b
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 18 registers"""
    assert kr.parse_ptxas(log) == {
        "gpugd_a": {"registers": 40, "stack": 8, "spill_stores": 0, "spill_loads": 0, "smem": 256},
        "gpugd_b": {"registers": 18, "stack": 0, "spill_stores": 0, "spill_loads": 0, "smem": 0},
    }


def test_cache_key_is_the_tools_versions_not_their_paths(tmp_path):
    """Two copies of one tool at different paths share a key; a new version at the same
    path (an upgrade in place) does not."""

    def tool(name: str, version: str):
        p = tmp_path / name
        p.write_text(f"#!/bin/sh\necho 'Cuda compilation tools, release {version}'\n")
        p.chmod(0o755)
        return p

    kr._version_text.cache_clear()
    a, b, c = tool("a", "12.9"), tool("b", "12.9"), tool("c", "12.9")
    key = kr.cache_key("src", "sm_90", a, c)
    assert kr.cache_key("src", "sm_90", b, c) == key
    assert kr.cache_key("src", "sm_80", a, c) != key
    assert kr.cache_key("src2", "sm_90", a, c) != key
    assert kr.cache_key("src", "sm_90", a, None) != key  # ptxas only
    tool("b", "13.0")
    kr._version_text.cache_clear()
    assert kr.cache_key("src", "sm_90", b, c) != key
    kr._version_text.cache_clear()


def test_bytes_per_element_of_the_default_configurations():
    assert kr.bytes_per_element("gpugd_vector_axpy_f32") == 12
    assert kr.bytes_per_element("gpugd_optim_adam_f32") == 28  # p g m v read, p m v written
    assert kr.bytes_per_element("gpugd_optim_lion_f32") == 20  # p g m read, p m written
    assert kr.bytes_per_element("gpugd_optim_sgd_multi_f64") == 40
    # float16 p, g; float32 m, v; fp32 master read and written; the half p written only
    assert kr.bytes_per_element("gpugd_optim_adam_multi_f16p_f32s_master") == 2 + 2 + 16 + 8
    assert kr.bytes_per_element("gpugd_optim_adam_multi_f16p_f32s") == 2 + 2 + 2 + 16
    assert kr.bytes_per_element("gpugd_reduce_average_f32") is None  # k inputs: per launch


# ---- the kernels themselves

# family floors of resident 256-thread blocks per SM on sm_90 (registers within budget)
_FLOORS = [
    (r"^gpugd_(vector|dropout|reduce_stats_partial|reduce_average)_", 6),
    # float64 backward: the compensated GELU and tanh-GELU derivatives (exact edges, issue
    # 20) take 76 registers on sm_90; 3 blocks × 64 B per thread = 48 KB in flight per SM,
    # still above IN_FLIGHT_PER_SM, which is what the streaming loop needs
    (r"^gpugd_activations_backward_f64$", 3),
    (r"^gpugd_activations_", 4),
    (r"^gpugd_optim_\w+_(multi|graph)_", 2),
    (r"^gpugd_optim_\w+_(f32|f64)$", 4),
    # 8-bit Adam, B = 2048: every load of its 8 elements per thread issued before the rule
    # (88 B per thread) takes 76 registers; 3 blocks keep 66 KB in flight per SM (the
    # interleaved loop had 5 blocks but 22 KB). __launch_bounds__(256, 4) spills 84 bytes;
    # (256, 3) keeps the half-precision policies (up to 87 registers) at 80, no spills
    (r"^gpugd_optim8_adam_b2048_", 3),
    (r"^gpugd_optim8_", 4),
    (r"^gpugd_batchnorm_(stats|sums)_partial_|^gpugd_batchnorm_affine_", 2),
    (r".", 1),
]
# streaming kernels: a main loop of mostly 128-bit accesses, and loads in flight per SM
_STREAMING = re.compile(
    r"^gpugd_(vector_(axpy|scale|sum_of_squares_partial|scale_sum_of_squares_partial)"
    r"|activations_(forward|backward)|dropout_apply|reduce_stats_partial"
    r"|optim_(sgd|adagrad|rmsprop|adam|nadam|lion)(_multi|_graph)?|batchnorm_affine)_(f32|f64)$"
)
_PER_CHANNEL = re.compile(r"^gpugd_batchnorm_affine_")
IN_FLIGHT_PER_SM = 32 * 1024  # bytes of loads in flight an H200 multiprocessor needs
WIDE_SHARE = 0.75  # of the main loop's bytes, moved in 128-bit accesses (per-channel or
# per-tensor scalars beside the packs are the rest)


@pytest.fixture(scope="module")
def table():
    if _TOOLS is not None:
        pytest.skip(f"static check tools: {_TOOLS}")
    return kr.report(["sm_80", "sm_90"])


@needs_tools
def test_every_kernel_is_in_the_report(table):
    from gpugd import _kernels, _nvrtc

    for family, path in _kernels.kernel_sources().items():
        entries = set(_nvrtc.ptx_entries(_nvrtc.compile_file(path, "compute_90")))
        for arch in ("sm_80", "sm_90"):
            got = {k.name for k in table if k.family == family and k.arch == arch}
            assert got == entries, (family, arch)
    assert sum(1 for k in table if k.arch == "sm_90") >= 100


@needs_tools
def test_no_spills_and_no_local_memory(table):
    bad = [
        f"{k.name} {k.arch}: stack {k.stack} B, spills {k.spill_stores}/{k.spill_loads} B, "
        f"{k.local_accesses} LDL/STL"
        for k in table
        if k.stack or k.spill_stores or k.spill_loads or k.local_accesses
    ]
    assert not bad, "\n".join(bad)


@needs_tools
def test_registers_leave_each_family_its_resident_blocks(table):
    bad = []
    for k in table:
        if k.arch != "sm_90":
            continue
        floor = next(f for pat, f in _FLOORS if re.search(pat, k.name))
        if k.blocks_per_sm < floor:
            bad.append(f"{k.name}: {k.registers} registers → {k.blocks_per_sm} blocks/SM < {floor}")
    assert not bad, "\n".join(bad)


@needs_tools
def test_streaming_kernels_move_128_bit_packs_with_enough_in_flight(table):
    streaming = [k for k in table if k.arch == "sm_90" and _STREAMING.match(k.name)]
    assert len(streaming) >= 38
    bad = []
    for k in streaming:
        lp = k.loop
        if lp is None:
            bad.append(f"{k.name}: no main loop found")
            continue
        if _PER_CHANNEL.match(k.name):
            # each item's channel parameters are scalar loads beside its 16-byte packs (L1
            # hits: C values, not per-element traffic); the elements must move in packs
            if 16 not in lp.load_widths or lp.store_widths != (16,):
                bad.append(f"{k.name}: element loads {lp.load_widths}, stores {lp.store_widths}")
        elif lp.wide_share < WIDE_SHARE:
            bad.append(
                f"{k.name}: main loop moves {lp.wide_share:.0%} of its bytes in 128-bit "
                f"accesses (loads {lp.load_widths} B, stores {lp.store_widths} B)"
            )
        if k.in_flight_per_sm < IN_FLIGHT_PER_SM:
            bad.append(
                f"{k.name}: {lp.in_flight} B in flight per thread × {k.blocks_per_sm} blocks "
                f"= {k.in_flight_per_sm // 1024} KB per SM < {IN_FLIGHT_PER_SM // 1024}"
            )
    assert not bad, "\n".join(bad)


@needs_tools
def test_average_has_a_128_bit_loop_per_input_count(table):
    """average_ has a loop per input count k = 1..4 (addresses in registers), the passes of
    k >= 5 (4 inputs, then out + 3 or 2 more) and the any-k loop for out = one of b_4 …
    (addresses re-read per item, so one load waits on another: 8 B in flight): no single
    main loop. Each k = 1..4 and each pass has an unrolled 128-bit pack loop with enough in
    flight (the packs left after it go one at a time)."""
    for k in table:
        if k.arch != "sm_90" or not k.name.startswith("gpugd_reduce_average_"):
            continue
        fast = [
            lp
            for lp in k.loops
            if lp.wide_share == 1.0
            and lp.store_bytes
            and lp.in_flight * kr.THREADS * k.blocks_per_sm >= IN_FLIGHT_PER_SM
        ]
        # ptxas sm_90: 7 such loops for k = 1..4, 6 to 8 more for the passes of k >= 5
        assert len(fast) >= 10, (k.name, k.loops)


@needs_tools
def test_the_committed_h200_prediction_is_the_kernels_own(table):
    """benchmarks/predicted-h200.md is what `python -m benchmarks.gpu_model` writes for the
    kernels as they are: a kernel change without the table rewritten fails here."""
    from benchmarks import gpu_model

    assert gpu_model.TABLE.read_text() == gpu_model.render(), (
        "benchmarks/predicted-h200.md is stale: run `python -m benchmarks.gpu_model`"
    )


@needs_tools
def test_gpugd_info_kernels_prints_the_table(capsys):
    from gpugd import cli

    assert cli.main(["info", "--kernels", "--family", "vector"]) == 0
    out = capsys.readouterr().out
    assert "ptxas:" in out and "blk/SM" in out
    assert re.search(r"^gpugd_vector_axpy_f32\s+sm_90\s+\d+\s+0\s+0\s", out, re.M)
    with pytest.raises(SystemExit, match="--family: expected one of"):
        cli.main(["info", "--kernels", "--family", "nope"])
