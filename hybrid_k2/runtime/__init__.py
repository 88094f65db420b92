"""The hybrid runtime: placement rules, memory planner, scheduler (policy) and executor (mechanism).

Folder map: config.py (RuntimeConfig), placement.py (rules -> where each weight lives), planner.py
(bytes per class, max context, load-time check), machine.py (cores, NUMA, free memory), scheduler.py
(op order per layer, pure Python), executor.py (runs it), transfer.py (pinned staging, the CUDA/CPU
switch), cpu_experts.py (the CPU job queue), device_experts.py (hot and streamed experts), int8.py
(weight-only int8 linears), cuda_graph.py (captured decode on CUDA), runtime.py (wiring for load).
"""
from hybrid_k2.runtime.config import RuntimeConfig, parse_bytes
from hybrid_k2.runtime.placement import Placement, Rule

__all__ = ["RuntimeConfig", "Placement", "Rule", "parse_bytes"]
