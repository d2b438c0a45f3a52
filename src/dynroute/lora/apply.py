"""Put LoRA experts on a model's linears, save/load them, merge them when exact.

Works on any ``nn.Module`` whose target projections are ``nn.Linear``: our
``DynMoEForCausalLM`` (``qkv``, ``proj``, dense ``gate_up``/``down``) and transformers causal
LMs (``q_proj``, ``k_proj``, ``v_proj``, ``o_proj``, ``gate_proj``, ``up_proj``, ``down_proj``).
Targets are matched by name suffix (``"q_proj"`` matches ``model.layers.0.self_attn.q_proj``);
router gates of MoE layers are never targets unless named explicitly.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dynroute.common.files import atomic_path
from dynroute.common.jsonfile import write_json
from dynroute.lora.layer import LinearView, LoRAMoELinear, lora_layers
from dynroute.routing import Router, RouterFn, make_router

__all__ = [
    "ADAPTER_FILE",
    "CONFIG_FILE",
    "DEFAULT_TARGETS",
    "add_lora_experts",
    "load_lora_experts",
    "merge_lora_experts",
    "save_lora_experts",
    "trainable_parameters",
]

CONFIG_FILE = "lora_experts.json"
ADAPTER_FILE = "lora_experts.safetensors"
#: Attention projections: ours (DynMoE) and the transformers names.
DEFAULT_TARGETS = ("qkv", "proj", "q_proj", "k_proj", "v_proj", "o_proj")
KINDS = ("lora", "smora")


def _matches(name: str, targets: Sequence[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _build_experts(kind: str, base: nn.Linear, num_experts: int, rank: int, alpha: float) -> Any:
    if kind == "lora":
        return None  # LoRAMoELinear's default
    if kind == "smora":
        from dynroute.lora.smora import SMoRAExperts

        # SMoRA: one LoRA of rank r whose r ranks are the experts (num_experts is unused)
        return SMoRAExperts(base.in_features, base.out_features, rank, alpha)
    raise ValueError(f"unknown LoRA expert kind {kind!r}; choose one of {', '.join(KINDS)}")


def add_lora_experts(
    model: nn.Module,
    targets: Sequence[str] = DEFAULT_TARGETS,
    num_experts: int = 4,
    rank: int = 8,
    alpha: float = 16.0,
    router: str | Mapping[str, Any] | Router | RouterFn = "top_k",
    kind: str = "lora",
    **router_kwargs: Any,
) -> nn.Module:
    """Replace the target linears of ``model`` by :class:`LoRAMoELinear` and freeze the rest.

    After the call only the adapters and their gates have ``requires_grad=True``; every
    other parameter of ``model`` is frozen. The model's outputs are unchanged until the
    adapters train (B = 0 at init).

    Args:
        model: any module (a ``DynMoEForCausalLM``, a transformers causal LM, ...).
        targets: name suffixes of the linears to adapt, e.g. ``["q_proj", "v_proj"]``.
        num_experts: E adapters per linear (ignored by ``kind="smora"``: its experts are
            the ``rank`` ranks); rank: r; alpha: scale numerator (scale = alpha / r).
        router, **router_kwargs: any dynroute router (``"top_k"`` alone: k = min(2, E)).
        kind: ``"lora"`` (E adapters, MoLE) or ``"smora"`` (rank-wise experts of one LoRA).

    Returns:
        ``model`` itself (modified in place); its ``lora_experts_config`` dict records what
        was added (saved by :func:`save_lora_experts`).

    Raises:
        ValueError: when no ``nn.Linear`` matches ``targets`` (the message lists the names
            that would), or the model already has LoRA experts.

    Example:
        >>> model = nn.Sequential()
        >>> model.add_module("q_proj", nn.Linear(8, 8))
        >>> model.add_module("out", nn.Linear(8, 2))
        >>> _ = add_lora_experts(model, ["q_proj"], num_experts=2, rank=2, router="top_k", k=1)
        >>> sorted(n for n, p in model.named_parameters() if p.requires_grad)
        ['q_proj.experts.A', 'q_proj.experts.B', 'q_proj.gate.weight']
    """
    if lora_layers(model):
        raise ValueError("add_lora_experts: the model already has LoRA experts")
    if kind not in KINDS:
        raise ValueError(f"unknown LoRA expert kind {kind!r}; choose one of {', '.join(KINDS)}")
    if isinstance(router, str) and router == "top_k" and not router_kwargs:
        router_kwargs = {"k": min(2, rank if kind == "smora" else num_experts)}
    route = make_router(router, **router_kwargs)
    if not isinstance(route, Router):
        raise TypeError("add_lora_experts: pass a registered router (name, dict or Router)")
    # collect first: the wrappers hold linears (gate, base) that must not match in turn
    found = [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and _matches(name, targets)
    ]
    if not found:
        linears = sorted(
            {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        )
        raise ValueError(
            f"add_lora_experts: no nn.Linear named {list(targets)} in {type(model).__name__}; "
            f"its linears are named {linears}"
        )
    model.requires_grad_(False)
    for name, linear in found:
        experts = _build_experts(kind, linear, num_experts, rank, alpha)
        wrapped = LoRAMoELinear(linear, num_experts, rank, alpha, router=route, experts=experts)
        model.set_submodule(name, wrapped)
    model.lora_experts_config = {  # type: ignore[assignment]
        "targets": list(targets),
        "modules": [name for name, _ in found],
        "kind": kind,
        "num_experts": num_experts if kind == "lora" else rank,
        "rank": rank,
        "alpha": float(alpha),
        "router": route.to_dict(),
    }
    return model


def trainable_parameters(model: nn.Module) -> int:
    """Number of parameters with ``requires_grad`` (the adapters and their gates).

    Example:
        >>> trainable_parameters(nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def save_lora_experts(model: nn.Module, folder: Path | str) -> Path:
    """Write the adapters and gates as safetensors plus a JSON config to ``folder``.

    Files: ``lora_experts.safetensors`` (tensors named ``<module>.gate.weight``,
    ``<module>.experts.A``, ...) and ``lora_experts.json`` (targets, module names, kind,
    E, r, alpha and the router as ``{"name": ..., **params}``). The base model is not
    written: load onto the same base with :func:`load_lora_experts`.

    Returns:
        ``folder``.
    """
    config = getattr(model, "lora_experts_config", None)
    layers = lora_layers(model)
    if config is None or not layers:
        raise ValueError("save_lora_experts: the model has no LoRA experts (add_lora_experts)")
    return write_adapter_folder(folder, layers, ADAPTER_FILE, CONFIG_FILE, config)


def write_adapter_folder(
    folder: Path | str,
    layers: Mapping[str, LinearView],
    tensors_file: str,
    config_file: str,
    config: Mapping[str, Any],
) -> Path:
    """Save each layer's :meth:`~dynroute.lora.layer.LinearView.adapter_state_dict`
    (``{layer name}.{key}``) as ``folder/tensors_file`` (safetensors) and ``config`` as
    ``folder/config_file``; the tensors are written to a temporary file and renamed, so a
    crash mid-write never leaves a half-written adapter."""
    from safetensors.torch import save_file

    folder = Path(folder)
    tensors = {
        f"{name}.{key}": t.detach().contiguous().cpu()
        for name, layer in layers.items()
        for key, t in layer.adapter_state_dict().items()
    }
    with atomic_path(folder / tensors_file) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    write_json(folder / config_file, config)
    return folder


def read_lora_config(folder: Path | str) -> dict[str, Any]:
    """The ``lora_experts.json`` of a saved adapter folder, with a clear error if absent."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; pass a folder written by save_lora_experts "
            "(or the adapters/ folder of a `dynroute lora train` run)"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def load_lora_experts(base_model: nn.Module, folder: Path | str) -> nn.Module:
    """Add the saved LoRA experts of ``folder`` to ``base_model`` and load their weights.

    The same modules are wrapped (by exact name), with the saved router; the result
    computes exactly what the saved model computed.

    Example:
        >>> import tempfile
        >>> model = nn.Sequential()
        >>> model.add_module("v_proj", nn.Linear(4, 4))
        >>> _ = add_lora_experts(model, ["v_proj"], num_experts=2, rank=1)
        >>> folder = save_lora_experts(model, tempfile.mkdtemp())
        >>> fresh = nn.Sequential()
        >>> fresh.add_module("v_proj", model.v_proj.base)
        >>> type(load_lora_experts(fresh, folder).v_proj).__name__
        'LoRAMoELinear'
    """
    from safetensors.torch import load_file

    config = read_lora_config(folder)
    tensors = load_file(str(Path(folder) / ADAPTER_FILE))
    add_lora_experts(
        base_model,
        targets=config["modules"],
        num_experts=config["num_experts"],
        rank=config["rank"],
        alpha=config["alpha"],
        router=config["router"],
        kind=config.get("kind", "lora"),
    )
    base_model.lora_experts_config = config  # type: ignore[assignment]
    layers = lora_layers(base_model)
    if sorted(layers) != sorted(config["modules"]):
        raise ValueError(
            f"{folder}: saved for modules {config['modules']}, this model has {sorted(layers)}"
        )
    for name, layer in layers.items():
        prefix = f"{name}."
        own = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        expected = layer.adapter_state_dict()
        if set(own) != set(expected):
            raise ValueError(
                f"{folder}/{ADAPTER_FILE}: tensors of {name} are {sorted(own)}, "
                f"expected {sorted(expected)}"
            )
        layer.load_state_dict(own, strict=False)
    return base_model


def _is_exact_single(layer: LoRAMoELinear) -> str | None:
    """None when the layer always adds adapter 0 with weight exactly 1, else why not."""
    from dynroute.lora.experts import LoRAExperts

    if not isinstance(layer.experts, LoRAExperts):
        return f"experts of kind {type(layer.experts).__name__} (merge needs LoRA experts)"
    if layer.num_experts != 1:
        return f"{layer.num_experts} experts (merge needs E = 1)"
    if int(getattr(layer.route, "extra_logits", 0)):
        return "a router with null experts (a token may skip the adapter)"
    # a router sees [N, 1] logits; probe it over a spread of values for weight 1 everywhere
    probe = torch.cat([torch.linspace(-50, 50, 101), torch.tensor([0.0])])[:, None]
    routing = layer.route(probe)
    if routing.num_assignments != probe.shape[0] or not bool((routing.weight == 1).all()):
        return f"router {layer.route} does not give every token weight 1 (use top_k:k=1)"
    return None


def merge_lora_experts(model: nn.Module) -> nn.Module:
    """Fold each adapter into its base weight and put the plain ``nn.Linear`` back.

    Exact only for a fixed routing: one expert (E = 1) that every token uses with weight
    1, e.g. ``router="top_k", k=1`` (softmax over one logit is 1). Anything else raises,
    naming the layer and the reason; nothing is changed then.

    Returns:
        ``model`` with no ``LoRAMoELinear`` left (in place).

    Example:
        >>> model = nn.Sequential()
        >>> model.add_module("q_proj", nn.Linear(4, 4))
        >>> _ = add_lora_experts(model, ["q_proj"], num_experts=1, rank=2, router="top_k", k=1)
        >>> type(merge_lora_experts(model).q_proj).__name__
        'Linear'
    """
    layers = lora_layers(model)
    if not layers:
        raise ValueError("merge_lora_experts: the model has no LoRA experts")
    for name, layer in layers.items():
        why = _is_exact_single(layer)
        if why is not None:
            raise ValueError(f"merge_lora_experts: {name} cannot be merged exactly: {why}")
    for name, layer in layers.items():
        base = layer.base
        with torch.no_grad():
            base.weight += layer.experts.delta_weight(0).to(base.weight.dtype)  # type: ignore[operator]
        model.set_submodule(name, base)
    if hasattr(model, "lora_experts_config"):
        del model.lora_experts_config
    return model
