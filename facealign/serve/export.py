"""Export packages: a trained model out of the training code (``export_package``: the hybridised
network, ``facealign-model.yaml``, and ONNX), and reduced-precision ones (``export_reduced``: int8
through MXNet's quantiser and onnxruntime's, bfloat16 through AMP and oneDNN's fusion), checked
against float32 on held-out faces and written only when they pass. ``facealign-export``
(facealign.cli.export, whose help says what each precision does) drives it; facealign.runs.artifact
describes the package layout and the reference's name map.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from facealign.runs import artifact
from facealign.serve import graphs
from facealign.runs.artifact import ONNX_FILE, PARAMS_FILE, SYMBOL_FILE, ArtifactError, ModelInfo


# --- export packages -------------------------------------------------------------------------------

def export_package(net, info: ModelInfo, out_dir, *, onnx: bool = False, log=print) -> dict:
    """Write the package (facealign.runs.artifact's layout); with ``onnx`` also model.onnx, checked against MXNet.

    Returns {"files": [...], "onnx_rel_diff": max |onnxruntime - MXNet| / max |MXNet|, or None}.
    """
    import mxnet as mx

    out = Path(out_dir)
    net.hybridize(static_alloc=True)
    probe = _probe_batch(info, 2)
    expected = net(mx.nd.array(probe))[-1].asnumpy()
    files = artifact.write_package(net, info, out)
    result = {"files": files, "onnx_rel_diff": None}
    if onnx:
        diff = export_onnx(out, info, probe, expected)
        files.append(ONNX_FILE)
        result["onnx_rel_diff"] = diff
        log(f"ONNX: {out / ONNX_FILE}; max |onnxruntime - MXNet| / max |MXNet| on the last stack = {diff:.2g}")
        if diff > 1e-4:
            raise ArtifactError(f"the ONNX model differs from MXNet's by {diff:.2g} (relative): not trusted")
    log(f"exported {info.name} to {out}: {', '.join(files)}")
    return result


def _probe_batch(info: ModelInfo, n: int) -> np.ndarray:
    return np.random.RandomState(0).uniform(0, 255, (n, 3, info.input_size, info.input_size)).astype(np.float32)


def export_onnx(out: Path, info: ModelInfo, probe: np.ndarray, expected: np.ndarray) -> float:
    """A package's model.onnx from its symbol and parameters; see ``export_onnx_file``."""
    return export_onnx_file(out / SYMBOL_FILE, out / PARAMS_FILE, out / ONNX_FILE, info, probe, expected)


def export_onnx_file(symbol: Path, params: Path, onnx_file: Path, info: ModelInfo, probe: np.ndarray,
                     expected: np.ndarray) -> float:
    """An .onnx through MXNet's own exporter (mxnet.onnx), batch dimension dynamic; returns the relative
    difference of onnxruntime's last stack from MXNet's on ``probe``."""
    import onnxruntime as ort
    from mxnet import onnx as mx_onnx

    s = info.input_size
    mx_onnx.export_model(str(symbol), str(params), in_shapes=[(1, 3, s, s)], in_types=[np.float32],
                         onnx_file_path=str(onnx_file), dynamic=True, dynamic_input_shapes=[(None, 3, s, s)],
                         run_shape_inference=False)
    _constant_initializers(onnx_file)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    got = session.run([session.get_outputs()[-1].name], {session.get_inputs()[0].name: probe})[0]
    return float(np.abs(got - expected).max() / max(np.abs(expected).max(), 1e-12))


def _constant_initializers(path: Path) -> None:
    """MXNet's exporter lists the weights as graph inputs too, which stops onnxruntime from folding
    them as constants; keep only the image as an input."""
    import onnx

    model = onnx.load(str(path))
    weights = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    onnx.save(model, str(path))


# --- the command line ------------------------------------------------------------------------------

def open_records(prefix, info: ModelInfo):
    """The packed records at ``prefix``, checked against the model (landmark count, dimensions)."""
    from facealign.data.pipeline import RecordSet
    from facealign.evaluation.scoring import check_records

    records = RecordSet([prefix])
    check_records(records, info, str(prefix))
    return records


def calibration_crops(prefix, info: ModelInfo, limit: int) -> np.ndarray:
    """The first ``limit`` faces of ``prefix`` as N x 3 x S x S float32 standard-protocol crops."""
    from facealign.evaluation.scoring import Protocol, prepare

    records = open_records(prefix, info)
    n = min(len(records), limit)
    crops = np.stack([prepare(records, i, Protocol("standard"), info, str(prefix))[0] for i in range(n)])
    return np.ascontiguousarray(crops.transpose(0, 3, 1, 2), np.float32)


def to_int8(net, info: ModelInfo, calibration: np.ndarray, mode: str):
    """MXNet's int8 network (a SymbolBlock), calibrated on ``calibration`` crops."""
    import warnings

    import mxnet as mx
    from mxnet.contrib import quantization

    calib = mx.io.NDArrayIter(mx.nd.array(calibration), batch_size=min(16, len(calibration)))  # data alone
    net = graphs.symbol_block(*graphs.inference_graph(net, calibration[:1]))
    with warnings.catch_warnings():  # its SymbolBlocks' undecided input dtype (float32)
        warnings.simplefilter("ignore", UserWarning)
        q = quantization.quantize_net_v2(net, quantized_dtype="auto", quantize_mode="full",
                                         quantize_granularity="channel-wise", calib_data=calib, calib_mode=mode,
                                         num_calib_examples=len(calibration), ctx=mx.cpu(),
                                         exclude_operators=["UpSampling"], logger=_quiet_logger())
    q.hybridize(static_alloc=True)
    return q


def _quiet_logger():
    """quantize_net_v2 narrates every layer at INFO: keep its warnings only."""
    import logging

    logger = logging.getLogger("facealign.export.quantize")
    logger.setLevel(logging.WARNING)
    return logger


def onnx_int8(fp32_onnx: Path, out: Path, calibration: np.ndarray) -> None:
    """A statically quantised QDQ copy of a float32 model.onnx (onnxruntime's quantiser, per channel)."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Crops(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"data": calibration[i:i + 1]} for i in range(len(calibration))])

        def get_next(self):
            return next(self.batches, None)

    pre = out.with_name("pre-" + out.name)
    quant_pre_process(str(fp32_onnx), str(pre), skip_symbolic_shape=True)
    quantize_static(str(pre), str(out), Crops(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    pre.unlink()


def check_errors(backend, info: ModelInfo, records, limit: int) -> dict:
    """Mean errors of ``backend`` on the first ``limit`` faces, standard protocol: ``nme`` (the primary
    normalisation) and, for a model that predicts z, ``z`` (the depth error)."""
    from facealign.evaluation.metrics import primary_norm
    from facealign.evaluation.scoring import Protocol, score

    n = min(len(records), limit)
    result = score(backend, info, records, Protocol("standard"), set_name="check", indices=range(n))
    errors = {"nme": float(result.nme[primary_norm(info.landmark_dims)].mean())}
    if info.predicts_z:
        errors["z"] = float(result.nme_3d["z"].mean())
    return errors


def drift_check(a: dict, reduced, info: ModelInfo, records, limit: int, label: str, max_drift: float, log,
                hint: str = "") -> dict:
    """The reduced backend's errors against float32's ``a`` (``check_errors``) on the same faces; refuses above
    ``max_drift`` in the NME, or in the depth error of a model that predicts z (``hint`` ends the refusal)."""
    from facealign.evaluation.metrics import primary_norm

    norm = primary_norm(info.landmark_dims)
    n = min(len(records), limit)
    b = check_errors(reduced, info, records, limit)
    out = {"faces": n}
    for key, name in (("nme", f"NME ({norm})"), ("z", "depth error")):
        if key not in a:
            continue
        drift = (b[key] - a[key]) / max(a[key], 1e-12)
        log(f"{label}: {name} {100 * b[key]:.3f}% against float32's {100 * a[key]:.3f}% on {n} faces: "
            f"{100 * drift:+.2f}% relative (allowed {100 * max_drift:.1f}%)")
        if drift > max_drift:
            raise ArtifactError(f"{label} loses too much accuracy: {name} {100 * b[key]:.3f}% against float32's "
                                f"{100 * a[key]:.3f}% ({100 * drift:+.2f}% relative, more than --max-drift "
                                f"{100 * max_drift:.1f}%); nothing written{hint}")
        prefix = "" if key == "nme" else "z_"
        out.update({f"float32_{key}": a[key], key: b[key], f"{prefix}relative_drift": float(drift)})
    return out


@dataclass(frozen=True)
class ReducedExport:
    """A bfloat16 or int8 export and how it is checked (``facealign-export``'s options, typed)."""

    precision: str  # bfloat16 or int8
    check: str | None  # held-out packed records: float32's NME against the export's
    check_samples: int = 200
    max_drift: float = 0.02  # the relative NME loss refused
    calibration: str | None = None  # int8: packed records whose faces set the ranges
    calibration_samples: int = 64
    calib_mode: str = "entropy"
    onnx: bool = False  # int8: also an onnxruntime QDQ model


def export_reduced(net, info: ModelInfo, out_dir, args: ReducedExport, log=print) -> dict:
    """A bfloat16 or int8 package, checked against float32 on held-out faces; written only if it passes."""
    import shutil
    import tempfile

    import mxnet as mx

    from facealign.evaluation.backends import MXNetBackend, OnnxBackend

    precision = args.precision
    if not args.check:
        raise ArtifactError(f"--precision {precision} needs --check PREFIX: held-out records that show what it "
                            f"costs in NME")
    if precision == "int8" and not args.calibration:
        raise ArtifactError("--precision int8 needs --calibration PREFIX: records whose faces set the int8 ranges")
    if precision == "bfloat16" and args.onnx:
        raise ArtifactError("--onnx with --precision bfloat16: onnxruntime has no bfloat16 convolutions on the CPU; "
                            "export --precision int8 --onnx, or float32 --onnx")
    out = Path(out_dir)
    records = open_records(args.check, info)
    float32_errors = check_errors(MXNetBackend(net, mx.cpu()), info, records, args.check_samples)
    reduced_info = dataclasses.replace(info, precision=precision)
    probe = _probe_batch(info, 1)
    if precision == "int8":
        calibration = calibration_crops(args.calibration, info, args.calibration_samples)
        reduced = to_int8(net, info, calibration, args.calib_mode)
    else:
        reduced = graphs.bfloat16_inference_network(net, probe)
    reduced(mx.nd.array(probe))  # Gluon exports the graph of its last forward
    result = {"precision": precision, "check": {}}
    if precision == "int8":
        result["calibration"] = {"mode": args.calib_mode, "faces": len(calibration)}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # neither range search wins everywhere: entropy kept an early test model within 0.1% where naive lost 3%,
        # naive kept the 64 px photographic models within 1.2-1.9% where entropy lost 5-6% (docs/serving.md)
        hint = "" if precision != "int8" else \
            f"; try --calib-mode {'naive' if args.calib_mode == 'entropy' else 'entropy'}"
        result["check"]["mxnet"] = drift_check(float32_errors, MXNetBackend(reduced, mx.cpu()), info, records,
                                               args.check_samples, f"{precision} (MXNet)", args.max_drift, log, hint)
        # bfloat16: MXNet 1.9.1 loses AMP's casts when it exports the converted graph, so the package holds
        # the float32 graph and loaders convert it (artifact.load_network); int8 exports as it is
        files = artifact.write_package(net if precision == "bfloat16" else reduced, reduced_info, tmp)
        if args.onnx:
            net.export(str(tmp / "fp32"), epoch=0)
            probe = _probe_batch(info, 2)
            fp32 = tmp / "fp32.onnx"
            diff = export_onnx_file(tmp / "fp32-symbol.json", tmp / "fp32-0000.params", fp32, info, probe,
                                    net(mx.nd.array(probe))[-1].asnumpy())
            log(f"ONNX float32 graph: max |onnxruntime - MXNet| / max |MXNet| = {diff:.2g}")
            onnx_int8(fp32, tmp / ONNX_FILE, calibration)
            for f in ("fp32-symbol.json", "fp32-0000.params", "fp32.onnx"):
                (tmp / f).unlink()
            result["check"]["onnxruntime"] = drift_check(float32_errors, OnnxBackend(tmp / ONNX_FILE), info, records,
                                                         args.check_samples, "int8 (onnxruntime)", args.max_drift,
                                                         log)
            files.append(ONNX_FILE)
        (tmp / "export-check.json").write_text(json.dumps(result, indent=1))
        files.append("export-check.json")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"exported {info.name} in {precision} to {out}: {', '.join(files)}")
    result["files"] = files
    return result
