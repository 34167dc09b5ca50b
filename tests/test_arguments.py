"""Argument checks into a ``QuerySpec``: pure Python, no Spark and no server."""

from __future__ import annotations

import decimal
import json
import pickle

import numpy as np
import pytest
from pyspark.sql import Row
from pyspark.sql import types as T

from batch._arguments import build_spec, check_model_parameters, normalize_response_format
from batch.config import EndpointConfig
from batch.errors import (ConfigError, InvalidModelParametersError, ParseCastError,
                          UnsupportedResponseFormatError)

CHAT = EndpointConfig(name="c", api="openai", base_url="http://127.0.0.1:1/v1", task="chat", token_env="MY_TOKEN")
COMPLETIONS = EndpointConfig(name="p", api="openai", base_url="http://127.0.0.1:1/v1", task="completions")
EMBED = EndpointConfig(name="e", api="databricks", host="http://127.0.0.1:1", task="embeddings")
CUSTOM = EndpointConfig(name="m", api="databricks", host="http://127.0.0.1:1", task="custom", return_type="DOUBLE")
BARE_CUSTOM = EndpointConfig(name="b", api="databricks", host="http://127.0.0.1:1", task="custom")


@pytest.mark.parametrize("config,result_type,cast", [
    (CHAT, T.StringType(), False), (COMPLETIONS, T.StringType(), False),
    (EMBED, T.ArrayType(T.FloatType(), True), True), (CUSTOM, T.DoubleType(), True),
])
def test_default_result_types(config, result_type, cast):
    spec = build_spec(config)
    assert spec.result_type == result_type and spec.cast_answers is cast and spec.column_type == result_type
    assert spec.request_is_struct is (config.task == "custom")


def test_fail_on_error_false_wraps_the_type():
    spec = build_spec(CHAT, returnType="STRUCT<a: INT>", failOnError=False)
    assert spec.column_type == T.StructType([
        T.StructField("result", T.StructType([T.StructField("a", T.IntegerType(), True)]), True),
        T.StructField("errorMessage", T.StringType(), True)])


def test_custom_model_needs_a_return_type():
    with pytest.raises(ConfigError, match="needs returnType"):
        build_spec(BARE_CUSTOM)
    assert build_spec(BARE_CUSTOM, returnType="ARRAY<DOUBLE>").result_type == T.ArrayType(T.DoubleType(), True)


def test_embeddings_may_ask_for_doubles_only():
    assert build_spec(EMBED, returnType="ARRAY<DOUBLE>").result_type == T.ArrayType(T.DoubleType(), True)
    with pytest.raises(ConfigError, match="ARRAY<FLOAT> or ARRAY<DOUBLE>"):
        build_spec(EMBED, returnType="ARRAY<STRING>")


def test_spec_pickles_and_shows_no_secret(monkeypatch):
    monkeypatch.setenv("MY_TOKEN", "very-secret-value")
    spec = build_spec(CHAT, modelParameters={"max_tokens": 5}, responseFormat="STRUCT<a: INT>")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert "very-secret-value" not in repr(spec) + pickle.dumps(spec).decode("latin-1")
    assert spec.params == {"max_tokens": 5}


@pytest.mark.parametrize("given,clean", [
    (None, {}),
    ({"max_tokens": 5, "temperature": None}, {"max_tokens": 5}),
    ({"temperature": decimal.Decimal("0.5"), "max_tokens": decimal.Decimal("7")}, {"temperature": 0.5,
                                                                                    "max_tokens": 7}),
    ({"top_k": np.int32(3), "top_p": np.float64(0.25), "stop": np.array(["a", "b"])},
     {"top_k": 3, "top_p": 0.25, "stop": ["a", "b"]}),
    (Row(max_tokens=2, stop="x"), {"max_tokens": 2, "stop": "x"}),
    ({"seed": 1, "extra_params": {"k": [1, 2]}}, {"seed": 1, "extra_params": {"k": [1, 2]}}),
    ({"temperature": 0, "top_p": 1}, {"temperature": 0, "top_p": 1}),
])
def test_model_parameters_cleaned(given, clean):
    assert check_model_parameters(CHAT, given) == clean


@pytest.mark.parametrize("config,given,subclass", [
    (CHAT, {"messages": []}, "FOUND_RESERVED_PARAMETER_NAME"),
    (CHAT, {"response_format": {}}, "FOUND_RESERVED_PARAMETER_NAME"),
    (EMBED, {"input": "x"}, "FOUND_RESERVED_PARAMETER_NAME"),
    (CHAT, {"stream": True}, "UNSUPPORTED_MODEL_PARAMETER"),
    (EMBED, {"max_tokens": 3}, "UNSUPPORTED_MODEL_PARAMETER"),
    (CUSTOM, {"temperature": 0.1}, "UNSUPPORTED_ENDPOINT_TYPE"),
    (CHAT, {"max_tokens": 2.5}, "INVALID_PARAMETER_DATA_TYPE"),
    (CHAT, {"n": True}, "INVALID_PARAMETER_DATA_TYPE"),
    (CHAT, {"stop": [1]}, "INVALID_PARAMETER_DATA_TYPE"),
    (CHAT, {"seed": object()}, "INVALID_PARAMETER_DATA_TYPE"),
    (CHAT, ["max_tokens", 3], "INVALID_PARAMETER_DATA_TYPE"),
    (CHAT, {"temperature": -0.1}, "INVALID_NUMERIC_PARAMETER"),
    (CHAT, {"top_p": 1.5}, "INVALID_NUMERIC_PARAMETER"),
    (CHAT, {"presence_penalty": 3}, "INVALID_NUMERIC_PARAMETER"),
    (CHAT, {"stop": ["s"] * 17}, "INVALID_NUMERIC_PARAMETER"),
])
def test_model_parameters_refused(config, given, subclass):
    with pytest.raises(InvalidModelParametersError) as caught:
        check_model_parameters(config, given)
    assert caught.value.subclass == subclass
    assert str(caught.value).startswith(f"[AI_FUNCTION_INVALID_MODEL_PARAMETERS.{subclass}]")


def test_custom_endpoint_accepts_empty_parameters():
    assert check_model_parameters(CUSTOM, {}) == {}


@pytest.mark.parametrize("given,expected", [
    ("text", {"type": "text"}), (" JSON_OBJECT ", {"type": "json_object"}),
    ({"type": "json_object"}, {"type": "json_object"}), ('{"type": "text"}', {"type": "text"}),
    ("STRUCT<b: INT, a: STRING>", {"type": "json_schema", "json_schema": {
        "name": "response", "strict": True, "schema": {
            "type": "object", "properties": {"b": {"type": "integer"}, "a": {"type": "string"}},
            "required": ["b", "a"], "additionalProperties": False}}}),
    ({"type": "json_schema", "json_schema": {"schema": {"type": "object"}}},
     {"type": "json_schema", "json_schema": {"name": "response", "schema": {"type": "object"}, "strict": True}}),
])
def test_response_formats(given, expected):
    assert normalize_response_format(CHAT, given) == expected


def test_response_format_keeps_property_order():
    """Models write fields in schema order, so reordering a schema changes the answers."""
    spec = build_spec(CHAT, responseFormat="STRUCT<zeta: STRING, alpha: STRING>")
    assert list(spec.response_format["json_schema"]["schema"]["properties"]) == ["zeta", "alpha"]
    assert json.loads(spec.response_format_json) == spec.response_format


@pytest.mark.parametrize("config,given,needle", [
    (CHAT, "yaml", "unknown type"), (CHAT, '{"type": ', "not valid JSON"), (CHAT, {"type": "xml"}, "'xml'"),
    (CHAT, {"type": "json_schema"}, "needs json_schema.schema"), (CHAT, "INT", "must be a STRUCT"),
    (CHAT, 42, "must be a string or a JSON object"), (COMPLETIONS, "json_object", "needs a chat endpoint"),
])
def test_response_formats_refused(config, given, needle):
    with pytest.raises(UnsupportedResponseFormatError, match=needle) as caught:
        normalize_response_format(config, given)
    assert str(caught.value).startswith("[AI_FUNCTION_UNSUPPORTED_RESPONSE_FORMAT]")


@pytest.mark.parametrize("value", ["true", 1, None, np.bool_(True)])
def test_fail_on_error_must_be_a_boolean(value):
    with pytest.raises(ConfigError, match="failOnError must be a boolean"):
        build_spec(CHAT, failOnError=value)


def test_converter_with_answer_field_and_choices():
    import dataclasses
    spec = dataclasses.replace(build_spec(CHAT, returnType="STRUCT<label: STRING>"), result_type=T.StringType(),
                               answer_field="label", choices=("yes", "no"))
    convert = spec.converter()
    assert convert('{"label": "yes"}') == "yes"
    assert convert('{"label": "maybe"}') is None and convert("null") is None
    with pytest.raises(ParseCastError):
        convert("not json")
