"""Builds the Cython fast paths in native/ as facealign._native.<name>.

Everything else lives in pyproject.toml; this file exists only because the
extensions need numpy's include directory at build time.
"""
from pathlib import Path

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

here = Path(__file__).parent
extensions = [
    Extension(
        f"facealign._native.{pyx.stem}",
        [str(pyx.relative_to(here))],
        include_dirs=[numpy.get_include()],
        extra_compile_args=["-O3"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
    for pyx in sorted((here / "native").glob("*.pyx"))
]

setup(ext_modules=cythonize(extensions, language_level=3, quiet=True) if extensions else [])
