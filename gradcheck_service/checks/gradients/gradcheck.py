"""Per-tensor gradient checks: which coordinates and probes to measure, and the verdict for each tensor."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ...options import CheckOptions
from ...report import Coordinate, TensorCheck
from .directions import Measured, measure, measure_coordinates, probe_directions
from .evaluator import SEQUENTIAL_TARGET_BYTES, LossEvaluator, Target, large
from .finite_difference import tolerance
from .in_place import Directions, Space, robust_scale, smallest_scale

# Relative-error denominators never drop below this fraction of the tensor's largest gradient, so an entry whose
# gradient is ~0 does not report a meaningless relative error of 1e9.
REL_DENOMINATOR_FLOOR = 1e-6
TINY = 1e-300


@dataclass
class Checked:
    """A tensor to check: its perturbation target and autograd's gradient for it (zeros when unused)."""

    name: str
    kind: str  # "parameter" | "input"
    target: Target
    analytic: torch.Tensor  # float64, same shape as target.base
    unused: bool
    by_design: torch.Tensor | None = None  # bool, shaped like the tensor: entries with no gradient on purpose
    by_design_reason: str | None = None


def no_gradient_by_design(root: nn.Module) -> dict[str, tuple[torch.Tensor, str]]:
    """Parameters with entries that get no gradient on purpose, by qualified name: mask and reason.

    An Embedding's ``padding_idx`` row is used in the forward but excluded from the gradient by PyTorch's design;
    finite differences see its effect on the loss, so comparing it would report a bug that is a feature.
    """
    found = {}
    for name, m in root.named_modules():
        if isinstance(m, nn.Embedding | nn.EmbeddingBag) and m.padding_idx is not None and m.weight.requires_grad:
            mask = torch.zeros(m.weight.shape, dtype=torch.bool)
            mask[m.padding_idx] = True
            found[f"{name}.weight" if name else "weight"] = (
                mask, f"row {m.padding_idx} is {type(m).__name__}.padding_idx: no gradient by design, not compared")
    return found


@dataclass
class Comparison:
    index: torch.Tensor  # [m, ndim] coordinates, or [m, 0] for probes
    analytic: torch.Tensor
    numeric: torch.Tensor
    tolerance: torch.Tensor
    kink: torch.Tensor

    @property
    def abs_error(self) -> torch.Tensor:
        return (self.analytic - self.numeric).abs()

    @property
    def unmeasured(self) -> torch.Tensor:
        """The finite differences came out NaN or infinite: the forward is not finite near the point."""
        return ~torch.isfinite(self.numeric)

    @property
    def compared(self) -> torch.Tensor:
        """Comparisons that count for the verdict: neither a kink nor a finite difference that is not finite."""
        return ~self.kink & ~self.unmeasured

    @property
    def failed(self) -> torch.Tensor:
        # Written as "not within" so that a NaN (an analytic gradient of NaN or infinity) can never pass.
        return ~(self.abs_error <= self.tolerance) & self.compared

    def ratios(self) -> torch.Tensor:
        """Error in units of its tolerance; a non-finite analytic value against a finite numeric one is infinite."""
        ratio = self.abs_error / torch.clamp(self.tolerance, min=TINY)
        return torch.where(torch.isnan(ratio), torch.full_like(ratio, float("inf")), ratio)

    def max_ratio(self) -> float:
        """Largest error in units of its tolerance, over what was compared (0 when nothing is)."""
        ratio = self.ratios()[self.compared]
        return float(ratio.max()) if ratio.numel() else 0.0

    @staticmethod
    def cat(parts: list[Comparison]) -> Comparison:
        return Comparison(*(torch.cat([getattr(p, f) for p in parts]) for f in
                            ("index", "analytic", "numeric", "tolerance", "kink")))


def compare(
    analytic: torch.Tensor, measured: Measured, index: torch.Tensor, options: CheckOptions, dtype: torch.dtype
) -> Comparison:
    tol = tolerance(analytic, measured.numeric, measured.error, options.safety_factor, dtype)
    return Comparison(index, analytic, measured.numeric, tol, measured.kink)


def boundary_indices(shape: torch.Size, limit: int = 16) -> list[int]:
    """Flat indices of the tensor's corners (first/last along every dimension): where off-by-one bugs live."""
    if not shape:
        return [0]
    corners = itertools.product(*[sorted({0, n - 1}) for n in shape])
    flat = [int(torch.tensor(c) @ torch.tensor(_strides(shape))) for c in itertools.islice(corners, limit)]
    return sorted(set(flat))


def unravel(flat: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """``[m, ndim]`` coordinates of flat indices (torch.unravel_index's first call imports sympy: 0.2 s cold)."""
    columns = []
    for n in reversed(shape):
        columns.append(flat % n)
        flat = flat // n
    return torch.stack(columns[::-1], dim=1)


def _strides(shape: torch.Size) -> list[int]:
    strides, acc = [], 1
    for n in reversed(shape):
        strides.append(acc)
        acc *= n
    return list(reversed(strides))


def plan_coordinates(numel: int, shape: torch.Size, options: CheckOptions, gen: torch.Generator) -> tuple[
    torch.Tensor, str
]:
    """Flat indices to check coordinate-wise, and the coverage that gives."""
    if options.mode == "fast":
        return torch.empty(0, dtype=torch.long), "probes"
    if options.mode == "full" or numel <= options.max_coordinates:
        return torch.arange(numel), "full"
    chosen = set(boundary_indices(shape))
    sample = torch.randperm(numel, generator=gen)[: options.sample_coordinates].tolist()
    chosen.update(sample)
    return torch.tensor(sorted(chosen), dtype=torch.long), "sampled"


def check_tensor(
    evaluator: LossEvaluator, item: Checked, options: CheckOptions, dtype: torch.dtype, gen: torch.Generator,
    plan: tuple[torch.Tensor, str] | None = None,
) -> TensorCheck:
    """Compare autograd with finite differences for one tensor, by coordinates and/or probes.

    ``plan`` overrides which coordinates are compared (flat indices and the coverage they give).

    In float64 a screening pass comes first: one central difference per direction (+-h, not +-h and +-2h), its
    tolerance the roundoff floor alone (the smallest any measured noise could give). A clean pass there is a pass
    under any measured noise and truncation estimate; anything else (a failure, a tensor not resolved) is
    measured again in full, with the same random draws, the noise measured and kinks refined, so every verdict
    but the clean pass is exactly what the full measurement gives.
    """
    return screened(evaluator, dtype, gen, lambda: [_check_tensor(evaluator, item, options, dtype, gen, plan)])[0]


def screened(
    evaluator: LossEvaluator, dtype: torch.dtype, gen: torch.Generator, run: Callable[[], list[TensorCheck]]
) -> list[TensorCheck]:
    """``run()`` as a screening pass (see :func:`check_tensor`); in full unless every result is a clean pass."""
    if dtype != torch.float64 or evaluator.floor_noise:
        return run()
    draws = gen.get_state()
    evaluator.floor_noise = True
    try:
        results = run()
    finally:
        evaluator.floor_noise = False
    if all(t.passed and t.kinks == 0 and t.resolved for t in results):
        return results
    gen.set_state(draws)
    return run()


def _check_tensor(
    evaluator: LossEvaluator, item: Checked, options: CheckOptions, dtype: torch.dtype, gen: torch.Generator,
    plan: tuple[torch.Tensor, str] | None = None,
) -> TensorCheck:
    base = item.target.base
    numel = base.numel()
    if numel == 0:  # no coordinate, and a probe over no coordinates measures nothing
        return nothing_compared(item, "full", "none (zero-size tensor)")
    flat, coverage = plan if plan is not None else plan_coordinates(numel, base.shape, options, gen)
    if item.by_design is not None:
        flat = flat[~item.by_design.reshape(-1)[flat]]
    parts: list[Comparison] = []
    if flat.numel():
        measured = measure_coordinates(evaluator, item.target, flat, dtype)
        index = unravel(flat, base.shape) if base.dim() else flat[:, None] * 0
        comparison = compare(item.analytic.reshape(-1)[flat], measured, index[:, : base.dim()], options, dtype)
        parts.append(resolve_small_gradients(evaluator, item, flat, comparison, options, dtype))
    # Below float64 a single coordinate's derivative is close to the rounding noise; a dense probe sums the
    # errors of every coordinate against the same noise, so it sees a backward that is a few percent off.
    n_probes = 0 if coverage == "full" and dtype == torch.float64 else options.probes
    probe_part = None
    space = Space.of([base], [item.by_design]) if n_probes and large(base) else None
    if space is not None:  # probes drawn part by part and added in place: no copy of a large tensor per probe
        streamed, gradients = space.directions(draw_seeds(gen, n_probes)), [item.analytic]
        space.project_onto(gradients)  # each probe dotted with autograd's gradient as it is drawn to be applied
        measured = measure(evaluator, replace(item.target, space=space), streamed, dtype)
        analytic = streamed.project(gradients)
        probe_part = compare(analytic, measured, torch.empty((n_probes, 0), dtype=torch.long), options, dtype)
    elif n_probes:
        dirs = probe_directions(base, n_probes, gen)
        if item.by_design is not None:
            dirs = dirs.masked_fill(item.by_design.to(dirs.device), 0)
        measured = measure(evaluator, item.target, dirs, dtype)
        analytic = (dirs.to(torch.float64).reshape(n_probes, -1) @ item.analytic.reshape(-1))
        probe_part = compare(analytic, measured, torch.empty((n_probes, 0), dtype=torch.long), options, dtype)
    return summarize(item, parts[0] if parts else None, probe_part, coverage,
                     method="central differences (Richardson, 2 steps)", numel=numel)


def draw_seeds(gen: torch.Generator, count: int) -> list[int]:
    """Seeds of ``count`` in-place directions (see :mod:`.in_place`), drawn from the check's generator."""
    return [int(v) for v in torch.randint(0, 2**62, (count,), generator=gen)]


def target_scale(target: Target) -> float:
    """The smallest per-coordinate step scale of the target (its least visible coordinate to a probe)."""
    if target.space is not None:
        return min(target.space.min_scale(i) for i in range(len(target.space.parts)))
    return smallest_scale(target.base)


def undetected_error(target: Target, coords: Comparison | None, probes: Comparison | None,
                     coverage: str) -> float | None:
    """The largest error one coordinate's gradient could have without failing a comparison.

    Where every coordinate was compared, it is the largest coordinate tolerance. Elsewhere an uncompared
    coordinate ``j`` is seen only by the probes: a +-1 probe scaled by ``s_j`` moves by ``e_j s_j``, so an error
    passes only if ``|e_j s_j|`` fits in every probe's slack (tolerance plus the difference already there);
    the smallest scale of the tensor gives the bound for its least visible coordinate.
    """
    if coverage == "full" and coords is not None and coords.tolerance.numel():
        valid = coords.compared
        return float(coords.tolerance[valid].max()) if bool(valid.any()) else None
    if probes is None or not probes.tolerance.numel():
        return None
    valid = probes.compared
    if not bool(valid.any()):
        return None
    slack = (probes.tolerance + probes.abs_error)[valid].min()
    return float(slack) / target_scale(target)


def probe_together(
    evaluator: LossEvaluator, items: list[Checked], opts: CheckOptions, dtype: torch.dtype, gen: torch.Generator,
    name: str = "(own parameters)", method: str | None = None,
) -> tuple[TensorCheck, dict[str, TensorCheck]]:
    """Dense probes over several parameter tensors of one module at once; each tensor gets the shared verdict.

    ``items`` are parameters of the evaluator's model, or a single tensor of any kind. Returns the verdict of
    the probes over all of them (``name``, ``method``) and each tensor's share of it.

    One module's forward costs the same whichever of its tensors moves, so probing them together costs what
    probing one does. A wrong gradient in any of them moves every probe by its error (the bound each tensor
    reports uses its own scale); which one is wrong is the whole-model check's job when anything fails.
    """
    names = tuple(item.target.name for item in items)
    shapes = tuple(item.target.base.shape for item in items)
    numel = sum(item.target.base.numel() for item in items)
    bases = [item.target.base for item in items]
    stills = [item.by_design for item in items]
    space = Space.of(bases, stills) if sum(b.numel() * b.element_size() for b in bases) > SEQUENTIAL_TARGET_BYTES \
        else None
    if space is not None:  # too large to copy: directions drawn part by part and added in place
        target = Target("parameters", name, torch.empty((), dtype=bases[0].dtype).expand(numel), names=names,
                        shapes=shapes, space=space)
        joint = Checked(name, "parameter", target, torch.empty(0, dtype=torch.float64), False)
        min_scales = [space.min_scale(i) for i in range(len(items))]
        gradients = [item.analytic for item in items]
        space.project_onto(gradients)  # each probe dotted with autograd's gradient as it is drawn to be applied

        def draw() -> Directions | torch.Tensor:
            return space.directions(draw_seeds(gen, opts.probes))

        def project(dirs: Directions | torch.Tensor) -> torch.Tensor:
            assert isinstance(dirs, Directions)
            return dirs.project(gradients)
    else:
        base = torch.cat([b.reshape(-1) for b in bases])
        analytic = torch.cat([item.analytic.reshape(-1) for item in items])
        still = torch.cat([(s if s is not None else torch.zeros(b.shape, dtype=torch.bool)).reshape(-1)
                           for s, b in zip(stills, bases, strict=True)])
        target = items[0].target if len(items) == 1 else Target("parameters", name, base, names=names, shapes=shapes)
        joint = Checked(name, "parameter", target, analytic, False)
        scale = robust_scale(base)  # the probes' per-coordinate scale, floored over the whole module
        min_scales, start = [], 0
        for b in bases:
            min_scales.append(float(scale[start : start + b.numel()].min()) if b.numel() else float("inf"))
            start += b.numel()

        def draw() -> Directions | torch.Tensor:
            dirs = probe_directions(base, opts.probes, gen)
            if bool(still.any()):
                dirs = dirs.masked_fill(still, 0)
            return dirs.reshape(opts.probes, *target.base.shape)  # a single tensor keeps its own shape

        def project(dirs: Directions | torch.Tensor) -> torch.Tensor:
            assert isinstance(dirs, torch.Tensor)
            return dirs.to(torch.float64).reshape(opts.probes, -1) @ analytic

    others = f"probed together with {len(items) - 1} other tensor(s) of the module" if len(items) > 1 else ""
    comparisons: list[Comparison] = []

    def run() -> TensorCheck:
        dirs = draw()
        measured = measure(evaluator, target, dirs, dtype)
        comparisons[:] = [compare(project(dirs), measured, torch.empty((opts.probes, 0), dtype=torch.long), opts,
                                  dtype)]
        return summarize(joint, None, comparisons[0], "probes", method or others, numel)

    together = screened(evaluator, dtype, gen, lambda: [run()])[0]
    probes = comparisons[0]
    valid = probes.compared
    slack = float((probes.tolerance + probes.abs_error)[valid].min()) if bool(valid.any()) else None
    results = {}
    for item, smallest in zip(items, min_scales, strict=True):
        result = summarize(item, None, probes, "probes", others or "probes", item.target.base.numel())
        result.undetected_error = None if slack is None else slack / smallest
        results[item.name] = result
    return together, results


# Larger steps for coordinates whose gradient is below their tolerance: roundoff error falls as 1/h while the
# Richardson truncation error, O(h^4), stays far below it and is measured by |D(h) - D(2h)| anyway.
LARGER_STEPS = (64.0, 1024.0)


def resolve_small_gradients(
    evaluator: LossEvaluator, item: Checked, flat: torch.Tensor, comparison: Comparison, options: CheckOptions,
    dtype: torch.dtype,
) -> Comparison:
    """Re-measure coordinates whose tolerance is above their gradient with larger steps; keep the tighter result.

    Tiny gradients (attention projections at initialisation: 1e-8 next to a loss of 4) sit under the rounding
    noise of a step sized for typical coordinates. A re-measurement replaces a comparison only when it is tighter
    and not a kink, so a larger step can sharpen a verdict but never invent a failure from crossing a kink.
    """
    for factor in LARGER_STEPS:
        scale = torch.maximum(comparison.analytic.abs(), comparison.numeric.abs())
        blind = (comparison.tolerance >= scale) & ~comparison.kink & (scale > 0)
        if not bool(blind.any()):
            break
        which = blind.nonzero().flatten()
        again = measure_coordinates(evaluator, item.target, flat[which], dtype, step_factor=factor)
        retry = compare(comparison.analytic[which], again, comparison.index[which], options, dtype)
        better = (retry.tolerance < comparison.tolerance[which]) & ~retry.kink
        take = which[better]
        for field_name in ("numeric", "tolerance"):
            getattr(comparison, field_name)[take] = getattr(retry, field_name)[better]
    return comparison


def summarize(
    item: Checked, coords: Comparison | None, probes: Comparison | None, coverage: str, method: str, numel: int,
    note: str | None = None,
) -> TensorCheck:
    """Reduce comparisons to the per-tensor verdict the report shows."""
    pool = coords if coords is not None and coords.analytic.numel() else probes
    if pool is None or not pool.analytic.numel():
        return nothing_compared(item, coverage, method, note)
    failed = int(coords.failed.sum()) if coords is not None else 0
    probes_failed = int(probes.failed.sum()) if probes is not None else 0
    valid = pool.compared
    err = torch.where(valid, pool.abs_error, torch.zeros_like(pool.abs_error))
    finite_numeric = pool.numeric[valid].abs()
    denom_floor = max(float(finite_numeric.max()) * REL_DENOMINATOR_FLOOR, TINY) if finite_numeric.numel() else TINY
    denom = torch.clamp(torch.maximum(pool.analytic.abs(), pool.numeric.abs()), min=denom_floor)
    ratio = torch.where(valid, pool.ratios(), torch.full_like(err, -1.0))
    worst_i = int(ratio.argmax()) if ratio.numel() else 0
    worst = None
    if ratio.numel() and float(ratio[worst_i]) >= 0:
        worst = Coordinate(
            index=[int(v) for v in pool.index[worst_i].tolist()],
            analytic=float(pool.analytic[worst_i]),
            numeric=float(pool.numeric[worst_i]),
            abs_error=float(pool.abs_error[worst_i]),
            tolerance=float(pool.tolerance[worst_i]),
        )
    resolved = True
    if bool(valid.any()):
        largest = float(torch.maximum(pool.analytic.abs(), pool.numeric.abs())[valid].max())
        typical_tolerance = float(pool.tolerance[valid].median())
        resolved = not (largest > 0 and typical_tolerance >= largest)
    notes = [note] if note else []
    if not resolved:
        notes.append(f"not meaningfully checked: the tolerance ({typical_tolerance:.2e}) is above the largest "
                     f"gradient ({largest:.2e}), so a gradient wrong by its own size could pass")
    if item.by_design_reason:
        notes.append(item.by_design_reason)
    if probes_failed:
        notes.append(f"{probes_failed} random-direction probe(s) failed")
    if item.unused:
        notes.append("autograd returned no gradient (None); compared as zero")
    unmeasured = sum(int(part.unmeasured.sum()) for part in (coords, probes) if part is not None)
    if unmeasured:
        notes.append(f"{unmeasured} finite difference(s) came out NaN or infinite (the loss is not finite near the "
                     "point): not compared")
    nonfinite = int((~torch.isfinite(pool.analytic) & valid).sum())
    if nonfinite:
        notes.append(f"autograd's gradient is NaN or infinite where the finite differences are finite "
                     f"({nonfinite} comparison(s))")
    return TensorCheck(
        name=item.name,
        kind=item.kind,
        shape=list(item.target.base.shape),
        dtype=str(item.target.base.dtype).replace("torch.", ""),
        passed=failed == 0 and probes_failed == 0,
        coverage=coverage,
        method=method,
        numel=numel,
        coordinates_checked=int(coords.analytic.numel()) if coords is not None else 0,
        probes=int(probes.analytic.numel()) if probes is not None else 0,
        failed_coordinates=failed,
        kinks=int((pool.kink & ~pool.unmeasured).sum()),
        unmeasured=unmeasured,
        max_abs_error=float(err.max()) if err.numel() else 0.0,
        max_rel_error=float((err / denom).max()) if err.numel() else 0.0,
        max_error_ratio=max(part.max_ratio() for part in (coords, probes) if part is not None),
        worst=worst,
        unused=item.unused,
        resolved=resolved,
        note="; ".join(notes) or None,
        undetected_error=undetected_error(item.target, coords, probes, coverage),
    )


def nothing_compared(item: Checked, coverage: str, method: str, note: str | None = None) -> TensorCheck:
    """The verdict for a tensor with no coordinate to compare (zero-size): nothing can disagree, so it passes."""
    notes = [note] if note else []
    notes.append("zero-size tensor: no coordinate to compare")
    return TensorCheck(
        name=item.name, kind=item.kind, shape=list(item.target.base.shape),
        dtype=str(item.target.base.dtype).replace("torch.", ""), passed=True, coverage=coverage, method=method,
        numel=item.target.base.numel(), coordinates_checked=0, probes=0, failed_coordinates=0, kinks=0,
        max_abs_error=0.0, max_rel_error=0.0, max_error_ratio=0.0, worst=None, unused=item.unused,
        note="; ".join(notes),
    )


# -- output-space checks for layers that are linear in their own parameters ----------------------------------------

LINEAR_IN_PARAMETERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def is_linear_in_parameters(module: nn.Module) -> bool:
    """A stock Linear/Conv whose forward is the library's own (a subclass overriding forward is not trusted)."""
    return any(type(module).forward is cls.forward and isinstance(module, cls) for cls in LINEAR_IN_PARAMETERS)


LinearMap = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]


def linear_map(module: nn.Module, x: torch.Tensor) -> LinearMap:
    """``(weight, bias) -> output`` of the module at a fixed input: exactly linear in (weight, bias)."""
    if isinstance(module, nn.Linear):
        return lambda w, b: F.linear(x, w, b)
    conv: Any = module
    return lambda w, b: conv._conv_forward(x, w, b)


def parameter_space_from_output(
    module: nn.Module, x: torch.Tensor, numeric_z: torch.Tensor, error_z: torch.Tensor, has_bias: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Numeric parameter gradients and their error bounds from output-space finite differences.

    ``z = f(x; W, b)`` is exactly linear in ``(W, b)``, so ``dL/dW = J^T dL/dz`` holds exactly with ``J`` the
    layer's own (trusted, library) linear map; the numeric ``dL/dz`` carries all the finite-difference error, and
    ``|J|^T err_z`` (the same map applied to ``|x|``) bounds the error it induces in every weight.
    """
    layer: Any = module
    weight, bias = layer.weight, (layer.bias if has_bias else None)
    return _pull_back(linear_map(module, x), weight, bias, numeric_z), \
        _pull_back(linear_map(module, x.abs()), weight, bias, error_z)


def _pull_back(fn: LinearMap, weight: torch.Tensor, bias: torch.Tensor | None, cotangent: torch.Tensor) -> list[
    torch.Tensor
]:
    """``J^T cotangent`` for the parameters of a linear map, by plain autograd.

    (torch.func.vjp would do the same but imports torch._dynamo on its first call: over a second of start-up in
    every fresh CLI process.)
    """
    params = [weight.detach().requires_grad_(True)]
    if bias is not None:
        params.append(bias.detach().requires_grad_(True))
    with torch.enable_grad():
        out = fn(params[0], params[1] if bias is not None else None)
        # A scalar, not grad_outputs=: a tensor there makes autograd import sympy (0.2 s in a fresh process).
        return [g.detach() for g in torch.autograd.grad((out * cotangent).sum(), params)]
