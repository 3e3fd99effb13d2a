"""Model structure as data: ``ModelSpec`` and the named models. Imports no MXNet.

A model name encodes topology, stacks, depth (down-sampling steps) and block:
``hg2-d3-cab`` is Hourglass^2 (d=3) with CAB blocks, ``sat2-d3-cab-3d`` the SAT
for 3D landmarks. "3D" follows the reference (seed-spec §4.2): the network is
the 2D network, trained on 3D-consistent landmarks whose (x, y) projection it
predicts; ``landmark_dims`` records it for evaluation and inference.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass

BLOCK_TYPES = ("resnet", "hpm", "inception", "cab", "mobile")
# Smallest channel divisor each block needs (C/2, C/4, 3C/8, C/8 must be whole; mobile's 2C always is).
CHANNEL_MULTIPLE = {"resnet": 2, "hpm": 4, "inception": 8, "cab": 8, "mobile": 1}
# "inception" and "cab" exist only for in == out channels; a block that changes them is this kind instead
BLOCK_FALLBACK = {"inception": "resnet", "cab": "hpm"}
STEM_STRICT = {"cab"}


def stem_channels(width: int) -> tuple[int, int]:
    """The stem's two narrower widths: conv0/res0's input (width/4) and res0/res1's (width/2), at least 32."""
    return max(width // 4, 32), max(width // 2, 32)


def block_kind(block: str, in_channels: int, channels: int) -> str:
    """The kind of block built for ``block`` between these channel counts (the reference's ``conv_block``)."""
    return BLOCK_FALLBACK.get(block, block) if in_channels != channels else block


def blocks_built(topology: str, block: str, width: int) -> list[tuple[str, str, int]]:
    """(where, kind, output channels) of every kind of block a network builds: the stem's three, and the stacks'."""
    stem_c, mid_c = stem_channels(width)
    built = [("res0", block_kind(block, stem_c, mid_c), mid_c), ("res1", block, mid_c),
             ("res2", block_kind(block, mid_c, width), width), ("stacks", block, width)]
    return built + ([("sat", "cab", width)] if topology == "sat" else [])


def width_problem(topology: str, block: str, width: int) -> str | None:
    """Why ``width`` cannot be built with these blocks (None: it can)."""
    built = blocks_built(topology, block, width)
    for where, kind, channels in sorted(built, key=lambda b: b[2] != width):  # the width's own blocks first
        # the stem's narrower blocks: only CAB cannot be built off its multiple (its halves are added to
        # their own concatenated copies); the others round their inner widths down and still build
        if channels != width and kind not in STEM_STRICT:
            continue
        if channels % CHANNEL_MULTIPLE[kind]:
            if channels == width:
                return f"width {width} must be a multiple of {CHANNEL_MULTIPLE[kind]} for {kind} blocks"
            return (f"width {width} cannot be built with {block} blocks: the stem's {where} block ({kind}) would have "
                    f"{channels} channels, not a multiple of {CHANNEL_MULTIPLE[kind]}")
    return None


def nearest_widths(topology: str, block: str, width: int, count: int = 2) -> list[int]:
    """The accepted widths nearest ``width``, for messages."""
    valid = [w for w in range(8, 2049) if width_problem(topology, block, w) is None]
    return sorted(sorted(valid, key=lambda w: (abs(w - width), w))[:count])

TOPOLOGIES = ("hourglass", "sat")


class ModelSpecError(ValueError):
    """A structure that cannot be built; ``problems`` pairs each offending field with what is wrong."""

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = problems
        super().__init__("invalid model spec: " + "; ".join(msg for _, msg in problems))


@dataclass(frozen=True)
class ModelSpec:
    """Everything that determines a network's structure (and so its checkpoint layout)."""

    topology: str = "hourglass"  # "hourglass" or "sat"
    num_stacks: int = 2
    depth: int = 3  # down-sampling steps inside each hourglass / SAT module
    block: str = "cab"  # resnet | hpm | inception | cab | mobile (SAT modules always use CAB inside)
    width: int = 256  # channels of the stacks; the stem uses width/4 and width/2 (at least 32)
    num_landmarks: int = 68
    input_size: int = 128
    heatmap_size: int = 64
    dcn: int = 0  # deformable convolutions, seed-spec §2.5: 0 none, >=2 head, 1/3 out3 stage
    landmark_dims: int = 2  # 2 or 3: which landmarks the model is trained for
    predict_z: bool = False  # 3D models: K depth maps beside the K heatmaps of every stack (z by integral regression)

    def validate(self) -> "ModelSpec":
        problems = []  # (field, message)
        if self.topology not in TOPOLOGIES:
            problems.append(("topology", f"topology {self.topology!r} is not one of {TOPOLOGIES}"))
        if self.block not in BLOCK_TYPES:
            problems.append(("block", f"block {self.block!r} is not one of {sorted(BLOCK_TYPES)}"))
        elif self.topology in TOPOLOGIES and self.width >= 1 and width_problem(self.topology, self.block, self.width):
            near = " or ".join(map(str, nearest_widths(self.topology, self.block, self.width)))
            problems.append(("width", f"{width_problem(self.topology, self.block, self.width)}; the nearest "
                             f"widths that build are {near}"))
        elif self.width < 1:
            problems.append(("width", f"width must be >= 1, got {self.width}"))
        if self.num_stacks < 1:
            problems.append(("num_stacks", f"num_stacks must be >= 1, got {self.num_stacks}"))
        if self.depth < 1:
            problems.append(("depth", f"depth must be >= 1, got {self.depth}"))
        if self.num_landmarks < 1:
            problems.append(("num_landmarks", f"num_landmarks must be >= 1, got {self.num_landmarks}"))
        if self.heatmap_size < 1 or self.input_size % self.heatmap_size or self.input_size // self.heatmap_size not in (2, 4):
            problems.append(("heatmap_size", f"input_size / heatmap_size must be 2 or 4, got "
                             f"{self.input_size} / {self.heatmap_size}"))
        elif self.heatmap_size % (2 ** self.depth):
            problems.append(("depth", f"heatmap_size {self.heatmap_size} must be divisible by 2^depth = "
                             f"{2 ** self.depth}"))
        if self.dcn not in (0, 1, 2, 3):
            problems.append(("dcn", f"dcn must be 0, 1, 2 or 3, got {self.dcn}"))
        if self.landmark_dims not in (2, 3):
            problems.append(("landmark_dims", f"landmark_dims must be 2 or 3, got {self.landmark_dims}"))
        elif self.predict_z and self.landmark_dims != 3:
            problems.append(("predict_z", "predict_z needs 3D landmarks (landmark_dims 3)"))
        if problems:
            raise ModelSpecError(problems)
        return self

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        if not self.predict_z:  # the structures (and fingerprints, checkpoints) from before z was predicted
            del out["predict_z"]
        return out

    @property
    def output_channels(self) -> int:
        """Channels of each stack's output: K heatmaps, then K depth maps when the model predicts z."""
        return self.num_landmarks * (2 if self.predict_z else 1)

    def fingerprint(self) -> str:
        """A stable hash of the structure: a checkpoint made by another structure must not load."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def _hourglass(**kw) -> ModelSpec:
    return ModelSpec(topology="hourglass", **kw)


def _sat(**kw) -> ModelSpec:
    return ModelSpec(topology="sat", **kw)


# The reference's released models (seed-spec §10) and the other block types.
MODELS: dict[str, ModelSpec] = {
    "hg2-d4-resnet": _hourglass(depth=4, block="resnet"),
    "hg2-d3-hpm": _hourglass(depth=3, block="hpm"),
    "hg2-d4-cab": _hourglass(depth=4, block="cab"),
    "sat2-d3-cab": _sat(depth=3, block="cab"),
    "hg2-d3-cab": _hourglass(depth=3, block="cab"),
    "hg2-d3-inception": _hourglass(depth=3, block="inception"),
    "hg2-d3-cab-3d": _hourglass(depth=3, block="cab", landmark_dims=3),
    "sat2-d3-cab-3d": _sat(depth=3, block="cab", landmark_dims=3),
    # 3D with depth: the same networks with K depth maps per stack (not in the reference)
    "hg2-d3-cab-3dz": _hourglass(depth=3, block="cab", landmark_dims=3, predict_z=True),
    "sat2-d3-cab-3dz": _sat(depth=3, block="cab", landmark_dims=3, predict_z=True),
    # light models for CPUs (not in the reference): inverted-residual blocks, narrow, at a smaller input
    "hg1-d3-mobile": _hourglass(num_stacks=1, depth=3, block="mobile", width=64, input_size=64, heatmap_size=32),
    "hg2-d3-mobile": _hourglass(num_stacks=2, depth=3, block="mobile", width=96, input_size=96, heatmap_size=48),
}


def list_models() -> list[str]:
    """Names accepted by ``get_model``."""
    return list(MODELS)


def get_model_spec(name: str, **overrides) -> ModelSpec:
    """The named model's spec with ``overrides`` (any ``ModelSpec`` field) applied and validated."""
    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    unknown = set(overrides) - {f.name for f in dataclasses.fields(ModelSpec)}
    if unknown:
        raise TypeError(f"unknown model override(s) {sorted(unknown)}; "
                        f"valid: {[f.name for f in dataclasses.fields(ModelSpec)]}")
    return dataclasses.replace(MODELS[name], **overrides).validate()


