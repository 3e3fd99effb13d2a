"""The CPU's matrix engines for MXNet's oneDNN: call ``enable()`` before MXNet is imported.

MXNet 1.9.1 bundles oneDNN 2.4.4, which never picks AMX (Intel's tile matrix unit) on its own, and,
told to (``DNNL_MAX_CPU_ISA=AVX512_CORE_AMX``), dies at the first tile instruction: Linux grants
the AMX tile state only to a process that asks for it (``arch_prctl(ARCH_REQ_XCOMP_PERM,
XFEATURE_XTILEDATA)``), and oneDNN 2.4.4 does not ask. ``enable()`` asks, where the CPU reports AMX
and the kernel grants it, and only then lets oneDNN use it. Elsewhere (AMD, older Intel, a kernel
without AMX support) it changes nothing.

``FACEALIGN_CPU_ISA`` overrides: ``off`` (leave oneDNN's default), or a oneDNN ISA name
(``AVX512_CORE_AMX``, ``AVX512_CORE_BF16``, ``AVX512_CORE_VNNI``, ``AVX2``, ...) to cap it there.
A ``DNNL_MAX_CPU_ISA`` already set is respected. Where it enables AMX, ``enable`` imports MXNet to let
oneDNN settle on it (then the variable leaves the environment again, see ``_settle``); elsewhere it
imports nothing.
"""
from __future__ import annotations

import ctypes
import os
import platform
from dataclasses import dataclass
from pathlib import Path

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_GET_XCOMP_PERM, ARCH_REQ_XCOMP_PERM = 0x1022, 0x1023
XFEATURE_XTILEDATA = 18
AMX_ISA = "AVX512_CORE_AMX"


@dataclass(frozen=True)
class IsaChoice:
    """What ``enable`` decided, for the start-up line: the ISA cap given to oneDNN (None: its default) and why."""

    isa: str | None
    reason: str

    def describe(self) -> str:
        return f"oneDNN ISA {self.isa or 'default'} ({self.reason})"


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The flags of the first CPU in /proc/cpuinfo (empty where there is none)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or "unknown"
    for line in cpuinfo.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def request_amx_permission() -> bool:
    """Ask Linux for the AMX tile state for this process (and the threads it starts); True if granted."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    libc.syscall.restype = ctypes.c_long
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) != 0:
        return False
    granted = ctypes.c_ulong(0)
    if libc.syscall(SYS_ARCH_PRCTL, ARCH_GET_XCOMP_PERM, ctypes.byref(granted)) != 0:
        return False
    return bool(granted.value & (1 << XFEATURE_XTILEDATA))


def decide(flags: set[str], override: str | None, preset: str | None, granted) -> IsaChoice:
    """The decision, apart from the system calls: ``granted()`` asks the kernel when AMX is wanted."""
    if preset:
        if AMX_ISA in preset.upper() and "amx_tile" in flags and not granted():
            return IsaChoice(None, f"DNNL_MAX_CPU_ISA={preset} was set, but the kernel refused AMX: unset")
        return IsaChoice(preset, "DNNL_MAX_CPU_ISA was set")
    if override:
        if override.lower() == "off":
            return IsaChoice(None, "FACEALIGN_CPU_ISA=off")
        wanted = override.upper()
        if "AMX" in wanted and not ("amx_tile" in flags and granted()):
            return IsaChoice(None, f"FACEALIGN_CPU_ISA={override}, but this CPU or kernel has no AMX")
        return IsaChoice(wanted, f"FACEALIGN_CPU_ISA={override}")
    if {"amx_tile", "amx_bf16"} <= flags:
        if granted():
            return IsaChoice(AMX_ISA, "the CPU has AMX and the kernel granted its tile state")
        return IsaChoice(None, "the CPU has AMX, but the kernel did not grant its tile state")
    return IsaChoice(None, "no AMX on this CPU")


_CHOICE: IsaChoice | None = None


def _settle() -> None:
    """Make oneDNN read ``DNNL_MAX_CPU_ISA`` now (it does at its first primitive), then take the variable
    back out of the environment: a child process would inherit it without the AMX permission, which
    Linux does not carry across exec, and die at its first tile instruction (SIGILL). facealign's own
    child processes (trainer ranks, tools) call ``enable`` themselves."""
    import mxnet as mx

    mx.nd.Convolution(mx.nd.zeros((1, 1, 4, 4)), mx.nd.zeros((1, 1, 1, 1)), kernel=(1, 1), num_filter=1,
                      no_bias=True).wait_to_read()
    del os.environ["DNNL_MAX_CPU_ISA"]


def enable() -> IsaChoice:
    """Decide once per process and set ``DNNL_MAX_CPU_ISA`` accordingly (before MXNet is imported)."""
    global _CHOICE
    if _CHOICE is None:
        preset = os.environ.get("DNNL_MAX_CPU_ISA")
        choice = decide(cpu_flags(), os.environ.get("FACEALIGN_CPU_ISA"), preset, request_amx_permission)
        if choice.isa and not preset:
            os.environ["DNNL_MAX_CPU_ISA"] = choice.isa
            _settle()
        elif preset and choice.isa is None:
            del os.environ["DNNL_MAX_CPU_ISA"]  # an AMX cap without the permission would crash the process
        _CHOICE = choice
    return _CHOICE


SERVING_ENGINE = "NaiveEngine"


def serve_synchronously(gpu: int | None = None) -> str:
    """Run MXNet's operators synchronously in the calling thread (``MXNET_ENGINE_TYPE=NaiveEngine``) in a
    process that serves a network on the CPU: facealign-eval, facealign-infer, facealign-export and the
    inference benchmarks. Call before MXNet is imported; returns the engine the process will have.

    At batch 1 a forward pass is some 1,500 small operators, and the threaded engine's hand-offs between
    its worker threads and OpenMP's took half of it: hg2-d3-cab at 128 px, 2 threads, bfloat16 72 -> 36 ms,
    float32 175 -> 112 ms (bench/precision.py, README). Training keeps the threaded engine (a step is a few
    hundred large operators, and Horovod's asynchronous operators were not tried without it). A GPU, an ``MXNET_ENGINE_TYPE`` already set, or MXNet already imported: unchanged.
    """
    import sys

    if "MXNET_ENGINE_TYPE" in os.environ:
        return os.environ["MXNET_ENGINE_TYPE"]
    if (gpu is not None and gpu >= 0) or "mxnet" in sys.modules:
        return "ThreadedEnginePerDevice"  # MXNet's default
    os.environ["MXNET_ENGINE_TYPE"] = SERVING_ENGINE
    return SERVING_ENGINE
