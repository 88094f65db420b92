"""The decode step captured in a CUDA graph, with the CPU experts launched by host callbacks (CUDA only).

[NOTE] Design. A graph replays fixed kernels on fixed addresses, so everything a step touches is static:
  x_in [1, D] (the embedding row, looked up in host RAM and copied in before replay), pos [1] int64,
  the session's latent caches (allocated once for the session's context C, zero-filled on CUDA),
  pinned staging and a device result buffer per MoE layer, logits [1, V] fp32.
The body is the model's own code (KimiK2.embed, Rope.tables, Block.attention / feed_forward,
MoE.route / shared / combine, KimiK2.logits); attention is MLA in its static form (a tensor position:
the new row is written at `pos`, all C rows are read block by block and rows after `pos` masked;
model/mla.py), and tests compare the static body (run eagerly on CPU) against the model's decode. Per MoE layer inside
the graph:
  main stream:  attention -> router --fork--> shared expert --------------------join--> combine
  side stream:            D2H(h, ids, w) -> host function: CPU job -> H2D(out) --^
The host function (cuLaunchHostFunc of the CUDA driver through ctypes, the one driver every runtime
uses; a capturable graph node) runs the CPU job synchronously on the driver's callback thread while
the main stream computes the shared expert. It
takes the GIL (a Python callback), so the thread that replays must not hold the GIL while it waits:
we wait with Event.synchronize(), which releases it. Host functions may not call CUDA, and the job
touches only pinned host memory. Errors inside the callback are kept and raised after the replay.
Graphs are kept per session (its caches, held by weak reference: a dropped session releases its graph
and its static buffers) and evicted least-recently-used beyond MAX_GRAPHS.
Not covered: deferral and hot experts (their data-dependent shapes), batch > 1 (Session decodes one
sequence); the runtime falls back to the eager executor for those.
"""
from __future__ import annotations

import ctypes
import weakref
from collections import OrderedDict
from typing import Callable

import torch

from hybrid_k2.errors import HybridK2Error

MAX_GRAPHS = 4


# -- the static step (device-agnostic: eager on CPU for tests, captured on CUDA) ------------------------
class StaticDecode:
    """Static buffers and the body of one decode step over a given set of caches (capacity C each).

    Holds the caches by weak reference: the session owns them, a graph must not keep them alive."""

    def __init__(self, runtime, caches):
        net, a = runtime.net, runtime.args
        self.runtime, self.net = runtime, net
        self._caches = [weakref.ref(c) for c in caches]
        self.cuda = net.device.type == "cuda"
        self.x_in = torch.zeros(1, a.hidden_size, dtype=net.dtype, device=net.device)
        self.pos = torch.zeros(1, dtype=torch.long, device=net.device)
        self.logits: torch.Tensor | None = None
        self.error: BaseException | None = None
        pin = self.cuda
        D, K = a.hidden_size, a.num_experts_per_tok
        self.staging = {L: dict(x=torch.empty(1, D, pin_memory=pin), ids=torch.empty(1, K, dtype=torch.int32, pin_memory=pin),
                                weights=torch.empty(1, K, pin_memory=pin), out=torch.empty(1, D, pin_memory=pin),
                                out_dev=torch.empty(1, D, device=net.device))
                        for L in range(a.num_hidden_layers) if a.is_moe_layer(L)}
        self._host_fns = {}  # ctypes callbacks, kept alive as long as the graph
        if self.cuda:
            self.side = torch.cuda.Stream(net.device)

    @property
    def caches(self) -> list:
        caches = [r() for r in self._caches]
        if any(c is None for c in caches):
            raise HybridK2Error("the session of this decode graph was dropped")
        return caches

    def _job(self, layer: int) -> None:
        s = self.staging[layer]
        try:
            self.runtime.cpu.run(layer, x=s["x"], ids=s["ids"], weights=s["weights"], out=s["out"])
        except BaseException as e:  # cannot propagate through the driver: raised after the replay
            self.error = e

    def _routed(self, layer: int, h: torch.Tensor, ids: torch.Tensor, weights: torch.Tensor):
        """Starts the CPU job of `layer`; returns join() -> [1, D] fp32 on the device."""
        s = self.staging[layer]
        if not self.cuda:
            s["x"].copy_(h)
            s["ids"].copy_(ids)
            s["weights"].copy_(weights)
            self._job(layer)
            s["out_dev"].copy_(s["out"])
            return lambda: s["out_dev"]
        main = torch.cuda.current_stream(self.net.device)
        fork, done = torch.cuda.Event(), torch.cuda.Event()  # stream-to-stream only: no host waits on them
        fork.record(main)
        self.side.wait_event(fork)
        with torch.cuda.stream(self.side):
            s["x"].copy_(h, non_blocking=True)
            s["ids"].copy_(ids.to(torch.int32), non_blocking=True)
            s["weights"].copy_(weights, non_blocking=True)
            launch_host_func(self.side, self._host_fn(layer))
            s["out_dev"].copy_(s["out"], non_blocking=True)
            done.record(self.side)

        def join():
            main.wait_event(done)
            return s["out_dev"]
        return join

    def _host_fn(self, layer: int):
        if layer not in self._host_fns:
            self._host_fns[layer] = HOST_FN(lambda _user_data: self._job(layer))
        return self._host_fns[layer]

    def body(self) -> None:
        net = self.net
        x = self.x_in  # [1, D]
        cos, sin = net.rope.tables(self.pos, 1)  # [1, P/2] each
        for block, cache in zip(net.model.layers, self.caches):
            x = block.attention(x, cache, self.pos, cos, sin)
            if not hasattr(block.mlp, "route"):  # a dense layer
                x = block.feed_forward(x)
                continue
            moe = block.mlp
            h = block.post_attention_layernorm(x)  # [1, D]
            ids, weights = moe.route(h)  # [1, K], [1, K]
            join = self._routed(block.layer, h, ids, weights)
            shared = moe.shared(h)  # computed on the main stream while the CPU job runs
            x = x + moe.combine([join()], shared, x.dtype)
        self.logits = net.logits(net.model.norm(x))  # [1, V]

    def load_inputs(self, token_id: torch.Tensor, start: int) -> None:
        self.x_in.copy_(self.net.embed(token_id))
        self.pos.fill_(start)


# -- capacity ------------------------------------------------------------------------------------------
def ensure_allocated(caches) -> int:
    """Allocates the caches a graph reads (all at their fixed capacity); returns the capacity."""
    for c in caches:
        if not c.allocated:
            c.allocate()
    return caches[0].capacity


# -- which graph a session replays -----------------------------------------------------------------------
class GraphCache:
    """Session caches -> what capture(caches) made; least-recently-used beyond `size`, and an entry is
    dropped as soon as its session's caches are (weak reference on the first cache)."""

    def __init__(self, capture: Callable, size: int = MAX_GRAPHS):
        self.capture, self.size = capture, size
        self.entries: OrderedDict[tuple, tuple[object, weakref.finalize]] = OrderedDict()

    def __len__(self) -> int:
        return len(self.entries)

    @staticmethod
    def key(caches) -> tuple:
        return id(caches[0]), caches[0].capacity, caches[0].data.data_ptr()

    def get(self, caches):
        key = self.key(caches)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key][0]
        while len(self.entries) >= self.size:
            _, (_, finalizer) = self.entries.popitem(last=False)
            finalizer.detach()
        value = self.capture(caches)
        self.entries[key] = (value, weakref.finalize(caches[0], self.entries.pop, key, None))
        return value


# -- CUDA plumbing -------------------------------------------------------------------------------------
HOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_LAUNCH = None


def loaded_library(stem: str, maps: str | None = None) -> str | None:
    """The path of the shared library `stem`.so* already mapped into this process (None: not loaded)."""
    if maps is None:
        try:
            with open("/proc/self/maps") as f:
                maps = f.read()
        except OSError:
            return None
    for line in maps.splitlines():
        fields = line.split(maxsplit=5)  # address perms offset dev inode [path]
        if len(fields) == 6 and fields[5].rsplit("/", 1)[-1].startswith(stem + ".so"):
            return fields[5]
    return None


def host_func_launcher() -> Callable[[int, object], int]:
    """launch(stream_handle, HOST_FN) -> CUDA error code: the driver's cuLaunchHostFunc (libcuda.so.1,
    the one driver of the machine), else cudaLaunchHostFunc of the CUDA runtime torch itself loaded.
    Never a libcudart found on the library path: it may be another CUDA version than torch's."""
    global _LAUNCH
    if _LAUNCH is not None:
        return _LAUNCH
    for name, symbol in (("libcuda.so.1", "cuLaunchHostFunc"), (loaded_library("libcudart"), "cudaLaunchHostFunc")):
        if name is None:
            continue
        try:
            fn = getattr(ctypes.CDLL(name), symbol)
        except (OSError, AttributeError):
            continue
        fn.argtypes = [ctypes.c_void_p, HOST_FN, ctypes.c_void_p]
        fn.restype = ctypes.c_int
        _LAUNCH = lambda stream, host_fn, fn=fn: fn(ctypes.c_void_p(stream), host_fn, None)  # noqa: E731
        return _LAUNCH
    raise HybridK2Error("CUDA graphs need the CUDA driver's cuLaunchHostFunc (libcuda.so.1); "
                        "run with --no-cuda-graphs")


def launch_host_func(stream: torch.cuda.Stream, fn) -> None:
    rc = host_func_launcher()(stream.cuda_stream, fn)
    if rc != 0:
        raise HybridK2Error(f"cuLaunchHostFunc failed with CUDA error {rc}")


class GraphDecoder:
    """Captures one graph per session (its caches at their capacity); replays it for every decode step."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.graphs = GraphCache(self._capture)
        self.pool = torch.cuda.graph_pool_handle()

    def _capture(self, caches) -> tuple[StaticDecode, "torch.cuda.CUDAGraph"]:
        static = StaticDecode(self.runtime, caches)
        static.pos.fill_(caches[0].capacity - 1)  # the warm-up writes a row: the last, unused one
        warm = torch.cuda.Stream(static.x_in.device)
        warm.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(warm), torch.inference_mode():
            static.body()  # allocations and lazy init happen here, outside the capture
        torch.cuda.current_stream().wait_stream(warm)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self.pool), torch.inference_mode():
            static.body()
        if static.error is not None:
            raise static.error
        return static, graph

    def decode(self, token_id: torch.Tensor, caches, start: int) -> torch.Tensor:
        ensure_allocated(caches)
        static, graph = self.graphs.get(caches)
        with self.runtime.timer.span("graph"):  # one span: no module runs in Python during a replay
            static.load_inputs(token_id, start)
            graph.replay()
            done = torch.cuda.Event(blocking=True)  # the host sleeps, not spinning a core the CPU job needs
            done.record()
            done.synchronize()  # releases the GIL: the host callbacks need it
        if static.error is not None:
            error, static.error = static.error, None
            raise error
        for c in caches:
            c.length = start + 1
        return static.logits.clone()  # [1, V]
