"""Reduced-precision exports: int8 (MXNet and onnxruntime) and bfloat16, checked against float32 and
loaded by every tool without being told."""
import json

import numpy as np
import pytest
import yaml

from conftest import run_cli
from facealign.runs import artifact
from facealign.serve import loading
from facealign.data.pipeline import RecordSet
from facealign.serve.predictor import Predictor
from facealign.evaluation.scoring import Protocol, score


def _export(trained_run, synth_sets, out, *args):
    return run_cli("facealign-export", trained_run, out, "--check", synth_sets / "val", *args)


@pytest.fixture(scope="module")
def int8_package(trained_run, synth_sets, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "pkg"
    # naive (min/max) ranges: entropy's KL search takes ~100 s over this model's 354 tensors (bench/precision.py
    # exports with entropy, the default)
    proc = _export(trained_run, synth_sets, out, "--precision", "int8", "--calibration", synth_sets / "train",
                   "--calibration-samples", "32", "--calib-mode", "naive", "--onnx")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return out


def test_int8_exports_record_their_precision_and_their_check(int8_package):
    info = yaml.safe_load((int8_package / "facealign-model.yaml").read_text())
    assert info["precision"] == "int8" and info["input_size"] == 64
    recorded = json.loads((int8_package / "export-check.json").read_text())
    assert recorded["calibration"] == {"mode": "naive", "faces": 32}
    check = recorded["check"]
    for backend in ("mxnet", "onnxruntime"):
        assert check[backend]["faces"] == 24 and check[backend]["relative_drift"] <= 0.02
        assert check[backend]["nme"] != check[backend]["float32_nme"]  # it really ran in int8
    symbol = (int8_package / "model-symbol.json").read_text()
    assert "quantize" in symbol  # MXNet's int8 graph
    import onnx

    ops = {n.op_type for n in onnx.load(str(int8_package / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # QDQ


def test_every_tool_loads_an_int8_package_without_being_told(int8_package, trained_run, synth_sets, tmp_path):
    records = RecordSet([synth_sets / "val"])
    fp32 = Predictor.load(trained_run)
    reference = score(fp32.backend, fp32.info, records, Protocol("standard"), set_name="v").nme["eye_centre"].mean()
    for path in (int8_package, int8_package / "model.onnx"):
        predictor = Predictor.load(path)
        assert predictor.info.precision == "int8"
        nme = score(predictor.backend, predictor.info, records, Protocol("standard"), set_name="v").nme["eye_centre"]
        assert abs(nme.mean() - reference) / reference < 0.02
        proc = run_cli("facealign-eval", path, "--data", synth_sets / "val", "--protocol", "standard", "--out",
                       tmp_path / path.name, "--quiet", *(["--backend", "onnxruntime"] if path.suffix else []))
        assert proc.returncode == 0, proc.stderr[-2000:]


def test_bfloat16_exports_compute_in_bfloat16_and_keep_their_accuracy(trained_run, synth_sets, tmp_path):
    out = tmp_path / "bf16"
    proc = _export(trained_run, synth_sets, out, "--precision", "bfloat16")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    check = json.loads((out / "export-check.json").read_text())["check"]["mxnet"]
    assert abs(check["relative_drift"]) <= 0.02
    source = artifact.resolve(out)
    assert source.info.precision == "bfloat16"
    x = np.random.RandomState(0).uniform(0, 255, (2, 3, 64, 64)).astype(np.float32)
    fp32 = loading.load_backend(artifact.resolve(trained_run))(x)
    bf16 = loading.load_backend(source)(x)
    diff = np.abs(bf16 - fp32).max() / np.abs(fp32).max()
    assert bf16.dtype == np.float32 and 0 < diff < 0.05  # bfloat16 arithmetic: close, not equal
    # the loaded graph is fused by oneDNN (convolution + BatchNorm + ReLU + sum) and holds bfloat16 weights
    import mxnet as mx

    net = loading.load_network(source, mx.cpu())
    ops = {n["op"] for n in json.loads(mx.sym.Group(net(mx.sym.var("data"))).tojson(remove_amp_cast=False))["nodes"]}
    assert "_sg_mkldnn_conv" in ops and "Convolution" not in ops, sorted(ops)
    weights = {p.name: p.data().dtype for p in net.collect_params().values() if p.name.endswith("_weight")}
    assert weights and all(dt.names == ("bfloat16",) for dt in weights.values()), weights
    # the package re-loaded by facealign-eval (a process that, like the export's, chose its ISA before
    # MXNet's first kernel) scores what the export checked
    proc = run_cli("facealign-eval", out, "--data", synth_sets / "val", "--protocol", "standard", "--out",
                   tmp_path / "eval", "--quiet", "--no-tensorboard")
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["results"][0]["by_norm"]["eye_centre"]["nme"] == pytest.approx(check["nme"], abs=1e-9)


@pytest.mark.parametrize("args,message", [
    (["--precision", "bfloat16", "--max-drift", "-1"], "loses too much accuracy"),
    (["--precision", "int8"], "--precision int8 needs --calibration PREFIX"),
    (["--precision", "int8", "--calibration", "VAL", "--calibration-samples", "8", "--calib-mode", "naive",
      "--max-drift", "-1"], "nothing written; try --calib-mode entropy"),
    (["--precision", "bfloat16", "--onnx"], "onnxruntime has no bfloat16 convolutions"),
])
def test_an_export_that_cannot_be_trusted_writes_nothing(trained_run, synth_sets, tmp_path, args, message):
    proc = _export(trained_run, synth_sets, tmp_path / "pkg", *[synth_sets / "val" if a == "VAL" else a for a in args])
    assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "pkg").exists() and not list(tmp_path.glob(".pkg.*"))
    unchecked = run_cli("facealign-export", trained_run, tmp_path / "p2", "--precision", "bfloat16")
    assert unchecked.returncode == 2 and "needs --check PREFIX" in unchecked.stderr
