"""Native CPU kernels for the CSR linear layer (C++/OpenMP, built on first use, called via ctypes).

The source is ``_kernels.cpp`` next to this file. :func:`library` compiles it once per machine
with the host C++ compiler (``$CXX``, else ``g++`` / ``c++`` / ``clang++``; ``-O3 -march=native
-fopenmp``, about a second) into a cache directory and loads it; every later process loads the
cached file. When no compiler is found or the build fails, :func:`library` returns ``None``,
logs one warning, and the layer falls back to torch's CSR kernels (MKL): same results, slower.

Vector paths: every kernel is compiled in two vector widths, 64 bytes (``avx512``: 16 floats
a register) and 32 bytes (``avx2``: 8 floats). :func:`plan` picks, per kernel, 32 bytes when
the library was built without AVX-512F, else the faster width as timed once on the machine
(:func:`calibrate`). On a CPU without AVX-512 the 64-byte path still runs, each vector split in
two by the compiler: that is how the tests check both paths on every machine. Panels are sized
to the L2 cache (:func:`panel_tile`).

Environment:
    ``SPARSENETS_SPARSE_PATH``: ``auto`` (default), ``avx512`` or ``avx2``: one vector path
        for every kernel.
    ``SPARSENETS_SPARSE_KERNELS``: ``auto`` (default: native when it builds), ``native``
        (raise if it cannot be built) or ``torch`` (never build; torch CSR only).
    ``SPARSENETS_CACHE_DIR``: where the built library goes (default
        ``$XDG_CACHE_HOME/sparsenets`` or ``~/.cache/sparsenets``).

The tensor wrappers below take CPU tensors only and do no autograd; see ``functional.py``.
Layouts (``N`` batch rows, ``ld = N`` rounded up to the vector width, pad entries zero):

* :func:`pack`: ``x (N, C)`` with any strides -> ``xp``, ``xᵀ`` feature-major in panels of
  ``tile`` batch columns (``tile >= ld``: plain ``xᵀ (C, ld)``), and optionally ``x.sum(0)``;
  with ``gate`` (same shape), ``x`` is taken as zero where ``gate <= 0`` (ReLU's backward).
* :func:`spmm`: ``Y (N, R) = bias + x Aᵀ`` (optionally through ReLU) for a CSR ``A (R, C)``
  whose values are ``values`` (or ``values[perm]``), from the packed ``x``; written row-major.
* :func:`sddmm`: ``out[k] = Σ_m a[m, row_k] · b[m, col_k]`` at the nonzeros of a CSR pattern,
  from packed ``a`` and ``b``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
import hashlib
import json
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import torch

from ..errors import SparsenetsError

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("_kernels.cpp")
ABI_VERSION = 6
_FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC"]
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_ISUFFIX = {torch.int32: "i32", torch.int64: "i64"}
PATHS = {"avx512": 64, "avx2": 32}  # vector path -> vector bytes
NARROW_WIDTHS = (16,)  # vector bytes of the narrow kernels, for small-batch inference
WIDTHS = tuple(sorted((*NARROW_WIDTHS, *PATHS.values())))  # every compiled width, narrowest first
# A panel (the rows one kernel pass reads at random) fills this much of the L2 cache; below
# SPARSE_PANEL_DENSITY each row is reused so little per pass that fewer, wider passes win.
PANEL_L2_FRACTION = 0.5
SPARSE_PANEL_L2_FRACTION = 1.0
SPARSE_PANEL_DENSITY = 0.05
_DEFAULT_L2 = 1 << 20


def mode() -> str:
    """The kernel choice from ``SPARSENETS_SPARSE_KERNELS``: ``auto``, ``native`` or ``torch``."""
    value = os.environ.get("SPARSENETS_SPARSE_KERNELS", "auto").strip().lower() or "auto"
    if value not in ("auto", "native", "torch"):
        raise SparsenetsError(
            f"SPARSENETS_SPARSE_KERNELS must be auto, native or torch, got {value!r}"
        )
    return value


def cache_dir() -> Path:
    """Directory holding built kernel libraries."""
    if os.environ.get("SPARSENETS_CACHE_DIR"):
        return Path(os.environ["SPARSENETS_CACHE_DIR"]) / "kernels"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sparsenets" / "kernels"


def _compiler() -> str | None:
    if os.environ.get("CXX"):
        return shutil.which(os.environ["CXX"]) or os.environ["CXX"]
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _host_key() -> str:
    """CPU features the ``-march=native`` build depends on."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("flags", "Features", "model name")):
                    flags += line
                if line.strip() == "":
                    break
    except OSError:
        pass
    return platform.machine() + platform.system() + flags


def _compiler_version(cxx: str) -> str:
    try:
        run = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30)
        return run.stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def build(*, force: bool = False) -> Path:
    """Compile ``_kernels.cpp`` into the cache (unless already there) and return the file.

    Raises:
        SparsenetsError: no compiler, or compilation failed (message holds the compiler output).
    """
    cxx = _compiler()
    if cxx is None:
        raise SparsenetsError("no C++ compiler found (set CXX or install g++)")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(
        b"\0".join([source, _compiler_version(cxx).encode(), _host_key().encode(), " ".join(_FLAGS).encode()])
    ).hexdigest()[:16]
    target = cache_dir() / f"sparsenets_kernels_{key}.so"
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for extra in (["-fopenmp"], []):  # serial build when the compiler has no OpenMP
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
        cmd = [cxx, *_FLAGS, *extra, str(SOURCE), "-o", tmp]
        try:
            run = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{' '.join(cmd)}: {exc}")
            os.unlink(tmp)
            continue
        if run.returncode == 0:
            os.replace(tmp, target)  # atomic: concurrent builders write the same file
            log.info("built native sparse kernels: %s", target)
            return target
        os.unlink(tmp)
        tail = "\n".join(run.stderr.strip().splitlines()[-20:])
        errors.append(f"{' '.join(cmd)}:\n{tail}")
    raise SparsenetsError("building the native sparse kernels failed:\n" + "\n".join(errors))


class _Library:
    """The loaded shared library with typed entry points, keyed ``(op, vector bytes, dtype[, index])``."""

    def __init__(self, path: Path):
        self.path = path
        self.dll = ctypes.CDLL(str(path))
        if self.dll.sn_abi_version() != ABI_VERSION:
            raise SparsenetsError(f"{path}: kernel ABI {self.dll.sn_abi_version()} != {ABI_VERSION}")
        self.openmp = bool(self.dll.sn_openmp())
        self.avx512 = bool(self.dll.sn_avx512())
        p, i64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
        self.fn = {}
        for t in _SUFFIX.values():
            f = getattr(self.dll, f"sn_gather_{t}")
            f.argtypes, f.restype = [p, p, i64, p, i32], None
            self.fn["gather", t] = f
            for i in _ISUFFIX.values():
                f = getattr(self.dll, f"sn_spmv_{t}_{i}")
                f.argtypes, f.restype = [i64, p, p, p, p, p, p, i32, i32], None
                self.fn["spmv", t, i] = f
            for w in WIDTHS:
                f = getattr(self.dll, f"sn_pack_w{w}_{t}")
                f.argtypes, f.restype = [p, p, i64, i64, i64, i64, p, i64, i64, p, i32], None
                self.fn["pack", w, t] = f
                for i in _ISUFFIX.values():
                    f = getattr(self.dll, f"sn_spmm_w{w}_{t}_{i}")
                    f.argtypes = [i64, p, p, p, p, p, p, i64, i64, i64, i64, p, i64, i32, i32]
                    f.restype = None
                    self.fn["spmm", w, t, i] = f
                    f = getattr(self.dll, f"sn_sddmm_w{w}_{t}_{i}")
                    f.argtypes, f.restype = [i64, p, p, p, p, i64, i64, i64, p, i32], None
                    self.fn["sddmm", w, t, i] = f

@functools.cache
def _load() -> _Library | None:
    try:
        return _Library(build())
    except (SparsenetsError, OSError) as exc:
        if mode() == "native":
            raise SparsenetsError(f"native sparse kernels unavailable: {exc}") from exc
        log.warning("native sparse kernels unavailable, using torch CSR kernels: %s", exc)
        return None


def library() -> _Library | None:
    """The native kernel library (built on first call), or ``None`` when disabled/unavailable."""
    if mode() == "torch":
        return None
    return _load()


def available() -> bool:
    """Whether the native kernels are in use (builds them on first call)."""
    return library() is not None


@dataclasses.dataclass(frozen=True)
class Plan:
    """Vector width (bytes, 64 or 32) of each kernel; data is packed for the wider of the two.

    ``source`` says how it was chosen: ``"env"`` (``SPARSENETS_SPARSE_PATH``), ``"cpu"`` (no
    AVX-512 in this build: 32 bytes) or ``"calibrated"`` (both widths timed on this machine).
    """

    spmm: int
    sddmm: int
    source: str = "cpu"

    @property
    def pack(self) -> int:
        """Vector bytes the packed data is padded for."""
        return max(self.spmm, self.sddmm)

    def describe(self) -> str:
        """E.g. ``"spmm avx512, sddmm avx2 (calibrated)"``."""
        name = {width: key for key, width in PATHS.items()}
        return f"spmm {name[self.spmm]}, sddmm {name[self.sddmm]} ({self.source})"


def _requested_path() -> str:
    value = os.environ.get("SPARSENETS_SPARSE_PATH", "auto").strip().lower() or "auto"
    if value not in ("auto", *PATHS):
        raise SparsenetsError(
            f"SPARSENETS_SPARSE_PATH must be auto, {' or '.join(PATHS)}, got {value!r}"
        )
    return value


def plan(lib: _Library) -> Plan:
    """The vector widths the kernels run with: ``SPARSENETS_SPARSE_PATH`` when set; else 32
    bytes where the build has no AVX-512; else each kernel's faster width as timed once on this
    machine (:func:`calibrate`, cached next to the built library). On CPUs that execute 512-bit
    operations as two 256-bit halves (AMD Zen 4) the wide path is not always the faster one."""
    requested = _requested_path()
    if requested != "auto":
        return Plan(PATHS[requested], PATHS[requested], "env")
    if not lib.avx512:
        return Plan(32, 32, "cpu")
    return _calibrated(lib)


@functools.cache
def _calibrated(lib: _Library) -> Plan:
    cache = lib.path.with_suffix(f".plan{torch.get_num_threads()}.json")
    try:
        saved = json.loads(cache.read_text())
        return Plan(int(saved["spmm"]), int(saved["sddmm"]), "calibrated")
    except (OSError, ValueError, KeyError, TypeError):
        pass
    chosen = calibrate(lib)
    try:
        fd, tmp = tempfile.mkstemp(suffix=".json", dir=cache.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"spmm": chosen.spmm, "sddmm": chosen.sddmm}, fh)
        os.replace(tmp, cache)
    except OSError as exc:  # an unwritable cache only costs a calibration per process
        log.info("could not cache the kernel plan at %s: %s", cache, exc)
    return chosen


def calibrate(lib: _Library, *, repeats: int = 11, margin: float = 0.1) -> Plan:
    """Time spmm and sddmm in both vector widths on a random 2048 × 2048 layer at 95% sparsity,
    batch 128, interleaved, the fastest of ``repeats`` each; a kernel takes 64 bytes only when
    that is ``margin`` faster than 32 (the narrower width pads the batch less, and a near tie
    must not flip with the machine's noise). About a second."""
    gen = torch.Generator().manual_seed(0)
    rows = cols = 2048
    per_row = cols // 20
    col = torch.stack([torch.randperm(cols, generator=gen)[:per_row].sort().values for _ in range(rows)])
    col = col.reshape(-1).to(torch.int32)
    crow = torch.arange(0, rows * per_row + 1, per_row, dtype=torch.int32)
    values = torch.randn(col.numel(), generator=gen)
    x = torch.randn(128, cols, generator=gen)
    best = {width: {"spmm": float("inf"), "sddmm": float("inf")} for width in PATHS.values()}
    for _ in range(repeats):
        for width in PATHS.values():
            tile = panel_tile(cols, torch.float32, width)
            xp, _ = pack(lib, x, tile, width=width)
            start = time.perf_counter()
            spmm(lib, crow, col, values, None, None, xp, 128, tile, width=width)
            middle = time.perf_counter()
            sddmm(lib, crow, col, xp, xp, tile, width=width)
            end = time.perf_counter()
            best[width]["spmm"] = min(best[width]["spmm"], middle - start)
            best[width]["sddmm"] = min(best[width]["sddmm"], end - middle)
    pick = {
        op: 64 if best[64][op] * (1 + margin) < best[32][op] else 32 for op in ("spmm", "sddmm")
    }
    log.info("sparse kernel calibration (s): %s -> %s", best, pick)
    return Plan(pick["spmm"], pick["sddmm"], "calibrated")


@functools.cache
def l2_bytes() -> int:
    """Size of one core's L2 cache (from sysfs; 1 MiB when it cannot be read)."""
    base = Path("/sys/devices/system/cpu/cpu0/cache")
    try:
        for index in sorted(base.glob("index*")):
            if (index / "level").read_text().strip() == "2":
                text = (index / "size").read_text().strip().upper()
                scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
                return int(text.rstrip("KMG")) * scale
    except (OSError, ValueError):
        pass
    return _DEFAULT_L2


def panel_tile(features: int, dtype: torch.dtype, width: int, density: float = 1.0) -> int:
    """Panel width (batch columns) for packed data over ``features`` rows: the widest multiple
    of the vector length whose panel (``features × tile`` values, the rows a kernel pass reads
    at random) fits :data:`PANEL_L2_FRACTION` of the L2 cache (:data:`SPARSE_PANEL_L2_FRACTION`
    below :data:`SPARSE_PANEL_DENSITY`), between one vector and 256. Measured on an AMD EPYC
    (Zen 4, 1 MiB L2) on 4096-wide layers: half the L2 is best at 90-95% sparsity, the whole
    L2 at 99%."""
    lanes = width // dtype.itemsize
    fraction = PANEL_L2_FRACTION if density >= SPARSE_PANEL_DENSITY else SPARSE_PANEL_L2_FRACTION
    fit = int(fraction * l2_bytes()) // max(1, features * dtype.itemsize)
    return max(lanes, min(256, fit - fit % lanes))


def layer_plan(
    lib: _Library, in_features: int, out_features: int, nnz: int, dtype: torch.dtype
) -> tuple[Plan, int]:
    """The kernels' vector widths and the panel width for a CSR layer ``in -> out`` holding
    ``nnz`` weights: a panel of the wider side sized to the L2 cache (:func:`panel_tile`)."""
    pl = plan(lib)
    density = nnz / max(1, in_features * out_features)
    return pl, panel_tile(max(in_features, out_features), dtype, pl.pack, density)


def inference_width(n: int, dtype: torch.dtype, plan_width: int) -> int:
    """Vector bytes for a no-grad forward of a batch of ``n``: the narrowest width (16, 32 or 64
    bytes, at most ``plan_width``) whose lanes hold the whole batch, so that a small batch is
    not padded to a full 64-byte vector; ``plan_width`` when the batch is wider. Measured on an
    Intel Xeon (AVX-512), one 4096 x 4096 layer at 90-99%: 16 bytes for batch 2-4 and 32 for 8
    were 5-25% faster than 64; 8-byte vectors were slower than 16 and wider batches ran best on
    the plan's width."""
    for width in WIDTHS:
        if width <= plan_width and width // dtype.itemsize >= n:
            return width
    return plan_width


def padded(n: int, dtype: torch.dtype, width: int = 32) -> int:
    """``n`` rounded up to the vector length of ``dtype`` on ``width``-byte vectors (the leading
    dimension of packed data)."""
    lanes = width // dtype.itemsize
    return -(-n // lanes) * lanes


def _ptr(t: torch.Tensor | None) -> int | None:
    """The data pointer of a CPU tensor the kernel reads densely (contiguous, checked)."""
    if t is None:
        return None
    if not t.is_contiguous() or t.device.type != "cpu":
        raise SparsenetsError("native sparse kernels need contiguous CPU tensors")
    return t.data_ptr()


def _dense(t: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``t`` as a contiguous tensor of ``dtype`` (no copy when it already is one)."""
    if dtype is not None and t.dtype != dtype:
        t = t.to(dtype)
    return t if t.is_contiguous() else t.contiguous()


def pack(
    lib: _Library,
    x: torch.Tensor,
    tile: int,
    *,
    sums: bool = False,
    gate: torch.Tensor | None = None,
    width: int = 32,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x (N, C)`` (any strides) packed feature-major in panels of ``tile`` batch columns for
    ``width``-byte vectors; with ``gate (N, C)``, ``x`` counts as zero where ``gate <= 0``.

    Returns ``(xp, x.sum(0) (C,) or None)`` (the sum after the gate); ``xp`` has ``C * ld``
    elements, shaped ``(C, ld)`` (``ld = padded(N, dtype, width)``), laid out as panels (see
    ``_kernels.cpp``): only the kernels read it.
    """
    if x.device.type != "cpu":
        raise SparsenetsError("native sparse kernels need CPU tensors")
    if gate is not None:
        x, gate = _dense(x), _dense(gate, x.dtype)
        if gate.shape != x.shape:
            raise SparsenetsError(f"pack gate shape {tuple(gate.shape)} != input {tuple(x.shape)}")
    n, c = x.shape
    ld = padded(n, x.dtype, width)
    xp = torch.empty(c, ld, dtype=x.dtype)
    total = torch.empty(c, dtype=x.dtype) if sums else None
    sn, sc = x.stride()
    lib.fn["pack", width, _SUFFIX[x.dtype]](
        x.data_ptr(), _ptr(gate), n, c, sn, sc, xp.data_ptr(), ld, tile,
        None if total is None else total.data_ptr(), torch.get_num_threads(),
    )
    return xp, total


def spmm(
    lib: _Library,
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    perm: torch.Tensor | None,
    bias: torch.Tensor | None,
    xp: torch.Tensor,
    n: int,
    tile: int,
    *,
    relu: bool = False,
    width: int = 32,
) -> torch.Tensor:
    """``Y (n, R)`` row-major, ``Y[m, i] = bias[i] + Σ_k values[perm[k]] · x[m, col[k]]``
    (through ``max(0, ·)`` when ``relu``).

    ``crow (R+1,)``/``col (nnz,)`` (int32 or int64) are a CSR pattern over the ``C`` features
    of ``xp``, the packed ``x (n, C)`` from :func:`pack` with the same ``tile`` and ``width``;
    ``perm`` (int64) reorders ``values`` into that pattern's order, or None.
    """
    col = _dense(col)
    crow, values = _dense(crow, col.dtype), _dense(values)
    perm = None if perm is None else _dense(perm, torch.int64)
    bias = None if bias is None else _dense(bias)
    rows = crow.numel() - 1
    y = torch.empty(n, rows, dtype=values.dtype)
    lib.fn["spmm", width, _SUFFIX[values.dtype], _ISUFFIX[col.dtype]](
        rows, _ptr(crow), _ptr(col), _ptr(values), _ptr(perm), _ptr(bias),
        _ptr(xp), xp.shape[0], xp.shape[1], tile, n, y.data_ptr(), rows, int(relu),
        torch.get_num_threads(),
    )
    return y


def spmv(
    lib: _Library,
    crow: torch.Tensor,
    col: torch.Tensor,
    values: torch.Tensor,
    bias: torch.Tensor | None,
    x: torch.Tensor,
    *,
    relu: bool = False,
) -> torch.Tensor:
    """``Y (1, R)``, ``Y[0, i] = bias[i] + Σ_k values[k] · x[0, col[k]]`` (through ``max(0, ·)``
    when ``relu``) for one input row ``x (1, C)`` (inference at batch 1): a gather per nonzero,
    no packing or padded lanes. Measured on an AMD EPYC (AVX2, 2 threads) it beats the packed
    kernel at batch 1 only, so the no-grad forward uses it for single rows."""
    if x.dim() != 2 or x.shape[0] != 1:
        raise SparsenetsError(f"spmv takes one input row (1, C), got shape {tuple(x.shape)}")
    col = _dense(col)
    crow, values = _dense(crow, col.dtype), _dense(values)
    bias = None if bias is None else _dense(bias)
    x = _dense(x)
    rows = crow.numel() - 1
    y = torch.empty(1, rows, dtype=values.dtype)
    lib.fn["spmv", _SUFFIX[values.dtype], _ISUFFIX[col.dtype]](
        rows, _ptr(crow), _ptr(col), _ptr(values), _ptr(bias), _ptr(x), y.data_ptr(), int(relu),
        torch.get_num_threads(),
    )
    return y


def gather(lib: _Library, values: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """``values[perm]`` (``perm`` int64), in parallel."""
    values, perm = _dense(values), _dense(perm, torch.int64)
    out = torch.empty(perm.numel(), dtype=values.dtype)
    lib.fn["gather", _SUFFIX[values.dtype]](
        _ptr(values), _ptr(perm), perm.numel(), out.data_ptr(), torch.get_num_threads()
    )
    return out


def sddmm(
    lib: _Library,
    crow: torch.Tensor,
    col: torch.Tensor,
    ap: torch.Tensor,
    bp: torch.Tensor,
    tile: int,
    *,
    width: int = 32,
) -> torch.Tensor:
    """``out (nnz,)``, ``out[k] = Σ_m a[m, row_k] · b[m, col_k]`` for packed ``ap`` (R features)
    and ``bp`` (C features) of the same batch, packed with the same ``tile`` and ``width``."""
    col = _dense(col)
    crow = _dense(crow, col.dtype)
    out = torch.empty(col.numel(), dtype=ap.dtype)
    lib.fn["sddmm", width, _SUFFIX[ap.dtype], _ISUFFIX[col.dtype]](
        crow.numel() - 1, _ptr(crow), _ptr(col), _ptr(ap), _ptr(bp), bp.shape[0], ap.shape[1], tile,
        out.data_ptr(), torch.get_num_threads(),
    )
    return out
