"""Random directions over tensors too large to copy: drawn part by part, added in place, restored exactly.

A probe over every parameter of a 124M-parameter model is a float64 tensor of 1 GB; the screening and full
measurements, the noise measurement and the projection onto autograd's gradient would each hold one or more of
them, and an evaluation ``base + c * d`` another. Here a direction is only a seed: each parameter's share of it is
drawn when needed (the same signs every time), added to the parameter's working data in place for one
evaluation, and the working data is then copied back from what it was promoted from -- the model's own tensor,
so the restore is exact and costs no copy. What a probe over the whole model holds at once is one parameter's
share of one direction.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

# Entries of a tensor whose median sets the floor of its step scale (robust_scale).
MEDIAN_SAMPLE = 65536

# Entries of a part drawn at once (32 MiB of float64): what a direction holds in memory at a time.
CHUNK = 2**22
# Working tensor (by data pointer) -> the tensor it was promoted from, exactly (see working_copy.working_model).
PROMOTED_FROM: ContextVar[dict[int, torch.Tensor] | None] = ContextVar("promoted_from", default=None)


def robust_scale(base: torch.Tensor, floor: float | None = None) -> torch.Tensor:
    """Per-coordinate magnitude for steps: the value itself, but never below the tensor's typical magnitude.

    Scaling a step to the value keeps ``x + h`` representable at any magnitude (1e10 or 1e-10). The floor is the
    median magnitude, not the RMS: one huge entry (an additive attention mask of -3.4e38) would otherwise set a
    floor that makes every other entry's step enormous. Zero tensors (fresh biases) get steps of scale 1.
    ``floor`` given: that floor (one measured over several tensors together, see :func:`scale_floor`).
    """
    flat = base.detach().reshape(-1).abs().to(torch.float64)  # one new tensor (float64 already: no second)
    if not flat.numel():
        return flat
    if floor is None:
        floor = scale_floor([flat])
    return flat.clamp_(min=floor if floor > 0 else 1.0)


def scale_floor(tensors: Sequence[torch.Tensor]) -> float:
    """The median magnitude of an evenly strided sample over ``tensors`` taken as one (0.0 when all are zero).

    The same floor for a step scale as the median of everything, without sorting or concatenating millions.
    """
    total = sum(t.numel() for t in tensors)
    stride = max(1, total // MEDIAN_SAMPLE)
    sample = torch.cat([t.detach().reshape(-1)[::stride].abs().to(torch.float64) for t in tensors]) if tensors \
        else torch.empty(0, dtype=torch.float64)
    finite = sample[torch.isfinite(sample)]
    floor = float(finite.median()) if finite.numel() else 0.0
    if floor == 0.0 and finite.numel():
        nonzero = finite[finite > 0]
        floor = float(nonzero.median()) if nonzero.numel() else 0.0
    return floor


def smallest_scale(t: torch.Tensor, floor: float | None = None) -> float:
    """``robust_scale(t, floor).min()`` without a copy of ``t``: its least visible coordinate to a probe."""
    flat = t.detach().reshape(-1)
    if floor is None:
        floor = scale_floor([flat])
    smallest = min((float(flat[k : k + CHUNK].abs().min()) for k in range(0, flat.numel(), CHUNK)), default=0.0)
    return max(smallest, floor if floor > 0 else 1.0)


def random_signs(n: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` independent +-1 (int8), eight from every random byte: drawing one number per sign costs ~13 ns each,
    seconds for the joint probes of a 124M-parameter model."""
    drawn = torch.randint(0, 256, ((n + 7) // 8,), generator=generator, dtype=torch.uint8)
    bits = drawn.unsqueeze(1).bitwise_right_shift(torch.arange(8, dtype=torch.uint8)).bitwise_and_(1)
    return bits.reshape(-1)[:n].to(torch.int8).mul_(2).sub_(1)


def _equal(t: torch.Tensor, source: torch.Tensor) -> bool:
    """``t`` holds exactly ``source``'s values (in its own dtype), compared a chunk at a time."""
    a, b = t.reshape(-1), source.reshape(-1)
    return all(torch.equal(a[k : k + CHUNK], b[k : k + CHUNK].to(a.dtype)) for k in range(0, a.numel(), CHUNK))


@dataclass
class Part:
    tensor: torch.Tensor  # the working tensor (a parameter's data), perturbed in place
    source: torch.Tensor  # what it is restored from: exactly what it was promoted from
    still: torch.Tensor | None = None  # entries held still (no gradient by design)
    chunk: int = 0  # entries drawn at a time (0: CHUNK); a multiple of a row keeps pieces whole rows


class Space:
    """Tensors perturbed together in place, with one step-scale floor over all of them."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self.floor = scale_floor([p.tensor for p in parts])
        self.numel = sum(p.tensor.numel() for p in parts)
        self.buffers: dict[str, torch.Tensor] = {}  # one chunk's worth each, reused by every draw
        # <d, g> for directions (by seed) already drawn while ``gradients`` were set: see project_onto
        self.gradients: Sequence[torch.Tensor] | None = None
        self.projections: dict[int, float] = {}

    def project_onto(self, gradients: Sequence[torch.Tensor]) -> None:
        """Dot every direction drawn from now on with ``gradients`` (one per part) as it is drawn anyway."""
        self.gradients, self.projections = gradients, {}

    def chunk_buffer(self, name: str, n: int, dtype: torch.dtype) -> torch.Tensor:
        buffer = self.buffers.get(name)
        if buffer is None or buffer.numel() < n or buffer.dtype != dtype:
            buffer = self.buffers[name] = torch.empty(max(n, 1), dtype=dtype)
        return buffer[:n]

    @classmethod
    def of(cls, tensors: Sequence[torch.Tensor], stills: Sequence[torch.Tensor | None] | None = None) -> Space | None:
        """The space of ``tensors`` if every one is working data with a known exact source, else None."""
        sources = PROMOTED_FROM.get()
        if sources is None:
            return None
        parts = []
        for t, still in zip(tensors, stills or [None] * len(tensors), strict=True):
            source = sources.get(t.data_ptr()) if t.is_contiguous() and t.numel() else None
            if source is None or source.shape != t.shape or not _equal(t, source):
                return None  # not a promoted parameter, or changed since (a forward that writes its own weights)
            parts.append(Part(t.detach(), source, still))
        return cls(parts)

    def scale(self, i: int) -> torch.Tensor:
        return robust_scale(self.parts[i].tensor, self.floor)

    def min_scale(self, i: int) -> float:
        return smallest_scale(self.parts[i].tensor, self.floor)

    def directions(self, seeds: Sequence[int], factor: float = 1.0) -> Directions:
        return Directions(self, list(seeds), factor)


class Directions:
    """Dense +-1 directions over a :class:`Space`, scaled per coordinate, each known by its seed alone.

    Quacks as much like a ``[m, ...]`` tensor of directions as the measurement needs: ``len``, ``shape[0]``,
    indexing by a tensor of positions, iteration.
    """

    def __init__(self, space: Space, seeds: list[int], factor: float = 1.0) -> None:
        self.space, self.seeds, self.factor = space, seeds, factor

    @property
    def shape(self) -> tuple[int]:
        return (len(self.seeds),)

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, positions: torch.Tensor) -> Directions:
        return Directions(self.space, [self.seeds[int(i)] for i in positions.reshape(-1)], self.factor)

    def __iter__(self) -> Iterator[Direction]:
        return (Direction(self.space, seed, self.factor) for seed in self.seeds)

    def project(self, gradients: Sequence[torch.Tensor]) -> torch.Tensor:
        """``<d_k, g>`` for every direction: each part's share drawn, dotted and let go (or taken from the
        directions' evaluations, when the space was projecting onto these gradients then)."""
        out = torch.zeros(len(self.seeds), dtype=torch.float64)
        cached = self.space.projections if self.space.gradients is gradients and self.factor == 1.0 else {}
        for k, direction in enumerate(self):
            if direction.seed in cached:
                out[k] = cached[direction.seed]
                continue
            for i, g in enumerate(gradients):
                flat = g.reshape(-1)
                for where, d in direction.chunks(i):
                    out[k] += torch.dot(d.to(torch.float64), flat[where].to(torch.float64))
        return out


class Direction:
    """One direction of :class:`Directions`: its share of every part, drawn from its seed on demand."""

    def __init__(self, space: Space, seed: int, factor: float = 1.0) -> None:
        self.space, self.seed, self.factor = space, seed, factor

    def part(self, i: int) -> torch.Tensor:
        """This direction's share of part ``i``, flat, in the part's dtype (a tensor of its own)."""
        out = torch.empty(self.space.parts[i].tensor.numel(), dtype=self.space.parts[i].tensor.dtype)
        for where, d in self.chunks(i):
            out[where] = d
        return out

    def chunks(self, i: int) -> Iterator[tuple[slice, torch.Tensor]]:
        """This direction's share of part ``i`` in pieces of CHUNK entries: where each goes, and its values.

        Each piece is drawn from its own seed, so it is the same whenever it is drawn again; what a piece costs
        in memory is CHUNK entries, whatever the size of the part. A piece lives until the next is drawn (one
        buffer serves them all): use it, do not keep it.
        """
        part = self.space.parts[i]
        flat = part.tensor.reshape(-1)
        still = part.still.reshape(-1) if part.still is not None else None
        floor = self.space.floor if self.space.floor > 0 else 1.0
        size = part.chunk or CHUNK
        for j, start in enumerate(range(0, flat.numel(), size)):
            where = slice(start, min(start + size, flat.numel()))
            gen = torch.Generator().manual_seed((self.seed * 1_000_003 + i * 8191 + j) % 2**63)
            n = where.stop - where.start
            d = self.space.chunk_buffer("direction", n, flat.dtype)
            torch.abs(flat[where], out=d).clamp_(min=floor)  # robust_scale, written into the buffer
            signs = self.space.chunk_buffer("signs", n, flat.dtype)
            signs.copy_(random_signs(n, gen))  # +-1 in the direction's dtype: a same-dtype product is fast
            d.mul_(signs)
            if self.factor != 1.0:
                d.mul_(self.factor)
            if still is not None:
                d.masked_fill_(still[where], 0)
            yield where, d

    @contextmanager
    def applied(self, coefficient: float) -> Iterator[None]:
        """Every part moved by ``coefficient`` times this direction for the ``with`` block, then restored exactly."""
        try:
            gradients = self.space.gradients if self.factor == 1.0 else None
            dot = 0.0
            with torch.no_grad():
                for i, part in enumerate(self.space.parts):
                    flat = part.tensor.view(-1)
                    g = gradients[i].reshape(-1) if gradients is not None else None
                    for where, d in self.chunks(i):
                        if g is not None:
                            dot += float(torch.dot(d.to(torch.float64), g[where].to(torch.float64)))
                        flat[where].add_(d, alpha=coefficient)
            if gradients is not None:
                self.space.projections.setdefault(self.seed, dot)
            yield
        finally:
            with torch.no_grad():
                for part in self.space.parts:
                    part.tensor.copy_(part.source)
