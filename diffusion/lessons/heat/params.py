"""What defines one heat-equation run, and the checks every request passes first.

Every field is validated and capped so that no input, from a slider or straight from
the API, can hang a server or exhaust its memory.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffusion.errors import InputError, check_choice, check_range
from diffusion.lessons.heat.expression import MAX_EXPRESSION_CHARS, too_long
from diffusion.lessons.heat.grid import initial_condition, make_grid

INITIAL_CONDITIONS = ("spike", "gaussian", "step", "sine", "random", "custom")
SCHEMES = ("ftcs", "crank_nicolson", "exact")
BOUNDARIES = ("dirichlet", "neumann", "periodic")
LIMITS: dict[str, tuple[float, float]] = {
    "diffusivity": (1e-9, 100.0),
    "length": (1e-3, 1e4),
    "n_points": (8, 4001),
    "t_end": (1e-9, 1e6),
    "n_steps": (1, 100_000),
    "sine_mode": (1, 100),
    "seed": (0, 2**32 - 1),
    "n_frames": (2, 201),
}
INTEGER_FIELDS = ("n_points", "n_steps", "sine_mode", "seed", "n_frames")
MAX_WORK = 100_000_000          # n_points * n_steps: a few seconds of stepping at most


@dataclass(frozen=True)
class HeatParams:
    """Everything that defines one heat-equation run (see ``LIMITS`` for ranges)."""

    initial_condition: str = "spike"
    custom_expression: str = "exp(-(x-50)**2/20) + 0.5*sin(x/5)"
    diffusivity: float = 0.1
    length: float = 100.0
    n_points: int = 1000
    t_end: float = 50.0
    n_steps: int = 5000
    scheme: str = "ftcs"
    boundary: str = "dirichlet"
    sine_mode: int = 1
    seed: int = 0
    n_frames: int = 101

    def validated(self) -> HeatParams:
        """Check every field (type, finiteness, range, choice, work cap, expression).

        Returns:
            A copy with numbers as ``float`` and whole-number fields as ``int``.

        Raises:
            InputError: codes ``bad_choice``, ``not_a_number``, ``not_an_integer``,
                ``out_of_range``, ``too_much_work``, ``not_text`` or any ``expr_*`` code.
        """
        changes: dict[str, Any] = {
            "initial_condition": check_choice("initial_condition", self.initial_condition,
                                              INITIAL_CONDITIONS),
            "scheme": check_choice("scheme", self.scheme, SCHEMES),
            "boundary": check_choice("boundary", self.boundary, BOUNDARIES),
        }
        for name, (lo, hi) in LIMITS.items():
            value = getattr(self, name)
            if isinstance(value, (str, bytes, np.bool_)):
                raise InputError("not_a_number", "{name} must be a number.", name=name)
            changes[name] = check_range(name, value, lo, hi, integer=name in INTEGER_FIELDS)
        work = changes["n_points"] * changes["n_steps"]
        if work > MAX_WORK:
            raise InputError(
                "too_much_work",
                "n_points × n_steps = {work} is more than the limit of {limit}; "
                "use fewer points or fewer time steps.", work=work, limit=MAX_WORK)
        if not isinstance(self.custom_expression, str):
            raise InputError("not_text", "{name} must be text.", name="custom_expression")
        if len(self.custom_expression) > MAX_EXPRESSION_CHARS:
            raise too_long(self.custom_expression)
        checked = dataclasses.replace(self, **changes)
        if checked.initial_condition == "custom":
            initial_condition(checked, make_grid(checked.length, checked.n_points,
                                                 checked.boundary)[0])
        return checked
