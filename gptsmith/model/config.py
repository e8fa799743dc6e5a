"""``GPTConfig``, the sizes of a GPT model, and its named ``PRESETS``.

Kept apart from the model code (``gptsmith.model``, which re-exports both) and free of torch, so
the command line can list presets and check sizes in its help and argument errors without the
seconds that importing torch takes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptsmith.errors import ConfigError


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of a GPT model. ``GPTConfig.from_preset("gpt2-small")`` is GPT-2's 124M model."""

    vocab_size: int = 50257
    context_length: int = 1024
    emb_dim: int = 768
    n_heads: int = 12
    n_layers: int = 12
    drop_rate: float = 0.1
    qkv_bias: bool = True  # GPT-2 has biases on the query/key/value projections
    tie_weights: bool = True  # output head shares the token embedding matrix, as in GPT-2

    def __post_init__(self) -> None:
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        if self.emb_dim % self.n_heads != 0:
            raise ConfigError(
                f"GPTConfig.emb_dim ({self.emb_dim}) must be divisible by n_heads ({self.n_heads}); "
                f"try n_heads={_nearest_divisor(self.emb_dim, self.n_heads)}"
            )
        if isinstance(self.drop_rate, bool) or not isinstance(self.drop_rate, int | float) \
                or not 0.0 <= self.drop_rate < 1.0:
            raise ConfigError(f"GPTConfig.drop_rate must be a number in [0, 1), got {self.drop_rate!r}")
        for name in ("qkv_bias", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"GPTConfig.{name} must be true or false, got {getattr(self, name)!r}")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @classmethod
    def from_preset(cls, name: str, **overrides) -> GPTConfig:
        """A named preset (see ``PRESETS``) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown model preset {name!r} (known: {', '.join(PRESETS)})")
        from gptsmith.config import replace  # the one way to apply overrides (unknown fields listed)

        return replace(PRESETS[name], source=f"overrides of preset {name!r}", **overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _nearest_divisor(n: int, target: int) -> int:
    divisors = [d for d in range(1, n + 1) if n % d == 0]
    return min(divisors, key=lambda d: abs(d - target))


PRESETS: dict[str, GPTConfig] = {
    # GPT-2 as OpenAI released it (Radford et al. 2019), context 1024.
    "gpt2-small": GPTConfig(emb_dim=768, n_heads=12, n_layers=12),
    "gpt2-medium": GPTConfig(emb_dim=1024, n_heads=16, n_layers=24),
    "gpt2-large": GPTConfig(emb_dim=1280, n_heads=20, n_layers=36),
    "gpt2-xl": GPTConfig(emb_dim=1600, n_heads=25, n_layers=48),
    # Small presets for CPU work; no dropout, since short runs underfit rather than overfit.
    "tiny": GPTConfig(context_length=128, emb_dim=128, n_heads=4, n_layers=4, drop_rate=0.0),
    "small": GPTConfig(context_length=256, emb_dim=384, n_heads=6, n_layers=6, drop_rate=0.0),
}
