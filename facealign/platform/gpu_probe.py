"""The start-up GPU probe: fail in seconds, with the reason and the route, on a GPU this MXNet cannot run.

    failure = gpu_probe.check(mx.gpu(0))        # None, or a GPUProbeFailed to raise (exit 2)

The PyPI CUDA wheels of MXNet 1.9.1 carry machine code for sm_50 to sm_86 and no PTX
(docs/cluster.md, "Which MXNet runs on which GPU"): on Hopper (sm_90) and later, MXNet's own kernels fail with "no
kernel image is available" at the first native operator, after the job queued and every rank
started. So before training, evaluation or inference on a GPU, each process runs one tiny
convolution, BatchNorm, pooling, up-sampling and element-wise op on its device and synchronises
(``run_ops``: the only part that needs a GPU). What is known of the device and of the build is
gathered into plain values (``DeviceFacts``, ``BuildFacts``) and ``explain`` turns a failure into
the one message: the GPU, its compute capability, the MXNet build (version, CUDA, cuDNN, NCCL, the
architectures it has code for where known) and the route that works (NVIDIA's MXNet container for
Hopper and later, or a partition of older GPUs). ``explain`` and ``covers`` are tested on CPU with
recorded inputs.
"""
from __future__ import annotations

import subprocess
from dataclasses import dataclass

from facealign.errors import CannotStart

NGC_IMAGE = "nvcr.io/nvidia/mxnet:24.06-py3"
# Machine code in the PyPI wheels' libmxnet.so, from their build configuration and the wheel itself
# (gpu-notes.md): no PTX, so a GPU newer than the newest listed major version has no kernels.
WHEEL_ARCHS = {"mxnet-cu112": ("5.0", "6.0", "7.0", "8.0", "8.6"), "mxnet-cu117": ("5.0", "6.0", "7.0", "8.0", "8.6")}
NGC_MIN_CC = (6, 0)  # NVIDIA's containers support compute capability 6.0 and later


class GPUProbeFailed(CannotStart, RuntimeError):
    """The device cannot run this MXNet build; the message says why and what to do (exit 2)."""


@dataclass(frozen=True)
class DeviceFacts:
    index: int
    name: str | None = None  # "NVIDIA H100 80GB HBM3"
    compute_capability: tuple | None = None  # (9, 0)


@dataclass(frozen=True)
class BuildFacts:
    version: str  # mxnet.__version__
    distribution: str | None = None  # the pip distribution: mxnet-cu112, or None (a source build: NGC)
    cuda: bool = False
    cudnn: bool = False
    nccl: bool = False
    cuda_version: str | None = None  # "11.2"
    archs: tuple | None = None  # compute capabilities with machine code, where known
    ptx: bool | None = None  # whether it embeds PTX (JIT-able on newer GPUs), where known


def covers(archs, ptx, cc) -> bool | None:
    """Whether a build with machine code for ``archs`` (and PTX or not) runs on compute capability ``cc``:
    machine code runs on its own major version at the same or a higher minor; PTX on anything newer.
    None where the build's architectures are not known."""
    if archs is None or cc is None:
        return None
    major, minor = cc
    parsed = [tuple(int(x) for x in a.split(".")) for a in archs]
    if any(m == major and n <= minor for m, n in parsed):
        return True
    if ptx and any((m, n) <= (major, minor) for m, n in parsed):
        return True
    return False


def route(device: DeviceFacts, build: BuildFacts) -> str:
    """What to run on this GPU instead."""
    cc = device.compute_capability
    if cc is not None and cc < (5, 0):
        return "no MXNet 1.9.1 build runs on it (compute capability 5.0 or later): submit to a partition of newer GPUs"
    if cc is not None and cc < NGC_MIN_CC:
        return ("use the CUDA 11.2 image (docker/Dockerfile, mxnet-cu112: sm_50 and later) or a partition with "
                "newer GPUs")
    if cc is not None and cc >= (9, 0):
        return (f"run in NVIDIA's MXNet container ({NGC_IMAGE}; docker/Dockerfile.ngc, FACEALIGN_CONTAINER: "
                f"docker/README.md), or submit to a partition of Volta, Turing, Ampere or Ada GPUs (sm_70 to sm_89), "
                f"where mxnet-cu112 runs")
    return (f"check the driver and the CUDA libraries (nvidia-smi); NVIDIA's MXNet container ({NGC_IMAGE}, "
            f"docker/Dockerfile.ngc) carries a matched stack")


def describe_build(build: BuildFacts) -> str:
    parts = [f"{build.distribution or 'mxnet'} {build.version}"]
    if build.cuda:
        parts.append(f"CUDA {build.cuda_version or '(version unknown)'}")
        parts.append("cuDNN" if build.cudnn else "no cuDNN")
        parts.append("NCCL" if build.nccl else "no NCCL")
    else:
        parts.append("built without CUDA")
    if build.archs is not None:
        parts.append(f"machine code for {', '.join('sm_' + a.replace('.', '') for a in build.archs)}"
                     f"{'' if build.ptx else ', no PTX'}")
    return ", ".join(parts)


def describe_device(device: DeviceFacts) -> str:
    cc = device.compute_capability
    return (f"GPU {device.index} ({device.name or 'name unknown'}, compute capability "
            f"{f'{cc[0]}.{cc[1]}' if cc else 'unknown'})")


def explain(device: DeviceFacts, build: BuildFacts, error: str | None, host: str | None = None) -> str | None:
    """The one-line message for a failed probe (``error``: what the device raised), or for a build that
    has no CUDA at all; None when the probe passed on a build with CUDA."""
    where = f" on {host}" if host else ""
    if not build.cuda:
        return (f"{describe_device(device)}{where}: this MXNet ({describe_build(build)}) cannot use GPUs; install a "
                f"CUDA build (FACEALIGN_MXNET=mxnet-cu112 bash install.sh, or docker/) or run on the CPU")
    if error is None:
        return None
    first = error.strip().splitlines()[0] if error.strip() else "unknown error"
    for line in error.splitlines():  # MXNet wraps CUDA's own words in a long trace: keep them
        if "no kernel image" in line or "CUDA" in line and "error" in line.lower():
            first = line.strip()
            break
    verdict = ""
    if covers(build.archs, build.ptx, device.compute_capability) is False:
        verdict = " (this build has no code for it)"
    return (f"{describe_device(device)}{where} cannot run {describe_build(build)}{verdict}: {first[:300]}; "
            f"{route(device, build)}")


# --- gathering the facts (thin: only what a device or the installed MXNet can say) --------------------

def build_facts() -> BuildFacts:
    import mxnet as mx

    features = mx.runtime.Features()
    distribution = None
    try:
        from importlib import metadata

        for dist in ("mxnet-cu112", "mxnet-cu117", "mxnet-cu110", "mxnet-cu102", "mxnet"):
            try:
                metadata.version(dist)
            except metadata.PackageNotFoundError:
                continue
            distribution = dist
            break
    except ImportError:  # pragma: no cover - importlib.metadata is in every supported Python
        pass
    cuda = features.is_enabled("CUDA")
    return BuildFacts(version=mx.__version__, distribution=distribution, cuda=cuda,
                      cudnn=features.is_enabled("CUDNN"), nccl=features.is_enabled("NCCL"),
                      cuda_version=_cuda_runtime_version() if cuda else None,
                      archs=WHEEL_ARCHS.get(distribution or ""),
                      ptx=False if distribution in WHEEL_ARCHS else None)


def _cuda_runtime_version() -> str | None:
    """cudaRuntimeGetVersion of the CUDA runtime MXNet loaded, as "major.minor"."""
    import ctypes

    for name in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0"):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        version = ctypes.c_int()
        if lib.cudaRuntimeGetVersion(ctypes.byref(version)) == 0:
            return f"{version.value // 1000}.{version.value % 1000 // 10}"
    return None


def device_facts(index: int) -> DeviceFacts:
    """Name and compute capability from nvidia-smi (which needs no CUDA context), or MXNet."""
    name, cc = None, None
    try:
        out = subprocess.run(["nvidia-smi", f"--id={index}", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        if out.returncode == 0 and out.stdout.strip():
            name, _, cap = out.stdout.strip().splitlines()[0].rpartition(",")
            name = name.strip() or None
            major, _, minor = cap.strip().partition(".")
            cc = (int(major), int(minor or 0))
    except (OSError, subprocess.TimeoutExpired, ValueError):
        pass
    if cc is None:
        try:
            import mxnet as mx

            value = mx.util.get_cuda_compute_capability(mx.gpu(index))
            cc = (value // 10, value % 10)
        except Exception:  # noqa: BLE001 - whatever the driver says, the probe's error will be reported
            pass
    return DeviceFacts(index, name, cc)


def run_ops(ctx) -> str | None:
    """One tiny convolution, BatchNorm, pooling, up-sampling and element-wise op on ``ctx``, synchronised;
    None, or what the device raised."""
    import mxnet as mx

    try:
        x = mx.nd.ones((1, 4, 8, 8), ctx=ctx)
        w = mx.nd.ones((4, 4, 3, 3), ctx=ctx) * 0.01
        y = mx.nd.Convolution(x, w, no_bias=True, kernel=(3, 3), pad=(1, 1), num_filter=4)
        gamma, beta = mx.nd.ones((4,), ctx=ctx), mx.nd.zeros((4,), ctx=ctx)
        y = mx.nd.BatchNorm(y, gamma, beta, mx.nd.zeros((4,), ctx=ctx), mx.nd.ones((4,), ctx=ctx))
        y = mx.nd.Pooling(y, kernel=(2, 2), stride=(2, 2), pool_type="max")
        y = mx.nd.UpSampling(y, scale=2, sample_type="nearest")
        y = mx.nd.relu(y * 2 + 1)
        y.wait_to_read()
        mx.nd.waitall()
        return None
    except Exception as e:  # noqa: BLE001 - MXNetError, or a CUDA error surfacing as another type
        return str(e) or type(e).__name__


def check(ctx, host: str | None = None) -> GPUProbeFailed | None:
    """Probe ``ctx`` if it is a GPU: None when it works (or is the CPU), else the error to raise."""
    if getattr(ctx, "device_type", "cpu") != "gpu":
        return None
    build = build_facts()
    error = run_ops(ctx) if build.cuda else None
    message = explain(device_facts(ctx.device_id), build, error, host)
    return GPUProbeFailed(message) if message else None
