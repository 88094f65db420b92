"""Routed experts computed on the device: hot experts kept there, and long-prompt prefill streaming.

Both keep experts in their INT4 checkpoint layout on the device (nibbles + bf16 scales: 24.8 MB per K2
expert instead of 88 MB in bf16) and dequantise one expert at a time when it is used, with the same
pure-torch math as the reference (hybrid_k2.model.experts.routed_experts_reference).

Hot experts (`--gpu-experts N`): the N most used experts of each layer (from a profile-experts counts
file), copied to the device at load; the CPU job skips their slots.
Streaming (`--device-prefill-threshold T`): above T prompt tokens the CPU would need ~T x K expert
products per layer; the device is faster at that, so each layer's experts go to the device in chunks
of C experts, two chunks in flight (one computed while the next is copied: pinned host twin + copy
stream + events on CUDA; on CPU the chunk is a view of the host store and nothing is copied).
"""
from __future__ import annotations

import torch

from hybrid_k2.errors import HybridK2Error
from hybrid_k2.model.experts import Int4ExpertStore, routed_experts_reference
from hybrid_k2.runtime.cpu_experts import compact_slots
from hybrid_k2.runtime.transfer import Transfer

FIELDS = ("gate_packed", "gate_scale", "up_packed", "up_scale", "down_packed", "down_scale")


def expert_parts(store, e: int) -> dict[str, torch.Tensor]:
    """Expert e's six checkpoint tensors (views) from an Int4ExpertStore or a kernel PackedExperts."""
    if hasattr(store, "expert_tensors"):
        return store.expert_tensors(e)
    try:
        return {f: getattr(store, f)[e] for f in FIELDS}
    except AttributeError:
        raise HybridK2Error(f"{type(store).__name__} does not expose its INT4 tensors: hot experts and device "
                            f"prefill need them") from None


def empty_like_store(store, n: int, device: torch.device, pin: bool = False) -> Int4ExpertStore:
    """An Int4ExpertStore of n experts shaped like `store`, on `device` (pinned host memory with pin)."""
    out = Int4ExpertStore.__new__(Int4ExpertStore)
    out.num_experts, out.hidden, out.intermediate = n, store.hidden, store.intermediate
    for f, t in expert_parts(store, 0).items():
        setattr(out, f, torch.empty((n, *t.shape), dtype=t.dtype, device=device, pin_memory=pin))
    return out


def copy_experts(dst: Int4ExpertStore, src, experts) -> None:
    """dst slot i <- expert experts[i] of src."""
    for i, e in enumerate(experts):
        for f, t in expert_parts(src, e).items():
            getattr(dst, f)[i].copy_(t)


def host_chunk(store, c0: int, c1: int) -> Int4ExpertStore:
    """Experts c0..c1-1 of a host store as an Int4ExpertStore: views when it stacks them, else a copy."""
    if isinstance(store, Int4ExpertStore):
        view = Int4ExpertStore.__new__(Int4ExpertStore)
        view.num_experts, view.hidden, view.intermediate = c1 - c0, store.hidden, store.intermediate
        for f in FIELDS:
            setattr(view, f, getattr(store, f)[c0:c1])
        return view
    out = empty_like_store(store, c1 - c0, torch.device("cpu"))
    copy_experts(out, store, range(c0, c1))
    return out


def _local_ids(ids: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Global expert ids [T, K] (-1 holes) -> local slots through table [E] (-1: not here)."""
    local = table[ids.clamp(min=0).long()]
    return torch.where(ids >= 0, local, torch.full_like(local, -1))


def run_local(x: torch.Tensor, local_ids: torch.Tensor, weights: torch.Tensor, store) -> torch.Tensor | None:
    """Reference experts on the slots that are not -1; None when there are none. -> [T, D] fp32"""
    slots = compact_slots(local_ids, weights)
    if slots is None:
        return None
    ids_c, w_c = slots
    return routed_experts_reference(x, ids_c.long(), w_c, store)


class DeviceExperts:
    def __init__(self, stores: dict[int, object], hot: dict[int, tuple[int, ...]], device: torch.device):
        self.device = torch.device(device)
        self.hot = {L: tuple(es) for L, es in hot.items() if es}
        self.stores: dict[int, Int4ExpertStore] = {}
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
                            ready=torch.cuda.Event(), free=torch.cuda.Event()) for _ in range(2)]
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
