"""hybrid-k2: Kimi-K2-Thinking on one workstation (GPU-side dense parts, CPU INT4 experts)."""

__version__ = "0.1.0"

from hybrid_k2.errors import CheckpointError, ConfigError, HybridK2Error  # noqa: E402


def load(path, **kwargs):
    """Loads a checkpoint directory; see hybrid_k2.api.load."""
    from hybrid_k2.api import load as _load

    return _load(path, **kwargs)


def apply_chat_template(messages, tools=None, *, add_generation_prompt=True):
    """Renders a conversation in K2's chat format; see hybrid_k2.chat.template."""
    from hybrid_k2.chat.template import apply_chat_template as _apply

    return _apply(messages, tools, add_generation_prompt=add_generation_prompt)


__all__ = ["load", "apply_chat_template", "HybridK2Error", "CheckpointError", "ConfigError"]
