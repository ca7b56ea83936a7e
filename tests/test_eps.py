import math

import pytest

from advbench.eps import check_budget, parse_eps
from advbench.errors import AdvbenchError


@pytest.mark.parametrize("text, value", [
    ("8/255", 8 / 255), ("0.3", 0.3), (0.3, 0.3), (1, 1.0), ("0", 0.0), ("1e-2", 0.01), (" 2 / 255 ", 2 / 255),
    (".5", 0.5), ("16/255", 16 / 255), ("1.5/3", 0.5),
])
def test_parse_eps_accepts_numbers_and_fractions(text, value):
    assert math.isclose(parse_eps(text), value, rel_tol=1e-12)


@pytest.mark.parametrize("text", [
    "abc", "-0.1", -0.1, "8/0", "8/255/2", "__import__('os')", "1/-2", "", "nan", "inf", "8 255", "0x10", True,
])
def test_parse_eps_rejects_bad_forms_naming_the_key(text):
    with pytest.raises(AdvbenchError) as err:
        parse_eps(text, key="eps")
    message = str(err.value)
    assert message.startswith("eps=") and "8/255" in message and "\n" not in message


def test_linf_budget_above_one_is_rejected_but_l2_is_not():
    with pytest.raises(AdvbenchError, match="eps=2"):
        check_budget(2.0, "linf")
    assert check_budget(2.0, "l2") == 2.0
    assert check_budget(1.0, "linf") == 1.0
