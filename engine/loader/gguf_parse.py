"""A GGUF file's metadata and tensor table, read straight from a memory map.

The gguf package's `GGUFReader` builds a numpy view for every element of every metadata array, which costs
about 2.5 s on the embedded model (a tokenizer of 49k tokens and 49k merges) at every daemon start. This
reads the same header with `struct`, numeric arrays with one `np.frombuffer` each and strings by slicing,
and gives each tensor the data view `GGUFReader` gives (so `gguf.quants.dequantize` takes it as is).
Little-endian files of GGUF versions 2 and 3.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf.quants import quant_shape_to_byte_shape

_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
_PLAIN = {  # tensor types whose data is an array of elements, not of quantized blocks
    GGMLQuantizationType.F16: np.float16, GGMLQuantizationType.F32: np.float32,
    GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8, GGMLQuantizationType.I16: np.int16,
    GGMLQuantizationType.I32: np.int32, GGMLQuantizationType.I64: np.int64,
}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    tensor_type: GGMLQuantizationType
    shape: tuple[int, ...]  # GGUF order: the innermost (contiguous) dimension first
    data: np.ndarray  # read-only view of the file: elements, or for quantized types the bytes of each row


class GGUFContents:
    """`fields` (key -> str, int, float, bool or list of them) and `tensors` of a GGUF file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            self._map = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        buf = self._map
        if len(buf) < 24 or buf[:4] != b"GGUF":
            raise ValueError(f"{self.path.name}: not a GGUF file")
        version, n_tensors, n_fields = struct.unpack_from("<IQQ", buf, 4)
        if version not in (2, 3):
            raise ValueError(f"{self.path.name}: unsupported GGUF version {version} (little-endian v2/v3 only)")
        off = 24
        self.fields: dict[str, Any] = {}
        for _ in range(n_fields):
            key, off = self._string(off)
            (kind,) = struct.unpack_from("<I", buf, off)
            self.fields[key], off = self._value(kind, off + 4)
        infos = []
        for _ in range(n_tensors):
            name, off = self._string(off)
            (n_dims,) = struct.unpack_from("<I", buf, off)
            dims = struct.unpack_from(f"<{n_dims}Q", buf, off + 4)
            kind, rel = struct.unpack_from("<IQ", buf, off + 4 + 8 * n_dims)
            off += 4 + 8 * n_dims + 12
            infos.append((name, dims, GGMLQuantizationType(kind), rel))
        align = int(self.fields.get("general.alignment", 32))
        start = -(-off // align) * align
        self.tensors: list[GGUFTensor] = []
        seen = set()
        for name, dims, kind, rel in infos:
            if name in seen:
                raise ValueError(f"{self.path.name}: tensor {name!r} appears twice")
            seen.add(name)
            n = int(np.prod(dims, dtype=np.int64))
            np_dims = tuple(reversed(dims))
            if kind in _PLAIN:
                data = np.frombuffer(buf, dtype=_PLAIN[kind], count=n, offset=start + rel)
            else:
                block, size = GGML_QUANT_SIZES[kind]
                data = np.frombuffer(buf, dtype=np.uint8, count=n * size // block, offset=start + rel)
                np_dims = quant_shape_to_byte_shape(np_dims, kind)
            self.tensors.append(GGUFTensor(name, kind, tuple(int(d) for d in dims), data.reshape(np_dims)))

    def _string(self, off: int) -> tuple[str, int]:
        (n,) = struct.unpack_from("<Q", self._map, off)
        return str(self._map[off + 8 : off + 8 + n], encoding="utf-8"), off + 8 + n

    def _value(self, kind: int, off: int) -> tuple[Any, int]:
        if kind == _STRING:
            return self._string(off)
        if kind in _SCALAR:
            fmt = _SCALAR[kind]
            return struct.unpack_from(fmt, self._map, off)[0], off + struct.calcsize(fmt)
        if kind != _ARRAY:
            raise ValueError(f"{self.path.name}: unknown GGUF value type {kind}")
        item, count = struct.unpack_from("<IQ", self._map, off)
        off += 12
        if item in _SCALAR and item != 7:  # numbers: one view of the whole array
            dtype = np.dtype(_SCALAR[item])
            values = np.frombuffer(self._map, dtype=dtype, count=count, offset=off).tolist()
            return values, off + count * dtype.itemsize
        values = []
        for _ in range(count):
            v, off = self._value(item, off)
            values.append(v)
        return values, off
