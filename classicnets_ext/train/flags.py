"""The valid range of each numeric ``train`` setting and the choices of each named one, written once: the CLI's
argument parsers (cli.py) and ``TrainConfig`` (the Python API) both check against them, with the same
messages. No torch import: the CLI's parsers are built before any command loads it."""
from __future__ import annotations

import math

# field: (kind, low, high, low_open); kind int: a whole number in [low, high); float: low <= x < high, or
# low < x with low_open. None stays valid where the field defaults to None (the model's recipe decides).
RANGES = {
    "epochs": (int, 1, None, False),
    "batch_size": (int, 1, None, False),
    "lr": (float, 0.0, math.inf, True),
    "momentum": (float, 0.0, 1.0, False),
    "weight_decay": (float, 0.0, math.inf, False),
    "patience": (int, 0, None, False),
    "lighting": (float, 0.0, math.inf, False),
    "val_fraction": (float, 0.0, 1.0, True),
    "image_size": (int, 1, None, False),
    "seed": (int, 0, 2 ** 63, False),
    "workers": (int, 0, None, False),
    "ensemble": (int, 1, None, False),
    "checkpoint_every": (int, 0, None, False),
    "keep": (int, 1, None, False),
    "max_steps": (int, 1, None, False),
}
CHOICES = {
    "mean": ("image", "channel", "none"),
    "std": ("channel", "none"),
    "device": ("auto", "cpu", "cuda"),
}


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def check(field: str, value):
    """``value`` if it is valid for ``field``, else ValueError naming the flag (as the CLI writes it)."""
    if field in CHOICES:
        if value not in CHOICES[field]:
            raise ValueError(f"{flag(field)} must be one of {', '.join(CHOICES[field])}, got {value!r}")
        return value
    kind, low, high, low_open = RANGES[field]
    name = flag(field)
    if kind is int:
        return _whole(name, value, low, high)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} takes a number, not {value!r}")
    if not (low < value if low_open else low <= value) or not value < high:  # NaN fails both
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low:g}" +
                         (f" and < {high:g}" if high != math.inf else "") + f", got {value}")
    return float(value)


def _whole(name: str, value, low: int, high: int | None = None) -> int:
    """``value`` if it is a whole number in [low, high) (no upper bound for None), else ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} takes a whole number, not {value!r}")
    if value < low or high is not None and value >= high:
        raise ValueError(f"{name} must be >= {low}" + (f" and < {high}" if high is not None else "") +
                         f", got {value}")
    return value


def positive_int(name: str, value) -> int:
    """``value`` if it is a whole number >= 1, else ValueError naming it: the counts of evaluate, predict and
    visualize (their CLI flags and their Python arguments alike)."""
    return _whole(name, value, 1)


def parse(field: str, text: str):
    """What ``check`` accepts, from the command line's text."""
    kind = RANGES[field][0]
    try:
        value = kind(text)
    except ValueError:
        raise ValueError(f"{flag(field)} takes {'a whole number' if kind is int else 'a number'}, not {text!r}") \
            from None
    return check(field, value)
