"""Version-tolerant helpers around transformers' pretrained models."""
from __future__ import annotations

from transformers import PreTrainedModel


def enable_activation_checkpointing(model: PreTrainedModel) -> None:
    """Recompute each transformer layer in the backward pass (non-reentrant, so frozen inputs are fine)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):          # transformers >= 5.x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def is_activation_checkpointing(model: PreTrainedModel) -> bool:
    flag = getattr(model, "is_activation_checkpointing", None)
    if flag is None:
        flag = getattr(model, "is_gradient_checkpointing", False)
    return bool(flag)


def float32_loading_kwargs() -> dict:
    """from_pretrained arguments that load float32 weights (transformers 5 defaults to the checkpoint dtype)."""
    import torch
    import transformers

    return {"dtype": torch.float32} if int(transformers.__version__.split(".")[0]) >= 5 else {}
