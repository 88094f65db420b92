"""The decode step captured in a CUDA graph, with the CPU experts launched by host callbacks (CUDA only).

[NOTE] Design. A graph replays fixed kernels on fixed addresses, so everything a step touches is static:
  x_in [1, D] (the embedding row, looked up in host RAM and copied in before replay), pos [1] int64,
  the session's latent caches (allocated once for the session's context C, zero-filled on CUDA),
  pinned staging and a device result buffer per MoE layer, logits [1, V] fp32.
Attention is the model's own MLA in its static form (a tensor position: the new row is written with
index_copy_ at `pos`, all C rows are read block by block and rows after `pos` masked; model/mla.py),
and tests compare the static body (run eagerly on CPU) against the model's decode. Per MoE layer inside
the graph:
  main stream:  attention -> router --fork--> shared expert --------------------join--> combine
  side stream:            D2H(h, ids, w) -> host function: CPU job -> H2D(out) --^
The host function (cudaLaunchHostFunc through ctypes; a capturable graph node) runs the CPU job
synchronously on the driver's callback thread while the main stream computes the shared expert. It
takes the GIL (a Python callback), so the thread that replays must not hold the GIL while it waits:
we wait with Event.synchronize(), which releases it. Host functions may not call CUDA, and the job
touches only pinned host memory. Errors inside the callback are kept and raised after the replay.
Not covered: deferral and hot experts (their data-dependent shapes), batch > 1 (Session decodes one
sequence); the runtime falls back to the eager executor for those.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os

import torch

from hybrid_k2.errors import HybridK2Error

MAX_GRAPHS = 4


# -- the static step (device-agnostic: eager on CPU for tests, captured on CUDA) ------------------------
def rope_at(rope, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [1, P/2] at the position held in pos [1] (Rope.tables with a tensor position)."""
    angles = pos.to(torch.float32)[:, None] * rope.inv_freq[None, :]
    return angles.cos() * rope.attention_factor, angles.sin() * rope.attention_factor


class StaticDecode:
    """Static buffers and the body of one decode step over a given set of caches (capacity C each)."""

    def __init__(self, runtime, caches):
        net, a = runtime.net, runtime.args
        self.runtime, self.net, self.caches = runtime, net, caches
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
        fork, done = torch.cuda.Event(), torch.cuda.Event()
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
        x = self.x_in
        cos, sin = rope_at(net.rope, self.pos)
        for block, cache in zip(net.model.layers, self.caches):
            x = x + block.self_attn(block.input_layernorm(x), cache, self.pos, cos, sin)
            if not hasattr(block.mlp, "gate"):
                x = x + block.mlp(block.post_attention_layernorm(x))
                continue
            h = block.post_attention_layernorm(x)  # [1, D]
            ids, weights = block.mlp.gate(h)  # [1, K], [1, K]
            join = self._routed(block.layer, h, ids, weights)
            shared = block.mlp.shared_experts(h) if block.mlp.shared_experts is not None else None
            y = join().to(x.dtype)
            x = x + (y + shared if shared is not None else y)
        self.logits = net.lm_head(net.model.norm(x)).float()  # [1, V]

    def load_inputs(self, token_id: torch.Tensor, start: int) -> None:
        emb = self.net.model.embed_tokens
        self.x_in.copy_(emb(token_id.to(emb.weight.device)).to(self.x_in.dtype))
        self.pos.fill_(start)


# -- capacity ------------------------------------------------------------------------------------------
def ensure_allocated(caches) -> int:
    """Allocates the caches a graph reads (all at their fixed capacity); returns the capacity."""
    for c in caches:
        if not c.allocated:
            c.allocate()
    return caches[0].capacity


# -- CUDA plumbing -------------------------------------------------------------------------------------
HOST_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_CUDART = None


def _cudart():
    global _CUDART
    if _CUDART is None:
        names = [ctypes.util.find_library("cudart")]
        for base in (os.path.dirname(torch.__file__), *__import__("site").getsitepackages()):
            names += glob.glob(os.path.join(base, "**", "libcudart.so*"), recursive=True)
        for name in filter(None, names):
            try:
                lib = ctypes.CDLL(name)
                lib.cudaLaunchHostFunc.argtypes = [ctypes.c_void_p, HOST_FN, ctypes.c_void_p]
                lib.cudaLaunchHostFunc.restype = ctypes.c_int
                _CUDART = lib
                break
            except (OSError, AttributeError):
                continue
        else:
            raise HybridK2Error("CUDA graphs need libcudart (cudaLaunchHostFunc); run with cuda_graphs=False")
    return _CUDART


def launch_host_func(stream: torch.cuda.Stream, fn) -> None:
    rc = _cudart().cudaLaunchHostFunc(ctypes.c_void_p(stream.cuda_stream), fn, None)
    if rc != 0:
        raise HybridK2Error(f"cudaLaunchHostFunc failed with CUDA error {rc}")


class GraphDecoder:
    """Captures one graph per (session caches, capacity); replays it for every decode step."""

    def __init__(self, runtime):
        self.runtime = runtime
        self.graphs: dict[tuple, tuple[StaticDecode, torch.cuda.CUDAGraph]] = {}
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
        cap = ensure_allocated(caches)
        key = (id(caches), cap, caches[0].data.data_ptr())
        if key not in self.graphs:
            if len(self.graphs) >= MAX_GRAPHS:
                self.graphs.pop(next(iter(self.graphs)))
            self.graphs[key] = self._capture(caches)
        static, graph = self.graphs[key]
        static.load_inputs(token_id, start)
        graph.replay()
        done = torch.cuda.Event()
        done.record()
        done.synchronize()  # releases the GIL: the host callbacks need it
        if static.error is not None:
            error, static.error = static.error, None
            raise error
        for c in caches:
            c.length = start + 1
        return static.logits.clone()  # [1, V]
