"""SGD, Adam and StepLR without torch.optim's classes, in torch.optim's state-dict layout.

Why: building or stepping a ``torch.optim.Optimizer`` imports ``torch._dynamo`` (its
``_disable_dynamo`` and ``_use_grad_for_differentiable`` wrappers), about 2 s of CPU on the 2-core
VMs: a quarter of a small run's wall time (docs/performance.md). The update arithmetic is still
torch's own: ``torch.optim.sgd.sgd`` and ``torch.optim.adam.adam`` are the functions torch's classes
call, and they import nothing more. What lives here is only the bookkeeping around them, written to
match torch.optim's: parameter groups, per-parameter state, and state dicts in the same layout, so a
checkpoint written with either loads into the other (tests/test_optim.py checks bits and dicts).
"""

from collections import defaultdict

import torch
from torch.optim.adam import adam
from torch.optim.sgd import sgd


class Optimizer:
    """One parameter group, its per-parameter state, and torch.optim's state-dict layout."""

    defaults: dict  # every group key torch.optim's class keeps, with its default, in its order

    def __init__(self, params, **hyper):
        params = list(params)
        if not params:
            raise ValueError("optimizer got an empty parameter list")
        unknown = set(hyper) - set(self.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown hyperparameters {sorted(unknown)}")
        self.param_groups = [{**self.defaults, **hyper, "params": params}]
        self.state: defaultdict = defaultdict(dict)

    def zero_grad(self, set_to_none: bool = True) -> None:
        if not set_to_none:
            raise NotImplementedError("only set_to_none=True is supported")
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    def state_dict(self) -> dict:
        """Parameters as their indices in group order, as torch.optim.Optimizer.state_dict packs them."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in group["params"]]
            groups.append(packed)
        return {"state": {index[id(p)]: s for p, s in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """The inverse of state_dict. Like torch.optim, state tensors take their parameter's dtype
        and device, except the step counter (a CPU float32 scalar in the modes used here)."""
        saved_groups = state_dict["param_groups"]
        sizes, saved_sizes = ([len(g["params"]) for g in groups] for groups in (self.param_groups, saved_groups))
        if saved_sizes != sizes:
            raise ValueError(f"loaded optimizer state has groups of sizes {saved_sizes}, expected {sizes}")
        param_of = {
            i: p
            for saved, group in zip(saved_groups, self.param_groups)
            for i, p in zip(saved["params"], group["params"])
        }
        self.state = defaultdict(dict)
        for i, saved_state in state_dict["state"].items():
            p = param_of[i]
            self.state[p] = {k: _placed(k, v, p) for k, v in saved_state.items()}
        # Keys a dict from an older torch lacks take their defaults, as torch.optim's __setstate__ does.
        self.param_groups = [
            {**self.defaults, **saved, "params": group["params"]}
            for saved, group in zip(saved_groups, self.param_groups)
        ]


def _placed(key: str, value, param: torch.Tensor):
    if not isinstance(value, torch.Tensor):
        return value
    if key == "step":
        return value.clone()
    dtype = param.dtype if param.is_floating_point() else value.dtype
    return value.to(dtype=dtype, device=param.device, copy=True)


def _refuse(group: dict, *options: str) -> None:
    """torch.optim modes this module does not implement: an error, not a silently different update."""
    used = [name for name in options if group.get(name)]
    if used:
        raise NotImplementedError(f"optim: {', '.join(used)} not supported (use torch.optim)")


class SGD(Optimizer):
    defaults = {
        "lr": 1e-3,
        "momentum": 0,
        "dampening": 0,
        "weight_decay": 0,
        "nesterov": False,
        "maximize": False,
        "foreach": None,
        "differentiable": False,
        "fused": None,
    }

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            _refuse(group, "fused", "differentiable")
            params = [p for p in group["params"] if p.grad is not None]
            with_momentum = group["momentum"] != 0
            buffers = [self.state[p].get("momentum_buffer") for p in params] if with_momentum else []
            sgd(
                params,
                [p.grad for p in params],
                buffers,
                has_sparse_grad=any(p.grad.is_sparse for p in params),
                foreach=group["foreach"],
                weight_decay=group["weight_decay"],
                momentum=group["momentum"],
                lr=group["lr"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                maximize=group["maximize"],
            )
            for p, buffer in zip(params, buffers):  # sgd() fills the buffers it created
                self.state[p]["momentum_buffer"] = buffer


class Adam(Optimizer):
    defaults = {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0,
        "amsgrad": False,
        "maximize": False,
        "foreach": None,
        "capturable": False,
        "differentiable": False,
        "fused": None,
        "decoupled_weight_decay": False,
    }

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            _refuse(group, "amsgrad", "capturable", "fused", "differentiable")
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise NotImplementedError("Adam does not support sparse gradients")
            for p in params:
                state = self.state[p]
                if not state:
                    # On the CPU whatever the device, in the default float type's precision, as torch keeps it.
                    scalar = torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32
                    state["step"] = torch.tensor(0.0, dtype=scalar, device="cpu")
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            states = [self.state[p] for p in params]
            beta1, beta2 = group["betas"]
            # Passed only when set: torch before 2.7 has no such argument.
            decoupled = {"decoupled_weight_decay": True} if group["decoupled_weight_decay"] else {}
            adam(
                params,
                [p.grad for p in params],
                [s["exp_avg"] for s in states],
                [s["exp_avg_sq"] for s in states],
                [],
                [s["step"] for s in states],
                foreach=group["foreach"],
                has_complex=any(torch.is_complex(p) for p in params),
                **decoupled,
                amsgrad=False,
                beta1=beta1,
                beta2=beta2,
                lr=group["lr"],
                weight_decay=group["weight_decay"],
                eps=group["eps"],
                maximize=group["maximize"],
            )


class StepLR:
    """torch.optim.lr_scheduler.StepLR: every ``step_size`` calls of step(), each group's lr is
    multiplied by ``gamma`` (in place, as torch's chained form does: the bits match)."""

    def __init__(self, optimizer: Optimizer, step_size: int, gamma: float = 0.1):
        self.optimizer, self.step_size, self.gamma = optimizer, step_size, gamma
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_lrs = [group["initial_lr"] for group in optimizer.param_groups]
        self.last_epoch, self._step_count = 0, 1  # where torch's constructor leaves them
        self._last_lr = [group["lr"] for group in optimizer.param_groups]

    def step(self) -> None:
        self._step_count += 1
        self.last_epoch += 1
        if self.last_epoch % self.step_size == 0:
            for group in self.optimizer.param_groups:
                group["lr"] = group["lr"] * self.gamma
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return list(self._last_lr)

    def state_dict(self) -> dict:
        return {
            "step_size": self.step_size,
            "gamma": self.gamma,
            "base_lrs": list(self.base_lrs),
            "last_epoch": self.last_epoch,
            "_step_count": self._step_count,
            "_is_initial": False,
            "_get_lr_called_within_step": False,
            "_last_lr": list(self._last_lr),
        }

    def load_state_dict(self, state_dict: dict) -> None:
        # Like torch's: the saved step size and gamma win over the constructor's.
        self.step_size, self.gamma = state_dict["step_size"], state_dict["gamma"]
        self.base_lrs, self._last_lr = list(state_dict["base_lrs"]), list(state_dict["_last_lr"])
        self.last_epoch, self._step_count = state_dict["last_epoch"], state_dict["_step_count"]
