"""What this Python environment provides: its interpreter and installed distributions with their versions.

A worker records it when it starts (``worker_environments``), so ``GET /api/v1/environment`` can say which packages
a model may import, and a check child quotes it when a model imports something that is not there.
"""

from __future__ import annotations

import platform
from importlib import metadata

# Listed first when only a few packages are named (the ones a model most often needs).
_FIRST = ("torch", "numpy", "scipy", "einops", "transformers", "timm", "torchvision", "torchaudio")


def installed_packages() -> dict[str, str]:
    """{distribution name: version}, the usual ML packages first, then the rest by name."""
    found: dict[str, str] = {}
    for dist in metadata.distributions():
        name = (dist.metadata["Name"] or "").strip()
        if name and name.lower() not in {n.lower() for n in found}:
            found[name] = dist.version
    order = {name: i for i, name in enumerate(_FIRST)}
    return dict(sorted(found.items(), key=lambda item: (order.get(item[0].lower(), len(order)), item[0].lower())))


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"
