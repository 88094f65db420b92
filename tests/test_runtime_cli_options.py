"""The shared runtime flags (hybrid_k2/runtime/cli_options.py) and the torch-threads policy at attach."""
from __future__ import annotations

import inspect

import pytest
import torch

import hybrid_k2
from hybrid_k2.cli import app
from hybrid_k2.runtime import RuntimeConfig
from hybrid_k2.runtime.cli_options import OPTIONS, RuntimeOptionError, runtime_config, runtime_options
from hybrid_k2.runtime.runtime import torch_threads_for


def test_every_loading_command_declares_the_same_flags_once():
    commands = {c.name: c.callback for c in app.registered_commands}
    for name in ("chat", "serve", "bench", "plan", "profile-experts"):
        params = inspect.signature(commands[name]).parameters
        assert set(OPTIONS) <= set(params) and "runtime" not in params, name
        assert all(params[n].default is OPTIONS[n][1] for n in OPTIONS), name  # the same objects


def test_runtime_config_from_flags():
    c = runtime_config(place=["lm_head=device-int8"], cpu_threads=1, torch_threads=2, defer_experts=1,
                       device_prefill_threshold=64)
    assert (c.cpu_threads, c.torch_threads, c.defer_experts, c.device_prefill_threshold) == (1, 2, 1, 64)
    assert c.placement.rules[0].pattern == "lm_head"
    with pytest.raises(RuntimeOptionError, match="^--torch-threads must be >= 1$"):
        runtime_config(torch_threads=0)
    with pytest.raises(TypeError):
        runtime_config(threads=1)


def test_decorator_passes_the_config():
    @runtime_options
    def cmd(x: int = 1, runtime=None):
        return x, runtime

    x, config = cmd(x=3, defer_experts=1)
    assert x == 3 and isinstance(config, RuntimeConfig) and config.defer_experts == 1
    with pytest.raises(SystemExit) as e:
        cmd(cpu_threads=0)
    assert e.value.code == 2


def test_torch_threads_policy():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert torch_threads_for(RuntimeConfig(), cpu, "kernel") == 1
    assert torch_threads_for(RuntimeConfig(), cpu, "reference") is None
    assert torch_threads_for(RuntimeConfig(), cuda, "kernel") is None
    assert torch_threads_for(RuntimeConfig(torch_threads=3), cpu, "kernel") == 3


def test_torch_threads_applied_at_load(tiny_model):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        model = hybrid_k2.load(tiny_model, runtime=RuntimeConfig(torch_threads=1))
        assert torch.get_num_threads() == 1 and model.runtime.torch_threads == 1
        model.runtime.close()
        model = hybrid_k2.load(tiny_model, runtime=RuntimeConfig(experts_backend="reference"))
        assert torch.get_num_threads() == 1 and model.runtime.torch_threads is None  # left as it was
        model.runtime.close()
        torch.set_num_threads(2)
        model = hybrid_k2.load(tiny_model)  # the default: kernels on device = cpu -> 1
        assert torch.get_num_threads() == (1 if model.runtime.backend == "kernel" else 2)
        model.runtime.close()
    finally:
        torch.set_num_threads(before)


def test_cuda_graphs_flag():
    assert runtime_config().cuda_graphs is True
    assert runtime_config(cuda_graphs=False).cuda_graphs is False

    @runtime_options
    def cmd(runtime=None):
        return runtime

    assert cmd(cuda_graphs=False).cuda_graphs is False
    assert "--no-cuda-graphs" in OPTIONS["cuda_graphs"][1].param_decls[0]
