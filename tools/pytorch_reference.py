#!/usr/bin/env python3
"""PyTorch reference data for GroupNorm.TorchSharp.

Two jobs, both using nothing but PyTorch and the Python standard library (no numpy, no safetensors
package):

1. Fixtures (default). Writes one file per configuration into --out, holding the inputs and
   PyTorch's outputs for ``torch.nn.functional.group_norm``: forward, first derivatives and one
   double-backward product. The .NET tests (GroupNorm.TorchSharp.Tests/Fixtures) check our layer
   against them. Regenerate from the repository root with

       /usr/bin/python3 tools/pytorch_reference.py

   (written for PyTorch 1.13, Debian 12's python3-torch; later versions should work, and the
   committed files say which version made them). Generation is deterministic: fixed per-fixture
   seeds and one intra-op thread give the same bytes on the same PyTorch build. Before writing a
   fixture the script checks PyTorch's float64 results against an independent plain-ops formula,
   and reads every file back.

2. CUDA timings (``--time-cuda``). Times PyTorch's own CUDA group_norm, forward alone and
   forward+backward, on the benchmark shapes and prints a markdown table, so that our CUDA numbers
   can be put beside PyTorch's on the same GPU:

       python3 tools/pytorch_reference.py --time-cuda --dtypes float32,float16 > pytorch-cuda.md

   ``--time-cpu`` runs the same measurement on the CPU. It exists to check this script on machines
   without a GPU; its numbers are not a benchmark of record.

File format
-----------
Each fixture is a safetensors file, written by hand: 8-byte little-endian header length, a JSON
header (padded with spaces to a multiple of 8 bytes) mapping each tensor name to
``{"dtype", "shape", "data_offsets"}`` plus a ``__metadata__`` object of strings, then the raw
little-endian tensor bytes. Every tensor is stored in its own dtype (F64, F32, F16, BF16; half types
as their raw 16-bit patterns) and in logical, row-major order whatever the memory format of the
run that produced it. ``index.json`` lists the files.

Tensors in a fixture of dtype T:

    x, weight, bias, dy, u     inputs, in T (weight/bias absent when the configuration has none)
    y, dx, dweight, dbias      forward output and gradients of sum(y * dy), in T
    ddx, ddweight              double backward: with g = d(sum(y * dy))/dx built with create_graph,
                               ddx = d(sum(g * u))/dx and ddweight = d(sum(g * u))/dweight, in T
    f64.<name>                 (T != float64 only) the same outputs computed by group_norm in
                               float64 on the T inputs widened exactly, in contiguous layout: the
                               precise answer for these inputs, against which both PyTorch-in-T
                               and our layer are measured

The metadata says how the T outputs were made (``reference``), including the workarounds needed
where PyTorch's CPU kernels lack a case, how far they are from the float64 answer
(``reference_vs_f64_max_rel``), and which PyTorch version made them. For the large-mean float32
fixtures (``large_mean`` = "true") PyTorch 1.13's float32 outputs are stored as they came although
they are far off (see their reference_vs_f64_max_rel): the tests measure those against f64.* only.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

FORMAT = "groupnorm-torchsharp-fixture/1"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "GroupNorm.TorchSharp.Tests", "Fixtures", "pytorch")
GENERATOR = "tools/pytorch_reference.py"

DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
SAFETENSORS_DTYPE = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}
TORCH_DTYPE = {v: k for k, v in SAFETENSORS_DTYPE.items()}

# How far PyTorch's float64 group_norm may be from the independent plain-ops float64 formula before
# the script refuses to write a fixture: a broken oracle must not become the test's truth.
CROSSCHECK_TOLERANCE = 1e-9


# --------------------------------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """One fixture: a shape, a group count and the ways the inputs are drawn and laid out."""

    name: str
    shape: Tuple[int, ...]
    groups: int
    dtype: str
    memory_format: str = "contiguous"  # or "channels_last": channels innermost, any rank >= 3
    affine: str = "weight+bias"  # "none", "weight", "bias"
    eps: float = 1e-5
    x_mean: float = 0.0
    x_scale: float = 1.0
    note: str = ""
    suite_shape: Optional[Tuple[int, ...]] = None  # the PyTorch test-suite shape this one stands for


def _pair(name: str, shape: Tuple[int, ...], groups: int, **kw) -> List[Config]:
    return [Config(f"{name}_f64", shape, groups, "float64", **kw), Config(f"{name}_f32", shape, groups, "float32", **kw)]


def configurations() -> List[Config]:
    """Every fixture, in file order. Names are stable: seeds derive from them."""
    cl = "channels_last"
    c: List[Config] = []
    # The shapes PyTorch's own GroupNorm tests use.
    c += _pair("suite_1x2x3x4_g2", (1, 2, 3, 4), 2)
    c += _pair("suite_2x3x10_g3", (2, 3, 10), 3)
    c += _pair("suite_3x1x1x1x2_g1", (3, 1, 1, 1, 2), 1)
    c += _pair("suite_2x6x4x2x2_g3", (2, 6, 4, 2, 2), 3)
    c += _pair("suite_1x256x1x1_g32", (1, 256, 1, 1), 32)
    # Large suite shapes, shrunk so that the committed fixtures stay small (a few MB in all); the
    # geometry that matters (groups of several channels, many positions, channels_last) is kept.
    c.append(Config("suite_cl_4x8x20x20_g4_f32", (4, 8, 20, 20), 4, "float32", memory_format=cl, suite_shape=(4, 8, 40, 40)))
    c.append(Config("suite_cl_4x8x10x10_g4_f64", (4, 8, 10, 10), 4, "float64", memory_format=cl, suite_shape=(4, 8, 40, 40)))
    c.append(Config("suite_2x30x16x16_g3_f32", (2, 30, 16, 16), 3, "float32", suite_shape=(2, 30, 50, 50)))
    c.append(Config("suite_2x9x7x11x15_g3_f32", (2, 9, 7, 11, 15), 3, "float32"))
    # channels_last beyond the suite: odd sizes, 5-d (channels_last_3d) and 3-d (N, L, C in memory).
    c += _pair("cl_2x6x5x7_g3", (2, 6, 5, 7), 3, memory_format=cl)
    c += _pair("cl3d_2x6x3x4x5_g2", (2, 6, 3, 4, 5), 2, memory_format=cl)
    c.append(Config("cl_2x6x9_g3_f64", (2, 6, 9), 3, "float64", memory_format=cl))
    # Affine variants, including the bias-without-weight case.
    c += _pair("noaffine_2x8x3x3_g4", (2, 8, 3, 3), 4, affine="none")
    c.append(Config("weightonly_2x6x5_g2_f64", (2, 6, 5), 2, "float64", affine="weight"))
    c += _pair("biasonly_2x6x5_g3", (2, 6, 5), 3, affine="bias")
    # eps comparable to the variance, so that getting eps wrong shows.
    c += _pair("eps1e-3_smallvar_2x4x8_g2", (2, 4, 8), 2, eps=1e-3, x_scale=0.03)
    # Degenerate geometries: (N, C) input, one channel per group, one group.
    c.append(Config("nc_5x6_g3_f64", (5, 6), 3, "float64"))
    c.append(Config("instance_2x4x6x6_g4_f64", (2, 4, 6, 6), 4, "float64"))
    c.append(Config("layer_3x5x4x4_g1_f32", (3, 5, 4, 4), 1, "float32"))
    # Large means: x = 1e4 + randn, where naive E[x^2] - E[x]^2 statistics lose every digit in float32.
    big = dict(x_mean=1e4, note="x = 1e4 + randn")
    c.append(Config("largemean_2x8x8x8_g4_f32", (2, 8, 8, 8), 4, "float32", **big))
    c.append(Config("largemean_cl_2x8x6x6_g2_f32", (2, 8, 6, 6), 2, "float32", memory_format=cl, **big))
    c.append(Config("largemean_2x8x8x8_g4_f64", (2, 8, 8, 8), 4, "float64", **big))
    # Half types.
    c.append(Config("half_2x6x4x4_g3_f16", (2, 6, 4, 4), 3, "float16"))
    c.append(Config("half_cl_2x8x7x7_g4_f16", (2, 8, 7, 7), 4, "float16", memory_format=cl))
    c.append(Config("half_2x6x4x4_g3_bf16", (2, 6, 4, 4), 3, "bfloat16"))
    c.append(Config("half_cl_2x8x7x7_g4_bf16", (2, 8, 7, 7), 4, "bfloat16", memory_format=cl))
    c.append(Config("half_2x6x3x4x5_g3_bf16", (2, 6, 3, 4, 5), 3, "bfloat16"))
    names = [x.name for x in c]
    assert len(names) == len(set(names)), "fixture names must be unique"
    return c


# --------------------------------------------------------------------------------------------------
# Reference computations
# --------------------------------------------------------------------------------------------------

GroupNormFn = Callable[[torch.Tensor, int, Optional[torch.Tensor], Optional[torch.Tensor], float], torch.Tensor]


def torch_group_norm(x, groups, weight, bias, eps):
    return F.group_norm(x, groups, weight, bias, eps)


def plain_group_norm(x, groups, weight, bias, eps):
    """Group norm from elementary differentiable ops, independent of PyTorch's group_norm kernels.

    Used in float64 to cross-check the reference (forward, backward and double backward alike).
    """
    n, c = x.shape[0], x.shape[1]
    grouped = x.reshape(n, groups, -1)
    centred = grouped - grouped.mean(dim=-1, keepdim=True)
    variance = (centred * centred).mean(dim=-1, keepdim=True)
    y = (centred / torch.sqrt(variance + eps)).reshape(x.shape)
    per_channel = (1, c) + (1,) * (x.dim() - 2)
    if weight is not None:
        y = y * weight.reshape(per_channel)
    if bias is not None:
        y = y + bias.reshape(per_channel)
    return y


def in_layout(t: torch.Tensor, memory_format: str) -> torch.Tensor:
    """A copy of t with the requested memory layout (channels innermost for channels_last)."""
    if memory_format == "contiguous" or t.dim() < 3:
        return t.contiguous()
    if t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    if t.dim() == 5:
        return t.contiguous(memory_format=torch.channels_last_3d)
    # PyTorch names no channels_last format for other ranks; permuting gives the same strides.
    to_last = [0] + list(range(2, t.dim())) + [1]
    back = [to_last.index(i) for i in range(t.dim())]
    return t.permute(to_last).contiguous().permute(back)


@dataclass
class Inputs:
    x: torch.Tensor
    weight: Optional[torch.Tensor]
    bias: Optional[torch.Tensor]
    dy: torch.Tensor
    u: torch.Tensor


def products(fn: GroupNormFn, inp: Inputs, cfg: Config, compute: torch.dtype,
             weight_stand_in: bool = False) -> Dict[str, torch.Tensor]:
    """y, first derivatives and the double-backward product, computed by fn in dtype `compute`.

    First derivatives come from a plain backward (the kernel users run when training); the double
    backward from a second graph built with create_graph=True.

    weight_stand_in: run with weight = ones (not differentiated) when the configuration has a bias
    but no weight. PyTorch 1.13's CPU group_norm cannot backpropagate through that combination
    ("tensor does not have a device"); with a weight of exactly 1 every output is the same.
    """

    def prepare():
        x = in_layout(inp.x.to(compute), cfg.memory_format).requires_grad_()
        w = inp.weight.to(compute).requires_grad_() if inp.weight is not None else None
        b = inp.bias.to(compute).requires_grad_() if inp.bias is not None else None
        dy = in_layout(inp.dy.to(compute), cfg.memory_format)
        u = in_layout(inp.u.to(compute), cfg.memory_format)
        w_call = w
        if w is None and b is not None and weight_stand_in:
            w_call = torch.ones(x.shape[1], dtype=compute)
        return x, w, b, w_call, dy, u

    out: Dict[str, torch.Tensor] = {}

    x, w, b, w_call, dy, _ = prepare()
    y = fn(x, cfg.groups, w_call, b, cfg.eps)
    wrt = [t for t in (x, w, b) if t is not None]
    grads = dict(zip(("x", "w", "b") if w is not None else ("x", "b"), torch.autograd.grad(y, wrt, dy)))
    out["y"] = y.detach()
    out["dx"] = grads["x"]
    if w is not None:
        out["dweight"] = grads["w"]
    if b is not None:
        out["dbias"] = grads["b"]

    x, w, b, w_call, dy, u = prepare()
    y = fn(x, cfg.groups, w_call, b, cfg.eps)
    wrt = [t for t in (x, w, b) if t is not None]
    g = torch.autograd.grad(y, wrt, dy, create_graph=True)[0]
    second = torch.autograd.grad((g * u).sum(), [t for t in (x, w) if t is not None], allow_unused=True)
    out["ddx"] = second[0] if second[0] is not None else torch.zeros_like(x)
    if w is not None:
        out["ddweight"] = second[1] if second[1] is not None else torch.zeros_like(w)

    return {k: v.detach().contiguous() for k, v in out.items()}


def seed_for(name: str) -> int:
    """A seed from the fixture's name, so that adding or reordering fixtures changes no other file."""
    return zlib.crc32(name.encode("utf-8"))


def draw_inputs(cfg: Config) -> Inputs:
    gen = torch.Generator().manual_seed(seed_for(cfg.name))
    dtype = DTYPES[cfg.dtype]
    c = cfg.shape[1]

    def randn(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64)

    # Drawn in float64 and rounded once to the fixture dtype: the stored values are the inputs.
    x = (cfg.x_mean + cfg.x_scale * randn(*cfg.shape)).to(dtype)
    weight = (1.0 + 0.5 * randn(c)).to(dtype) if cfg.affine in ("weight+bias", "weight") else None
    bias = randn(c).to(dtype) if cfg.affine in ("weight+bias", "bias") else None
    dy = randn(*cfg.shape).to(dtype)
    u = randn(*cfg.shape).to(dtype)
    return Inputs(x, weight, bias, dy, u)


def max_relative(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: an error relative to the tensor's scale, robust to entries near zero."""
    a64, b64 = a.to(torch.float64), b.to(torch.float64)
    scale = b64.abs().max().item() if b64.numel() else 0.0
    err = (a64 - b64).abs().max().item() if b64.numel() else 0.0
    return err / scale if scale > 0 else err


def build_fixture(cfg: Config) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    dtype = DTYPES[cfg.dtype]
    inp = draw_inputs(cfg)
    stand_in = cfg.affine == "bias"
    workarounds: List[str] = []
    if stand_in:
        workarounds.append(
            "bias without weight: PyTorch 1.13's CPU group_norm backward fails for weight=None with a bias, "
            "so every output was computed with weight = ones (not differentiated), which gives identical values")

    # The float64 answer. For a float64 fixture it is the reference itself, run in the fixture's layout.
    # For other dtypes it is the yardstick for every result, so it comes from the contiguous kernel:
    # PyTorch 1.13's channels_last CPU kernel loses digits when the mean is large, as a variance taken
    # as E[x^2] - E[x]^2 would (at x = 1e4 + randn: 1e-8 relative in float64, everything in float32).
    exact_cfg = cfg if dtype == torch.float64 else replace(cfg, memory_format="contiguous")
    exact = products(torch_group_norm, inp, exact_cfg, torch.float64, weight_stand_in=stand_in)
    plain = products(plain_group_norm, inp, cfg, torch.float64)
    crosscheck = max(max_relative(plain[k], exact[k]) for k in exact)
    if crosscheck > CROSSCHECK_TOLERANCE:
        raise SystemExit(f"{cfg.name}: PyTorch's float64 group_norm and the plain-ops formula differ by "
                         f"{crosscheck:.3g} (relative): refusing to write a doubtful reference")

    if dtype == torch.float64:
        primary = exact
        how = "torch.nn.functional.group_norm on CPU in float64"
    elif kernel_available(dtype):
        primary = products(torch_group_norm, inp, cfg, dtype, weight_stand_in=stand_in)
        how = (f"torch.nn.functional.group_norm on CPU in {cfg.dtype} (PyTorch's own {cfg.dtype} kernel and "
               f"{cfg.dtype} autograd, double backward included)")
    else:
        primary = {k: v.to(dtype) for k, v in exact.items()}
        how = (f"torch.nn.functional.group_norm on CPU in float64 on the {cfg.dtype} inputs widened exactly, "
               f"every output then rounded to {cfg.dtype}")
        workarounds.append(f"PyTorch {torch.__version__} has no CPU group_norm kernel for {cfg.dtype}")
    if cfg.memory_format == "channels_last":
        how += "; inputs (x, dy, u) laid out channels_last for the run"

    tensors: Dict[str, torch.Tensor] = {"x": inp.x}
    if inp.weight is not None:
        tensors["weight"] = inp.weight
    if inp.bias is not None:
        tensors["bias"] = inp.bias
    tensors["dy"] = inp.dy
    tensors["u"] = inp.u
    for k in ("y", "dx", "dweight", "dbias", "ddx", "ddweight"):
        if k in primary:
            tensors[k] = primary[k].to(dtype)
    if dtype != torch.float64:
        for k in ("y", "dx", "dweight", "dbias", "ddx", "ddweight"):
            if k in exact:
                tensors["f64." + k] = exact[k]

    errors = {}
    if dtype != torch.float64:
        # How far PyTorch in this dtype is from the exact answer: context for the .NET tolerances.
        errors = {k: f"{max_relative(primary[k], exact[k]):.3e}" for k in primary}

    meta = {
        "format": FORMAT,
        "name": cfg.name,
        "dtype": cfg.dtype,
        "shape": json.dumps(list(cfg.shape)),
        "num_groups": str(cfg.groups),
        "eps": repr(cfg.eps),
        "memory_format": cfg.memory_format,
        "affine": cfg.affine,
        # PyTorch's float32 kernels are not a usable oracle here (see reference_vs_f64_max_rel): tests
        # measure against the f64.* tensors only.
        "large_mean": "true" if abs(cfg.x_mean) >= 1e3 else "false",
        "seed": str(seed_for(cfg.name)),
        "inputs": (f"x = {cfg.x_mean!r} + {cfg.x_scale!r} * randn; weight = 1 + 0.5 * randn; bias, dy, u = randn; "
                   f"drawn in float64 from torch.Generator(seed) in that order, then rounded to {cfg.dtype}"),
        "reference": how,
        "reference_dtype": cfg.dtype,
        "reference_f64": ("f64.* tensors: torch.nn.functional.group_norm on CPU in float64 on the same inputs "
                          "widened exactly, contiguous layout" if dtype != torch.float64
                          else "the reference itself is float64"),
        "double_backward": ("g = d(sum(y*dy))/dx with create_graph=True; ddx = d(sum(g*u))/dx, "
                            "ddweight = d(sum(g*u))/dweight"),
        "first_backward": "dx, dweight, dbias = d(sum(y*dy))/d(x, weight, bias) from a plain backward pass",
        "workarounds": "; ".join(workarounds) if workarounds else "none",
        "crosscheck_plain_ops_f64_max_rel": f"{crosscheck:.3e}",
        "torch_version": torch.__version__,
        "torch_git_version": getattr(torch.version, "git_version", "unknown"),
        "torch_distribution": torch_distribution(),
        "python_version": platform.python_version(),
        "generator": GENERATOR,
    }
    if errors:
        meta["reference_vs_f64_max_rel"] = json.dumps(errors, sort_keys=True)
    if cfg.suite_shape is not None:
        meta["suite_shape"] = json.dumps(list(cfg.suite_shape))
    if cfg.note:
        meta["note"] = cfg.note
    return tensors, meta


@functools.lru_cache(maxsize=None)
def torch_distribution() -> str:
    """Where PyTorch came from, when a distribution package says so.

    Debian's python3-torch 1.13.1 reports torch.__version__ as "1.13.0a0", so the package version is
    recorded beside it.
    """
    if torch.__file__.startswith("/usr/lib/python3/dist-packages/"):
        try:
            version = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "python3-torch"], capture_output=True,
                                     text=True, timeout=30, check=True).stdout.strip()
            if version:
                return f"Debian python3-torch {version}"
        except (OSError, subprocess.SubprocessError):
            pass
    return "unknown (not a distribution package)"


_KERNEL_CACHE: Dict[torch.dtype, bool] = {}


def kernel_available(dtype: torch.dtype) -> bool:
    """Whether this PyTorch's CPU group_norm runs forward, backward and double backward in dtype."""
    if dtype not in _KERNEL_CACHE:
        try:
            x = torch.randn(2, 4, 3, dtype=torch.float64).to(dtype).requires_grad_()
            w = torch.ones(4, dtype=dtype, requires_grad=True)
            y = F.group_norm(x, 2, w, None)
            g = torch.autograd.grad(y, [x], torch.ones_like(y), create_graph=True)[0]
            torch.autograd.grad(g.sum(), [x, w])
            _KERNEL_CACHE[dtype] = True
        except RuntimeError:
            _KERNEL_CACHE[dtype] = False
    return _KERNEL_CACHE[dtype]


# --------------------------------------------------------------------------------------------------
# safetensors writing and reading (by hand: no dependency beyond torch)
# --------------------------------------------------------------------------------------------------


def tensor_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().cpu().contiguous().reshape(-1)
    if flat.numel() == 0:
        return b""
    return bytes(flat.view(torch.uint8).tolist())


def write_safetensors(path: str, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    if sys.byteorder != "little":
        raise SystemExit("this writer emits the machine's byte order, which safetensors requires to be little-endian")
    header: Dict[str, object] = {"__metadata__": metadata}
    blobs = []
    offset = 0
    for name, t in tensors.items():
        data = tensor_bytes(t)
        header[name] = {"dtype": SAFETENSORS_DTYPE[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors aligns the data to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: str) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", {})
    data = raw[8 + n:]
    tensors = {}
    for name, entry in header.items():
        begin, end = entry["data_offsets"]
        dtype = TORCH_DTYPE[entry["dtype"]]
        buf = bytearray(data[begin:end])
        t = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(entry["shape"]).clone()
    return tensors, meta


# --------------------------------------------------------------------------------------------------
# Fixture command
# --------------------------------------------------------------------------------------------------


def make_fixtures(out_dir: str, only: Sequence[str]) -> int:
    # One thread: reductions then run in a fixed order, so the files are bit-for-bit reproducible.
    torch.set_num_threads(1)
    os.makedirs(out_dir, exist_ok=True)
    configs = configurations()
    if only:
        configs = [c for c in configs if any(s in c.name for s in only)]
    files = []
    total = 0
    for cfg in configs:
        tensors, meta = build_fixture(cfg)
        file_name = cfg.name + ".safetensors"
        path = os.path.join(out_dir, file_name)
        write_safetensors(path, tensors, meta)
        back, back_meta = read_safetensors(path)
        if back_meta != meta or set(back) != set(tensors) or not all(torch.equal(back[k], tensors[k]) for k in tensors):
            raise SystemExit(f"{path}: read-back differs from what was written")
        size = os.path.getsize(path)
        total += size
        files.append(file_name)
        errs = meta.get("reference_vs_f64_max_rel", "")
        print(f"{file_name:45s} {size:9d} B  crosscheck {meta['crosscheck_plain_ops_f64_max_rel']}  {errs}")
    if not only:
        index = {
            "format": FORMAT,
            "generator": GENERATOR,
            "torch_version": torch.__version__,
            "torch_distribution": torch_distribution(),
            "count": len(files),
            "files": files,
        }
        with open(os.path.join(out_dir, "index.json"), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
            f.write("\n")
    print(f"{len(files)} fixtures, {total} bytes, torch {torch.__version__}, in {out_dir}")
    return 0


# --------------------------------------------------------------------------------------------------
# Timing command
# --------------------------------------------------------------------------------------------------

# The benchmark project's shapes (N, C, H, W, G): vision and diffusion-model layers, ResNet-20 on CIFAR.
BENCH_SHAPES = [
    (32, 64, 32, 32, 32),
    (128, 64, 32, 32, 32),
    (8, 256, 56, 56, 32),
    (2, 320, 64, 64, 32),
    (2, 1280, 8, 8, 32),
    (1, 32, 256, 256, 32),
    (64, 512, 7, 7, 32),
    (16, 16, 32, 32, 8),
]


def parse_shape(text: str) -> Tuple[Tuple[int, ...], int]:
    """'32x64x32x32/32' -> ((32, 64, 32, 32), 32)."""
    try:
        dims, groups = text.strip().split("/")
        shape = tuple(int(d) for d in dims.lower().split("x"))
        g = int(groups)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad shape '{text}': expected e.g. 32x64x32x32/32 (N x C x ... / groups)")
    if len(shape) < 2 or any(d <= 0 for d in shape) or g <= 0 or shape[1] % g:
        raise argparse.ArgumentTypeError(f"bad shape '{text}': need rank >= 2, positive sizes, groups dividing C")
    return shape, g


@dataclass
class Timing:
    shape: Tuple[int, ...]
    groups: int
    layout: str
    dtype: str
    forward_us: Optional[float] = None
    train_us: Optional[float] = None
    error: str = ""


def _median_call_us(fn: Callable[[], object], device: torch.device, warmup: int, iters: int, repeats: int) -> float:
    """Median over `repeats` runs of the mean time of one call, each run timing `iters` calls."""
    for _ in range(warmup):
        fn()
    samples = []
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start = torch.cuda.Event(enable_timing=True)
            end = torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
            samples.append(start.elapsed_time(end) * 1000.0 / iters)  # elapsed_time is in ms
    else:
        for _ in range(repeats):
            t0 = time.perf_counter()
            for _ in range(iters):
                fn()
            samples.append((time.perf_counter() - t0) * 1e6 / iters)
    return statistics.median(samples)


def time_one(shape, groups, layout, dtype_name, device, warmup, iters, repeats) -> Timing:
    result = Timing(shape, groups, layout, dtype_name)
    dtype = DTYPES[dtype_name]
    try:
        gen = torch.Generator(device="cpu").manual_seed(0)
        x = in_layout(torch.randn(*shape, generator=gen).to(device=device, dtype=dtype), layout)
        dy = in_layout(torch.randn(*shape, generator=gen).to(device=device, dtype=dtype), layout)
        w = torch.randn(shape[1], generator=gen).to(device=device, dtype=dtype)
        b = torch.randn(shape[1], generator=gen).to(device=device, dtype=dtype)
        xg = x.detach().requires_grad_()
        wg = w.detach().requires_grad_()
        bg = b.detach().requires_grad_()

        def forward():
            with torch.no_grad():
                return F.group_norm(x, groups, w, b, 1e-5)

        def train_step():
            y = F.group_norm(xg, groups, wg, bg, 1e-5)
            return torch.autograd.grad(y, (xg, wg, bg), dy)

        result.forward_us = _median_call_us(forward, device, warmup, iters, repeats)
        result.train_us = _median_call_us(train_step, device, warmup, iters, repeats)
    except RuntimeError as e:  # out of memory, or a dtype this build lacks: report it in the table
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        result.error = ("out of memory" if "out of memory" in first_line.lower() else first_line)[:80]
    finally:
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def markdown_table(rows: List[Timing], device_text: str, args) -> str:
    lines = [
        f"PyTorch {torch.__version__} `torch.nn.functional.group_norm` on {device_text}; "
        f"median of {args.repeats} runs of {args.iters} calls after {args.warmup} warm-up calls; "
        "eps=1e-5, weight and bias given; forward under no_grad, forward+backward = forward with autograd "
        "then grads of x, weight and bias. GB/s counts the least traffic: forward reads x and writes y "
        "(2 passes), forward+backward adds reading dy and x and writing dx (5 passes).",
        "",
        "| shape | G | layout | dtype | forward (µs) | fwd GB/s | forward+backward (µs) | fwd+bwd GB/s |",
        "|---|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        shape = "x".join(str(d) for d in r.shape)
        if r.error:
            lines.append(f"| {shape} | {r.groups} | {r.layout} | {r.dtype} | {r.error} | | | |")
            continue
        nbytes = math.prod(r.shape) * torch.empty(0, dtype=DTYPES[r.dtype]).element_size()
        fwd_gbs = 2 * nbytes / (r.forward_us * 1e-6) / 1e9
        train_gbs = 5 * nbytes / (r.train_us * 1e-6) / 1e9
        lines.append(f"| {shape} | {r.groups} | {r.layout} | {r.dtype} | {r.forward_us:.1f} | {fwd_gbs:.3g} | "
                     f"{r.train_us:.1f} | {train_gbs:.3g} |")
    return "\n".join(lines)


def time_group_norm(args, device_type: str) -> int:
    if device_type == "cuda":
        if not torch.cuda.is_available():
            print("--time-cuda: this PyTorch sees no CUDA device (torch.cuda.is_available() is False; "
                  f"torch {torch.__version__}, built with CUDA {torch.version.cuda}). Run it on a GPU machine "
                  "with a CUDA build of PyTorch.", file=sys.stderr)
            return 2
        if not 0 <= args.device_index < torch.cuda.device_count():
            print(f"--time-cuda: no CUDA device {args.device_index}; this machine has {torch.cuda.device_count()}.",
                  file=sys.stderr)
            return 2
        device = torch.device("cuda", args.device_index)
        # Events record on the current stream of the current device: make that the one being timed.
        torch.cuda.set_device(device)
        props = torch.cuda.get_device_properties(device)
        device_text = (f"{props.name} ({props.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}, "
                       f"cuda:{args.device_index}")
    else:
        device = torch.device("cpu")
        device_text = f"CPU, {torch.get_num_threads()} threads (a check of this script, not a benchmark of record)"

    shapes = args.shapes or [(s[:4], s[4]) for s in BENCH_SHAPES]
    rows = []
    for shape, groups in shapes:
        for layout in args.layouts:
            if layout == "channels_last" and len(shape) < 3:
                continue
            for dtype_name in args.dtypes:
                row = time_one(shape, groups, layout, dtype_name, device, args.warmup, args.iters, args.repeats)
                rows.append(row)
                status = row.error or f"fwd {row.forward_us:.1f} µs, fwd+bwd {row.train_us:.1f} µs"
                print(f"  {'x'.join(map(str, shape))}/G{groups} {layout} {dtype_name}: {status}", file=sys.stderr)
    print(markdown_table(rows, device_text, args))
    return 0


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def comma_list(choices: Sequence[str]):
    def parse(text: str) -> List[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list of {', '.join(choices)}; got '{text}'")
        return items
    return parse


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="PyTorch reference fixtures for GroupNorm.TorchSharp's tests (default), "
                    "or PyTorch CUDA group_norm timings (--time-cuda).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=("examples:\n"
                "  /usr/bin/python3 tools/pytorch_reference.py                 # rewrite the committed fixtures\n"
                "  python3 tools/pytorch_reference.py --out /tmp/fx --only half  # some fixtures, elsewhere\n"
                "  python3 tools/pytorch_reference.py --time-cuda --dtypes float32,float16 > cuda.md\n"
                "  python3 tools/pytorch_reference.py --time-cpu --shapes 2x8x16x16/4 --iters 5  # script check"))
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="fixture folder (default: GroupNorm.TorchSharp.Tests/Fixtures/pytorch in this repository)")
    parser.add_argument("--only", action="append", default=[], metavar="TEXT",
                        help="write only fixtures whose name contains TEXT (repeatable); index.json is then left alone")
    parser.add_argument("--list", action="store_true", help="list the fixture configurations and exit")
    timing = parser.add_argument_group("timing")
    mode = timing.add_mutually_exclusive_group()
    mode.add_argument("--time-cuda", action="store_true",
                      help="time PyTorch's CUDA group_norm (forward, forward+backward) and print a markdown table; "
                           "writes no fixtures")
    mode.add_argument("--time-cpu", action="store_true", help="the same on the CPU, to check this script without a GPU")
    timing.add_argument("--shapes", type=parse_shape, nargs="+", metavar="NxCx...xW/G",
                        help="shapes to time (default: the benchmark project's eight shapes)")
    timing.add_argument("--dtypes", type=comma_list(list(DTYPES)), default=["float32"],
                        help="comma-separated dtypes (default: float32)")
    timing.add_argument("--layouts", type=comma_list(["contiguous", "channels_last"]), default=["contiguous", "channels_last"],
                        help="comma-separated layouts (default: contiguous,channels_last)")
    timing.add_argument("--warmup", type=int, default=10, help="untimed calls before measuring (default: 10)")
    timing.add_argument("--iters", type=int, default=50, help="calls per timed run (default: 50)")
    timing.add_argument("--repeats", type=int, default=7, help="timed runs; the median is reported (default: 7)")
    timing.add_argument("--device-index", type=int, default=0, help="CUDA device to use (default: 0)")
    args = parser.parse_args(argv)

    if args.warmup < 0 or args.iters < 1 or args.repeats < 1:
        parser.error("--warmup must be >= 0, --iters and --repeats >= 1")
    if args.list:
        for c in configurations():
            print(f"{c.name:40s} {c.dtype:9s} {str(c.shape):22s} G={c.groups:<3d} {c.memory_format:13s} {c.affine}")
        return 0
    if args.time_cuda:
        return time_group_norm(args, "cuda")
    if args.time_cpu:
        return time_group_norm(args, "cpu")
    return make_fixtures(args.out, args.only)


if __name__ == "__main__":
    sys.exit(main())
