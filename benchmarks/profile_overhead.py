"""Cost of the default gradient-health and memory sections, as a multiple of one plain forward+backward.

Model: a ~1M-parameter ReLU MLP (256-512-512-512-512-10, batch 64) with the engine's default loss (a seeded random
projection of the output). "Default sections" = what ``check()`` runs for them: ``profile_training_step`` (gradient
health and the memory profile from one shared instrumented pass, plus the timed plain step) without checkpointing,
batch scaling or mixed precision; ``--separate`` measures ``analyze_gradients`` + ``profile_memory`` instead. Plain steps and profiles are interleaved in one process after a warm-up run (the
first profile in a process also pays a one-off import of torch._dynamo by TorchDispatchMode, printed separately).
Two clocks: wall time (min and median) and process CPU time (median). On a shared, loaded machine the CPU time is
the robust figure: time the process spent waiting for a core is not counted, and a longer task is not penalized for
being preempted more often. Target: < 5x.

    .venv/bin/python benchmarks/profile_overhead.py [--repeats 20] [--threads N] [--separate]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from gradcheck_service.checks.health.flow import analyze_gradients
from gradcheck_service.checks.loss import RandomProjection
from gradcheck_service.checks.memory.profile import profile_memory, profile_training_step
from gradcheck_service.options import CheckOptions


def build() -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    widths = [256, 512, 512, 512, 512]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:], strict=False):
        layers += [nn.Linear(a, b), nn.ReLU()]
    layers.append(nn.Linear(widths[-1], 10))
    return nn.Sequential(*layers), torch.randn(64, widths[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--separate", action="store_true",
                        help="health and memory as two passes (analyze_gradients + profile_memory)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model, x = build()
    loss_fn = RandomProjection(0)
    options = CheckOptions()
    params = sum(p.numel() for p in model.parameters())

    def plain() -> tuple[float, float]:
        model.zero_grad(set_to_none=True)
        wall, cpu = time.perf_counter(), time.process_time()
        loss_fn(model(x), x).backward()
        return time.perf_counter() - wall, time.process_time() - cpu

    def profiled() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        if args.separate:
            analyze_gradients(model, (x,), loss_fn, options.thresholds, options.seed)
            profile_memory(model, (x,), loss_fn, options)
        else:
            profile_training_step(model, (x,), loss_fn, options)
        return time.perf_counter() - wall, time.process_time() - cpu

    first = profiled()[0]  # includes the one-off import
    for _ in range(3):
        plain()
    # interleave the two so machine-load drift affects both alike
    plain_runs, profiled_runs = [], []
    for _ in range(args.repeats):
        plain_runs.append(plain())
        profiled_runs.append(profiled())
    print(f"model: {params} parameters, batch {x.shape[0]}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    for label, clock, stat in (("wall min", 0, min), ("wall median", 0, statistics.median),
                               ("CPU median", 1, statistics.median)):
        step = stat(run[clock] for run in plain_runs)
        cost = stat(run[clock] for run in profiled_runs)
        print(f"{label:>11}: plain forward+backward {step * 1e3:7.2f} ms, health + memory {cost * 1e3:7.2f} ms "
              f"-> overhead {cost / step:.2f}x (target < 5x; {args.repeats} runs)")
    print(f"first call in the process: {first * 1e3:.0f} ms (one-off torch._dynamo import included)")


if __name__ == "__main__":
    main()
