"""Server settings: batching, request limits, and label-free speed control, validated once at start."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ControlConfig:
    """Label-free speed control (see :mod:`offramp.serve.control` for the design).

    ``shadow_every``: one input in N runs through every exit (0: none) to feed the window of exit
    signals; ``window``: how many such inputs the window keeps; ``repick_every``: re-pick the threshold
    after this many served inputs (when new shadow rows came in); ``warmup``: with a target and an empty
    window, the first ``window`` inputs all run every exit, so control starts after one window;
    ``count_shadow``: hold the *compute* speed-up (shadow rows cost the full model) rather than the
    policy's exit-layer speed-up.
    """

    target_speedup: float | None = None
    shadow_every: int = 16
    window: int = 256
    repick_every: int = 64
    min_window: int = 32
    warmup: bool = True
    count_shadow: bool = True
    grid_size: int = 256

    def __post_init__(self) -> None:
        if self.target_speedup is not None:
            _check_target(self.target_speedup, "target_speedup")
            if self.count_shadow and self.shadow_every and self.target_speedup * (1 / self.shadow_every) >= 1:
                raise ValueError(
                    f"shadow_every={self.shadow_every} with target_speedup={self.target_speedup:g}: one "
                    f"input in {self.shadow_every} runs the full model, which alone caps the speed-up below "
                    f"{self.shadow_every:g}x; expected shadow_every > target_speedup"
                )
        for name in ("shadow_every", "window", "repick_every", "min_window", "grid_size"):
            value = getattr(self, name)
            low = 0 if name == "shadow_every" else 1
            if not isinstance(value, int) or value < low:
                raise ValueError(f"{name}={value!r}: expected an integer >= {low}")
        if self.min_window > self.window:
            raise ValueError(f"min_window={self.min_window} exceeds window={self.window}")


@dataclass(frozen=True)
class ServeConfig:
    """What the server accepts and how it batches. Defaults suit a small encoder on a few CPU cores."""

    name: str = "offramp"
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    #: Queued inputs (texts) past which requests get 429 "overloaded".
    max_queue: int = 2048
    max_texts: int = 256
    max_chars: int = 10_000
    max_body_bytes: int = 4 * 1024 * 1024
    #: Seconds a request may wait for its results (queue + compute) before 504.
    timeout_s: float = 30.0
    #: Inputs in the sliding window behind the realised speed-up gauge.
    speedup_window: int = 1024
    control: ControlConfig = field(default_factory=ControlConfig)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"name {self.name!r}: expected letters, digits, '-', '_' or '.'")
        for name in (
            "max_batch_size",
            "max_queue",
            "max_texts",
            "max_chars",
            "max_body_bytes",
            "speedup_window",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}={value!r}: expected a positive integer")
        if not (math.isfinite(self.max_wait_ms) and self.max_wait_ms >= 0):
            raise ValueError(f"max_wait_ms={self.max_wait_ms!r}: expected a number of milliseconds >= 0")
        if not (math.isfinite(self.timeout_s) and self.timeout_s > 0):
            raise ValueError(f"timeout_s={self.timeout_s!r}: expected a positive number of seconds")
        if self.max_queue < self.max_texts:
            raise ValueError(
                f"max_queue={self.max_queue} is below max_texts={self.max_texts}: one full request could "
                "never be queued"
            )


def _check_target(value: float, name: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 1.0):
        raise ValueError(f"{name}={value!r}: expected a speed-up ratio >= 1.0 (e.g. 2.0)")
