"""Errors raised by the core when a request cannot be served as asked."""

from __future__ import annotations

from typing import Any


class InputError(ValueError):
    """Invalid user input.

    ``code`` names the problem (for example ``"n_points_range"``) so that a user
    interface can show a translated message, with ``params`` filled into it.
    ``str(error)`` is always a complete English sentence for scripts and logs.

    Args:
        code: Stable identifier of the kind of problem.
        message: English message; may use ``{name}`` fields taken from ``params``.
        **params: Values that fill the message (numbers, names, short strings).
    """

    def __init__(self, code: str, message: str, **params: Any) -> None:
        self.code = code
        self.template = message
        self.params = params
        super().__init__(message.format(**params) if params else message)

    def __reduce__(self) -> tuple:
        # Pickled whole (code, message, params and a subclass's own fields), so an error
        # raised in a GPU worker process reaches the user translated, as it would in-process.
        return _restore, (type(self), self.code, self.template, self.params, dict(self.__dict__))


def _restore(cls: type, code: str, template: str, params: dict, state: dict) -> InputError:
    error = cls.__new__(cls)
    InputError.__init__(error, code, template, **params)
    error.__dict__.update(state)
    return error


def check_range(name: str, value: Any, lo: float, hi: float, *, integer: bool = False) -> float:
    """Validate that ``value`` is a finite number in ``[lo, hi]`` and return it.

    Args:
        name: Parameter name used in the message.
        value: The raw value (may come from an API caller, so anything goes).
        lo: Smallest allowed value.
        hi: Largest allowed value.
        integer: Require a whole number and return an ``int``.

    Returns:
        The value as ``float`` (or ``int`` when ``integer``).

    Raises:
        InputError: ``code="not_a_number"`` or ``code="out_of_range"``.
    """
    if isinstance(value, bool) or value is None:
        raise InputError("not_a_number", "{name} must be a number.", name=name)
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise InputError("not_a_number", "{name} must be a number.", name=name) from None
    if number != number or number in (float("inf"), float("-inf")):
        raise InputError("not_a_number", "{name} must be a number.", name=name)
    if integer and number != int(number):
        raise InputError("not_an_integer", "{name} must be a whole number.", name=name)
    if not lo <= number <= hi:
        raise InputError(
            "out_of_range", "{name} must be between {lo} and {hi} (got {value}).",
            name=name, lo=lo, hi=hi, value=_short(value),
        )
    return int(number) if integer else number


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    """Validate that ``value`` is one of ``choices`` and return it.

    Raises:
        InputError: ``code="bad_choice"``.
    """
    if not isinstance(value, str) or value not in choices:
        raise InputError(
            "bad_choice", "{name} must be one of: {choices} (got {value}).",
            name=name, choices=", ".join(choices), value=_short(value),
        )
    return value


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[: limit - 1] + "…"
