"""What the framework integrations share: a placeholder that receives a saved state at restore
and hands it over when the framework is ready to load it."""

from __future__ import annotations

from typing import Any


class Held:
    """A Stateful stand-in for an object that does not exist yet at restore (an optimizer the
    framework builds later): restore() gives it the saved state as fresh tensors; `take()` hands
    it to the object's own `load_state_dict` when the framework loads its checkpoint."""

    def __init__(self) -> None:
        self.value: Any = None

    def state_dict(self) -> dict[str, Any]:
        return {}  # nothing live: every saved tensor comes back as a fresh one

    def load_state_dict(self, state: Any) -> None:
        self.value = state

    def take(self) -> Any:
        if self.value is None:
            raise RuntimeError("nothing was restored here")  # internal ordering, not user input
        return self.value
