"""Localization: name the smallest modules whose own backward disagrees with their own forward.

Every module call of one forward pass is recorded (its inputs, the RNG state it started with, and the gradient
that reached its outputs in the backward pass). Each call is then checked in isolation: the scalar is the
recorded output gradient dotted with the module's output, so the check asks exactly "is this module's
vector-Jacobian product right at the point the model used it?". A wrong activation derivative at depth k fails
that activation's own check while the Linear layers before it pass theirs, so the blame lands on the activation,
not on the earlier layers whose gradients it corrupts. A failing module is blamed only when none of its
submodules fails (the smallest failing modules); the root is blamed when the bug is in its own forward code.
"""

from __future__ import annotations

import copy
import enum
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils._pytree import TreeSpec, keystr, tree_flatten_with_path, tree_unflatten

from ...options import CheckOptions
from ...report import Localization, ModuleCheck, TensorCheck
from ..layers import dense
from ..loss import LossFn, float_leaves
from ..rng import RngState
from ..working_copy import WorkingCopy
from .analytic import AnalyticPass
from .evaluator import LossEvaluator, Target
from .gradcheck import Checked, no_gradient_by_design, probe_together

# Argument values that are immutable: shared between replays as they are. Anything else that is not a tensor (a
# key/value cache, a config object, a list built by the caller) is deep-copied for every replay, because a call
# may mutate it (a cache appends this step's keys) and the next replay must see it as the model's call did.
_IMMUTABLE = (int, float, bool, complex, str, bytes, type(None), torch.dtype, torch.device, torch.Size, type,
              enum.Enum, slice)


@dataclass
class ModuleCall:
    """One call of a module in the recorded forward: its arguments as they were, and what reached its outputs."""

    name: str
    module: nn.Module
    call: int
    leaves: list[Any]  # flattened (args, kwargs): tensors detached copies, other values as they were
    spec: TreeSpec
    paths: list[str]  # where each leaf sat, e.g. "[0][0]" or "[1]['encoder_hidden_states']"
    differentiable: list[int]  # leaves that were float tensors in the autograd graph: checked as inputs
    rng_state: RngState
    cotangents: dict[int, torch.Tensor] = field(default_factory=dict)  # output leaf position -> dL/d(leaf)
    problem: str | None = None  # why the arguments could not be kept for a replay
    parent: int | None = None  # index (in the recorded list) of the call this one ran inside
    seconds: float = 0.0  # wall time of the call in the recorded forward (hooks of inner calls included)
    output_in_graph: bool = False  # some float output required grad: a backward through the call could run

    def input_name(self, leaf: int) -> str:
        path = self.paths[leaf]
        match = re.fullmatch(r"\[0\]\[(\d+)\]", path)
        if match:
            return f"input[{match.group(1)}]"
        match = re.fullmatch(r"\[1\]\['([^']*)'\](.*)", path)
        if match:
            return f"{match.group(1)}{match.group(2)}"
        return f"input{path.removeprefix('[0]')}"


def _freeze(value: Any) -> tuple[Any, str | None]:
    if isinstance(value, torch.Tensor):
        return value.detach().clone(), None
    if isinstance(value, _IMMUTABLE):
        return value, None
    try:
        return _detached_copy(value), None
    except Exception as exc:  # an object that refuses copying: replays share it
        return value, f"{type(value).__name__} argument cannot be copied ({type(exc).__name__})"


def _detached_copy(value: Any) -> Any:
    """A deep copy in which every tensor is a detached clone.

    A key/value cache filled during the forward holds tensors inside the autograd graph, which refuse
    ``copy.deepcopy``; the tensors reachable through containers and attributes are cloned detached first and
    handed to deepcopy in its memo, so the object itself is copied as usual around them.
    """
    memo: dict[int, Any] = {}
    seen: set[int] = set()

    def collect(obj: Any, depth: int) -> None:
        if depth > 8 or id(obj) in seen or isinstance(obj, _IMMUTABLE):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            memo[id(obj)] = obj.detach().clone()
            return
        if isinstance(obj, dict):
            children: Any = obj.values()
        elif isinstance(obj, list | tuple | set):
            children = obj
        else:
            children = getattr(obj, "__dict__", {}).values()
        for child in children:
            collect(child, depth + 1)

    collect(value, 0)
    return copy.deepcopy(value, memo)


class _CallAt(nn.Module):
    """One recorded call of a module, as a function of its differentiable tensor arguments."""

    def __init__(self, rec: ModuleCall):
        super().__init__()
        self.inner = rec.module
        self.rec = rec

    def forward(self, *float_args: torch.Tensor) -> Any:
        rec = self.rec
        leaves = [v if isinstance(v, (torch.Tensor, *_IMMUTABLE)) else _fresh(v) for v in rec.leaves]
        for pos, t in zip(rec.differentiable, float_args, strict=True):
            leaves[pos] = t.clone()  # a clone lets in-place modules (ReLU(inplace=True)) run on a leaf
        args, kwargs = tree_unflatten(leaves, rec.spec)
        return self.inner(*args, **kwargs)


def _fresh(value: Any) -> Any:
    try:
        return _detached_copy(value)
    except Exception:
        return value


class _Projection:
    """Loss of an isolated module call: recorded output gradients dotted with its outputs."""

    def __init__(self, cotangents: dict[int, torch.Tensor]) -> None:
        self.cotangents = cotangents

    def __call__(self, output: Any, *_inputs: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for pos, leaf in enumerate(float_leaves(output)):
            cot = self.cotangents.get(pos)
            if cot is not None:
                term = (leaf * cot).sum()
                total = term if total is None else total + term
        assert total is not None
        return total


def record_calls(work: WorkingCopy, loss: LossFn, seed: int) -> list[ModuleCall]:
    """One seeded forward + backward with every module call recorded (arguments, RNG state, output gradients)."""
    calls: list[ModuleCall] = []
    counts: dict[str, int] = {}
    stack: dict[int, list[ModuleCall]] = {}
    active: list[int] = []  # indices of the calls running now, innermost last
    handles = []

    def pre(name: str) -> Callable[..., None]:
        def hook(m: nn.Module, args: tuple, kwargs: dict) -> None:
            n = counts.get(name, 0)
            counts[name] = n + 1
            flat, spec = tree_flatten_with_path((args, kwargs))
            leaves, problems = [], []
            for _path, value in flat:
                frozen, problem = _freeze(value)
                leaves.append(frozen)
                if problem:
                    problems.append(problem)
            differentiable = [
                i for i, (_p, v) in enumerate(flat)
                if isinstance(v, torch.Tensor) and v.is_floating_point() and v.requires_grad
            ]
            rec = ModuleCall(name, m, n, leaves, spec, [keystr(p) for p, _v in flat], differentiable,
                             work.rng.like(), problem="; ".join(problems) or None,
                             parent=active[-1] if active else None)
            stack.setdefault(id(m), []).append(rec)
            active.append(len(calls))
            calls.append(rec)
            rec.seconds = -time.perf_counter()
        return hook

    def post(m: nn.Module, _args: tuple, _kwargs: dict, out: Any) -> None:
        rec = stack[id(m)].pop()
        rec.seconds += time.perf_counter()
        if active:
            active.pop()
        for pos, leaf in enumerate(float_leaves(out)):
            if leaf.requires_grad:
                rec.output_in_graph = True
                leaf.register_hook(lambda g, pos=pos, rec=rec: rec.cotangents.__setitem__(pos, g.detach().clone()))

    for name, m in work.module.named_modules():
        handles.append(m.register_forward_pre_hook(pre(name), with_kwargs=True))
        handles.append(m.register_forward_hook(post, with_kwargs=True))
    for p in work.module.parameters():
        if p.requires_grad:  # only the output gradients are kept: a parameter's gradient is let go as it lands
            handles.append(p.register_post_accumulate_grad_hook(_drop_grad))
    try:
        work.rng.restore()
        args = work.leaf_inputs()
        value = loss(work.module(*args), *args)
        if value.requires_grad:
            value.backward()  # as training runs it: an inner backward of a reversible layer works too
    finally:
        for h in handles:
            h.remove()
        for p in work.module.parameters():
            p.grad = None
    return calls


def _drop_grad(p: torch.Tensor) -> None:
    p.grad = None


def check_call(
    rec: ModuleCall, opts: CheckOptions, dtype: torch.dtype, parameters_judged: bool = False
) -> tuple[ModuleCheck | None, int]:
    """Probe one module call's VJP w.r.t. its differentiable tensor arguments and its parameters.

    Returns the verdict and the evaluations it spent. The float inputs are probed first, each on its own (a
    module's forward with one small activation moved), the parameters of the call's subtree together last, and
    the first failing group settles the call: which group failed is what the report says. ``parameters_judged``
    says the parameters were already compared at this very call (by the local check of a module whose subtree
    owns no other parameter): they are not probed again.
    """
    if not rec.cotangents or all(float(c.abs().max()) == 0 for c in rec.cotangents.values() if c.numel()):
        return None, 0  # nothing flowed back through this call: it cannot corrupt any gradient
    wrapper = _CallAt(rec)
    float_args = tuple(rec.leaves[i] for i in rec.differentiable)
    projection = _Projection(rec.cotangents)
    params = [(n, p) for n, p in wrapper.named_parameters() if p.requires_grad]
    if not params and not float_args:
        return None, 0
    rec.rng_state.restore()
    leaves = tuple(a.detach().requires_grad_(True) for a in float_args)
    value = projection(wrapper(*leaves))
    grads = [None if g is None else dense(g)
             for g in torch.autograd.grad(value, [p for _, p in params] + list(leaves), allow_unused=True)]
    evaluator = LossEvaluator(wrapper, float_args, projection, opts.seed, chunk_size=opts.chunk_size,
                              memory_budget_bytes=opts.memory_budget_bytes,
                              rng_state=rec.rng_state)
    if abs(float(value.detach()) - evaluator.base_loss) > 1e-6 * max(evaluator.loss_scale, 1e-30):
        raise ReplayError("re-running the call does not reproduce its recorded output")
    probe_opts = opts.model_copy(update={"mode": "fast", "probes": 2})
    gen = torch.Generator().manual_seed(opts.seed + 104729 + rec.call)
    failures, worst_abs, worst_rel, worst_ratio, probes = [], 0.0, 0.0, 0.0, 0
    by_design = no_gradient_by_design(wrapper)
    evaluator.share_noise = True
    params_items = [
        Checked(n.removeprefix("inner."), "parameter", Target("parameter", n, p.detach()), _f64(g, p), g is None,
                *by_design.get(n, (None, None)))
        for (n, p), g in zip(params, grads[: len(params)], strict=True)
    ]
    input_items = [
        Checked(rec.input_name(leaf), "input", Target("input", f"input[{i}]", a, input_index=i), _f64(g, a),
                g is None)
        for i, (leaf, a, g) in enumerate(zip(rec.differentiable, float_args, grads[len(params):], strict=True))
    ]
    # Each float input on its own, then every parameter of the call's subtree together (a module's forward costs
    # the same whichever moves): a failure says which input, or the parameters.
    groups: list[tuple[str, list[Checked]]] = [(item.name, [item]) for item in input_items]
    if params_items and not parameters_judged:
        groups.append(("its parameters", params_items))
    for label, items in groups:
        result, _each = probe_together(evaluator, items, probe_opts, dtype, gen)
        probes += result.probes
        worst_abs, worst_rel = max(worst_abs, result.max_abs_error), max(worst_rel, result.max_rel_error)
        worst_ratio = max(worst_ratio, result.max_error_ratio or 0.0)
        if not result.passed:
            failures.append(f"gradient w.r.t. {label} (rel err {result.max_rel_error:.2e})")
            break
    return ModuleCheck(
        module=rec.name, type=type(rec.module).__name__, call=rec.call, passed=not failures,
        max_abs_error=worst_abs, max_rel_error=worst_rel, max_error_ratio=worst_ratio, probes=probes, blamed=False,
        detail="; ".join(failures) or None, defined_in=_defined_in(rec.module),
    ), evaluator.evaluations


def _defined_in(module: torch.nn.Module) -> str | None:
    """Where the module's class comes from, so a failure names the repository file to open; None for torch's."""
    name = type(module).__module__
    return None if name == "torch" or name.startswith("torch.") else name


class ReplayError(RuntimeError):
    """A recorded module call could not be re-run as the model made it."""


def _f64(grad: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(like.shape, dtype=torch.float64) if grad is None else grad.detach().to(torch.float64)


# Where bisection of the module tree finds no failing call, every remaining call is checked on its own for at most
# this many training steps of the model (timed on the recorded forward and backward), and never less than
# SWEEP_MIN_S: a small model's step is a millisecond, less than the Python overhead of checking one call.
SWEEP_BUDGET_STEPS = 300
SWEEP_MIN_S = 20.0
# A call under a failing call that has no float input and takes at least this share of its parent's forward time
# is not measured first: only its parameters could be probed, through nearly the whole of its parent, at nearly
# the cost of the parent's measurement and to answer nearly the same question (the inner model of an LM wrapper,
# the transformer of a GPT-2, fed token ids). Its submodule calls are checked instead; it is measured only when
# none of them fails. A call with float inputs is cheap to judge: its inputs are probed first.
INFER_SHARE = 0.5


@dataclass
class Known:
    """What the gradient check already measured, so localization does not measure it again.

    ``root_failed`` (why) says the whole model's own call fails (its joint probes or an input's check through the
    whole model did): at 124M parameters measuring it again is a minute. ``local`` is each parameter's verdict from
    its own module's local check: a call whose subtree owns no other parameter is not probed for them again, and
    a module called once whose own parameters failed there fails, with every call it runs inside. ``starved``
    names the parameters the loss depends on (finite differences moved it) that got no gradient at all.
    """

    root_failed: str | None = None
    local: dict[str, TensorCheck] = field(default_factory=dict)
    starved: set[str] = field(default_factory=set)


def localize(work: WorkingCopy, loss: LossFn, opts: CheckOptions, analytic: AnalyticPass,
             known: Known | None = None) -> Localization:
    """Name the smallest module calls whose own backward is wrong, by bisection of the module tree. Never raises.

    The tree is searched from the top: a call's submodule calls are checked only when the call itself fails (or
    cannot be re-run alone), so a model of N calls with one faulty module costs about depth x branching checks,
    not N. A failing call none of whose submodule calls fails is blamed: the bug is in its own forward code.
    Where the search from the top finds nothing (a fault too small for its parents' tolerances to see), the
    remaining calls are checked on their own, within a budget of training steps. What ``known`` holds (see
    :class:`Known`) is taken as measured.
    """
    known = known or Known()
    with torch.random.fork_rng(devices=[]):
        started = time.perf_counter()
        try:
            calls = record_calls(work, loss, opts.seed)
        except Exception as exc:
            return Localization(performed=False, note=f"the forward could not be recorded for localization "
                                f"({type(exc).__name__}: {_first_line(exc)})")
        search = _Bisection(work, opts, calls, known, step_s=time.perf_counter() - started)
        search.run()
    return search.localization()


class _Bisection:
    """The search of :func:`localize` over one recorded forward: which calls were checked, and what they cost."""

    def __init__(self, work: WorkingCopy, opts: CheckOptions, calls: list[ModuleCall], known: Known,
                 step_s: float) -> None:
        self.work, self.opts, self.calls, self.step_s = work, opts, calls, step_s
        self.children: dict[int | None, list[int]] = {}
        for i, rec in enumerate(calls):
            self.children.setdefault(rec.parent, []).append(i)
        self.checked: dict[int, ModuleCheck | None] = {}
        self.unreplayable: list[str] = []
        self.evaluations = 0
        self.searched = 0
        self.swept_out: int | None = None  # calls the sweep left unchecked when its budget ran out
        self.names = {id(p): n for n, p in work.trainable_parameters()}
        self.local = known.local
        self.failing: dict[int, ModuleCheck] = {}
        self._known_failing(known)
        self.unconfirmed: list[int] = []  # failing only by inference: measured unless a submodule call fails

    def _parameters(self, rec: ModuleCall, recurse: bool) -> list[str]:
        return [self.names[id(p)] for _n, p in rec.module.named_parameters(recurse=recurse) if id(p) in self.names]

    def _fail(self, i: int, why: str, measured: TensorCheck | None = None) -> None:
        """Call i fails without being probed here: ``measured`` is the comparison that saw it, if any."""
        rec = self.calls[i]
        self.failing[i] = ModuleCheck(
            module=rec.name, type=type(rec.module).__name__, call=rec.call, passed=False,
            max_abs_error=measured.max_abs_error if measured else 0.0,
            max_rel_error=measured.max_rel_error if measured else 0.0,
            max_error_ratio=measured.max_error_ratio if measured else None,
            probes=0, blamed=False, detail=why, defined_in=_defined_in(rec.module))

    def _known_failing(self, known: Known) -> None:
        """Calls the check already saw fail: the root, and the calls around a failing local check."""
        per_module: dict[int, int] = {}
        for rec in self.calls:
            per_module[id(rec.module)] = per_module.get(id(rec.module), 0) + 1
        for i, rec in enumerate(self.calls):
            if known.root_failed is not None and rec.parent is None and rec.module is self.work.module:
                self._fail(i, known.root_failed)
            bad = [self.local[n] for n in self._parameters(rec, recurse=False) if n in self.local
                   and not self.local[n].passed]
            if not bad or per_module[id(rec.module)] > 1:  # a module called twice: which call failed is unknown
                continue
            worst = max(bad, key=lambda t: t.max_error_ratio or 0.0)
            self._fail(i, f"gradient w.r.t. its own parameters (its local check failed: "
                          f"{', '.join(t.name for t in bad[:3])})", worst)
            parent = rec.parent
            while parent is not None:
                if parent not in self.failing:
                    self._fail(parent, f"runs {rec.name}, whose own parameters failed their local check")
                parent = self.calls[parent].parent
        self._starved_calls(known.starved)

    def _starved_calls(self, starved: set[str]) -> None:
        """The outermost calls whose parameters got no gradient because their output was never in the graph.

        Such a call's backward could not run, so it cannot be probed; the cause is how it was called (the classic
        case: a block under a reentrant checkpoint whose inputs do not require grad, behind a frozen embedding,
        runs without autograd). It is the call to name, not the root that runs it. A call whose output was in the
        graph but got no gradient was cut off by the code using it: that code is the parent's, left to it.
        """
        for i, rec in enumerate(self.calls):
            names = [n for n in self._parameters(rec, recurse=True) if n in starved]
            parent = rec.parent
            if not names or rec.output_in_graph or (parent is not None and not self.calls[parent].output_in_graph):
                continue
            inputs = "none of its inputs requires grad" if not rec.differentiable else "it ran without autograd"
            self._fail(i, f"its parameters get no gradient although the loss depends on them "
                          f"({', '.join(names[:3])}{' ...' if len(names) > 3 else ''}): no gradient reached its "
                          f"inputs, {inputs}, so its output was not in the autograd graph (a reentrant checkpoint "
                          f"whose inputs do not require grad does this)")

    def run(self) -> None:
        queue = list(self.children.get(None, []))
        while queue:
            i = queue.pop(0)
            if self._visit(i):
                queue.extend(self.children.get(i, []))
        for i in sorted(self.unconfirmed, reverse=True):  # innermost first: a confirmed pass frees its parent
            if not any(self._fails(j) for j in self._descendants(i)):
                self._measure(i)
        self.searched = len(self.checked)
        if not any(self._fails(i) for i in self.checked):
            self._sweep()

    def _sweep(self) -> None:
        """Every call the bisection did not reach, on its own, while the budget lasts."""
        budget = max(SWEEP_BUDGET_STEPS * self.step_s, SWEEP_MIN_S)
        started = time.perf_counter()
        rest = [i for i in range(len(self.calls)) if i not in self.checked]
        for k, i in enumerate(rest):
            if time.perf_counter() - started > budget:
                self.swept_out = len(rest) - k
                return
            self._measure(i)

    def _fails(self, i: int) -> bool:
        result = self.checked.get(i)
        return result is not None and not result.passed

    def _descendants(self, i: int) -> list[int]:
        found, stack = [], list(self.children.get(i, []))
        while stack:
            j = stack.pop()
            found.append(j)
            stack.extend(self.children.get(j, []))
        return found

    def _visit(self, i: int) -> bool:
        """Check call i; whether its submodule calls need checking (it failed or could not be judged)."""
        rec = self.calls[i]
        parent = rec.parent
        if i not in self.failing and self.children.get(i) and not rec.differentiable and parent is not None and (
                self._fails(parent) and rec.seconds >= INFER_SHARE * self.calls[parent].seconds):
            self._fail(i, f"not measured: most of the forward time of {self.calls[parent].name or '(root)'}, "
                          f"which fails")
            self.unconfirmed.append(i)
        if i in self.failing:
            self.checked[i] = self.failing[i]
            return True
        return self._measure(i)

    def _measure(self, i: int) -> bool:
        rec = self.calls[i]
        own, subtree = self._parameters(rec, recurse=False), self._parameters(rec, recurse=True)
        judged = bool(subtree) and set(own) == set(subtree) and all(n in self.local and self.local[n].passed
                                                                      for n in own)
        try:
            self.checked[i], spent = check_call(rec, self.opts, self.work.dtype, parameters_judged=judged)
        except Exception as exc:
            why = f"{type(exc).__name__}: {_first_line(exc)}"
            if rec.problem:
                why = f"{why}; {rec.problem}"
            self.unreplayable.append(f"{rec.name or '(root)'} call {rec.call} ({why})")
            self.checked[i] = None
            return True
        self.evaluations += spent
        return self._fails(i)

    def localization(self) -> Localization:
        results = [r for _i, r in sorted(self.checked.items()) if r is not None]
        failing = [r for r in results if not r.passed]
        for r in failing:
            prefix = f"{r.module}." if r.module else ""
            r.blamed = not any(o is not r and o.module.startswith(prefix) and o.module != r.module for o in failing)
        faulty = list(dict.fromkeys(r.module for r in failing if r.blamed))
        notes = []
        if failing and self.searched < len(self.calls):
            notes.append(f"bisection of the module tree: {self.searched} of {len(self.calls)} module calls checked "
                         f"(the submodules of passing calls were not needed)")
        if not failing:
            notes.append("every module's own backward matches its forward at the recorded point; the error arises "
                         "between modules (e.g. tensors modified in place or parameters read outside their module)")
        if self.swept_out:
            notes.append(f"{self.swept_out} module call(s) were left unchecked: checking every call on its own "
                         f"stopped at its budget of {SWEEP_BUDGET_STEPS} training steps")
        if self.unreplayable:
            notes.append(f"{len(self.unreplayable)} module call(s) could not be re-run on their own and were judged "
                         f"through their submodules: {'; '.join(self.unreplayable[:5])}"
                         f"{' ...' if len(self.unreplayable) > 5 else ''}")
        return Localization(performed=True, faulty_modules=faulty, modules=results, calls_recorded=len(self.calls),
                            calls_checked=len(self.checked), evaluations=self.evaluations,
                            note=" ".join(notes) or None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__
