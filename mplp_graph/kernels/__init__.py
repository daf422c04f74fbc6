"""Compiled CPU kernels for the learners, called through JAX's FFI (``jax.ffi``).

:func:`gru_cell` is the stateful learner's GRU cell (:func:`mplp_graph.learners.nets.gru_apply`;
paper eqs. 6-8) after its first layers: one C++ kernel (``gru_cell.cc``) runs a tile of rows
through the whole cell with its activations in cache, where XLA's CPU backend runs each matmul and
each elementwise step as a kernel of its own over all rows (docs/performance.md, "The learners on
the CPU"). Its backward pass is a second kernel that recomputes the tile's forward; only the
cell's inputs are kept between the passes (a remat inside the cell).

The pure-JAX cell stays the reference and the fallback: the kernel is used on the CPU when it is
built, and never when ``MPLP_KERNELS=off``, on other backends, or for learners the kernel does not
cover (bfloat16 matmuls, hidden widths other than 80 and 40, carries wider than 64); an op's
``kernel: jax`` argument (``graph.kernel`` in an experiment config) asks for the pure-JAX cell.
Values and gradients equal the pure-JAX cell's to float32 rounding (tests/test_kernels.py).

The kernel is compiled with the machine's C++ compiler (``$CXX`` or ``g++``) the first time it is
needed, against the FFI headers jaxlib ships (``jax.ffi.include_dir()``), into
``$MPLP_KERNEL_DIR`` or ``~/.cache/mplp_graph/kernels`` (a file per source, jaxlib version and
CPU). Without a compiler the pure-JAX cell runs and one warning says why.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp

ENV_OFF = "MPLP_KERNELS"  # "off": never use the compiled kernels
ENV_DIR = "MPLP_KERNEL_DIR"
SOURCE = Path(__file__).with_name("gru_cell.cc")
FORWARD, BACKWARD = "mplp_gru_cell_fwd", "mplp_gru_cell_bwd"
HIDDEN = (80, 40)  # the hidden widths the kernel is written for (nets.MLP_HIDDEN)
MAX_CARRY = 64
FLAGS = ("-O3", "-march=native", "-ffp-contract=fast", "-std=gnu++17", "-shared", "-fPIC", "-pthread")


def enabled() -> bool:
    """Whether the compiled kernels may be used (``MPLP_KERNELS`` is not ``off``)."""
    return os.environ.get(ENV_OFF, "").lower() not in ("off", "0", "false", "no")


def _cpu_id() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            lines = [line for line in f if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor()


def library_path() -> Path:
    """Where the compiled kernel for this source, jaxlib and CPU lives."""
    import jaxlib

    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), jaxlib.__version__.encode(), " ".join(FLAGS).encode(), _cpu_id().encode()):
        key.update(part)
    folder = Path(os.environ.get(ENV_DIR) or Path.home() / ".cache" / "mplp_graph" / "kernels")
    return folder / f"gru_cell-{key.hexdigest()[:16]}.so"


def build(path: Path) -> None:
    """Compile ``gru_cell.cc`` into ``path`` (atomically: a temporary file, then a rename)."""
    compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        cmd = [compiler, *FLAGS, "-isystem", jax.ffi.include_dir(), str(SOURCE), "-o", tmp]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.lru_cache(maxsize=None)
def load() -> bool:
    """Build (once per machine) and register the kernels; False, with one warning, when that fails."""
    try:
        path = library_path()
        if not path.exists():
            build(path)
        lib = ctypes.CDLL(str(path))
        jax.ffi.register_ffi_target(FORWARD, jax.ffi.pycapsule(lib.MplpGruCellForward), platform="cpu")
        jax.ffi.register_ffi_target(BACKWARD, jax.ffi.pycapsule(lib.MplpGruCellBackward), platform="cpu")
        return True
    except Exception as e:  # no compiler, read-only disk, ...: the pure-JAX cell runs instead
        warnings.warn(f"mplp_graph: the compiled GRU kernel is not available ({e}); the learners run as pure JAX "
                      f"(same numbers, slower on the CPU; {ENV_OFF}=off silences this)", RuntimeWarning, stacklevel=2)
        return False


def covers(carry: int, hidden: Sequence[int], dtype: Any) -> bool:
    """Whether :func:`gru_cell` can run a cell of this shape and matmul type here and now."""
    return (
        enabled()
        and dtype is None
        and tuple(hidden) == HIDDEN
        and 1 <= carry <= MAX_CARRY
        and jax.default_backend() == "cpu"
        and load()
    )


def _forward(gx, px, c, weights):
    out = jax.ShapeDtypeStruct(c.shape, jnp.float32)
    return jax.ffi.ffi_call(FORWARD, out, vmap_method="sequential")(gx, px, c, *weights)


def _backward(gx, px, c, weights, dout):
    shapes = [jax.ShapeDtypeStruct(x.shape, jnp.float32) for x in (gx, px, c, *weights)]
    grads = jax.ffi.ffi_call(BACKWARD, shapes, vmap_method="sequential")(gx, px, c, *weights, dout)
    return grads[0], grads[1], grads[2], tuple(grads[3:])


@jax.custom_vjp
def gru_cell(gx: Any, px: Any, c: Any, weights: tuple) -> Any:
    """``u c + (1 - u) n`` for rows of ``gx`` (rows, 2C: the gates' x part with their bias),
    ``px`` (rows, 80: MLPx's first layer with its bias) and the carry ``c`` (rows, C);
    ``weights = (Wc, K2x, b2x, K1c, b1c, K2c, b2c, K3x, K3c, b_next)`` (gru_cell.cc's header)."""
    return _forward(gx, px, c, weights)


def _fwd(gx, px, c, weights):
    return _forward(gx, px, c, weights), (gx, px, c, weights)


def _bwd(saved, dout):
    return _backward(*saved, dout)


gru_cell.defvjp(_fwd, _bwd)
