"""Reading a PyTorch state_dict by key, strictly, without importing torch.

The NumPy networks are built from the same ``{name: array}`` mapping that ``nn.Module.state_dict()`` returns
(tensors or NumPy arrays: anything ``np.asarray`` accepts). Like ``load_state_dict(strict=True)``, every key must
be used and every needed key must exist, so a checkpoint of another architecture fails loudly instead of giving
wrong logits.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["StateReader"]

# Bookkeeping entries that carry no weights.
_IGNORED_SUFFIXES = ("num_batches_tracked",)


class StateReader:
    """Typed access to a state_dict that remembers which keys were read."""

    def __init__(self, state_dict: Mapping[str, Any], dtype: type = np.float32) -> None:
        self._state = state_dict
        self.dtype = dtype
        self._used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self._state

    def keys(self) -> list[str]:
        return list(self._state)

    def _get(self, key: str) -> Any:
        if key not in self._state:
            raise ValueError(f"state_dict has no {key!r}; is it a checkpoint of this architecture?")
        return self._state[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(np.shape(self._get(key)))

    def array(self, key: str) -> np.ndarray:
        """The entry as a fresh array of ``dtype``; a missing key is a ValueError naming it."""
        value = self._get(key)
        self._used.add(key)
        if hasattr(value, "detach"):  # a torch tensor: np.asarray reads it without importing torch here
            value = value.detach().cpu()
        return np.array(value, dtype=self.dtype)

    def optional(self, key: str) -> np.ndarray | None:
        return self.array(key) if key in self._state else None

    def mark_used(self, prefix: str) -> None:
        """Count every key under ``prefix`` as read (bookkeeping entries a layer does not need)."""
        self._used.update(k for k in self._state if k.startswith(prefix))

    def check_all_used(self) -> None:
        """Raise ValueError listing the keys no layer consumed (like load_state_dict's "unexpected keys")."""
        unused = sorted(k for k in self._state if k not in self._used and not k.endswith(_IGNORED_SUFFIXES))
        if unused:
            more = f" … ({len(unused)} in all)" if len(unused) > 8 else ""
            raise ValueError(f"unexpected keys in state_dict for this architecture: {unused[:8]}{more}")
