"""Saving and restoring the hook modules of a compressed model, NNCF's and ours.

``get_config`` returns a JSON-able description of every hook (NNCF's ``get_config`` with enums and tuples
made plain); ``load_from_config`` re-creates the hooks on a fresh model so that ``load_state_dict`` then
restores their state. Only modules from ``nncf.*`` and ``nncf_ext.*`` are ever imported::

    torch.save({"state_dict": model.state_dict(), "nncf_config": nncf_ext.get_config(model)}, "ckpt.pt")
    ckpt = torch.load("ckpt.pt", weights_only=True)
    model = nncf_ext.load_from_config(Net(), ckpt["nncf_config"])
    model.load_state_dict(ckpt["state_dict"])
"""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

import nncf
import nncf.torch
from nncf.torch.function_hook.hook_storage import decode_hook_name
from nncf.torch.function_hook.wrapper import is_wrapped
from torch import nn

from nncf_ext.errors import CheckpointError, ModelError
from nncf_ext.model import check_wrappable, wrapping_transaction

ALLOWED_MODULES = ("nncf.*", "nncf_ext.*")
TModel = TypeVar("TModel", bound=nn.Module)


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _tuples(value: Any) -> Any:
    """JSON lists back to tuples (NNCF compares shapes such as ``scale_shape`` with tuples)."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def get_config(model: nn.Module) -> dict[str, Any]:
    """A JSON-able description of every hook module of ``model`` (NNCF's and nncf-ext's)."""
    if not isinstance(model, nn.Module) or not is_wrapped(model):
        raise ModelError(
            f"get_config: the {type(model).__name__} carries no compression hooks "
            "(call create_compression first)"
        )
    return _plain(nncf.torch.get_config(model))


def _check_fit(model: nn.Module, commands: list[dict[str, Any]]) -> None:
    """Every hook on a weight names a weight of ``model``, of the shape the hook was made for."""
    tensors = {n: tuple(t.shape) for n, t in [*model.named_parameters(), *model.named_buffers()]}
    for i, command in enumerate(commands):
        for hook_name in command["hook_names_in_model"]:
            try:
                hook_type, op_name, _ = decode_hook_name(hook_name)
            except Exception as e:  # NNCF's parser: a malformed name
                raise CheckpointError(f"compression_state[{i}]: malformed hook name {hook_name!r}") from e
            if hook_type != "post_hooks" or "/" in op_name:
                continue  # a hook on an operation's input or output (activations): NNCF places it
            if op_name not in tensors:
                raise CheckpointError(
                    f"compression_state[{i}]: a {command['module_cls_name']} hook is on '{op_name}', "
                    f"which the {type(model).__name__} does not have"
                )
            shape = command["module_config"].get("shape")
            if shape is not None and tuple(shape) != tensors[op_name]:
                raise CheckpointError(
                    f"compression_state[{i}]: the {command['module_cls_name']} hook on '{op_name}' was made "
                    f"for shape {tuple(shape)}, the {type(model).__name__} has {tensors[op_name]}"
                )


def load_from_config(model: TModel, config: dict[str, Any]) -> TModel:
    """Wrap ``model`` and re-create the hooks described by ``config``; then call ``load_state_dict``."""
    check_wrappable(model)
    if not isinstance(config, dict) or not isinstance(config.get("compression_state"), list):
        raise CheckpointError("expected a config from nncf_ext.get_config with a 'compression_state' list")
    commands = []
    keys = {"module_path", "module_cls_name", "module_config", "hook_names_in_model"}
    for i, command in enumerate(config["compression_state"]):
        if not isinstance(command, dict) or not keys <= set(command):
            raise CheckpointError(f"compression_state[{i}] is malformed (needs {sorted(keys)}): {command!r}")
        names = command["hook_names_in_model"]
        if not isinstance(command["module_config"], dict) or not (
            isinstance(names, list) and all(isinstance(n, str) for n in names)
        ):
            raise CheckpointError(
                f"compression_state[{i}]: 'module_config' must be an object and 'hook_names_in_model' a list "
                f"of names, got {command['module_config']!r:.60} and {names!r:.60}"
            )
        commands.append({**command, "module_config": _tuples(command["module_config"])})
    _check_fit(model, commands)
    try:
        # NNCF adds the hooks one command at a time: a failing command must not leave the earlier ones
        with wrapping_transaction(model):
            restored = nncf.torch.load_from_config(
                model, {"compression_state": commands}, allowed_modules=ALLOWED_MODULES
            )
    except (nncf.InternalError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot restore the hooks: {type(e).__name__}: {e}") from e
    return restored
