"""Loading a model for inference: the hybridised network or a crops -> heatmaps backend of any source
(facealign.runs.artifact: a run, checkpoint, export package, ONNX file or reference release).

    >>> source = artifact.resolve("runs/demo")
    >>> net = load_network(source, mx.cpu())          # the hybridised Gluon network
    >>> backend = load_backend(source, "onnxruntime") # (export packages) crops -> heatmaps
"""
from __future__ import annotations

import sys

from facealign.runs import checkpoint_format
from facealign.runs.artifact import ONNX_FILE, PARAMS_FILE, SYMBOL_FILE, ArtifactError, ModelSource, load_reference_params
from facealign.serve import graphs


def load_network(source: ModelSource, ctx):
    """The hybridised Gluon network of a run, checkpoint, export package or reference release."""
    from facealign.platform import cpu_isa

    cpu_isa.enable()  # the CPU's matrix engines, before oneDNN runs its first kernel
    if source.kind in ("run", "checkpoint"):
        from facealign.models import build_model

        import mxnet as mx

        net = build_model(source.info.model_spec())
        try:
            net.load_parameters(str(checkpoint_format.model_file(source.location)), ctx=ctx)
        except (mx.base.MXNetError, AssertionError) as e:
            raise ArtifactError(f"{checkpoint_format.model_file(source.location)}: does not load into "
                                f"{source.info.name} ({str(e).strip().splitlines()[0]})") from None
    elif source.kind == "export":
        import warnings

        from mxnet import gluon

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = gluon.SymbolBlock.imports(str(source.location / SYMBOL_FILE), ["data"],
                                            str(source.location / PARAMS_FILE), ctx=ctx)
    elif source.kind == "reference":
        from facealign.models import get_model, initialize

        net = initialize(get_model(source.info.name), ctx=ctx)
        report = load_reference_params(net, source.location, ctx)
        if report["ignored"]:
            print(f"[facealign] {source.location}: ignored {len(report['ignored'])} key(s) the network does not use",
                  file=sys.stderr)
    else:
        raise ArtifactError(f"{source.path} is an ONNX model: run it with the onnxruntime backend")
    net.hybridize(static_alloc=True)
    if source.info.precision == "bfloat16":
        import numpy as np

        s = source.info.input_size
        net = graphs.bfloat16_inference_network(net, np.zeros((1, 3, s, s), np.float32))
    return net


def load_backend(source: ModelSource, backend: str = "mxnet", gpu: int | None = None):
    """A crops -> heatmaps callable for ``source`` (facealign.evaluation.backends)."""
    from facealign.evaluation.backends import MXNetBackend, OnnxBackend, mx_context

    if backend == "onnxruntime":
        if source.kind == "onnx":
            return OnnxBackend(source.location, gpu)
        if source.kind == "export" and (source.location / ONNX_FILE).is_file():
            return OnnxBackend(source.location / ONNX_FILE, gpu)
        raise ArtifactError(f"{source.path} is a {source.kind} without {ONNX_FILE}: export it with "
                            f"facealign-export --onnx to run it with onnxruntime")
    if backend != "mxnet":
        raise ArtifactError(f"backend must be mxnet or onnxruntime, got {backend!r}")
    ctx = mx_context(gpu)
    return MXNetBackend(load_network(source, ctx), ctx)
