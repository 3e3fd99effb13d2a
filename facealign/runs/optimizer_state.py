"""The optimizer's state as a checkpoint holds it: ``optimizer.params`` (its arrays) and the ``optimizer``
entry of ``state.json`` (its structure and scalars). The checkpoint layout, not the optimizer's choice
(that is facealign.train.optim)."""
from __future__ import annotations

# Gluon's Trainer keeps its optimizer and updater states private (``_optimizer``, ``_updaters``,
# ``_index_update_count``) in MXNet 1.9.1, the version install.sh pins; its public save_states
# pickles them, which a checkpoint must never hold. Re-check these names when MXNet changes.

_SCALARS = ("num_update", "m_schedule")  # optimizer attributes that evolve (Nadam's m_schedule among them)


def optimizer_state(trainer) -> tuple[dict, dict]:
    """(arrays, info): NDArrays by name for ``mx.nd.save`` and JSON-able scalars and structure."""
    updater = trainer._updaters[0]
    opt = trainer._optimizer
    arrays, layout = {}, {}
    for index, state in updater.states.items():
        parts = state if isinstance(state, (tuple, list)) else (state,)
        layout[str(index)] = ["none" if p is None else "array" for p in parts] + (
            ["tuple"] if isinstance(state, (tuple, list)) else ["single"])
        for j, p in enumerate(parts):
            if p is not None:
                arrays[f"state_{index}_{j}"] = p
    info = {"layout": layout, "index_update_count": {str(k): v for k, v in opt._index_update_count.items()},
            "scalars": {k: getattr(opt, k) for k in _SCALARS if hasattr(opt, k)},
            "optimizer": type(opt).__name__}
    return arrays, info


def load_optimizer_state(trainer, arrays: dict, info: dict, ctx) -> None:
    """Restore what ``optimizer_state`` saved into a freshly built trainer (before its first step)."""
    updater = trainer._updaters[0]
    opt = trainer._optimizer
    if info["optimizer"] != type(opt).__name__:
        raise ValueError(f"checkpoint optimizer is {info['optimizer']}, this run uses {type(opt).__name__}")
    updater.states.clear()
    for index, kinds in info["layout"].items():
        *parts, container = kinds
        values = [None if kind == "none" else arrays[f"state_{index}_{j}"].as_in_context(ctx)
                  for j, kind in enumerate(parts)]
        updater.states[int(index)] = tuple(values) if container == "tuple" else values[0]
        updater.states_synced[int(index)] = True
    opt._index_update_count.clear()
    opt._index_update_count.update({int(k): v for k, v in info["index_update_count"].items()})
    for k, v in info["scalars"].items():
        setattr(opt, k, v)
