"""Only the optional C extension lives here; everything else is declared in pyproject.toml."""

import hashlib
import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup

HERE = Path(__file__).parent
SOURCE = "mlflow_flux/recording/_fastpath.c"
# The sums and statistics are declared once, in Python: the C layout (rows, statistics in the trace's order, when
# each is defined, their names) is generated from that table for every build, and checked again at import.
TABLES = runpy.run_path(str(HERE / "mlflow_flux" / "statistics.py"))
LAYOUT = TABLES["c_layout"]()
(HERE / "mlflow_flux" / "recording" / "_fastpath_layout.h").write_text(LAYOUT)
# Baked into the module so a test can tell a stale build (an old in-place .so) from one of the current source.
SOURCE_SHA256 = hashlib.sha256((HERE / SOURCE).read_bytes() + LAYOUT.encode()).hexdigest()

setup(
    ext_modules=[
        Extension(
            "mlflow_flux.recording._fastpath",
            [SOURCE],
            depends=["mlflow_flux/recording/_fastpath_layout.h"],
            define_macros=[("FASTPATH_SOURCE_SHA256", f'"{SOURCE_SHA256}"')],
            # -O3 vectorises the per-column loops; no -march=native, so a built wheel runs on any CPU of its arch.
            extra_compile_args=[] if sys.platform == "win32" else ["-O3"],
            # Without a compiler the package still installs: the recorder falls back to torch ops. The Makefile sets
            # MLFLOW_FLUX_REQUIRE_FASTPATH=1 so that a compile error stops the install instead of hiding in pip's log.
            optional=os.environ.get("MLFLOW_FLUX_REQUIRE_FASTPATH") != "1",
        )
    ]
)
