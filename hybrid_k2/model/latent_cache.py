"""One layer's latent KV cache: the rows MLA attends over, stored in the compute dtype, bf16 or fp8.

[NOTE] Layout. Per position the cache keeps c_kv [R] (kv_a_layernorm's output) and the roped shared key
k_pe [P]: one row [R + P] (576 values for K2). The whole capacity is allocated once, at the first write,
for the session's context (the plan's KV figure; no doubling, no copies as the conversation grows).
On the CPU the allocation is virtual until written, so a large context costs nothing up front.

Storage kinds (`kv_dtype`):
  auto  the compute dtype (fp32 in exact mode, bf16 in fast mode): values kept as computed
  bf16  bfloat16 rows
  fp8   float8 e4m3 rows plus two fp32 scales per row, one for c_kv and one for k_pe:
        scale = amax(|part|) / 448 (e4m3's largest finite value), so each part uses the whole fp8 range
        whatever its magnitude (k_pe is not normalised and can be far larger than c_kv); a zero part
        keeps scale 1. Dequantised on read: row = fp8.float() * scale. 584 B per row for K2 instead of
        1,152 B in bf16. The new tokens of a step are quantised before they are attended to, so prefill
        and decode see the same values.
Readers never see the storage: `read(s0, s1)` returns rows [s1 - s0, R + P] in the asked dtype.
`state(n)` / `load_state(...)` move the first n rows as they are stored (the host-RAM/disk tier).
"""
from __future__ import annotations

import torch

KV_DTYPES = ("auto", "bf16", "fp8")
FP8 = torch.float8_e4m3fn
FP8_MAX = 448.0


def storage_dtype(kv_dtype: str, compute: torch.dtype) -> torch.dtype:
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv cache dtype must be one of {', '.join(KV_DTYPES)}, got {kv_dtype!r}")
    return {"auto": compute, "bf16": torch.bfloat16, "fp8": FP8}[kv_dtype]


def row_bytes(kv_dim: int, kv_dtype: str, compute_bytes: int) -> int:
    """Bytes one position takes in one layer's cache (the planner's KV figure per layer)."""
    if kv_dtype == "fp8":
        return kv_dim + 2 * 4
    return kv_dim * (2 if kv_dtype == "bf16" else compute_bytes)


class LatentCache:
    """Rows [capacity, R + P] in the storage dtype; positions [0, length) are valid."""

    def __init__(self, kv_dim: int, rank: int, *, capacity: int, dtype: torch.dtype, device: torch.device,
                 kv_dtype: str = "auto", zero_fill: bool = False):
        self.kv_dim, self.rank, self.capacity = kv_dim, rank, capacity
        self.dtype = dtype  # compute dtype: what write() receives
        self.storage = storage_dtype(kv_dtype, dtype)
        self.kv_dtype = kv_dtype
        self.device = torch.device(device)
        self.zero_fill = zero_fill  # readers of the whole capacity (CUDA graphs) need finite unused rows
        self.data: torch.Tensor | None = None  # [capacity, R + P] storage dtype
        self.scale: torch.Tensor | None = None  # [capacity, 2] fp32 (fp8 only)
        self.length = 0

    @property
    def fp8(self) -> bool:
        return self.storage == FP8

    @property
    def allocated(self) -> bool:
        return self.data is not None

    def allocate(self) -> None:
        new = torch.zeros if self.zero_fill else torch.empty
        self.data = new(self.capacity, self.kv_dim, dtype=self.storage, device=self.device)
        if self.fp8:
            self.scale = torch.ones(self.capacity, 2, dtype=torch.float32, device=self.device)

    def free(self) -> None:
        """Gives the memory back (the rows are gone: save `state` first to keep them)."""
        self.data = self.scale = None
        self.length = 0

    def write(self, start: int, rows: torch.Tensor) -> None:
        """Stores rows [T, R + P] at positions start..start+T-1; the valid length becomes start + T."""
        end = start + rows.shape[0]
        if end > self.capacity:
            raise ValueError(f"latent cache holds {self.capacity} positions, asked to write up to {end}")
        if self.data is None:
            self.allocate()
        if self.fp8:
            q, scale = quantize_fp8(rows, self.rank)
            self.data[start:end] = q
            self.scale[start:end] = scale
        else:
            self.data[start:end] = rows.to(self.storage)
        self.length = end

    def write_at(self, pos: torch.Tensor, row: torch.Tensor) -> None:
        """Stores one row [1, R + P] at the position held in the device tensor pos [1] (CUDA-graph decode:
        no host sync); the caller sets `length` afterwards."""
        if self.data is None:
            self.allocate()
        if self.fp8:
            q, scale = quantize_fp8(row, self.rank)
            self.data.index_copy_(0, pos, q)
            self.scale.index_copy_(0, pos, scale)
        else:
            self.data.index_copy_(0, pos, row.to(self.storage))

    def read(self, s0: int, s1: int, dtype: torch.dtype = torch.float32, out: torch.Tensor | None = None) -> torch.Tensor:
        """Rows of positions s0..s1-1 as [s1 - s0, R + P] in `dtype` (a view when no conversion is needed).

        out: a [>= s1 - s0, R + P] buffer to convert into (reused by blockwise attention: on the CPU a fresh
        multi-MB tensor per block costs more in page faults than the conversion itself)."""
        rows = self.data[s0:s1]
        if self.fp8:
            return dequantize_fp8(rows, self.scale[s0:s1], self.rank, dtype, out)
        if rows.dtype == dtype:
            return rows
        return rows.to(dtype) if out is None else out[:s1 - s0].copy_(rows)

    # -- moving a prefix as stored (host tier, disk) --------------------------------------------------
    def state(self, n: int) -> tuple[torch.Tensor, ...]:
        """The first n rows as stored: (data [n, R + P],) or (data, scale [n, 2]) for fp8; views."""
        if n > self.length:
            raise ValueError(f"cache holds {self.length} positions, asked for {n}")
        if n == 0 or self.data is None:
            empty = (torch.empty(0, self.kv_dim, dtype=self.storage),)
            return empty + ((torch.empty(0, 2),) if self.fp8 else ())
        return (self.data[:n],) + ((self.scale[:n],) if self.fp8 else ())

    def load_state(self, tensors: tuple[torch.Tensor, ...]) -> None:
        """Replaces the contents by rows saved with `state` (any device); length = their count."""
        data = tensors[0]
        n = data.shape[0]
        if data.dtype != self.storage or data.shape[1:] != (self.kv_dim,) or len(tensors) != (2 if self.fp8 else 1):
            raise ValueError(f"saved cache rows {tuple(data.shape)} {data.dtype} do not fit this cache "
                             f"([*, {self.kv_dim}] {self.storage})")
        if n > self.capacity:
            raise ValueError(f"saved cache holds {n} positions, this one {self.capacity}")
        if self.data is None:
            self.allocate()
        self.data[:n].copy_(data, non_blocking=True)
        if self.fp8:
            self.scale[:n].copy_(tensors[1], non_blocking=True)
        self.length = n

    def nbytes(self, n: int | None = None) -> int:
        """Bytes of n positions as stored (default: the valid ones)."""
        n = self.length if n is None else n
        return n * (self.kv_dim * self.storage.itemsize + (8 if self.fp8 else 0))


def quantize_fp8(rows: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """rows [T, R + P] -> (fp8 [T, R + P], scales [T, 2] fp32): one scale for c_kv [:R], one for k_pe [R:]."""
    x = rows.float()
    amax = torch.stack((x[:, :rank].abs().amax(-1), x[:, rank:].abs().amax(-1)), dim=-1)  # [T, 2]
    scale = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    per_value = torch.cat((scale[:, :1].expand(-1, rank), scale[:, 1:].expand(-1, x.shape[1] - rank)), dim=-1)
    return (x / per_value).clamp(-FP8_MAX, FP8_MAX).to(FP8), scale


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, rank: int, dtype: torch.dtype,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """fp8 [S, R + P] and scales [S, 2] -> [S, R + P] in dtype (into out[:S] when given and dtype is fp32)."""
    if out is not None and dtype == torch.float32:
        x = out[:q.shape[0]].copy_(q)
    else:
        x = q.to(torch.float32)
    x[:, :rank] *= scale[:, :1]
    x[:, rank:] *= scale[:, 1:]
    return x if dtype == torch.float32 else x.to(dtype)
