"""Landmark schemes as data: how many points, how they mirror, where the eyes are.

A flip permutation ``flip[i] = j`` means: after a horizontal flip, the point
that lands in slot ``i`` is the old point ``j``. Every permutation is an
involution (applying it twice gives the identity), which the tests check.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LandmarkScheme:
    name: str
    num_points: int
    flip: tuple[int, ...]
    # Index groups used by the NME normalisers (metrics) and the eval crop.
    left_eye: tuple[int, ...]  # the subject's right eye, image left in a frontal face
    right_eye: tuple[int, ...]
    eye_corners: tuple[int, int, int, int]  # (outer-left, inner-left, inner-right, outer-right)

    def __post_init__(self):
        if sorted(self.flip) != list(range(self.num_points)):
            raise ValueError(f"{self.name}: flip is not a permutation of 0..{self.num_points - 1}")
        if any(self.flip[self.flip[i]] != i for i in range(self.num_points)):
            raise ValueError(f"{self.name}: flip permutation is not an involution")


# 68-point iBUG / 300W (seed-spec §4.4).
IBUG68 = LandmarkScheme(
    name="ibug68",
    num_points=68,
    flip=(16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0,
          26, 25, 24, 23, 22, 21, 20, 19, 18, 17,
          27, 28, 29, 30,
          35, 34, 33, 32, 31,
          45, 44, 43, 42, 47, 46, 39, 38, 37, 36, 41, 40,
          54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55,
          64, 63, 62, 61, 60, 67, 66, 65),
    left_eye=(36, 37, 38, 39, 40, 41),
    right_eye=(42, 43, 44, 45, 46, 47),
    eye_corners=(36, 39, 42, 45),
)

# 29-point COFW (Burgos-Artizzu et al.): points come in left/right pairs
# (0/1 .. 14/15 brows and eyes, 16/17 eye centres, ...), then nose and mouth.
COFW29 = LandmarkScheme(
    name="cofw29",
    num_points=29,
    flip=(1, 0, 3, 2, 6, 7, 4, 5, 9, 8, 11, 10, 14, 15, 12, 13, 17, 16, 19, 18, 20, 21, 23, 22, 24, 25, 26, 27,
          28),
    left_eye=(8, 10, 12, 13),  # corners and lids; 16 / 17 are the pupils
    right_eye=(9, 11, 14, 15),
    eye_corners=(8, 10, 11, 9),
)

# 98-point WFLW.
WFLW98 = LandmarkScheme(
    name="wflw98",
    num_points=98,
    flip=tuple(list(range(32, -1, -1))                      # jaw 0..32
               + [46, 45, 44, 43, 42, 50, 49, 48, 47]       # left brow 33..41 <- right brow
               + [37, 36, 35, 34, 33, 41, 40, 39, 38]       # right brow 42..50 <- left brow
               + [51, 52, 53, 54]                           # nose bridge
               + [59, 58, 57, 56, 55]                       # nostrils 55..59
               + [72, 71, 70, 69, 68, 75, 74, 73]           # left eye 60..67 <- right eye
               + [64, 63, 62, 61, 60, 67, 66, 65]           # right eye 68..75 <- left eye
               + [82, 81, 80, 79, 78, 77, 76, 87, 86, 85, 84, 83]  # outer mouth 76..87
               + [92, 91, 90, 89, 88, 95, 94, 93]           # inner mouth 88..95
               + [97, 96]),                                  # pupils
    left_eye=(60, 61, 62, 63, 64, 65, 66, 67),
    right_eye=(68, 69, 70, 71, 72, 73, 74, 75),
    eye_corners=(60, 64, 68, 72),
)

SCHEMES = {s.name: s for s in (IBUG68, COFW29, WFLW98)}
_BY_COUNT = {s.num_points: s for s in SCHEMES.values()}


def scheme_for(num_points: int) -> LandmarkScheme:
    """The default scheme of a landmark count (what ``data.scheme: null`` means): the one place a
    scheme is inferred from K."""
    scheme = _BY_COUNT.get(int(num_points))
    if scheme is None:
        raise KeyError(f"no landmark scheme has {num_points} points; known: "
                       + ", ".join(f"{s.name} ({s.num_points})" for s in SCHEMES.values()))
    return scheme


def get_scheme(name_or_count: str | int) -> LandmarkScheme:
    """A scheme by name ("ibug68") or point count (68, 29, 98)."""
    scheme = _BY_COUNT.get(name_or_count) if isinstance(name_or_count, int) else SCHEMES.get(name_or_count)
    if scheme is None:
        raise KeyError(f"no landmark scheme {name_or_count!r}; known: "
                       + ", ".join(f"{s.name} ({s.num_points})" for s in SCHEMES.values()))
    return scheme
