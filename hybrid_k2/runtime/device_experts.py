"""Routed experts computed on the device: hot experts kept there, and long-prompt prefill streaming.

Both keep experts in their INT4 checkpoint layout on the device (nibbles + bf16 scales: 24.8 MB per K2
expert instead of 88 MB in bf16) and dequantise one expert at a time when it is used, with the one INT4
decoder and the same expert_mlp as the reference (hybrid_k2.model.experts), in the compute dtype (bf16
under precision="fast": the 88 MB the planner counts as expert scratch, not 176 MB of fp32), summed in
fp32. The ids come to the host once per call (one sync per layer, not one per expert).

Hot experts (`--gpu-experts N`): the N most used experts of each layer (from a profile-experts counts
file), copied to the device at load; the CPU job skips their slots.
Streaming (`--device-prefill-threshold T`): above T prompt tokens the CPU would need ~T x K expert
products per layer; the device is faster at that, so each layer's experts go to the device in chunks
of C experts, two chunks in flight (one computed while the next is copied: pinned host twin + copy
stream + events on CUDA; on CPU the chunk is a view of the host store and nothing is copied).
"""
from __future__ import annotations

import torch

from hybrid_k2.model.experts import FIELDS, Int4ExpertStore, dequantize_expert, expert_mlp
from hybrid_k2.runtime.transfer import Transfer


def empty_like_store(store, n: int, device: torch.device, pin: bool = False) -> Int4ExpertStore:
    """An Int4ExpertStore of n experts shaped like `store`, on `device` (pinned host memory with pin)."""
    return Int4ExpertStore(n, store.hidden, store.intermediate, device=device, pin_memory=pin)


def copy_experts(dst: Int4ExpertStore, src, experts) -> None:
    """dst slot i <- expert experts[i] of src (any expert store)."""
    for i, e in enumerate(experts):
        dst.load_expert(i, **src.expert_tensors(e))


def host_chunk(store, c0: int, c1: int) -> Int4ExpertStore:
    """Experts c0..c1-1 of a host store as an Int4ExpertStore: views when it stacks them, else a copy."""
    if isinstance(store, Int4ExpertStore):
        return store.slice(c0, c1)
    out = empty_like_store(store, c1 - c0, torch.device("cpu"))
    copy_experts(out, store, range(c0, c1))
    return out


def _local_ids(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Global expert ids [T, K] (-1 holes) -> local slots through table [E] (-1: not here)."""
    local = table[ids.clamp(min=0).long()]
    return torch.where(ids >= 0, local, torch.full_like(local, -1))


def run_local(x: torch.Tensor, local_ids: torch.Tensor, weights: torch.Tensor, store) -> torch.Tensor | None:
    """x [T, D], local_ids [T, K] (-1: not here), weights [T, K] -> [T, D] fp32 of the slots that are
    here (None when there are none). Each expert used is decoded once, in x.dtype, where x is."""
    ids = local_ids.cpu()  # [T, K]: the one device -> host sync of the call
    used = torch.unique(ids[ids >= 0]).tolist()
    if not used:
        return None
    out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
    for e in used:
        token, slot = (i.to(x.device, non_blocking=True) for i in torch.nonzero(ids == e, as_tuple=True))
        y = expert_mlp(x[token], *dequantize_expert(store, e, x.dtype))  # [n, D]
        out.index_add_(0, token, y.float() * weights[token, slot, None].float())
    return out


class DeviceExperts:
    def __init__(self, stores: dict[int, object], hot: dict[int, tuple[int, ...]], device: torch.device):
        self.device = torch.device(device)
        self.hot = {L: tuple(es) for L, es in hot.items() if es}
        self.stores: dict[int, Int4ExpertStore] = {}  # hot experts of each layer, INT4, on the device
        self.tables: dict[int, torch.Tensor] = {}
        self.ids: dict[int, torch.Tensor] = {}
        for L, es in self.hot.items():
            dst = empty_like_store(stores[L], len(es), self.device)
            copy_experts(dst, stores[L], es)
            index = torch.tensor(es, dtype=torch.long)
            self.stores[L] = dst
            table = torch.full((stores[L].num_experts,), -1, dtype=torch.long)
            table[index] = torch.arange(len(es))
            self.tables[L] = table.to(self.device)
            self.ids[L] = index.to(self.device)

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.stores.values())

    def mask(self, layer: int, ids: torch.Tensor) -> torch.Tensor | None:
        """[T, K] bool: slots whose expert is on the device (None when the layer has none)."""
        if layer not in self.ids:
            return None
        return torch.isin(ids, self.ids[layer])

    def forward(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
        """x [T, D], ids [T, K] (-1 holes), weights [T, K] -> [T, D] fp32 of the hot slots (None: none)."""
        return run_local(x, _local_ids(ids, self.tables[layer]), weights, self.stores[layer])


class ExpertStreamer:
    def __init__(self, stores: dict[int, object], transfer: Transfer, chunk: int):
        self.sources = stores
        self.transfer, self.chunk = transfer, chunk
        self.device = transfer.device
        self._slots = None  # CUDA: two device chunks + pinned twins + events
        self._pending: dict[int, tuple[int, int]] = {}  # slot -> (layer, chunk) being copied

    def _chunks(self, layer: int) -> list[tuple[int, int]]:
        E = self.sources[layer].num_experts
        return [(c, min(c + self.chunk, E)) for c in range(0, E, self.chunk)]

    # -- CUDA: two slots ------------------------------------------------------------------------------
    def _setup(self, store) -> None:
        n = self.chunk
        self._slots = [dict(dev=empty_like_store(store, n, self.device),
                            host=empty_like_store(store, n, torch.device("cpu"), pin=True),
                            ready=torch.cuda.Event(blocking=True),  # the host waits on it
                            free=torch.cuda.Event()) for _ in range(2)]
        self._copy_stream = torch.cuda.Stream(self.device)

    def _load(self, slot: int, layer: int, c0: int, c1: int) -> None:
        s = self._slots[slot]
        s["ready"].synchronize()  # the previous copy out of this pinned twin has finished
        copy_experts(s["host"], self.sources[layer], range(c0, c1))
        with torch.cuda.stream(self._copy_stream):
            self._copy_stream.wait_event(s["free"])  # the compute on this slot's last chunk is done
            for f in FIELDS:
                getattr(s["dev"], f)[:c1 - c0].copy_(getattr(s["host"], f)[:c1 - c0], non_blocking=True)
            s["ready"].record(self._copy_stream)
        self._pending[slot] = (layer, c0)

    def prefetch(self, layer: int) -> None:
        """Starts copying the first chunk of `layer` (called while the previous layer computes)."""
        if self.transfer.cuda:
            if self._slots is None:
                self._setup(self.sources[layer])
            c0, c1 = self._chunks(layer)[0]
            if self._pending.get(0) != (layer, c0):
                self._load(0, layer, c0, c1)

    def _chunk_store(self, slot: int, layer: int, c0: int, c1: int):
        if not self.transfer.cuda:  # the host store itself: nothing to copy
            return host_chunk(self.sources[layer], c0, c1)
        s = self._slots[slot]
        torch.cuda.current_stream(self.device).wait_event(s["ready"])
        return s["dev"]

    def forward(self, layer: int, x: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor,
                next_layer: int | None = None) -> torch.Tensor:
        """x [T, D], ids [T, K], weights [T, K] -> [T, D] fp32: every routed slot, computed on the device."""
        out = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float32, device=x.device)
        chunks = self._chunks(layer)
        self.prefetch(layer)
        for i, (c0, c1) in enumerate(chunks):
            slot = i % 2
            if self.transfer.cuda:
                if i + 1 < len(chunks):
                    self._load((i + 1) % 2, layer, *chunks[i + 1])
            store = self._chunk_store(slot, layer, c0, c1)
            in_chunk = (ids >= c0) & (ids < c1)
            local = torch.where(in_chunk, ids - c0, torch.full_like(ids, -1))
            y = run_local(x, local, weights, store)
            if y is not None:
                out += y
            if self.transfer.cuda:
                self._slots[slot]["free"].record()
        if self.transfer.cuda:
            self._pending.clear()
            if next_layer is not None:
                self.prefetch(next_layer)
        return out
