"""Run under horovodrun by test_horovod.py: allreduce a tensor and take one DistributedTrainer step.

Each rank writes what it saw to OUT_DIR/rank{r}.json for the test to check
(a test probe, so every rank writes; the product's rank-0-only rule is for
run directories).
"""
import json
import sys
from pathlib import Path

import horovod.mxnet as hvd
import mxnet as mx
from mxnet import autograd, gluon


def main(out_dir: str) -> None:
    hvd.init()
    rank, size = hvd.rank(), hvd.size()

    summed = hvd.allreduce(mx.nd.full((4,), rank + 1.0), average=False, name="sum")
    averaged = hvd.allreduce(mx.nd.full((4,), rank + 1.0), average=True, name="avg")

    # One DistributedTrainer step on rank-specific data: the averaged gradient
    # must leave identical parameters on every rank.
    mx.random.seed(100 + rank)  # different init per rank; the broadcast must overwrite it
    net = gluon.nn.Dense(3, in_units=5)
    net.initialize(mx.init.Normal(1.0))
    params = net.collect_params()
    hvd.broadcast_parameters(params, root_rank=0)
    trainer = hvd.DistributedTrainer(params, "sgd", {"learning_rate": 0.1})
    x = mx.nd.full((2, 5), float(rank + 1))
    with autograd.record():
        loss = (net(x) ** 2).sum()
    loss.backward()
    trainer.step(2)

    Path(out_dir, f"rank{rank}.json").write_text(json.dumps({
        "rank": rank, "size": size, "local_rank": hvd.local_rank(),
        "sum": summed.asnumpy().tolist(), "avg": averaged.asnumpy().tolist(),
        "weight": net.weight.data().asnumpy().tolist(), "bias": net.bias.data().asnumpy().tolist(),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
