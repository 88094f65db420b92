"""Placement as data: ordered rules over checkpoint tensor names decide where each weight lives.

A rule is `PATTERN=TARGET`; the first rule whose fnmatch pattern matches a tensor name, or one of its
dotted prefixes (so `lm_head` matches `lm_head.weight` and `model.layers.3.mlp.experts.7` matches that
expert's nine tensors), decides. Targets:
  cpu          host RAM: the embedding table (a lookup) and routed experts (run by the CPU kernels)
  device       the compute device (bf16 in precision="fast", fp32 in "exact")
  device-int8  weight-only int8 on the device, one fp32 scale per output channel. It only concerns
               GPU-side linears: for any other tensor the rule is skipped and the next one decides,
               so `*=device-int8` means "every GPU-side linear in int8".
A routed expert placed on `device` is kept there (INT4, dequantised when used) and the CPU skips it.
Overrides from the CLI (`--place PATTERN=TARGET`) go before the default policy, in the order given.
On device = cpu in precision "fast" with the kernels built, the runtime adds CPU_INT8_RULES before the
final `*=device` (with_cpu_int8): the device side's linears run as int8 on the CPU kernels, at half the
bytes per token; `--place '*=device'` keeps them in bf16.
"""
from __future__ import annotations

import fnmatch
import functools
import re
from dataclasses import dataclass, field

from hybrid_k2.config import ModelArgs
from hybrid_k2.errors import HybridK2Error

TARGETS = ("cpu", "device", "device-int8")


@dataclass(frozen=True)
class Rule:
    pattern: str
    target: str
    _re: re.Pattern = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.target not in TARGETS:
            raise HybridK2Error(f"placement rule {self.pattern}={self.target}: target must be one of "
                                f"{', '.join(TARGETS)}")
        if not self.pattern:
            raise HybridK2Error("placement rule with an empty pattern")
        # The pattern matches the name itself or any dotted prefix of it.
        rx = fnmatch.translate(self.pattern)  # '(?s:...)\\Z'
        object.__setattr__(self, "_re", re.compile(rx[:-2] + r"(?:\..*)?\Z", re.S))

    def matches(self, name: str) -> bool:
        return self._re.match(name) is not None

    def __str__(self) -> str:
        return f"{self.pattern}={self.target}"


# The K2 policy: the embedding table and the routed experts in host RAM, everything else on the device.
DEFAULT_RULES = (
    Rule("model.embed_tokens", "cpu"),
    Rule("model.layers.*.mlp.experts.*", "cpu"),
    Rule("*", "device"),
)


# device=cpu, precision="fast": every GPU-side linear in int8 on the CPU kernels (runtime/int8.py),
# kv_b_proj included: MLA's absorbed form folds its int8 rows as they are (MLA.attention_weight).
CPU_INT8_RULES = (Rule("*", "device-int8"),)


def parse_rule(text: str) -> Rule:
    pattern, sep, target = text.rpartition("=")
    if not sep or not pattern.strip():
        raise HybridK2Error(f"--place expects PATTERN=TARGET (TARGET one of {', '.join(TARGETS)}), got {text!r}")
    return Rule(pattern.strip(), target.strip())


@dataclass(frozen=True)
class Placement:
    rules: tuple[Rule, ...] = DEFAULT_RULES

    @classmethod
    def default(cls) -> "Placement":
        return cls()

    def with_overrides(self, overrides: list[str] | tuple[str, ...] | None) -> "Placement":
        """`--place` rules go first (first match wins), in the order given."""
        extra = tuple(parse_rule(o) if isinstance(o, str) else o for o in (overrides or ()))
        return Placement(extra + self.rules)

    def with_cpu_int8(self) -> "Placement":
        """CPU_INT8_RULES before the final catch-all `*=device` (after any --place rules); unchanged when
        the rules do not end with it (a custom policy decides for itself)."""
        if not self.rules or self.rules[-1] != Rule("*", "device"):
            return self
        return Placement(self.rules[:-1] + CPU_INT8_RULES + self.rules[-1:])

    def target(self, name: str, *, linear: bool = False) -> str:
        """Where tensor `name` goes. `linear`: it is a GPU-side Linear weight (device-int8 applies)."""
        for rule in self.rules:
            if rule.target == "device-int8" and not linear:
                continue
            if rule.matches(name):
                return rule.target
        raise HybridK2Error(f"no placement rule matches tensor {name} (end the rules with '*=device')")

    def __str__(self) -> str:
        return ", ".join(map(str, self.rules))


def expert_tensor(layer: int, e: int, proj: str = "gate_proj") -> str:
    from hybrid_k2.checkpoint.loader import expert_name

    return f"{expert_name(layer, e, proj)}.weight_packed"


@dataclass(frozen=True)
class ResolvedPlacement:
    """The placement of one model's weights, by class (what the loader and the executor act on)."""

    embed: str  # "cpu" | "device"
    int8_linears: frozenset[str]  # module names of GPU-side linears stored as int8
    device_experts: dict[int, tuple[int, ...]]  # layer -> routed experts kept on the device
    placement: Placement

    def linear_target(self, module_name: str) -> str:
        return "device-int8" if module_name in self.int8_linears else "device"

    @property
    def n_device_experts(self) -> int:
        return sum(len(v) for v in self.device_experts.values())


@functools.lru_cache(maxsize=4)
def expected(args: ModelArgs) -> dict:
    """expected_tensors(args), computed once per config (about 2 s for K2's 208k tensors)."""
    from hybrid_k2.checkpoint.expected import expected_tensors

    return expected_tensors(args)


def linear_modules(args: ModelArgs) -> list[str]:
    """Names of every GPU-side Linear (the modules device-int8 can concern), from the config alone."""
    out = []
    for name, (shape, _) in expected(args).items():
        if ".mlp.experts." in name or ".mlp.gate." in name or name.startswith("model.embed_tokens"):
            continue
        if name.endswith(".weight") and len(shape) == 2:
            out.append(name[:-len(".weight")])
        elif name.endswith(".weight_packed"):  # an INT4 GPU-side linear (none in K2)
            out.append(name[:-len(".weight_packed")])
    return out


def resolve(args: ModelArgs, placement: Placement,
            extra_device_experts: dict[int, tuple[int, ...]] | None = None) -> ResolvedPlacement:
    """Applies the rules to every weight of the model; raises on a placement the runtime cannot run."""
    embed = placement.target("model.embed_tokens.weight")
    if embed not in ("cpu", "device"):
        raise HybridK2Error(f"model.embed_tokens: target {embed} is not supported (cpu or device)")
    int8 = set()
    for name in linear_modules(args):
        t = placement.target(f"{name}.weight", linear=True)
        if t == "cpu":
            raise HybridK2Error(f"{name}: GPU-side weights cannot be placed on cpu (only model.embed_tokens "
                                f"and routed experts can)")
        if t == "device-int8":
            int8.add(name)
    for name in ("model.norm.weight", *(f"model.layers.{L}.mlp.gate.weight" for L in range(args.num_hidden_layers)
                                        if args.is_moe_layer(L))):
        if placement.target(name) == "cpu":
            raise HybridK2Error(f"{name}: norms and routers cannot be placed on cpu")
    device_experts: dict[int, tuple[int, ...]] = {}
    for L in range(args.num_hidden_layers):
        if not args.is_moe_layer(L):
            continue
        chosen = set((extra_device_experts or {}).get(L, ()))
        for e in range(args.n_routed_experts):
            targets = {placement.target(expert_tensor(L, e, p)) for p in ("gate_proj", "up_proj", "down_proj")}
            if len(targets) > 1:
                raise HybridK2Error(f"model.layers.{L}.mlp.experts.{e}: its projections are split between "
                                    f"{' and '.join(sorted(targets))}; place an expert as a whole")
            if targets == {"device"}:
                chosen.add(e)
        if chosen:
            device_experts[L] = tuple(sorted(chosen))
    return ResolvedPlacement(embed, frozenset(int8), device_experts, placement)
