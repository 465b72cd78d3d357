"""The shared plain-text pieces: one table layout and one parser of positive-integer lists."""

from __future__ import annotations

import pytest

from pfdeploy._text import positive_ints, text_table
from pfdeploy.errors import PfdeployError


def test_text_table_aligns_columns_and_keeps_only_the_named_ones():
    table = text_table([{"a": "x", "bb": 12, "extra": "hidden"}, {"a": "long", "bb": ""}], ["a", "bb"])
    assert table.splitlines() == ["a     bb", "----  --", "x     12", "long"]
    assert text_table([], ["op", "count"]).splitlines() == ["op  count", "--  -----"]


@pytest.mark.parametrize("text, expected", [("1,8,32", (1, 8, 32)), (" 2 , 4,", (2, 4)), ((1, 8), (1, 8))])
def test_positive_ints(text, expected):
    assert positive_ints(text, "--batch") == expected


@pytest.mark.parametrize("text", ["", "0,1", "-1", "1,x", "1.5", ","])
def test_positive_ints_refuses_anything_else_in_one_line(text):
    with pytest.raises(PfdeployError, match=r"^--preferred-batch .*positive integers, e\.g\. 8,32$"):
        positive_ints(text, "--preferred-batch", "8,32")
