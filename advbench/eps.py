"""Safe parsing of perturbation budgets given as numbers or fractions such as ``8/255``."""
import math
import re
from fractions import Fraction

from advbench.errors import AdvbenchError

ACCEPTED = "a non-negative number (0.3, 1e-2) or a fraction of two numbers (8/255)"
# Bounded on purpose: Fraction('1e10000000') is exact, so an unbounded exponent costs minutes of CPU.
MAX_LENGTH = 40
_NUMBER = r"\s*[0-9]{0,20}\.?[0-9]{1,20}(?:[eE][-+]?[0-9]{1,3})?\s*"
_FORM = re.compile(rf"^({_NUMBER})(?:/({_NUMBER}))?$")


def parse_eps(text, key: str = "eps") -> float:
    """Parse ``text`` ('8/255', '0.3' or a number) into a float, raising AdvbenchError naming ``key``."""
    if isinstance(text, bool):
        raise AdvbenchError(f"{key}={text!r} is not a valid budget: expected {ACCEPTED}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        text = str(text)
        if len(text) > MAX_LENGTH:
            raise AdvbenchError(f"{key}={text[:20]!r}... is {len(text)} characters long: expected {ACCEPTED}, "
                                f"at most {MAX_LENGTH} characters")
        match = _FORM.match(text)
        if match is None:
            raise AdvbenchError(f"{key}={text!r} is not a valid budget: expected {ACCEPTED}")
        num, den = match.groups()
        if den is not None and float(den) == 0:
            raise AdvbenchError(f"{key}={text!r} divides by zero: expected {ACCEPTED}")
        # Fraction keeps 8/255 exact until the final float conversion.
        value = float(Fraction(num.strip()) / Fraction(den.strip())) if den else float(num)
    if not math.isfinite(value) or value < 0:
        raise AdvbenchError(f"{key}={text!r} must be finite and non-negative: expected {ACCEPTED}")
    return value


def check_budget(value: float, norm: str, key: str = "eps") -> float:
    """Reject an Linf budget above 1: images live in [0,1], so it would allow any image at all."""
    if norm == "linf" and value > 1:
        raise AdvbenchError(f"{key}={value:g} is above 1 for an Linf attack on [0,1] images: "
                            "give it in pixel units, e.g. 8/255 or 0.1")
    return value
