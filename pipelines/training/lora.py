"""LoRA helpers shared by every model family: which linear layers a target list hits, the analytic
trainable count, and wrapping a model with peft while checking that count.

The matching rule is peft's: a target is a module's full name or its last dotted component(s). A family
adds only what is its own (the classifier's head, the causal LM's task type).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from torch import nn

from pipelines.errors import ConfigError

# where a module's name carries its transformer layer's index (peft's default layers_pattern)
LAYER_INDEX = re.compile(r"(?:^|\.)(?:layers|h|block|blocks|layer)\.(\d+)\.")


def targeted_linears(model: nn.Module, targets: Sequence[str], exclude: Sequence[str] = ()) -> dict[str, nn.Linear]:
    """The linear layers LoRA wraps: name equal to a target or ending with ``.<target>``; none under ``exclude``."""
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear)
        and not any(e in name.split(".") for e in exclude)
        and any(name == t or name.endswith("." + t) for t in targets)
    }


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct short names of the linear layers, to suggest valid target_modules."""
    return sorted({n.split(".")[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)})


def check_targets(model: nn.Module, targets: Sequence[str], key: str, exclude: Sequence[str] = ()) -> None:
    """:class:`ConfigError` naming every target (params ``key``) that matches no linear layer."""
    missing = [t for t in targets if not targeted_linears(model, [t], exclude)]
    if missing:
        raise ConfigError(
            f"{key}: {missing} match no linear layer of this model; its linear layers are named "
            f"{linear_module_names(model)}"
        )


def in_layers(name: str, layers: Collection[int] | None) -> bool:
    """Whether module ``name`` lies in one of the transformer ``layers`` (by index; None: every module)."""
    if layers is None:
        return True
    found = LAYER_INDEX.search(name)
    return found is not None and int(found.group(1)) in layers


def lora_parameters(
    model: nn.Module,
    targets: Sequence[str],
    r: int,
    exclude: Sequence[str] = (),
    layers: Collection[int] | None = None,
) -> int:
    """The analytic LoRA count: ``r * (in + out)`` per targeted linear layer (A is r x in, B is out x r), of the
    transformer ``layers`` given (peft's ``layers_to_transform``; None: all)."""
    return sum(
        r * (m.in_features + m.out_features)
        for name, m in targeted_linears(model, targets, exclude).items()
        if in_layers(name, layers)
    )


def trainable_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def wrap_checked(model: nn.Module, lora_config: object, expected: int) -> nn.Module:
    """``get_peft_model`` and a :class:`ConfigError` when it trains other than ``expected`` parameters."""
    from peft import get_peft_model

    peft_model = get_peft_model(model, lora_config)
    trainable = trainable_parameters(peft_model)
    if trainable != expected:
        names = [n for n, p in peft_model.named_parameters() if p.requires_grad][:8]
        raise ConfigError(
            f"LoRA trains {trainable:,} parameters but the analytic count is {expected:,} "
            f"(targets {list(getattr(lora_config, 'target_modules', []))}); trainable: {names} ..."
        )
    return peft_model
