"""Wire dtypes: how fp32 activations travel between ranks (pure torch, no MPI).

| wire | bytes per fp32 value on the wire | how |
|------|----------------------------------|-----|
| fp32 | 4                                | as is: the tensor's own memory (zero-copy) |
| fp16 | 2                                | cast, round to nearest; |x| > 65504 becomes inf (an output check failure) |
| bf16 | 2                                | cast (fp32's range, 8-bit mantissa); the 16-bit words travel as bytes |
| int8 | 1 + 4/64 = 1.0625 (0.266x fp32) | symmetric, one fp32 scale per block of 64 consecutive values |

int8 (the Q80 idea of distributed-llama, with fp32 scales over blocks of 64 instead of fp16
over 32: the same 1.0625 bytes per value, no fp16 range limit on a scale): for a block b,
scale_b = max|x| / 127 and code = round(x / scale_b) in [-127, 127]; decoding is code x scale_b,
so a value is off by at most scale_b / 2 = max|x| / 254 of its block. A block of 64 (not 32)
keeps the scales within the issue's 0.27x budget: with fp32 scales over 32 values int8 would
be 1.125 bytes per value, 0.281x.

A packed buffer of n values is a uint8 tensor of `wire_bytes(n, dtype)` bytes: int8
[ceil(n/64) fp32 scales | n int8 codes] (scales first so they start 4-byte aligned whenever
the buffer does); fp16 and bf16 their n 16-bit words. MPI never does arithmetic on a packed
buffer: it moves bytes (parallelism/wire_ops.py sums in fp32 after decoding), so bf16 and int8
need no MPI support and no reduction can overflow or round in the wire dtype.

`wire_bytes` is the one formula of bytes on the wire: the communicator counts the bytes of
the buffers it is given, the strategies' analytic traffic calls this function.
"""

from __future__ import annotations

import torch

from .errors import UsageError

WIRE_DTYPES = ("fp32", "fp16", "bf16", "int8")
INT8_BLOCK = 64   # values per int8 scale
SCALE_BYTES = 4   # one fp32 scale
INT8_MAX = 127    # symmetric: -127..127 (no -128, so that negation is exact)
_CAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
ITEMSIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1}


def check_dtype(who: str, dtype) -> str:
    if dtype not in WIRE_DTYPES:
        raise UsageError(f"{who}: wire_dtype must be one of {', '.join(WIRE_DTYPES)}, got {dtype!r}")
    return dtype


def int8_blocks(n: int) -> int:
    return -(-n // INT8_BLOCK)


def wire_bytes(n: int, dtype: str) -> int:
    """Bytes on the wire for n fp32 values: elements x itemsize, plus int8's scales."""
    if dtype == "int8":
        return n + SCALE_BYTES * int8_blocks(n)
    return n * ITEMSIZE[dtype]


def pack(x: torch.Tensor, dtype: str, out: torch.Tensor | None = None) -> torch.Tensor:
    """fp32 values (any shape) -> their packed uint8 buffer of wire_bytes(n) bytes: into `out`
    if given, else a new buffer (fp32: a byte view of x itself when x is contiguous)."""
    flat = x.reshape(-1)
    n = flat.numel()
    if dtype == "int8":
        if out is None:
            out = torch.empty(wire_bytes(n, dtype), dtype=torch.uint8)
        elif out.storage_offset() % SCALE_BYTES:
            return out.copy_(pack(flat, dtype))  # scales cannot be viewed at an unaligned offset
        _pack_int8(flat, out)
        return out
    if dtype not in ITEMSIZE:
        raise ValueError(f"pack: unknown wire dtype {dtype!r}")
    wire = _CAST.get(dtype, torch.float32)
    if out is None:
        return flat.to(wire).view(torch.uint8)
    out.view(wire).copy_(flat)
    return out


def _pack_int8(flat: torch.Tensor, out: torch.Tensor) -> None:
    n = flat.numel()
    nb = int8_blocks(n)
    scales = out[:SCALE_BYTES * nb].view(torch.float32)
    codes = out[SCALE_BYTES * nb:].view(torch.int8)
    full = n // INT8_BLOCK * INT8_BLOCK
    if full:
        _quantize(flat[:full].view(-1, INT8_BLOCK), scales[:full // INT8_BLOCK],
                  codes[:full].view(-1, INT8_BLOCK))
    if full < n:  # a last, shorter block
        _quantize(flat[full:].view(1, -1), scales[-1:], codes[full:].view(1, -1))


def _quantize(blocks: torch.Tensor, scales: torch.Tensor, codes: torch.Tensor) -> None:
    torch.div(blocks.abs().amax(dim=1), INT8_MAX, out=scales)
    # An all-zero block has scale 0: its codes are 0 (no division by zero).
    inverse = torch.where(scales > 0, scales.reciprocal(), torch.zeros_like(scales))
    codes.copy_((blocks * inverse[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX))


def unpack(packed: torch.Tensor, dtype: str, out: torch.Tensor) -> torch.Tensor:
    """A packed buffer of out.numel() values -> fp32 values written into `out` (a contiguous
    tensor, or a view whose memory is contiguous); returns out."""
    flat = out.view(-1)
    if dtype != "int8":
        flat.copy_(packed.view(_CAST.get(dtype, torch.float32)))
        return out
    n = flat.numel()
    nb = int8_blocks(n)
    scale_bytes = packed[:SCALE_BYTES * nb]
    if scale_bytes.storage_offset() % SCALE_BYTES:
        scale_bytes = scale_bytes.clone()  # a part at an unaligned offset of a gathered buffer
    scales = scale_bytes.view(torch.float32)
    codes = packed[SCALE_BYTES * nb:SCALE_BYTES * nb + n].view(torch.int8)
    full = n // INT8_BLOCK * INT8_BLOCK
    if full:
        torch.mul(codes[:full].view(-1, INT8_BLOCK), scales[:full // INT8_BLOCK, None],
                  out=flat[:full].view(-1, INT8_BLOCK))
    if full < n:
        torch.mul(codes[full:], scales[-1], out=flat[full:])
    return out


def roundtrip(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """What x looks like after the wire (a new tensor; fp32 is a copy)."""
    return unpack(pack(x, dtype), dtype, torch.empty(x.shape))
