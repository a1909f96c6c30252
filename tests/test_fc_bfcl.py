"""BFCL cases: reading the data kept in the repository, converting its schema dialect, and scoring under BFCL's rules."""

from __future__ import annotations

import jsonschema
import pytest

from octogate.adapters.tool_calling.evaluation.bfcl import (
    Case,
    read_cases,
    score,
    to_json_schema,
    to_openai_tools,
    value_matches,
)
from tests.conftest import REPO

DATA = REPO / "data" / "function_calling"


def test_every_kept_case_converts_to_valid_openai_tools():
    cases = read_cases(DATA / "bfcl_simple.jsonl") + read_cases(DATA / "bfcl_multiple.jsonl")
    assert len(cases) == 600
    for case in cases:
        for tool in to_openai_tools(case.functions):
            name = tool["function"]["name"]
            assert "." not in name and len(name) <= 64
            jsonschema.Draft202012Validator.check_schema(tool["function"]["parameters"])
            assert '"dict"' not in str(tool) and "'float'" not in str(tool)


def test_the_dialect_becomes_json_schema():
    bfcl = {"type": "dict", "properties": {
        "x": {"type": "float", "optional": True}, "pair": {"type": "tuple", "items": {"type": "integer"}},
        "anything": {"type": "any", "description": "d"}, "inner": {"type": "dict", "properties": {"b": {"type": "bool"}}}},
        "required": ["x"]}
    assert to_json_schema(bfcl) == {"type": "object", "properties": {
        "x": {"type": "number"}, "pair": {"type": "array", "items": {"type": "integer"}},
        "anything": {"description": "d"}, "inner": {"type": "object", "properties": {"b": {"type": "boolean"}}}},
        "required": ["x"]}


@pytest.mark.parametrize("value, acceptable, ok", [
    ("New York, NY", "new york ny", True),
    ("Paris", "London", False),
    (5, 5.0, True),
    (5.5, 5, False),
    (True, 1, False),  # a boolean is not the number 1
    ([1, 2], [1, 2], True),
    ([2, 1], [1, 2], False),
    ({"a": 1}, {"a": [1, 2]}, True),
    ({"a": 3}, {"a": [1, 2]}, False),
    ({}, {"a": ["", 1]}, True),  # an optional nested key may be absent
])
def test_value_matching(value, acceptable, ok):
    assert value_matches(value, acceptable) is ok


CASE = Case("c1", [{"role": "user", "content": "area of a 10 by 5 triangle"}],
            [{"name": "geo.triangle_area", "parameters": {"type": "dict", "properties": {
                "base": {"type": "integer"}, "height": {"type": "integer"}, "unit": {"type": "string"}},
                "required": ["base", "height"]}},
             {"name": "geo.circle_area", "parameters": {"type": "dict", "properties": {"r": {"type": "float"}}}}],
            [{"geo.triangle_area": {"base": [10], "height": [5], "unit": ["units", ""]}}])


@pytest.mark.parametrize("name, args, expected", [
    ("geo_triangle_area", {"base": 10, "height": 5}, (True, True, True)),  # optional unit absent
    ("geo_triangle_area", {"base": 10, "height": 5, "unit": "Units"}, (True, True, True)),
    ("geo_triangle_area", {"base": 10, "height": 6}, (True, True, False)),
    ("geo_triangle_area", {"base": 10}, (True, True, False)),  # required height missing
    ("geo_triangle_area", {"base": 10, "height": 5, "color": "red"}, (True, True, False)),  # not a parameter
    ("geo_circle_area", {"r": 1.0}, (True, False, False)),
    (None, None, (False, False, False)),
])
def test_scoring(name, args, expected):
    s = score(CASE, name, args)
    assert (s.called, s.right_function, s.right_arguments) == expected, s.problem
