"""Shared by the multi-phase families' tests (dcgan, aae_mtl): which parameter groups each optimizer step moves."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch


def snapshot(params: Iterable[torch.Tensor]) -> list[torch.Tensor]:
    return [p.detach().clone() for p in params]


def changed(before: list[torch.Tensor], params: Iterable[torch.Tensor]) -> bool:
    return any(not torch.equal(a, p.detach()) for a, p in zip(before, params, strict=True))


def record_steps(opts: Mapping[str, torch.optim.Optimizer], groups: Mapping[str, list[torch.nn.Parameter]]
                 ) -> tuple[list[str], dict[str, set[str]]]:
    """Wrap each optimizer's step to record the order of steps and which named parameter groups each one moved."""
    steps, moved = [], {}
    for name, opt in opts.items():
        def recorded(step=opt.step, name=name):
            before = {k: snapshot(ps) for k, ps in groups.items()}
            step()
            steps.append(name)
            moved[name] = {k for k, ps in groups.items() if changed(before[k], ps)}
        opt.step = recorded
    return steps, moved
