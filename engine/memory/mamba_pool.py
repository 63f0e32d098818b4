"""The mamba pool: one item-major byte buffer, an item = one request's conv and SSM state for every mamba layer."""

from __future__ import annotations

import math

import torch
from pdpair.engine.hybrid_config import HybridConfig
from pdpair.engine.memory.kv_pool import Region

_ALIGN = 64  # bytes: item and SSM-part alignment (so the typed views of every item are aligned)


def _align(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class MambaPool:
    """`conv[slot]` [layers, conv_dim, d_conv - 1] (model dtype) and `ssm[slot]` [layers, heads, head_dim,
    d_state] (fp32) are typed views of item `slot` of one byte buffer, so one request's whole recurrent state is
    one contiguous item (one transfer entry).

    Item 0 is a dummy that padding rows write into; real requests get ids 1..num_slots (`reserved_items`).
    `row_slots[row]` maps a request-table row to its slot, which is how a forward batch finds its states.
    """

    kind = "mamba"
    reserved_items = 1

    def __init__(self, num_slots: int, num_rows: int, config: HybridConfig, conv_dtype: torch.dtype,
                 device: torch.device | str, ssm_dtype: torch.dtype = torch.float32) -> None:
        assert num_slots > 0, f"a mamba pool needs at least one slot, got {num_slots}"
        self.config = config
        self.num_slots = num_slots
        self.conv_dtype, self.ssm_dtype = conv_dtype, ssm_dtype
        conv_numel = math.prod(config.conv_state_shape)
        ssm_numel = math.prod(config.ssm_state_shape)
        self.ssm_offset = _align(conv_numel * conv_dtype.itemsize)
        self._item_bytes = _align(self.ssm_offset + ssm_numel * ssm_dtype.itemsize)
        n = num_slots + self.reserved_items
        self.buffer = torch.zeros(n, self._item_bytes, dtype=torch.uint8, device=device)
        self.conv = self.buffer[:, : conv_numel * conv_dtype.itemsize].view(conv_dtype).view(
            n, *config.conv_state_shape)
        self.ssm = self.buffer[:, self.ssm_offset : self.ssm_offset + ssm_numel * ssm_dtype.itemsize].view(
            ssm_dtype).view(n, *config.ssm_state_shape)
        self.row_slots = torch.zeros(num_rows, dtype=torch.long, device=device)

    @staticmethod
    def slot_bytes(config: HybridConfig, conv_dtype: torch.dtype, ssm_dtype: torch.dtype = torch.float32) -> int:
        conv = _align(math.prod(config.conv_state_shape) * conv_dtype.itemsize)
        return _align(conv + math.prod(config.ssm_state_shape) * ssm_dtype.itemsize)

    @property
    def num_items(self) -> int:
        return self.buffer.shape[0]

    @property
    def item_bytes(self) -> int:
        return self._item_bytes

    def region(self) -> Region:
        """Registrable region; its dtype names both parts' dtypes and shapes, so pairing nodes must agree on them."""
        return Region(self.kind, self.buffer.data_ptr(), self.item_bytes, self.num_items, self.describe(),
                      layers=self.config.mamba_layers)

    def describe(self) -> str:
        """E.g. `conv:bfloat16[3,192,3];ssm:float32[3,8,16,16]` (per item: every mamba layer's state)."""
        def part(name: str, dtype: torch.dtype, shape: tuple[int, ...]) -> str:
            return f"{name}:{str(dtype).removeprefix('torch.')}[{','.join(map(str, shape))}]"

        return (f"{part('conv', self.conv_dtype, self.config.conv_state_shape)};"
                f"{part('ssm', self.ssm_dtype, self.config.ssm_state_shape)}")

    def bind(self, row: int, slot: int) -> None:
        """The request in table `row` owns `slot` from now on (its state starts from zero at position 0)."""
        assert self.reserved_items <= slot < self.num_items, f"mamba slot {slot} outside [1, {self.num_items})"
        self.row_slots[row] = slot

    def unbind(self, row: int) -> None:
        self.row_slots[row] = 0

    def slots_of(self, rows: torch.Tensor) -> torch.Tensor:
        return self.row_slots[rows]

