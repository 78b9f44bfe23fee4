"""The optimizer ``TrainingArguments.optim`` names, built as transformers' Trainer builds it:
the same classes, keyword arguments (``optim_args`` included) and weight-decay groups.

Every name of transformers' ``OptimizerNames`` is known here. Those plain torch provides are
built; the others need a package or hardware trackmux does not drive, and are refused when
the arguments are built, with the reason and what to do instead (:data:`UNAVAILABLE`).
Standard library only at import: :mod:`trackmux.training_args` reads the names.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = [
    "OPTIMIZER_NAMES",
    "TORCH_OPTIMIZERS",
    "UNAVAILABLE",
    "create_optimizer",
    "get_decay_parameter_names",
    "get_optimizer_cls_and_kwargs",
    "parse_optim_args",
]

TORCH_OPTIMIZERS: tuple[str, ...] = (
    "adamw_torch",
    "adamw_torch_fused",
    "sgd",
    "adagrad",
    "rmsprop",
)
"""The names trackmux builds: torch.optim's AdamW (fused or not), SGD, Adagrad, RMSprop."""

_OWN_PASS = "pass your own optimizer with Trainer(optimizers=(optimizer, None))"
_BNB = f"it needs bitsandbytes' optimizers, which trackmux does not build; {_OWN_PASS}"
_PACKAGE = "it comes from a package trackmux does not drive ({}); " + _OWN_PASS

UNAVAILABLE: dict[str, str] = {
    "adamw_torch_xla": f"it runs on TPUs through torch_xla, which trackmux does not support; {_OWN_PASS}",
    "adamw_torch_npu_fused": f"it runs on Ascend NPUs through torch_npu; {_OWN_PASS}",
    "adafactor": (
        "it is transformers' own Adafactor (torch.optim.Adafactor is a different algorithm); "
        f"{_OWN_PASS}, e.g. transformers.optimization.Adafactor"
    ),
    "adamw_anyprecision": _PACKAGE.format("torchdistx"),
    "adamw_torch_4bit": _PACKAGE.format("torchao"),
    "adamw_torch_8bit": _PACKAGE.format("torchao"),
    **dict.fromkeys(
        (
            "ademamix",
            "adamw_bnb_8bit",
            "adamw_8bit",
            "ademamix_8bit",
            "lion_8bit",
            "lion_32bit",
            "paged_adamw_32bit",
            "paged_adamw_8bit",
            "paged_ademamix_32bit",
            "paged_ademamix_8bit",
            "paged_lion_32bit",
            "paged_lion_8bit",
            "rmsprop_bnb",
            "rmsprop_bnb_8bit",
            "rmsprop_bnb_32bit",
        ),
        _BNB,
    ),
    **dict.fromkeys(
        (
            "galore_adamw",
            "galore_adamw_8bit",
            "galore_adafactor",
            "galore_adamw_layerwise",
            "galore_adamw_8bit_layerwise",
            "galore_adafactor_layerwise",
        ),
        _PACKAGE.format("galore-torch"),
    ),
    "lomo": _PACKAGE.format("lomo-optim"),
    "adalomo": _PACKAGE.format("lomo-optim"),
    "grokadamw": _PACKAGE.format("grokadamw"),
    "schedule_free_radam": _PACKAGE.format("schedulefree"),
    "schedule_free_adamw": _PACKAGE.format("schedulefree"),
    "schedule_free_sgd": _PACKAGE.format("schedulefree"),
    "apollo_adamw": _PACKAGE.format("apollo-torch"),
    "apollo_adamw_layerwise": _PACKAGE.format("apollo-torch"),
    "stable_adamw": _PACKAGE.format("torch-optimi"),
}
"""Names of transformers' ``OptimizerNames`` that trackmux refuses, with the reason."""

OPTIMIZER_NAMES: tuple[str, ...] = TORCH_OPTIMIZERS + tuple(UNAVAILABLE)
"""Every name transformers accepts for ``optim``."""

#: the optim_args each torch optimizer reads, as transformers converts them
_FLOAT_ARGS = {
    "sgd": ("momentum", "dampening", "weight_decay"),
    "adagrad": ("lr_decay", "weight_decay", "eps"),
    "rmsprop": ("momentum", "alpha", "eps", "weight_decay"),
}
_BOOL_ARGS = {"sgd": ("nesterov",), "rmsprop": ("centered",)}
_FORBIDDEN_NAMES = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]


def parse_optim_args(text: str | None) -> dict[str, str]:
    """``"momentum=0.9, nesterov=True"`` -> ``{"momentum": "0.9", "nesterov": "True"}``."""
    if not text:
        return {}
    parsed = {}
    for item in text.replace(" ", "").split(","):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(
                f"TrainingArguments.optim_args={text!r}: {item!r} is not key=value; write "
                "comma-separated pairs, e.g. 'momentum=0.9,nesterov=True'"
            )
        parsed[key] = value
    return parsed


def get_optimizer_cls_and_kwargs(args, model=None) -> tuple[Any, dict[str, Any]]:
    """The optimizer class and its keyword arguments for ``args.optim``, as transformers'
    ``Trainer.get_optimizer_cls_and_kwargs`` returns them for the torch optimizers."""
    import torch

    name = str(getattr(args.optim, "value", args.optim))
    if name in UNAVAILABLE:
        raise ValueError(
            f"TrainingArguments.optim={name!r} is not supported by trackmux: {UNAVAILABLE[name]}"
        )
    kwargs: dict[str, Any] = {"lr": args.learning_rate}
    if name in ("adamw_torch", "adamw_torch_fused"):
        kwargs.update(betas=(args.adam_beta1, args.adam_beta2), eps=args.adam_epsilon)
        if name == "adamw_torch_fused":
            kwargs["fused"] = True
        return torch.optim.AdamW, kwargs
    optim_args = parse_optim_args(args.optim_args)
    for key in _FLOAT_ARGS[name]:
        if key in optim_args:
            kwargs[key] = float(optim_args[key])
    for key in _BOOL_ARGS.get(name, ()):
        if key in optim_args:
            kwargs[key] = optim_args[key].lower() in ("true", "1", "yes")
    classes = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}
    return classes.get(name, torch.optim.RMSprop), kwargs


def get_decay_parameter_names(model) -> list[str]:
    """Names of the parameters that get weight decay: all but those of ``nn.LayerNorm``
    modules and those named like a bias or a norm, as in transformers."""
    import torch

    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, torch.nn.LayerNorm):
            continue
        for parameter_name, _ in module.named_parameters(recurse=False):
            full = f"{module_name}.{parameter_name}" if module_name else parameter_name
            if not any(re.search(pattern, full.lower()) for pattern in _FORBIDDEN_NAMES):
                names.append(full)
    return names


def create_optimizer(args, model):
    """The optimizer of ``args.optim`` over ``model``'s trainable parameters, in two groups
    (with and without weight decay) as transformers' Trainer builds it."""
    decay = set(get_decay_parameter_names(model))
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [
        {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]
    optimizer_cls, kwargs = get_optimizer_cls_and_kwargs(args, model)
    return optimizer_cls(groups, **kwargs)
