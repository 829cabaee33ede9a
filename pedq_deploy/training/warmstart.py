"""Start a training run from exported models (fine-tuning): ONNX weights back into the torch networks.

The ONNX files keep every weight: convolutions and norms under their PyTorch names (equal
constants stored once, the copies named by Identity nodes), and the linear layers of the
transformers as anonymous ``MatMul`` constants (transposed), in the order the graph runs them. This maps both back and checks that every parameter the forward pass uses was
found with its shape, so a model from another configuration is refused rather than half loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError

__all__ = ["load_onnx_weights"]


def _execution_order(model: torch.nn.Module, example: torch.Tensor, kind: type) -> list[str]:
    names = {m: n for n, m in model.named_modules()}
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(names[mod])) for m in model.modules() if isinstance(m, kind)]
    try:
        with torch.no_grad():
            model.eval()(example)
    finally:
        for h in hooks:
            h.remove()
    return order


def load_onnx_weights(model: torch.nn.Module, onnx_path: str | Path, example: torch.Tensor) -> dict:
    """Copy the weights of ``onnx_path`` (exported from a network of the same configuration) into ``model``.

    ``example`` is one input of the network's shape (the forward pass finds the linear layers' order).
    Returns a summary (parameters loaded). Raises InputError when a used parameter is missing or
    differs in shape.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(onnx_path)
    if not path.is_file():
        raise InputError(f"no model to start from: {path}")
    graph = onnx.load(str(path)).graph
    init = {i.name: i for i in graph.initializer}
    # the exporter stores equal constants once (an untrained norm's ones and zeros) and names the
    # copies through Identity nodes
    for node in graph.node:
        if node.op_type == "Identity" and node.input[0] in init and node.output[0] not in init:
            init[node.output[0]] = init[node.input[0]]
    state = model.state_dict()
    new: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in init:
            arr = numpy_helper.to_array(init[key])
            if tuple(arr.shape) != tuple(value.shape):
                raise InputError(f"{path.name}: {key} has shape {arr.shape}, the network {tuple(value.shape)}: another configuration")
            new[key] = torch.from_numpy(np.array(arr))
    # anonymous MatMul constants, in graph order <-> nn.Linear weights, in execution order
    anon: list[str] = []
    for node in graph.node:
        if node.op_type == "MatMul":
            anon += [i for i in node.input if i in init and i not in state and i not in anon]
    linears = [n for n in _execution_order(model, example, torch.nn.Linear) if f"{n}.weight" not in new]
    if len(anon) != len(linears):
        raise InputError(f"{path.name}: {len(anon)} linear weights in the file, {len(linears)} in the network: another configuration")
    for name, const in zip(linears, anon):
        arr = numpy_helper.to_array(init[const]).T
        if tuple(arr.shape) != tuple(state[f"{name}.weight"].shape):
            raise InputError(f"{path.name}: {name}.weight has shape {arr.shape}, the network {tuple(state[name + '.weight'].shape)}")
        new[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(arr))
    # parameters that share storage (DynUNet's skip_layers alias its down-sampling blocks) are loaded through their twin
    seen = {state[k].data_ptr(): k for k in new}
    unused = []
    for key, value in state.items():
        if key in new:
            continue
        if value.data_ptr() in seen:
            new[key] = new[seen[value.data_ptr()]]
        else:
            unused.append(key)
    idle = _idle_parameters(model, example) if unused else set()
    used_missing = [k for k in unused if k not in idle]
    if used_missing:
        raise InputError(f"{path.name}: weights missing for {', '.join(used_missing[:4])}: another configuration")
    model.load_state_dict({**state, **new})
    return {"file": str(path), "parameters_loaded": len(new), "not_in_graph": unused}


def _idle_parameters(model: torch.nn.Module, example: torch.Tensor) -> set[str]:
    """Names of parameters and buffers the forward pass does not use (the exporter drops them; MONAI's
    transformer blocks build a cross-attention norm they never call): those without a gradient."""
    flags = {n: p.requires_grad for n, p in model.named_parameters()}  # a frozen network has none
    model.requires_grad_(True)
    model.train()
    model.zero_grad(set_to_none=True)
    try:
        model(example).float().sum().backward()
        idle = {n for n, p in model.named_parameters() if p.grad is None}
    finally:
        model.zero_grad(set_to_none=True)
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    return idle
