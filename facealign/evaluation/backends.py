"""What runs a network: N x 3 x S x S float32 raw RGB crops in, the last stack's N x K x H x W heatmaps out.

``MXNetBackend`` wraps a Gluon network (a zoo model, a reloaded checkpoint or an
export's ``SymbolBlock``) on one MXNet device; ``OnnxBackend`` runs an exported
ONNX model with onnxruntime. Scoring (``facealign.evaluation.scoring``) takes either.
"""
from __future__ import annotations

import numpy as np


def mx_context(gpu: int | None):
    """``mx.gpu(gpu)``, probed (facealign.platform.gpu_probe: raises GPUProbeFailed naming the GPU, the build and
    the route when it cannot run this MXNet), or the CPU for None or a negative index."""
    import mxnet as mx

    from facealign.platform import gpu_probe

    if gpu is None or gpu < 0:
        return mx.cpu()
    ctx = mx.gpu(gpu)
    failure = gpu_probe.check(ctx)
    if failure is not None:
        raise failure
    return ctx


class MXNetBackend:
    """A Gluon network on one MXNet device."""

    name = "mxnet"

    def __init__(self, net, ctx):
        self.net, self.ctx = net, ctx

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        import mxnet as mx

        out = self.net(mx.nd.array(batch, ctx=self.ctx, dtype="float32"))
        last = out[-1] if isinstance(out, (list, tuple)) else out
        return last.astype("float32").asnumpy()  # float32 whatever the network computed in (AMP: bfloat16)


class OnnxBackend:
    """An exported ONNX model run by onnxruntime (CPU, or CUDA when that provider is installed)."""

    name = "onnxruntime"

    def __init__(self, path, gpu: int | None = None):
        import onnxruntime as ort

        providers = ["CPUExecutionProvider"]
        if gpu is not None and gpu >= 0 and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": gpu}))
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only
        self.session = ort.InferenceSession(str(path), options, providers=providers)
        self.input = self.session.get_inputs()[0].name
        self.output = self.session.get_outputs()[-1].name  # the last stack

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run([self.output], {self.input: np.ascontiguousarray(batch, np.float32)})[0]
