"""Job specs: strict schema, clear errors, overrides, the reference recipes, and no MXNet import."""
import subprocess
import sys

import pytest
import yaml

from conftest import BIN, REPO
from facealign.spec import components
from facealign.spec.schema import AugmentSpec, JobSpec, SpecError, dump_job, load_job

JOBS = sorted((REPO / "jobs").glob("*.yaml"))


def _write(tmp_path, text, name="job.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


BASE = """
data:
  train: [data/train]
  val: {ibug: data/ibug, cofw: data/cofw}
model: {name: hg2-d3-cab}
"""


def test_loading_a_spec_and_building_its_parts_imports_no_mxnet():
    code = ("import sys, facealign.spec.components as c; "
            f"s = c.load({str(REPO / 'jobs' / 'demo.yaml')!r}); "
            "[f(s) for f in (c.model_spec, c.codec, c.sample_config, c.model_info, c.validation_record)]; "
            "print('mxnet' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_in_the_repository_loads(path):
    spec = load_job(path)
    assert isinstance(spec, JobSpec) and spec.data.train


@pytest.mark.parametrize("name", ["hg2-d4-resnet", "hg2-d3-hpm", "hg2-d4-cab", "sat2-d3-cab", "hg2-d3-cab",
                                  "hg2-d3-cab-3d", "sat2-d3-cab-3d"])
def test_reference_recipes(name):
    spec = load_job(REPO / "jobs" / f"{name}.yaml")
    assert spec.model.name == name
    assert (spec.optim.name, spec.optim.lr, spec.optim.wd) == ("nadam", 1e-4, 0.0)
    assert (spec.schedule.kind, spec.schedule.unit, spec.schedule.milestones, spec.schedule.factor,
            spec.schedule.length) == ("step", "epoch", [20, 35], 0.2, 45)
    assert spec.data.batch_size == 16 and (spec.data.sigma, spec.data.peak) == (1.0, 20.0)
    assert (spec.data.input_size, spec.data.heatmap_size, spec.data.target) == (128, 64, "reference")
    assert spec.loss.kind == "mse" and spec.loss.stack_weights in (None, [1.0, 1.0])
    assert components.model_spec(spec).landmark_dims == (3 if name.endswith("-3d") else 2)
    a = spec.data.augment
    assert (a.rotate, a.scale_sigma, a.scale_clip, a.flip, a.color, a.blur, a.occlusion) == (40, 0.2, 0.2, True, 0,
                                                                                            0, 0)


@pytest.mark.parametrize("text,message", [
    ("optim: {lrr: 1.0e-3}", r"job\.yaml: unknown key 'optim\.lrr'; did you mean 'optim\.lr'\?"),
    ("modle: {name: x}", r"unknown key 'modle'; did you mean 'model'\?"),
    ("data: {batch_size: sixteen}", r"job\.yaml: data\.batch_size: expected an integer, got 'sixteen'"),
    ("data: {augment: {flip: 0.5}}", r"data\.augment\.flip: expected true or false"),
    ("data: {input_size: 128, heatmap_size: 48}", r"data\.heatmap_size: input_size / heatmap_size must be 2 or 4"),
    ("checkpoint: {metric: nme/300W}", r"checkpoint\.metric: 'nme/300W' names no validation set; expected one of "
                                       r"nme/ibug, nme/cofw"),
    ("loss: {stack_weights: [1.0, 1.0, 1.0]}", r"loss\.stack_weights: 3 weights for a 2-stack model"),
    ("resources: {tasks_per_node: 4, gpus_per_node: 2}", r"resources\.tasks_per_node: 4 ranks per node cannot each "
                                                        r"have a GPU"),
    ("optim: {name: adamw}", r"optim\.name: 'adamw' is not one of nadam, adam, sgd, rmsprop"),
    ("model: {name: hg2-d3-cabb}", r"model\.name: unknown model 'hg2-d3-cabb'; did you mean 'hg2-d3-cab'\?"),
    ("schedule: {milestones: [35, 20]}", r"schedule\.milestones: must increase"),
    ("optim: {amp: float16}", r"optim\.amp: float16 AMP needs GPUs"),
    ("resources: {nodes: 2, min_nodes: 3}", r"resources\.min_nodes: 3 is more than resources\.nodes = 2"),
    ("resources: {nodes: 3, min_nodes: 2}", r"resources\.min_nodes: no node count from 2 to 2 divides nodes = 3, so "
                                            r"the job could never go on with fewer nodes .*use min_nodes = 1"),
    ("resources: {min_nodes: 0}", r"resources\.min_nodes: must be >= 1"),
    ("run: {stall_timeout_s: 0}", r"run\.stall_timeout_s: must be > 0"),
    ("run: {max_restarts: -1}", r"run\.max_restarts: must be >= 0"),
])
def test_bad_specs_name_file_key_and_expectation(tmp_path, text, message):
    raw = yaml.safe_load(BASE)
    for section, values in yaml.safe_load(text).items():
        raw[section] = {**raw.get(section, {}), **values} if isinstance(values, dict) else values
    path = _write(tmp_path, yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError, match=message):
        load_job(path)


def test_overrides_parse_yaml_values(tmp_path):
    path = _write(tmp_path, BASE)
    spec = load_job(path, ["optim.lr=2e-4", "schedule.max_steps=50", "data.val={a: x}", "loss.stack_weights=[1, 2]",
                           "checkpoint.metric=null"])
    assert spec.optim.lr == 2e-4 and isinstance(spec.optim.lr, float)  # YAML 1.1 reads 2e-4 as a string
    with pytest.raises(SpecError, match=r"optim\.lr: expected a number, got 'fast'"):
        load_job(path, ["optim.lr=fast"])
    assert spec.schedule.max_steps == 50 and spec.data.val == {"a": "x"} and spec.loss.stack_weights == [1.0, 2.0]
    with pytest.raises(SpecError, match=r"unknown key 'optim\.learning_rate'"):
        load_job(path, ["optim.learning_rate=1"])
    with pytest.raises(SpecError, match="expected dotted.key=value"):
        load_job(path, ["optim.lr"])


def test_resolved_spec_round_trips(tmp_path):
    spec = load_job(_write(tmp_path, BASE), ["optim.lr=3e-4"])
    dump_job(spec, tmp_path / "resolved.yaml")
    again = load_job(tmp_path / "resolved.yaml")
    assert again == spec
    assert "augment" in yaml.safe_load((tmp_path / "resolved.yaml").read_text())["data"]  # defaults written out


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(SpecError, match="nope.yaml: no such job spec"):
        load_job(tmp_path / "nope.yaml")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(_write(tmp_path, "data: [unclosed"))
    with pytest.raises(SpecError, match="data.train: no training record files"):
        load_job(_write(tmp_path, "model: {name: hg2-d3-cab}"))


def test_trainer_rejects_a_bad_spec_before_starting(tmp_path):
    path = _write(tmp_path, BASE + "optim: {lrr: 1}\n")
    proc = subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "unknown key 'optim.lrr'; did you mean 'optim.lr'?" in proc.stderr


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_every_job_in_the_repository_builds_its_model(path):
    import mxnet as mx

    from facealign.models import build_model, count_parameters, get_model_spec, initialize

    spec = components.load(path)
    model_spec = components.model_spec(spec)
    net = initialize(build_model(model_spec))
    out = net(mx.nd.zeros((1, 3, spec.data.input_size, spec.data.input_size)))
    assert len(out) == model_spec.num_stacks
    channels = spec.data.num_points * (2 if model_spec.predict_z else 1)  # depth maps after the heatmaps
    assert out[-1].shape == (1, channels, spec.data.heatmap_size, spec.data.heatmap_size)
    assert model_spec.output_channels == channels
    if spec.model.name == path.stem:  # the reference recipes train the zoo model as it is
        assert model_spec == get_model_spec(spec.model.name)
        assert count_parameters(net)["total"] > 6_000_000


def test_augmentation_fields_arrive_by_name(tmp_path):
    values = {"base_size": 200.0, "rotate": 11.0, "scale_sigma": 0.13, "scale_clip": 0.17, "flip": False,
              "translate": 0.05, "color": 0.3, "blur": 0.4, "occlusion": 0.6, "grey": 0.1, "randconv": 0.7}
    assert set(values) == {f for f in AugmentSpec.__dataclass_fields__}  # every field of the schema
    spec = load_job(_write(tmp_path, BASE + "data: {train: [t], val: {a: v}, augment: " + yaml.safe_dump(
        values, default_flow_style=True).strip() + "}\n"))
    augment = components.augment(spec)
    for key, value in values.items():
        assert getattr(augment, key) == value, key
    assert components.sample_config(spec).augment == augment


def test_a_3d_zoo_model_stays_3d_unless_the_spec_says_otherwise(tmp_path):
    three = load_job(_write(tmp_path, "data: {train: [t], val: {a: v}}\nmodel: {name: sat2-d3-cab-3d}\n"))
    assert three.data.landmark_dims is None
    assert components.model_spec(three).landmark_dims == 3 and components.model_info(three).landmark_dims == 3
    two = load_job(_write(tmp_path, "data: {train: [t], landmark_dims: 2}\nmodel: {name: sat2-d3-cab-3d}\n"))
    assert components.model_spec(two).landmark_dims == 2


def test_the_landmark_scheme_is_named_once(tmp_path):
    spec = load_job(_write(tmp_path, "data: {train: [t], num_points: 98}\n"))
    assert components.scheme(spec).name == "wflw98" and components.sample_config(spec).scheme == "wflw98"
    assert components.model_info(spec).scheme == "wflw98"
    with pytest.raises(SpecError, match="data.scheme: cofw29 has 29 points, data.num_points is 68"):
        components.load(_write(tmp_path, "data: {train: [t], scheme: cofw29}\n"))
    with pytest.raises(SpecError, match="data.num_points: no landmark scheme has 10 points"):
        components.load(_write(tmp_path, "data: {train: [t], num_points: 10}\n"))
    with pytest.raises(SpecError, match="data.scheme: 'ibug' is not one of ibug68, cofw29, wflw98"):
        load_job(_write(tmp_path, "data: {train: [t], scheme: ibug}\n"))


@pytest.mark.parametrize("override,key,message", [
    ("model.width=60", "model.width", "width 60 must be a multiple of 8 for cab blocks; the nearest widths that build "
                                      "are 56 or 64"),
    ("model.width=72", "model.width", "width 72 cannot be built with cab blocks: the stem's res1 block (cab) would have "
                                      "36 channels, not a multiple of 8; the nearest widths that build are 64 or 80"),
    ("model.depth=7", "model.depth", "heatmap_size 64 must be divisible by 2^depth = 128"),
    ("model.block=hpm", None, None),
])
def test_the_models_own_checks_run_on_the_login_node_and_in_the_trainer(tmp_path, override, key, message):
    path = _write(tmp_path, BASE)
    (tmp_path / "data").mkdir()
    for name in ("train", "ibug", "cofw"):  # validate checks that the record files exist
        (tmp_path / "data" / f"{name}.rec").touch()
    launch = subprocess.run([str(BIN / "facealign-launch"), "validate", str(path), "--set", override],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if key is None:
        assert launch.returncode == 0, launch.stderr
        return
    expected = f"job.yaml: {key}: {message} (model hg2-d3-cab)"
    assert launch.returncode == 2 and expected in launch.stderr and "Traceback" not in launch.stderr, launch.stderr
    train = subprocess.run([sys.executable, "-m", "facealign.train", "--job", str(path), "--set", override],
                           capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert train.returncode == 2 and expected in train.stderr and "Traceback" not in train.stderr, train.stderr


@pytest.mark.parametrize("override,message", [
    ("optim.lr=-1", "optim.lr: must be > 0, got -1.0"),
    ("optim.lr=0", "optim.lr: must be > 0, got 0.0"),
    ("data.sigma=-0.5", "data.sigma: must be >= 0, got -0.5"),
    ("schedule.max_steps=-3", "schedule.max_steps: must be >= 0, got -3"),
    ("schedule.milestones=[10, -2]", r"schedule.milestones\[1\]: must be >= 0, got -2"),
    ("data.augment.scale_clip=1.5", "data.augment.scale_clip: must be >= 0 and < 1, got 1.5"),
    ("optim.momentum=1", "optim.momentum: must be >= 0 and < 1, got 1.0"),
    ("loss.stack_weights=[1, -1]", r"loss.stack_weights\[1\]: must be >= 0, got -1.0"),
    ("data.max_skipped=-1", "data.max_skipped: must be >= 0, got -1.0"),
    ("run.lock_wait=-1", "run.lock_wait: must be >= 0"),
    ("data.landmark_dims=4", "data.landmark_dims: 4 is not one of 2, 3"),
])
def test_every_number_has_a_range(tmp_path, override, message):
    with pytest.raises(SpecError, match=message):
        load_job(_write(tmp_path, BASE), [override])


def test_the_schema_gives_every_numeric_key_a_range():
    import dataclasses
    import typing

    from facealign.spec.schema import JobSpec

    missing = []

    def walk(cls, prefix):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            args = [a for a in typing.get_args(tp) if a is not type(None)] or [tp]
            if dataclasses.is_dataclass(args[0]):
                walk(args[0], f"{prefix}{f.name}.")
            elif (args[0] in (int, float) or f.metadata.get("item") in (int, float)) and \
                    not {"ge", "gt", "le", "lt", "choices"} & set(f.metadata):
                missing.append(prefix + f.name)

    walk(JobSpec, "")
    assert not missing, missing


def test_a_bare_off_means_off(tmp_path):
    # YAML 1.1 reads `amp: off` as false; the choice it names is "off"
    assert load_job(_write(tmp_path, BASE + "optim: {amp: off}\n")).optim.amp == "off"
    assert load_job(_write(tmp_path, BASE), ["optim.amp=off"]).optim.amp == "off"


def test_the_launchers_sweep_and_status_import_no_mxnet(tmp_path):
    """facealign-launch runs on login nodes: planning a sweep and reading run status load no MXNet."""
    for suffix in (".rec", ".idx"):
        (tmp_path / f"train{suffix}").write_bytes(b"")
    (tmp_path / "job.yaml").write_text(f"data: {{train: [{tmp_path / 'train'}]}}\nmodel: {{name: hg2-d3-cab}}\n")
    code = ("import sys; sys.path.insert(0, %r); from launcher import cli, sweep; from facealign import runs; "
            "s = sweep.Sweep(base=%r, grid={'optim.lr': ['1e-3', '2e-3']}); name, root, members = sweep.plan(s, %r); "
            "cli.main(['status', %r, '--no-slurm']); print('mxnet' in sys.modules, 'horovod' in sys.modules, "
            "len(members))") % (str(REPO), str(tmp_path / "job.yaml"), str(tmp_path), str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False False 2"


def test_a_node_range_gives_the_world_sizes_that_keep_the_training(tmp_path):
    raw = yaml.safe_load(BASE)
    raw["resources"] = {"nodes": 6, "tasks_per_node": 4, "min_nodes": 2}
    spec = load_job(_write(tmp_path, yaml.safe_dump(raw)))
    assert spec.world_size == 24 and spec.min_nodes == 2
    assert spec.node_counts() == [6, 3, 2] and spec.world_sizes() == [24, 12, 8]  # 4 and 5 nodes do not divide 6
    spec.check_ranks(8)
    with pytest.raises(SpecError, match="start 24 or 12 or 8 or 6 or 4 or 3 or 2 or 1 rank"):
        spec.check_ranks(16)
    with pytest.raises(SpecError, match="0 rank\\(s\\) were started"):  # -np 0: one line, not a ZeroDivisionError
        spec.check_ranks(0)
    raw["resources"] = {"nodes": 2}
    assert load_job(_write(tmp_path, yaml.safe_dump(raw))).node_counts() == [2]  # min_nodes defaults to nodes
