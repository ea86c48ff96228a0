"""Wire dtypes: how fp32 activations travel between ranks (pure torch, no MPI).

| wire | bytes per fp32 value on the wire | how |
|------|----------------------------------|-----|
| fp32 | 4                                | as is: the tensor's own memory (zero-copy) |
| fp16 | 2                                | cast, round to nearest; |x| > 65504 becomes inf (an output check failure) |
| bf16 | 2                                | cast (fp32's range, 8-bit mantissa); the 16-bit words travel as bytes |
| int8 | 1 + 7/128 = 1.0547 (0.264x fp32) | symmetric codes per block of 128 values, the block's largest value apart |

int8 (after distributed-llama's Q80: int8 codes with a scale per block): per block of 128
consecutive values, the value of largest magnitude travels apart as bf16 (with its index in
the block), the others as code = round(x / scale) in [-127, 127] with scale = (their max|x|)
/ 127 in fp32; decoding is code x scale, so such a value is off by at most scale / 2, and the
largest value by bf16 rounding (2^-9 of itself). Keeping the largest apart matters for the
pre-LayerNorm partial sums tensor parallelism reduces: BERT-family activations carry a few
huge channels, and one of them sets the scale of its whole block. Measured on real MiniLM
weights (every tp-reduced sum of a forward round-tripped, seq 128, random token ids; mean
cosine to fp32): blocks of 64 with one scale 0.9942, of 32 0.9971, blocks of 128 with the
largest apart 0.99994 (real sentences: 0.9997, 0.99985, 0.99996), for fewer bytes than scales
over 64 values (1.0625 per value). Everything stays within the 0.27x budget with the scales.

A packed buffer of n values is a uint8 tensor of `wire_bytes(n, dtype)` bytes: int8, with
nb = ceil(n/128) blocks, [nb fp32 scales | nb bf16 largest values | nb uint8 indices | n int8
codes] (scales first, so they start 4-byte aligned whenever the buffer does); fp16 and bf16
their n 16-bit words. MPI never does arithmetic on a packed buffer: it moves bytes
(parallelism/wire_ops.py sums in fp32 after decoding), so bf16 and int8 need no MPI support
and no reduction can overflow or round in the wire dtype.

`wire_bytes` is the one formula of bytes on the wire: the communicator counts the bytes of
the buffers it is given, the strategies' analytic traffic calls this function.
"""

from __future__ import annotations

import torch

from .errors import UsageError

WIRE_DTYPES = ("fp32", "fp16", "bf16", "int8")
INT8_BLOCK = 128  # values per int8 block (an index in it fits a uint8)
SCALE_BYTES = 4   # one fp32 scale
BLOCK_BYTES = SCALE_BYTES + 2 + 1  # per block: its scale, its largest value (bf16), that value's index
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
        return n + BLOCK_BYTES * int8_blocks(n)
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


def _int8_parts(packed: torch.Tensor, n: int):
    """Views (scales, largest values, their indices, codes) of a packed int8 buffer of n values."""
    nb = int8_blocks(n)
    header = packed[:BLOCK_BYTES * nb]
    scales = header[:SCALE_BYTES * nb].view(torch.float32)
    largest = header[SCALE_BYTES * nb:(SCALE_BYTES + 2) * nb].view(torch.bfloat16)
    codes = packed[BLOCK_BYTES * nb:BLOCK_BYTES * nb + n].view(torch.int8)
    return scales, largest, header[(SCALE_BYTES + 2) * nb:], codes


def _by_block(n: int):
    """(slice of values, slice of blocks) of the whole blocks, then of the last, shorter one."""
    full = n // INT8_BLOCK * INT8_BLOCK
    pieces = [(slice(0, full), slice(0, full // INT8_BLOCK))] if full else []
    return pieces + ([(slice(full, n), slice(full // INT8_BLOCK, None))] if full < n else [])


def _pack_int8(flat: torch.Tensor, out: torch.Tensor) -> None:
    scales, largest, where, codes = _int8_parts(out, flat.numel())
    for values, blocks in _by_block(flat.numel()):
        width = min(INT8_BLOCK, values.stop - values.start)
        _quantize(flat[values].view(-1, width), scales[blocks], largest[blocks], where[blocks],
                  codes[values].view(-1, width))


def _quantize(blocks: torch.Tensor, scales, largest, where, codes) -> None:
    magnitude = blocks.abs()
    index = magnitude.argmax(dim=1, keepdim=True)  # a NaN counts as the largest: it travels as is
    where.copy_(index.view(-1))
    largest.copy_(blocks.gather(1, index).view(-1))
    torch.div(magnitude.scatter_(1, index, 0.0).amax(dim=1), INT8_MAX, out=scales)
    # A block of zeros (but its largest) has scale 0: its codes are 0 (no division by zero).
    inverse = torch.where(scales > 0, scales.reciprocal(), torch.zeros_like(scales))
    codes.copy_((blocks * inverse[:, None]).round_().clamp_(-INT8_MAX, INT8_MAX).scatter_(1, index, 0.0))


def unpack(packed: torch.Tensor, dtype: str, out: torch.Tensor) -> torch.Tensor:
    """A packed buffer of out.numel() values -> fp32 values written into `out` (a contiguous
    tensor, or a view whose memory is contiguous); returns out."""
    flat = out.view(-1)
    if dtype != "int8":
        flat.copy_(packed.view(_CAST.get(dtype, torch.float32)))
        return out
    n = flat.numel()
    if packed.storage_offset() % SCALE_BYTES:
        packed = packed[:wire_bytes(n, dtype)].clone()  # a part at an unaligned offset of a gathered buffer
    scales, largest, where, codes = _int8_parts(packed, n)
    for values, blocks in _by_block(n):
        width = min(INT8_BLOCK, values.stop - values.start)
        decoded = torch.mul(codes[values].view(-1, width), scales[blocks, None], out=flat[values].view(-1, width))
        decoded.scatter_(1, where[blocks].long()[:, None], largest[blocks].float()[:, None])
    return out


def roundtrip(x: torch.Tensor, dtype: str) -> torch.Tensor:
    """What x looks like after the wire (a new tensor; fp32 is a copy)."""
    return unpack(pack(x, dtype), dtype, torch.empty(x.shape))
