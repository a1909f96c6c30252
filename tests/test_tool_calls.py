"""Tool calling and response_format on the embedded model: schema handling, grammars, and the real SDK loop."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest

from octogate.adapters.tool_calling.grammar import call_grammar_text, grammar_view
from octogate.adapters.tool_calling.parsing import parse_calls
from octogate.core.errors import UpstreamError
from octogate.core.json_schema import normalise, validation_error
from octogate.core.tool_plan import ToolPlan, plan_tools
from tests.conftest import default_graph_gateway, streamed_tool_calls

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "default": "celsius"}},
        "required": ["city"]}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two integers",
    "parameters": {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
BOOKING = {"type": "function", "function": {
    "name": "book_trip", "description": "Book a trip for travellers",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["travellers", "class", "when"],
                   "properties": {
                       "travellers": {"type": "array", "minItems": 1, "maxItems": 3, "items": {
                           "type": "object", "required": ["name", "age"], "additionalProperties": False,
                           "properties": {"name": {"type": "string", "maxLength": 20},
                                          "age": {"type": "integer", "minimum": 0, "maximum": 30}}}},
                       "class": {"type": "string", "enum": ["economy", "business"]},
                       "when": {"anyOf": [{"type": "string", "format": "date"}, {"type": "null"}]},
                       "notes": {"type": ["string", "null"]}}}}}
TOOLS = [WEATHER, ADD]
BY_NAME = {"get_weather": WEATHER, "add": ADD}
SMALL = dict(temperature=0, seed=3, max_tokens=80)
WEATHER_Q = [{"role": "user", "content": "What is the weather in Paris?"}]


def fn_schema(tool):
    return tool["function"]["parameters"]


# ---------------------------------------------------------------------------------------------- unit
def test_bfcl_dialect_is_normalised():
    s = normalise({"type": "dict", "properties": {
        "x": {"type": "float"}, "n": {"type": "int"}, "s": {"type": "str"}, "b": {"type": "bool"},
        "pair": {"type": "tuple", "items": {"type": "integer"}}, "l": {"type": "list", "items": {"type": "String"}},
        "v": {"type": "any", "description": "anything"}}, "required": ["x", "v"]}, "p", root_object=True)
    props = s["properties"]
    assert s["type"] == "object"
    assert [props[k].get("type") for k in "x n s b pair l v".split()] == [
        "number", "integer", "string", "boolean", "array", "array", None]
    assert props["l"]["items"]["type"] == "string"
    assert validation_error(s, {"x": 1.5, "v": [1, "a"]}) is None
    assert validation_error(s, {"x": "no", "v": 1}) is not None


@pytest.mark.parametrize("schema, param", [
    ({"type": "array"}, "P.type"),
    ({"type": "object", "properties": {"a": {"type": "strng"}}}, "P.properties.a.type"),
    ({"type": "object", "properties": {"a": {"type": "string", "enum": ["x", 3]}}}, "P.properties.a.enum[1]"),
    ({"type": "object", "properties": {"a": {"type": "array", "items": {"type": "object", "properties": {
        "b": {"type": ["integer", "bogus"]}}}}}}, "P.properties.a.items.properties.b.type[1]"),
    ({"type": "object", "properties": {"a": {"anyOf": []}}}, "P.properties.a.anyOf"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, "P.properties.a.not"),
    ({"type": "object", "properties": {"a": {"type": "string", "pattern": "(("}}}, "P.properties.a.pattern"),
    ({"type": "object", "properties": {"a": {"type": "string", "minLength": -1}}}, "P.properties.a.minLength"),
    ({"type": "object", "properties": {"a": {"$ref": "#/$defs/missing"}}}, "P.properties.a.$ref"),
    ({"type": "object", "$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}},
      "properties": {"a": {"$ref": "#/$defs/n"}}}, "P.properties.a.properties.next.$ref"),
    ({"type": "object", "required": ["a", "a"], "properties": {"a": {}}}, "P.required"),
    ({"type": "object", "additionalProperties": False, "required": ["zz"], "properties": {}}, "P.required[0]"),
    ("not a schema", "P"),
])
def test_bad_schemas_name_the_exact_param(schema, param):
    with pytest.raises(UpstreamError) as err:
        normalise(schema, "P", root_object=True)
    assert err.value.status == 400 and err.value.code == "invalid_schema"
    assert err.value.param == param


@pytest.mark.parametrize("payload, param", [
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "retrieval", "function": {"name": "f"}}]}, "tools[0].type"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice.function.name"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tools": [{"type": "custom", "custom": {"name": "c", "format": {"type": "grammar", "grammar": {
        "syntax": "lark", "definition": "start: /a/"}}}}]}, "tools[0].custom.format.grammar.syntax"),
    ({"tools": [{"type": "custom", "custom": {"name": "c", "format": {"type": "grammar", "grammar": {
        "syntax": "regex", "definition": "(?<=a)b"}}}}]}, "tools[0].custom.format.grammar.definition"),
    ({"tools": [{"type": "custom", "custom": {"name": "has space"}}]}, "tools[0].custom.name"),
    ({"tools": [WEATHER, {"type": "custom", "custom": {"name": "get_weather"}}]}, "tools[1].custom.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "custom", "custom": {"name": "add"}}}, "tool_choice.custom.name"),
    ({"tools": TOOLS, "tool_choice": {"type": "allowed_tools", "allowed_tools": {"mode": "auto", "tools": [
        {"type": "function", "function": {"name": "nope"}}]}}}, "tool_choice.allowed_tools.tools[0]"),
    ({"tools": TOOLS, "n": 2}, "n"),
])
def test_bad_tool_requests_name_the_param(payload, param):
    with pytest.raises(UpstreamError) as err:
        plan_tools(payload)
    assert err.value.param == param


def test_tool_choice_decides_the_plan():
    assert plan_tools({"tools": TOOLS, "tool_choice": "none"}) is None
    assert plan_tools({"tools": TOOLS}).mode == "auto" and plan_tools({"tools": TOOLS}).parallel
    named = plan_tools({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "add"}}})
    assert (named.mode, [f.name for f in named.functions], named.parallel) == ("named", ["add"], False)
    assert plan_tools({"tools": TOOLS, "parallel_tool_calls": False}).parallel is False


def test_grammar_ties_each_name_to_its_own_arguments():
    text = call_grammar_text([("get_weather", normalise(fn_schema(WEATHER), "p")),
                              ("add", normalise(fn_schema(ADD), "p"))], parallel=False)
    rules = dict(line.split(" ::= ", 1) for line in text.splitlines())
    assert rules["root"] == "call" and rules["call"] == "fn0-call | fn1-call"
    assert '"\\"get_weather\\""' in rules["fn0-call"] and "fn0-args" in rules["fn0-call"]
    assert '"\\"add\\""' in rules["fn1-call"] and "fn1-args" in rules["fn1-call"]
    assert '"\\"celsius\\""' in rules["fn0-args-unit"]
    assert "\\x00-\\x1F" in rules["char"]  # no raw control characters inside JSON strings
    parallel = call_grammar_text([("add", normalise(fn_schema(ADD), "p"))], parallel=True)
    assert '"["' in dict(line.split(" ::= ", 1) for line in parallel.splitlines())["root"]


def test_a_chosen_function_opens_the_call():
    functions = [("get_weather", normalise(fn_schema(WEATHER), "p")), ("add", normalise(fn_schema(ADD), "p"))]
    rules = dict(line.split(" ::= ", 1) for line in call_grammar_text(functions, False, first="add").splitlines())
    assert rules["root"] == "fn1-call"
    rules = dict(line.split(" ::= ", 1) for line in call_grammar_text(functions, True, first="add").splitlines())
    assert rules["root"].startswith("fn1-call | ") and '"[" space fn1-call ("," space call)' in rules["root"]


def test_the_function_is_chosen_by_scoring_every_offered_name():
    from llama_cpp import Llama

    from octogate.adapters.tool_calling.decoding import choose_function
    from octogate.adapters.tool_calling.prompt import tools_system_text
    from octogate.core.llama_runtime import bundled_gguf_path

    def area(shape, of):
        return {"type": "function", "function": {"name": f"{shape}_area", "description": f"Area of a {shape} given {of}",
                "parameters": {"type": "object", "properties": {"size": {"type": "number"}}}}}

    llm = Llama(model_path=str(bundled_gguf_path()), n_ctx=1024, verbose=False)
    try:
        for tools in ([area("circle", "its radius"), area("rectangle", "its sides")],
                      [area("rectangle", "its sides"), area("circle", "its radius")]):
            plan = plan_tools({"tools": tools, "tool_choice": "required"})
            for question, expected in (("What is the area of a circle of radius 3?", "circle_area"),
                                       ("How big is a rectangle 4 by 5?", "rectangle_area")):
                prompt = (f"<|im_start|>system\n{tools_system_text(plan)}<|im_end|>\n<|im_start|>user\n{question}"
                          "<|im_end|>\n<|im_start|>assistant\n")
                tokens = llm.tokenize(prompt.encode(), add_bos=False, special=True)
                assert choose_function(llm, tokens, plan, question) == expected, (question, tools)
    finally:
        llm.close()


def test_grammar_view_spells_out_unions_and_small_ranges():
    s = normalise(fn_schema(BOOKING), "p")
    view = grammar_view(s)
    assert view["properties"]["notes"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert view["properties"]["travellers"]["items"]["properties"]["age"] == {"enum": list(range(31))}
    assert "description" not in json.dumps(grammar_view(normalise(fn_schema(WEATHER), "p")))


def test_parse_calls_rejects_what_the_schema_rejects():
    plan = ToolPlan([f for f in plan_tools({"tools": TOOLS}).functions], "auto", parallel=False)
    assert parse_calls('{"name": "add", "arguments": {"a": 1, "b": 2}}', plan) == [("add", {"a": 1, "b": 2})]
    for bad in ['{"name": "add", "arguments": {"a": 1}}', '{"name": "sub", "arguments": {}}',
                '{"name": "add", "arguments": {"a": 1, "b": 2, "c": 3}}', '[{"name": "add", "arguments": '
                '{"a": 1, "b": 2}}, {"name": "add", "arguments": {"a": 1, "b": 2}}]', '{"name": "add"']:
        with pytest.raises(ValueError):
            parse_calls(bad, plan)


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    # the general path: tools listed in the prompt (toolsets: test_toolsets.py)
    gw = default_graph_gateway(tmp_path_factory.mktemp("tools"), toolsets=False)
    yield gw
    gw.stop()


@pytest.fixture()
def client(embedded) -> openai.OpenAI:
    return embedded.client(timeout=180)


def _args(call, tool):
    args = json.loads(call.function.arguments)
    jsonschema.validate(args, fn_schema(tool))
    return args


def test_the_sdk_tool_loop_ends_in_a_text_answer(client):
    messages = list(WEATHER_Q)
    first = client.chat.completions.create(model="general", messages=messages, tools=TOOLS, **SMALL)
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert _args(call, WEATHER)["city"] == "Paris"
    messages.append(choice.message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps({"celsius": 21, "sky": "sunny"})})
    final = client.chat.completions.create(model="general", messages=messages, tools=TOOLS, **SMALL)
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.tool_calls is None
    assert final.choices[0].message.content.strip()
    assert final.usage.prompt_tokens > first.usage.prompt_tokens  # the call and its result are in the prompt


def test_auto_answers_in_text_when_no_function_fits(client):
    r = client.chat.completions.create(model="general", tools=TOOLS, **SMALL,
                                       messages=[{"role": "user", "content": "Write a haiku about spring."}])
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    assert r.choices[0].message.content


def test_none_never_calls(client):
    r = client.chat.completions.create(model="general", messages=WEATHER_Q, tools=TOOLS, tool_choice="none", **SMALL)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content


def test_required_always_calls(client):
    for text in ("Hi!", "Write a haiku about spring."):
        r = client.chat.completions.create(model="general", tools=TOOLS, tool_choice="required", **SMALL,
                                           messages=[{"role": "user", "content": text}])
        calls = r.choices[0].message.tool_calls
        assert r.choices[0].finish_reason == "tool_calls" and calls
        for call in calls:
            _args(call, BY_NAME[call.function.name])


def test_a_named_choice_forces_that_function_once(client):
    r = client.chat.completions.create(model="general", messages=WEATHER_Q, tools=TOOLS, **SMALL,
                                       tool_choice={"type": "function", "function": {"name": "add"}})
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["add"]
    args = _args(calls[0], ADD)
    assert isinstance(args["a"], int) and isinstance(args["b"], int)


def test_parallel_tool_calls_false_gives_exactly_one_call(client):
    r = client.chat.completions.create(
        model="general", tools=TOOLS, tool_choice="required", parallel_tool_calls=False, **SMALL,
        messages=[{"role": "user", "content": "Weather in Paris, in London and in Rome, please, then add 2 and 3."}])
    assert len(r.choices[0].message.tool_calls) == 1


def test_streamed_calls_accumulate_into_valid_json(client, embedded):
    stream = client.chat.completions.create(model="general", messages=WEATHER_Q, tools=TOOLS, stream=True,
                                            tool_choice="required", stream_options={"include_usage": True}, **SMALL)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    calls = streamed_tool_calls(chunks)
    assert calls and all(slot["id"] and slot["id"].startswith("call_") for slot in calls.values())
    fragments = sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls)
    assert fragments > len(calls)  # arguments arrive in pieces, as OpenAI streams them
    for slot in calls.values():
        jsonschema.validate(json.loads(slot["arguments"]), fn_schema(BY_NAME[slot["name"]]))
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage.completion_tokens > 0
    # The SDK's own accumulation agrees.
    with client.beta.chat.completions.stream(model="general", messages=WEATHER_Q, tools=TOOLS,
                                             tool_choice="required", **SMALL) as s:
        final = s.get_final_completion()
    call = final.choices[0].message.tool_calls[0]
    jsonschema.validate(json.loads(call.function.arguments), fn_schema(BY_NAME[call.function.name]))


def test_complex_schemas_always_validate(client):
    for seed in (1, 2):
        r = client.chat.completions.create(
            model="general", tools=[BOOKING, WEATHER],
            tool_choice={"type": "function", "function": {"name": "book_trip"}},
            messages=[{"role": "user", "content": "Book a business trip for Ann, 12, and Bob, 9, on 2025-06-01."}],
            temperature=0.8, seed=seed, max_tokens=120)
        args = _args(r.choices[0].message.tool_calls[0], BOOKING)
        assert args["class"] in ("economy", "business")


def test_bfcl_dialect_schemas_are_accepted(client):
    tool = {"type": "function", "function": {"name": "calc.area".replace(".", "_"), "description": "Area of a shape",
            "parameters": {"type": "dict", "properties": {
                "base": {"type": "float"}, "sides": {"type": "tuple", "items": {"type": "integer"}},
                "label": {"type": "any"}, "unit": {"type": "string", "enum": ["cm", "m"]}},
                "required": ["base", "sides"]}}}
    r = client.chat.completions.create(model="math", tools=[tool], tool_choice="required", **SMALL,
                                       messages=[{"role": "user", "content": "Area of a triangle with base 10 cm?"}])
    args = json.loads(r.choices[0].message.tool_calls[0].function.arguments)
    assert isinstance(args["base"], (int, float)) and not isinstance(args["base"], bool)
    assert isinstance(args["sides"], list) and all(isinstance(x, int) for x in args["sides"])


@pytest.mark.parametrize("extra, param", [
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "dict", "properties": {
        "a": {"type": "object", "properties": {"b": {"type": "flaot"}}}}}}}]},
     "tools[0].function.parameters.properties.a.properties.b.type"),
    ({"tools": [WEATHER, {"type": "function", "function": {"name": "g", "parameters": {
        "type": "object", "properties": {"e": {"type": "integer", "enum": [1, "two"]}}}}}]},
     "tools[1].function.parameters.properties.e.enum[1]"),
    ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "missing"}}},
     "tool_choice.function.name"),
    ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"k": {"type": "array", "items": {"type": "nope"}}}}}}},
     "response_format.json_schema.schema.properties.k.items.type"),
])
def test_bad_requests_are_400s_naming_the_param(client, extra, param):
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="general", messages=WEATHER_Q, max_tokens=5, **extra)
    assert err.value.status_code == 400
    assert err.value.response.json()["error"]["param"] == param


def test_response_format_answers_validate(client, embedded):
    schema = {"type": "object", "additionalProperties": False, "required": ["city", "rating", "tags"],
              "properties": {"city": {"type": "string", "maxLength": 30},
                             "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                             "tags": {"type": "array", "maxItems": 2,
                                      "items": {"type": "string", "enum": ["sun", "rain"]}}}}
    fmt = {"type": "json_schema", "json_schema": {"name": "review", "schema": schema, "strict": True}}
    r = client.chat.completions.create(model="general", messages=WEATHER_Q, response_format=fmt, temperature=0,
                                       max_tokens=60)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    text = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="general", messages=WEATHER_Q, response_format=fmt, temperature=0, max_tokens=60, stream=True)
        if c.choices)
    jsonschema.validate(json.loads(text), schema)
    r = client.chat.completions.create(model="general", messages=WEATHER_Q, response_format={"type": "json_object"},
                                       temperature=0, max_tokens=60)
    assert isinstance(json.loads(r.choices[0].message.content), dict)
    # A cut-off answer is not returned as if it were JSON.
    resp = httpx.post(f"{embedded.url}/v1/chat/completions", timeout=60, json={
        "model": "general", "messages": WEATHER_Q, "response_format": fmt, "max_tokens": 3, "temperature": 0})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens", resp.text
