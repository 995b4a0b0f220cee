"""Sharded reading and gathered writing of HF safetensors tensors, one device block at a time.

Loading builds every parameter with `jax.make_array_from_callback`: for each device this process
drives, the callback reads only the slice of the checkpoint that device holds (`safe_open(...)
.get_slice(name)[...]`), so no process ever reads or holds more than the blocks of one tensor
that its own devices need, plus the piece being read. A parameter may be made of several HF
tensors (routed experts stacked on an expert axis, layers stacked on a scan axis): its `Layout`
names them on a grid of leading "stack" axes, and a device's block reads just the grid cells and
the in-tensor slice it covers.

FP8. The official DeepSeek-V3 checkpoint stores linear weights as float8_e4m3fn `W_q` [out, in]
with a float32 `weight_scale_inv` S [ceil(out/bm), ceil(in/bm)] per (bm x bn) block
(config.json `quantization_config`: {"quant_method": "fp8", "weight_block_size": [bm, bn]}); the
weight is W[r, c] = W_q[r, c] * S[r // bm, c // bn] (edge blocks are partial when a size is not
a multiple of the block). Each slice is dequantised in float32 as it is read, then cast.
The safetensors NumPy backend cannot make float8 arrays, so FP8 slices are read from a read-only
memory map of the file's data (its offsets from the safetensors header).

Saving gathers one HF tensor at a time (`multihost_utils.process_allgather` when an array spans
processes) and only process 0 writes.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
from collections.abc import Mapping

import jax
import ml_dtypes
import numpy as np
from jax.experimental import multihost_utils
from safetensors import SafetensorError, safe_open

FP8 = "F8_E4M3"
_STORED = {"F32": np.float32, "BF16": ml_dtypes.bfloat16, "F16": np.float16, "F64": np.float64,
           FP8: ml_dtypes.float8_e4m3fn}
FLOAT_STORED = tuple(_STORED)
SCALE_SUFFIX = "_scale_inv"

#: A normalised index into one array: (start, stop) per dimension.
Key = tuple[tuple[int, int], ...]


@dataclasses.dataclass
class ReadStats:
    """What a load allocated on the host (filled in when passed to `load_hf(stats=...)`).

    largest_buffer_bytes: the largest single host array the reader made (a raw slice, its
      float32 dequantisation, or one device block).
    peak_held_bytes: the most bytes held at once: the finished distinct blocks of the parameter
      being built, the block under construction and the piece being read.
    slices_read: safetensors slice reads (one per HF tensor per distinct device block).
    """

    largest_buffer_bytes: int = 0
    peak_held_bytes: int = 0
    slices_read: int = 0

    def note(self, held_bytes: int, *arrays: np.ndarray) -> None:
        self.largest_buffer_bytes = max([self.largest_buffer_bytes] + [a.nbytes for a in arrays])
        self.peak_held_bytes = max(self.peak_held_bytes, held_bytes)


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one parameter lives in the checkpoint.

    names: object array of HF tensor names, shaped like the parameter's leading stack axes
      (() for one tensor, [E] for stacked experts, [L] for scanned layers, [L, E] for both).
    transpose: our kernels are [in, out], HF weights [out, in].
    """

    names: np.ndarray
    transpose: bool


def safetensors_header(file: str) -> tuple[dict, int]:
    """(header dict, offset of the data section) of a safetensors file (its documented layout:
    little-endian u64 header length, the JSON header, then the data)."""
    with open(file, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(fh.read(length)), 8 + length


class Reader:
    """Reads slices of a checkpoint's tensors, dequantising FP8 ones; files stay open."""

    def __init__(self, path: str, files: Mapping[str, str], block: tuple[int, int] | None,
                 stats: ReadStats | None = None):
        """Args: path: the directory; files: tensor name -> file in it; block: the FP8 block
        size (bm, bn) from `quantization_config`, None if the checkpoint is not quantised."""
        self.path, self.files, self.block = path, files, block
        self.stats = stats if stats is not None else ReadStats()
        self._open: dict[str, object] = {}
        self._maps: dict[str, tuple[dict, np.memmap]] = {}

    def _file(self, name: str) -> str:
        return os.path.join(self.path, self.files[name])

    def _handle(self, name: str):
        file = self._file(name)
        if file not in self._open:
            self._open[file] = safe_open(file, framework="np")
        return self._open[file]

    def header(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(stored dtype, e.g. "BF16" or "F8_E4M3"; shape) from the header only."""
        piece = self._handle(name).get_slice(name)
        return piece.get_dtype(), tuple(piece.get_shape())

    def _fp8_slice(self, name: str, key: Key) -> np.ndarray:
        file = self._file(name)
        if file not in self._maps:
            header, start = safetensors_header(file)
            self._maps[file] = header, np.memmap(file, np.uint8, mode="r", offset=start)
        header, data = self._maps[file]
        begin, end = header[name]["data_offsets"]
        whole = data[begin:end].view(ml_dtypes.float8_e4m3fn).reshape(header[name]["shape"])
        return np.array(whole[tuple(slice(a, b) for a, b in key)])  # copies the slice only

    def _raw(self, name: str, key: Key, stored: str) -> np.ndarray:
        try:
            if stored == FP8:
                return self._fp8_slice(name, key)
            return self._handle(name).get_slice(name)[tuple(slice(a, b) for a, b in key)]
        except (SafetensorError, OSError, TypeError, ValueError, KeyError) as e:
            raise ValueError(f"{self._file(name)}: cannot read tensor {name!r} ({e})") from None

    def read(self, name: str, key: Key, held: int = 0) -> np.ndarray:
        """The slice `key` of tensor `name`, FP8 dequantised to float32; ValueError naming the
        file and tensor if unreadable or non-finite. `held`: bytes the caller holds (stats)."""
        stored, _ = self.header(name)
        array = self._raw(name, key, stored)
        self.stats.slices_read += 1
        self.stats.note(held + array.nbytes, array)
        if stored == FP8:
            raw = array
            array = raw.astype(np.float32) * self._scales(name, key)
            self.stats.note(held + raw.nbytes + array.nbytes, array)
        bad = array.size - int(np.count_nonzero(np.isfinite(array)))
        if bad:  # a NaN/inf weight only shows up later as NaN logits, far from its cause
            raise ValueError(f"{self._file(name)}: tensor {name!r} has {bad} non-finite value(s) "
                             f"(NaN or inf) in {[list(k) for k in key]} of {array.size}")
        return array

    def _scales(self, name: str, key: Key) -> np.ndarray:
        """S[r // bm, c // bn] for the rows and columns of `key`, as float32 [rows, cols]."""
        (r0, r1), (c0, c1) = key
        bm, bn = self.block
        rows, cols = np.arange(r0, r1) // bm, np.arange(c0, c1) // bn
        scale_key = ((rows[0], rows[-1] + 1), (cols[0], cols[-1] + 1)) if rows.size and cols.size \
            else ((0, 0), (0, 0))
        scale_name = name + SCALE_SUFFIX
        scale = self._raw(scale_name, scale_key, self.header(scale_name)[0]).astype(np.float32)
        return scale[np.ix_(rows - scale_key[0][0], cols - scale_key[1][0])]

    def close(self) -> None:
        self._open.clear()
        self._maps.clear()


def normalise(index: tuple[slice, ...], shape: tuple[int, ...]) -> Key:
    """A device's index (slices, as `addressable_devices_indices_map` gives) as (start, stop)."""
    out = []
    for s, n in zip(index, shape, strict=True):
        start, stop, step = s.indices(n)
        if step != 1:
            raise ValueError(f"strided shard index {s} is not supported")
        out.append((start, stop))
    return tuple(out)


def read_block(reader: Reader, layout: Layout, key: Key, dtype, held: int = 0) -> np.ndarray:
    """One device's block of a parameter: block shape = the extents of `key`, in `dtype`."""
    n_stack = layout.names.ndim
    block = np.empty([b - a for a, b in key], dtype)
    tensor_key = key[n_stack:]
    hf_key = tuple(reversed(tensor_key)) if layout.transpose else tensor_key
    grid = np.asarray(layout.names[tuple(slice(a, b) for a, b in key[:n_stack])], object)
    for pos in np.ndindex(*grid.shape):
        piece = reader.read(str(grid[pos]), hf_key, held + block.nbytes)
        block[pos] = piece.T if layout.transpose else piece
    reader.stats.note(held + block.nbytes, block)
    return block


def build(reader: Reader, layout: Layout, shape: tuple[int, ...], dtype,
          sharding: jax.sharding.Sharding) -> jax.Array:
    """The parameter as a global array with `sharding`, each local device's block read alone.

    Devices that hold the same block (replicated axes) share one read."""
    blocks: dict[Key, np.ndarray] = {}

    def callback(index):
        key = normalise(index, shape)
        if key not in blocks:
            held = sum(b.nbytes for b in blocks.values())
            blocks[key] = read_block(reader, layout, key, dtype, held)
        return blocks[key]

    return jax.make_array_from_callback(shape, sharding, callback)


def gather(array) -> np.ndarray:
    """A host copy of `array` on every process: one `process_allgather` when the array spans
    processes (every process must call this, in the same order), else a device_get."""
    if isinstance(array, jax.Array) and not array.is_fully_addressable:
        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(jax.device_get(array))
