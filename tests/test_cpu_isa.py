"""The CPU's matrix engines: the decision on recorded CPUs, and on this one, real kernels."""
import os
import subprocess
import sys

import pytest

from facealign.platform.cpu_isa import AMX_ISA, cpu_flags, decide

EPYC = set("fpu sse2 avx avx2 fma avx512f avx512bw avx512_bf16 avx512_vnni".split())  # AMD Zen 4: no AMX
SAPPHIRE_RAPIDS = EPYC | {"amx_tile", "amx_bf16", "amx_int8"}
SKYLAKE = set("fpu sse2 avx avx2 fma avx512f avx512bw".split())


@pytest.mark.parametrize("flags,override,preset,granted,isa,reason", [
    (SAPPHIRE_RAPIDS, None, None, True, AMX_ISA, "the kernel granted"),
    (SAPPHIRE_RAPIDS, None, None, False, None, "did not grant"),
    (EPYC, None, None, True, None, "no AMX on this CPU"),
    (SKYLAKE, None, None, True, None, "no AMX on this CPU"),
    (SAPPHIRE_RAPIDS, "off", None, True, None, "FACEALIGN_CPU_ISA=off"),
    (SAPPHIRE_RAPIDS, "avx512_core_bf16", None, True, "AVX512_CORE_BF16", "FACEALIGN_CPU_ISA"),
    (EPYC, "AVX512_CORE_AMX", None, True, None, "has no AMX"),
    (EPYC, None, "AVX2", True, "AVX2", "DNNL_MAX_CPU_ISA was set"),
    (SAPPHIRE_RAPIDS, None, "AVX512_CORE_AMX", False, None, "refused AMX"),
])
def test_the_decision(flags, override, preset, granted, isa, reason):
    asked = []

    def grant():
        asked.append(1)
        return granted

    choice = decide(flags, override, preset, grant)
    assert choice.isa == isa and reason in choice.reason
    if "amx_tile" not in flags:
        assert not asked  # never asks the kernel for what the CPU does not have


def _run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **env})


CONV = """
from facealign.platform import cpu_isa
print("CHOICE", cpu_isa.enable().describe(), flush=True)
import mxnet as mx, numpy as np
from mxnet.contrib.amp.amp import bfloat16
x = mx.nd.random.uniform(shape=(2, 64, 32, 32)); w = mx.nd.random.uniform(shape=(64, 64, 3, 3)) - 0.5
conv = lambda a, b: mx.nd.Convolution(a, b, kernel=(3, 3), pad=(1, 1), num_filter=64, no_bias=True)
ref = conv(x, w).asnumpy()
out = mx.nd.amp_cast(conv(mx.nd.amp_cast(x, dtype=bfloat16), mx.nd.amp_cast(w, dtype=bfloat16)), dtype="float32")
print("RELERR", float(np.abs(out.asnumpy() - ref).max() / np.abs(ref).max()), flush=True)
"""


def _kernels(stdout):
    return {line.split(",")[4] for line in stdout.splitlines() if line.startswith("dnnl_verbose,exec,cpu,convolution")}


def test_enabling_is_safe_on_any_cpu_and_bfloat16_stays_within_its_tolerance():
    proc = _run(CONV, DNNL_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    relerr = float(proc.stdout.split("RELERR ")[1].split()[0])
    assert relerr < 0.02  # bfloat16 keeps 8 bits of mantissa
    assert _kernels(proc.stdout)


@pytest.mark.skipif(not {"amx_tile", "amx_bf16"} <= cpu_flags(), reason="this CPU has no AMX (amx_tile, amx_bf16)")
def test_on_an_amx_cpu_bfloat16_convolutions_run_on_the_tiles():
    proc = _run(CONV, DNNL_VERBOSE="1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "oneDNN ISA AVX512_CORE_AMX" in proc.stdout
    assert any("amx" in k for k in _kernels(proc.stdout)), _kernels(proc.stdout)
    off = _run(CONV, DNNL_VERBOSE="1", FACEALIGN_CPU_ISA="off")
    assert off.returncode == 0 and not any("amx" in k for k in _kernels(off.stdout)), _kernels(off.stdout)
    # a child started after enable() (which does not inherit the permission) runs, without AMX
    child = _run('from facealign.platform import cpu_isa; cpu_isa.enable(); import subprocess, sys; '
                 'print("CHILD", subprocess.run([sys.executable, "-c", ' + repr(CONV.replace(
                     'print("CHOICE", cpu_isa.enable().describe(), flush=True)', "")) + ']).returncode)')
    assert child.returncode == 0 and "CHILD 0" in child.stdout, child.stdout[-2000:] + child.stderr[-2000:]
    # and without the permission (oneDNN told to use AMX by hand, enable() not called) the process dies:
    # what enable() prevents
    raw = _run(CONV.replace('print("CHOICE", cpu_isa.enable().describe(), flush=True)', ""),
               DNNL_MAX_CPU_ISA="AVX512_CORE_AMX")
    assert raw.returncode != 0


_ENGINE_PROBE = """
import os, sys
from facealign.platform import cpu_isa
if sys.argv[1] == "imported":
    import mxnet
print(cpu_isa.serve_synchronously(None if sys.argv[2] == "cpu" else 0), os.environ.get("MXNET_ENGINE_TYPE"))
"""


@pytest.mark.parametrize("when, device, preset, expected", [
    ("first", "cpu", None, "NaiveEngine NaiveEngine"),
    ("first", "gpu", None, "ThreadedEnginePerDevice None"),
    ("imported", "cpu", None, "ThreadedEnginePerDevice None"),  # too late: MXNet chose its engine at import
    ("first", "cpu", "ThreadedEngine", "ThreadedEngine ThreadedEngine"),  # the user's choice stands
])
def test_serving_processes_run_mxnet_synchronously_on_the_cpu(when, device, preset, expected):
    env = {k: v for k, v in os.environ.items() if k != "MXNET_ENGINE_TYPE"}
    if preset:
        env["MXNET_ENGINE_TYPE"] = preset
    proc = subprocess.run([sys.executable, "-c", _ENGINE_PROBE, when, device], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == expected


def test_facealign_eval_says_which_engine_it_serves_with(trained_run, synth_sets, tmp_path):
    from conftest import run_cli

    proc = run_cli("facealign-eval", trained_run, "--data", synth_sets / "val", "--out", tmp_path / "eval",
                   "--quiet", "--no-tensorboard")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "MXNet NaiveEngine" in proc.stderr
