"""training/optim.py against torch.optim, in one process (same threads, same CPU code path, so bits
may be compared): the same updates to the bit, the same schedule, state dicts that load both ways.
And the reason it exists: a run never imports torch._dynamo (nor torchvision)."""

import io
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from centerexp.training import optim

from .conftest import CONFIGS

STEPS = 7


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in [(5, 3), (3,), (10, 2), (2, 2)]]


def _grads(step: int, params) -> list[torch.Tensor | None]:
    """Random gradients; the second parameter has none for the first two steps (its state starts
    later) and the last never has one (it has no state): both as torch.optim skips them."""
    g = torch.Generator().manual_seed(1000 + step)
    grads = [torch.randn(p.shape, generator=g) for p in params]
    return [None if (i == 1 and step < 2) or i == len(params) - 1 else grad for i, grad in enumerate(grads)]


def _run(make_opt, make_sched, params, steps=range(STEPS), opt=None, sched=None):
    opt = opt or make_opt(params)
    sched = sched or make_sched(opt)
    lrs = []
    for step in steps:
        opt.zero_grad(set_to_none=True)
        for p, grad in zip(params, _grads(step, params)):
            p.grad = grad
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    return opt, sched, lrs


CASES = {
    "sgd momentum foreach": (
        lambda cls, ps: cls.SGD(ps, lr=0.01, momentum=0.9, foreach=True),
        lambda cls, o: cls.StepLR(o, 2, gamma=0.1),
    ),
    "sgd plain (the centers)": (lambda cls, ps: cls.SGD(ps, lr=0.5), lambda cls, o: cls.StepLR(o, 10**9, gamma=0.1)),
    "adam foreach": (
        lambda cls, ps: cls.Adam(ps, lr=1e-3, foreach=True),
        lambda cls, o: cls.StepLR(o, 3, gamma=0.5),
    ),
}


def _torch_optim():
    class Torch:  # torch.optim under the names optim.py uses
        SGD, Adam, StepLR = torch.optim.SGD, torch.optim.Adam, torch.optim.lr_scheduler.StepLR

    return Torch


@pytest.mark.parametrize("case", CASES)
def test_updates_schedule_and_state_dict_match_torch_optim_bit_for_bit(case):
    make_opt, make_sched = CASES[case]
    ours, theirs = _params(), _params()
    o1, s1, lr1 = _run(lambda ps: make_opt(optim, ps), lambda o: make_sched(optim, o), ours)
    o2, s2, lr2 = _run(lambda ps: make_opt(_torch_optim(), ps), lambda o: make_sched(_torch_optim(), o), theirs)
    for a, b in zip(ours, theirs):
        assert torch.equal(a, b)
    assert lr1 == lr2
    assert (len(set(lr1)) > 1) != case.startswith("sgd plain")  # the schedule stepped where it should
    d1, d2 = o1.state_dict(), o2.state_dict()
    assert d1["param_groups"] == d2["param_groups"]
    assert d1["state"].keys() == d2["state"].keys()
    for index, state in d2["state"].items():
        assert state.keys() == d1["state"][index].keys()
        for key, value in state.items():
            assert torch.equal(d1["state"][index][key], value), (index, key)
    assert s1.state_dict() == s2.state_dict()


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("direction", ["torch -> ours", "ours -> torch"])
def test_a_checkpoint_written_by_either_resumes_in_the_other_to_the_same_bits(case, direction):
    """Runs checkpointed with torch.optim (every run before optim.py) resume here, and back."""
    make_opt, make_sched = CASES[case]
    first, second = (_torch_optim(), optim) if direction == "torch -> ours" else (optim, _torch_optim())
    straight = _params()
    _run(lambda ps: make_opt(first, ps), lambda o: make_sched(first, o), straight)

    halves = _params()
    o, s, _ = _run(lambda ps: make_opt(first, ps), lambda o: make_sched(first, o), halves, steps=range(3))
    saved = {"opt": o.state_dict(), "sched": s.state_dict(), "params": [p.detach().clone() for p in halves]}
    buffer = io.BytesIO()
    torch.save(saved, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = [torch.nn.Parameter(t) for t in saved["params"]]
    o2 = make_opt(second, resumed)
    s2 = make_sched(second, o2)
    o2.load_state_dict(saved["opt"])
    s2.load_state_dict(saved["sched"])
    assert o2.state_dict()["param_groups"] == saved["opt"]["param_groups"]
    assert s2.state_dict() == saved["sched"]
    _run(None, None, resumed, steps=range(3, STEPS), opt=o2, sched=s2)
    for a, b in zip(straight, resumed):
        assert torch.equal(a, b)


def test_an_adam_state_from_a_torch_without_decoupled_weight_decay_loads_with_the_default():
    """torch before 2.7 wrote Adam's groups without that key; torch.optim fills it in, and so do we."""
    params, ours = _params(), _params()
    o, _, _ = _run(
        lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), lambda o: optim.StepLR(o, 99), params, range(2)
    )
    old = o.state_dict()
    del old["param_groups"][0]["decoupled_weight_decay"]
    o.load_state_dict(old)
    mine = optim.Adam(ours, lr=1e-3, foreach=True)
    for p, q in zip(ours, params):
        p.data.copy_(q.data)
    mine.load_state_dict(old)
    assert mine.param_groups[0]["decoupled_weight_decay"] is False
    _run(None, None, params, range(2, 4), opt=o, sched=optim.StepLR(o, 99))
    _run(None, None, ours, range(2, 4), opt=mine, sched=optim.StepLR(mine, 99))
    for a, b in zip(params, ours):
        assert torch.equal(a, b)


def test_loaded_state_takes_the_parameters_dtype_and_is_not_shared_with_the_dict():
    params = _params()
    o, _, _ = _run(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9), lambda o: optim.StepLR(o, 5), params, steps=range(2))
    saved = o.state_dict()
    saved["state"][0]["momentum_buffer"] = saved["state"][0]["momentum_buffer"].double()
    fresh = optim.SGD(params, lr=0.1, momentum=0.9)
    fresh.load_state_dict(saved)
    buffer = fresh.state[params[0]]["momentum_buffer"]
    assert buffer.dtype == torch.float32
    assert sorted(saved["state"]) == [0, 2]  # the second parameter had no gradient yet, the last never
    before = saved["state"][2]["momentum_buffer"].clone()
    fresh.state[params[2]]["momentum_buffer"].add_(1.0)
    assert torch.equal(saved["state"][2]["momentum_buffer"], before)


def test_mismatched_state_and_bad_arguments_are_refused():
    o = optim.SGD(_params(), lr=0.1, momentum=0.9)
    other = optim.SGD(_params()[:2], lr=0.1, momentum=0.9)
    with pytest.raises(ValueError, match="groups of sizes"):
        o.load_state_dict(other.state_dict())
    with pytest.raises(ValueError, match="empty parameter list"):
        optim.SGD([], lr=0.1)
    with pytest.raises(TypeError, match="unknown hyperparameters"):
        optim.Adam(_params(), lr=0.1, momentum=0.9)
    for unsupported in (optim.SGD(_params(), lr=0.1, fused=True), optim.Adam(_params(), amsgrad=True)):
        unsupported.param_groups[0]["params"][0].grad = torch.ones(5, 3)
        with pytest.raises(NotImplementedError, match="not supported"):
            unsupported.step()


def test_a_run_imports_neither_torch_dynamo_nor_torchvision(tmp_path):
    """What optim.py and provenance's metadata lookup are for: either import costs about 2 s of a
    small run (docs/performance.md). Checked in a fresh interpreter, where nothing else imported
    them first; the run steps SGD with momentum, the centers' SGD and StepLR, and checkpoints."""
    script = textwrap.dedent(
        f"""
        import sys
        from centerexp.training.train import start_run
        overrides = ["data.train_subset=64", "data.test_subset=64", "train.epochs=2", "train.batch_size=16",
                     "train.lr_step_epochs=1", "plot.gif=false"]
        start_run({str(CONFIGS / "v1_2.yaml")!r}, overrides, runs_dir={str(tmp_path)!r}, progress=False)
        print(sorted(m for m in ("torch._dynamo", "torchvision") if m in sys.modules))
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]"
    assert json.loads((tmp_path / "v1_2" / "summary.json").read_text())["status"] == "completed"
