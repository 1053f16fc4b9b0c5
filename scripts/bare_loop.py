"""A bare torch loop doing only LAQ's arithmetic: the yardstick the driver's speed is measured against.

Per iteration, on one device, in the run's dtype: each of the M workers' full local gradient at theta^k (the
task's loss plus (lambda/2)||theta||^2), its innovation against the last upload quantized to b bits (eq. 5-6), the
rule's test (7a)-(7b) against the shared threshold, the lazy aggregate and the step theta <- theta - alpha grad.
No bytes, no payloads, no records: what laq_fl's driver adds on top of this is its overhead.
Imports only torch, numpy and laq_fl's core (no Flower), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import time
from collections import deque

import torch

from laq_fl.problem import Problem


def bare_laq_seconds(problem: Problem, iterations: int, *, bits: int = 4, lr: float = 0.02, xi_sum: float = 0.8,
                     memory: int = 10, t_bar: int = 100) -> list[float]:
    """Seconds of each of ``iterations`` LAQ iterations on ``problem``'s device (synchronised on a GPU)."""
    objectives = problem.objectives
    device = objectives[0].device
    lam = problem.config.lam
    theta = torch.as_tensor(problem.initial_theta, device=device).clone()
    workers = len(objectives)
    copies = torch.zeros(workers, theta.numel(), dtype=theta.dtype, device=device)
    aggregate = torch.zeros_like(theta)
    last_error_sq = [0.0] * workers
    clocks = [t_bar] * workers  # the first round uploads
    recent: deque[float] = deque(maxlen=memory)
    top = 2**bits - 1
    seconds = []
    for _ in range(iterations):
        started = time.perf_counter()
        threshold = (xi_sum / memory) * sum(recent) / (lr * lr * workers * workers)
        for m, objective in enumerate(objectives):
            params = theta.clone().requires_grad_(True)
            loss = objective.data_loss(problem.model.logits(params, objective.features), objective.labels)
            (grad,) = torch.autograd.grad(loss, params)
            grad += lam * theta
            innovation = grad - copies[m]
            radius = innovation.abs().max()
            levels = torch.floor((innovation + radius) * (top / (2 * radius)) + 0.5).clamp_(0, top)
            quantized = levels * (2 * radius / top) - radius
            new_copy = copies[m] + quantized
            error_sq = float(torch.sum((grad - new_copy) ** 2))
            lazy = float(torch.sum(quantized**2)) <= threshold + 3 * (error_sq + last_error_sq[m])
            if lazy and clocks[m] < t_bar:
                clocks[m] += 1
                continue
            aggregate += quantized
            copies[m] = new_copy
            last_error_sq[m], clocks[m] = error_sq, 0
        step = lr * aggregate
        theta -= step
        recent.append(float(torch.sum(step**2)))
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds.append(time.perf_counter() - started)
    return seconds
