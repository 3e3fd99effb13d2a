"""The checkpoint manager: atomic commits, verified loads with fall-back, retention, exact optimizer state."""
import json

import mxnet as mx
import numpy as np
import pytest
from mxnet import autograd, gluon

from facealign.runs.checkpoint import CheckpointManager
from facealign.runs.checkpoint_format import CheckpointError
from facealign.models import get_model, initialize


def _setup(optimizer="nadam", seed=0):
    net = initialize(get_model("hg2-d3-cab", width=32, depth=1, input_size=32, heatmap_size=16, num_stacks=1),
                     seed=seed)
    opt = {"nadam": mx.optimizer.Nadam(learning_rate=1e-3), "sgd": mx.optimizer.SGD(learning_rate=0.1, momentum=0.9),
           "adam": mx.optimizer.Adam(learning_rate=1e-3)}[optimizer]
    return net, gluon.Trainer(net.collect_params(), opt)


def _step(net, trainer, seed):
    rng = np.random.default_rng(seed)
    x = mx.nd.array(rng.uniform(0, 255, (2, 3, 32, 32)))
    y = mx.nd.array(rng.uniform(0, 1, (2, 68, 16, 16)))
    with autograd.record():
        loss = ((net(x)[-1] - y) ** 2).mean()
    loss.backward()
    trainer.step(1)


def _params(net):
    return {k: v.data().asnumpy() for k, v in net.collect_params().items()}


@pytest.mark.parametrize("optimizer", ["nadam", "sgd", "adam"])
def test_resume_continues_bit_for_bit(tmp_path, optimizer):
    net, trainer = _setup(optimizer)
    for s in range(3):
        _step(net, trainer, s)
    mgr = CheckpointManager(tmp_path, writer=True)
    path = mgr.save(3, net, trainer, {"epoch": 0, "batch_in_epoch": 3, "model_fingerprint": "abc", "model": {}, "metrics": {}})
    for s in range(3, 5):
        _step(net, trainer, s)
    expected = _params(net)

    net2, trainer2 = _setup(optimizer, seed=99)  # different initialisation: everything must come from the file
    state = mgr.load(mgr.latest_valid(), net2, trainer2, mx.cpu(), fingerprint="abc")
    assert state["step"] == 3 and path.name == "ckpt-000000003"
    for s in range(3, 5):
        _step(net2, trainer2, s)
    got = _params(net2)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k], err_msg=k)


def test_layout_manifest_and_no_pickle(tmp_path):
    net, trainer = _setup()
    _step(net, trainer, 0)
    mgr = CheckpointManager(tmp_path, writer=True)
    path = mgr.save(1, net, trainer, {"epoch": 0, "batch_in_epoch": 1, "model": {}, "metrics": {}})
    assert sorted(p.name for p in path.iterdir()) == ["MANIFEST.json", "model.params", "optimizer.params",
                                                       "rank_stats.params", "state.json"]
    assert (tmp_path / "latest").read_text().strip() == "ckpt-000000001"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp")]
    manifest = json.loads((path / "MANIFEST.json").read_text())
    assert set(manifest) == {"model.params", "rank_stats.params", "optimizer.params", "state.json"}
    # The optimizer state is NDArrays + JSON: no pickle stream anywhere.
    for f in path.iterdir():
        assert b"\x80\x04\x95" not in f.read_bytes()[:64] and b"\x80\x03" not in f.read_bytes()[:2]
    assert mx.nd.load(str(path / "optimizer.params"))  # MXNet's own NDArray format
    state = json.loads((path / "state.json").read_text())
    assert state["optimizer"]["optimizer"] == "Nadam" and "m_schedule" in state["optimizer"]["scalars"]


def test_damaged_checkpoint_falls_back_to_the_previous(tmp_path):
    net, trainer = _setup()
    mgr = CheckpointManager(tmp_path, writer=True, keep_last=3)
    for step in (1, 2, 3):
        _step(net, trainer, step)
        mgr.save(step, net, trainer, {"epoch": 0, "batch_in_epoch": step, "model": {}, "metrics": {}})
    newest = tmp_path / "ckpt-000000003" / "model.params"
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    messages = []
    assert mgr.latest_valid(log=messages.append).name == "ckpt-000000002"
    assert "ckpt-000000003 is damaged (model.params does not match its SHA-256" in messages[0]
    (tmp_path / "ckpt-000000002" / "state.json").unlink()
    assert mgr.latest_valid(log=messages.append).name == "ckpt-000000001"


def test_retention_keeps_last_n_and_best_k_and_deletes_after_commit(tmp_path):
    net, trainer = _setup()
    mgr = CheckpointManager(tmp_path, writer=True, keep_last=2, keep_best=1, metric="nme/a", mode="min")
    for step, value in zip(range(1, 6), [0.5, 0.2, 0.4, 0.3, 0.6]):
        mgr.save(step, net, trainer, {"epoch": 0, "batch_in_epoch": step, "model": {}, "metrics": {"nme/a": value}})
    assert [p.name for p in mgr.checkpoints()] == ["ckpt-000000002", "ckpt-000000004", "ckpt-000000005"]
    assert mgr.best().name == "ckpt-000000002"


def test_a_changed_model_refuses_to_resume(tmp_path):
    net, trainer = _setup()
    mgr = CheckpointManager(tmp_path, writer=True)
    mgr.save(1, net, trainer, {"epoch": 0, "batch_in_epoch": 1, "model_fingerprint": "old", "model": {"width": 32}, "metrics": {}})
    with pytest.raises(CheckpointError, match="was made by a different model.*Refusing to resume"):
        mgr.load(mgr.latest_valid(), net, trainer, mx.cpu(), fingerprint="new")


def test_only_the_writer_writes(tmp_path):
    net, trainer = _setup()
    reader = CheckpointManager(tmp_path / "ck", writer=False)
    assert reader.save(1, net, trainer, {"metrics": {}}) is None
    assert not (tmp_path / "ck").exists()


def test_train_state_round_trips_through_state_json():
    """What the trainer writes of its TrainState it reads back whole (the best comes from progress.json)."""
    from facealign.train.state import TrainState

    state = TrainState(step=12, epoch=1, batch_in_epoch=4, metrics={"nme/synth": 0.2}, best=0.19, best_step=8,
                       skipped_total=3, my_skips={"a.rec": 2}, loss_scale={"value": 1024.0}, restarts=1,
                       world_history=[[0, 2], [5, 1]])
    record = state.record({"world_size": 2}, samples_per_step=8, lr=1e-3,
                          data_skipped={"total": 3, "by_file": {"a.rec": 2, "b.rec": 1}})
    assert record["samples_seen"] == 96 and record["world_size"] == 2 and record["lr"] == 1e-3
    back = TrainState.resumed({**record, "step": 12}, primary=True, progress={"best": 0.19, "best_step": 8}, restarts=1)
    assert back == TrainState(step=12, epoch=1, batch_in_epoch=4, metrics={"nme/synth": 0.2}, best=0.19, best_step=8,
                              skipped_total=3, my_skips={"a.rec": 2, "b.rec": 1}, loss_scale={"value": 1024.0},
                              restarts=1, world_history=[[0, 2], [5, 1]])
    legacy = {k: v for k, v in record.items() if k != "world_history"}  # before the history was kept
    assert TrainState.resumed({**legacy, "step": 12}, primary=True, progress={}, restarts=0).world_history == [[0, 2]]
    state.note_world(1)  # the same count as before: no change
    state.note_world(2)
    assert state.world_history == [[0, 2], [5, 1], [12, 2]]
    other = TrainState.resumed({**record, "step": 12}, primary=False, progress={}, restarts=1)
    assert other.my_skips == {} and other.best is None  # rank 0 carries the run's earlier skips forward
    state.note_metric(0.25, "min")
    assert (state.best, state.best_step) == (0.19, 8)
    state.note_metric(0.1, "min")
    assert (state.best, state.best_step) == (0.1, 12)
