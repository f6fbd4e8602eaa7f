"""The incremental stream's elastic learning rate.

Feedback batches are small and arrive continuously, so a fixed schedule either learns
too slowly or overwrites what the model knew. The elastic scale watches the loss on a
replay sample of earlier data: whenever it rises above the best value seen (by more
than a tolerance) the learning rate is multiplied by `factor`, down to a floor. It never
rises again within a run: a run is one feedback batch, short by design.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ElasticScale:
    factor: float = 0.5
    tolerance: float = 0.0  # relative rise of the replay loss that counts as forgetting
    min_scale: float = 0.05
    scale: float = 1.0
    best: float | None = None
    reductions: int = 0

    def __post_init__(self):
        if not 0 < self.factor < 1:
            raise ValueError(f"elastic_factor={self.factor}: must be within (0, 1)")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"elastic_min_scale={self.min_scale}: must be within (0, 1]")

    def observe(self, replay_loss: float) -> float:
        """Record one replay-loss measurement; return the multiplier for the learning rate."""
        if self.best is not None and replay_loss > self.best * (1 + self.tolerance):
            new_scale = max(self.min_scale, self.scale * self.factor)
            if new_scale < self.scale:
                self.reductions += 1
            self.scale = new_scale
        self.best = replay_loss if self.best is None else min(self.best, replay_loss)
        return self.scale

    def state(self) -> dict[str, float]:
        return {k: (-1.0 if v is None else float(v)) for k, v in asdict(self).items()}

    def load(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            setattr(self, key, None if key == "best" and value < 0 else (int(value) if key == "reductions" else value))
