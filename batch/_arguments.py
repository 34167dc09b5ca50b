"""The ``ai_query`` arguments, checked on the driver into one picklable ``QuerySpec``.

Everything that can be wrong with a call (endpoint, returnType, failOnError,
modelParameters, responseFormat) is found here, when the column or query is built,
so no task is started for a call that could never succeed.
"""

from __future__ import annotations

import decimal
import json
from dataclasses import dataclass
from typing import Any
from collections.abc import Callable, Mapping

from pyspark.sql import types as T

from .config import EndpointConfig, Registry, registry
from .errors import (ConfigError, InvalidModelParametersError, UnsupportedResponseFormatError)
from ._types import caster, field_caster, parse_ddl, to_json_schema

__all__ = ["QuerySpec", "build_spec", "check_model_parameters", "normalize_response_format"]

_RESERVED = ("messages", "prompt", "input", "model", "response_format", "dataframe_records",
             "dataframe_split", "instances", "inputs")
# Chat Completions parameters the Responses API has no counterpart for (it gives one answer and takes no stop list).
_NOT_IN_RESPONSES = ("n", "stop", "max_completion_tokens")
_GENERATION_ONLY = ("max_tokens", "temperature", "top_p", "top_k", "n", "stop", "presence_penalty",
                    "frequency_penalty", "logprobs", "top_logprobs")


@dataclass(frozen=True)
class QuerySpec:
    """One ``ai_query`` call, resolved. Holds no secret: the endpoint entry names its variables only."""

    endpoint: EndpointConfig
    result_type: T.DataType
    fail_on_error: bool = True
    params_json: str | None = None
    response_format_json: str | None = None
    cast_answers: bool = False
    answer_field: str | None = None
    choices: tuple[str, ...] = ()

    @property
    def params(self) -> dict[str, Any] | None:
        return json.loads(self.params_json) if self.params_json else None

    @property
    def response_format(self) -> dict[str, Any] | None:
        return json.loads(self.response_format_json) if self.response_format_json else None

    @property
    def column_type(self) -> T.DataType:
        if self.fail_on_error:
            return self.result_type
        return T.StructType([T.StructField("result", self.result_type, True),
                             T.StructField("errorMessage", T.StringType(), True)])

    def converter(self) -> Callable[[Any], Any] | None:
        """With ``answer_field`` the answer is an object whose one field is the result (structured output
        can only ask for objects); ``choices`` turns any value outside them into NULL, as ai_classify does."""
        if not self.cast_answers:
            return None
        if self.answer_field is None:
            return caster(self.result_type, self.endpoint.name)
        return field_caster(self.answer_field, self.result_type, self.choices, self.endpoint.name)

    @property
    def request_is_struct(self) -> bool:
        return self.endpoint.task == "custom"


def build_spec(endpoint: str | EndpointConfig, *, returnType: Any = None, failOnError: Any = True,
               modelParameters: Any = None, responseFormat: Any = None, endpoints: Registry = registry) -> QuerySpec:
    config = endpoint if isinstance(endpoint, EndpointConfig) else endpoints.get(endpoint)
    if not isinstance(failOnError, bool):
        raise ConfigError(f"failOnError must be a boolean literal (true or false), got {failOnError!r}")
    params = check_model_parameters(config, modelParameters)
    response_format = normalize_response_format(config, responseFormat)
    result_type, cast = _result_type(config, returnType)
    return QuerySpec(config, result_type, failOnError,
                     json.dumps(params, sort_keys=True) if params else None,
                     json.dumps(response_format) if response_format else None, cast)  # schema order is kept


def _result_type(config: EndpointConfig, return_type: Any) -> tuple[T.DataType, bool]:
    """Defaults as in ai_query: STRING for chat and completions, ARRAY<FLOAT> for embeddings."""
    if return_type is None:
        if config.task == "custom":
            if not config.return_type:
                raise ConfigError(f"custom model endpoint '{config.name}' needs returnType (a DDL string such "
                                  "as 'DOUBLE' or 'STRUCT<label: STRING>'), or return_type in its registry entry")
            return parse_ddl(config.return_type, f"return_type of endpoint '{config.name}'"), True
        if config.task == "embeddings":
            return T.ArrayType(T.FloatType(), True), True
        return T.StringType(), False
    data_type = parse_ddl(return_type)
    if config.task == "embeddings" and not (isinstance(data_type, T.ArrayType) and
                                            isinstance(data_type.elementType, T.FractionalType)):
        raise ConfigError(f"embeddings endpoint '{config.name}' gives ARRAY<FLOAT> or ARRAY<DOUBLE>, "
                          f"not {data_type.simpleString()}")
    return data_type, not isinstance(data_type, T.StringType)


def _plain(value: Any) -> Any:
    """SQL literals arrive as Decimal, Row or tuple; the wire wants JSON numbers, objects and arrays."""
    if hasattr(value, "dtype") and hasattr(value, "tolist"):  # numpy scalars and arrays from pandas UDF rows
        return _plain(value.tolist())
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() and "." not in str(value) else float(value)
    if hasattr(value, "asDict"):
        return {k: _plain(v) for k, v in value.asDict().items()}
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# How an embeddings endpoint may send vectors: JSON numbers, or base64 of little-endian float32 (OpenAI, vLLM).
_VECTOR_ENCODINGS = ("float", "base64")

_CHECKS: dict[str, tuple[Callable[[Any], bool], str, Callable[[Any], bool], str]] = {
    # key: (type check, type name, range check, range text)
    "max_tokens": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", lambda v: v > 0, "> 0"),
    "temperature": (_is_number, "a number", lambda v: 0 <= v <= 2, "in [0, 2]"),
    "top_p": (_is_number, "a number", lambda v: 0 < v <= 1, "in (0, 1]"),
    "top_k": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", lambda v: v > 0, "> 0"),
    "n": (lambda v: isinstance(v, int) and not isinstance(v, bool), "an integer", lambda v: v >= 1, ">= 1"),
    "presence_penalty": (_is_number, "a number", lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "frequency_penalty": (_is_number, "a number", lambda v: -2 <= v <= 2, "in [-2, 2]"),
    "stop": (lambda v: isinstance(v, str) or isinstance(v, list) and all(isinstance(s, str) for s in v),
             "a string or an array of strings", lambda v: isinstance(v, str) or len(v) <= 16, "at most 16 strings"),
}


def check_model_parameters(config: EndpointConfig, parameters: Any) -> dict[str, Any]:
    """Validated parameters (NULLs dropped, so the endpoint's defaults apply), as Databricks classifies errors."""
    if parameters is None:
        return {}
    if hasattr(parameters, "asDict"):
        parameters = parameters.asDict(recursive=True)
    if not isinstance(parameters, Mapping):
        raise InvalidModelParametersError("INVALID_PARAMETER_DATA_TYPE",
                                          f"modelParameters must be a struct or dict of constants, got "
                                          f"{type(parameters).__name__}")
    if hasattr(parameters, "_jc") or any(hasattr(v, "_jc") for v in parameters.values()):
        raise InvalidModelParametersError("INVALID_PARAMETER_DATA_TYPE", "modelParameters must be constants, "
                                          "not columns")
    if config.task == "custom" and parameters:
        raise InvalidModelParametersError("UNSUPPORTED_ENDPOINT_TYPE", f"endpoint '{config.name}' serves a custom "
                                          "model; modelParameters are for chat, completions and embeddings")
    clean: dict[str, Any] = {}
    for key, raw in parameters.items():
        key = str(key)
        if key in _RESERVED:
            where = "responseFormat" if key == "response_format" else "the request argument"
            raise InvalidModelParametersError("FOUND_RESERVED_PARAMETER_NAME",
                                              f"'{key}' cannot be a model parameter: it belongs in {where}")
        if key == "stream":
            raise InvalidModelParametersError("UNSUPPORTED_MODEL_PARAMETER",
                                              "'stream' is not supported: ai_query waits for whole answers")
        if config.api == "responses" and key in _NOT_IN_RESPONSES:
            raise InvalidModelParametersError("UNSUPPORTED_MODEL_PARAMETER",
                                              f"'{key}' is not a Responses API parameter (endpoint '{config.name}'"
                                              " has api: responses); use max_tokens for the output limit")
        if config.task == "embeddings" and key in _GENERATION_ONLY:
            raise InvalidModelParametersError("UNSUPPORTED_MODEL_PARAMETER",
                                              f"'{key}' does not apply to embeddings endpoint '{config.name}'")
        value = _plain(raw)
        if value is None:
            continue
        if key == "encoding_format" and config.task == "embeddings" and value not in _VECTOR_ENCODINGS:
            raise InvalidModelParametersError("UNSUPPORTED_MODEL_PARAMETER",
                                              f"'encoding_format' must be 'float' or 'base64' (the encodings an "
                                              f"ARRAY<FLOAT> result is read from), got {value!r}")
        if key in _CHECKS:
            type_ok, type_name, range_ok, range_text = _CHECKS[key]
            if not type_ok(value):
                raise InvalidModelParametersError("INVALID_PARAMETER_DATA_TYPE",
                                                  f"'{key}' must be {type_name}, got {value!r}")
            if not range_ok(value):
                raise InvalidModelParametersError("INVALID_NUMERIC_PARAMETER", f"'{key}' must be {range_text}, "
                                                  f"got {value!r}")
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise InvalidModelParametersError("INVALID_PARAMETER_DATA_TYPE",
                                              f"'{key}' must be a JSON value, got {type(value).__name__}") from None
        clean[key] = value
    return clean


def normalize_response_format(config: EndpointConfig, response_format: Any) -> dict[str, Any] | None:
    """'text' | 'json_object' | an OpenAI JSON document | a DDL struct, as the OpenAI ``response_format`` body."""
    if response_format is None:
        return None
    if config.task != "chat":
        raise UnsupportedResponseFormatError(f"responseFormat needs a chat endpoint; '{config.name}' is "
                                             f"{config.task}")
    document = response_format
    if isinstance(response_format, str):
        text = response_format.strip()
        if text.lower() in ("text", "json_object"):
            return {"type": text.lower()}
        if text.startswith("{"):
            try:
                document = json.loads(text)
            except ValueError as exc:
                raise UnsupportedResponseFormatError(f"responseFormat is not valid JSON ({exc})") from None
        else:
            try:
                data_type = parse_ddl(text, "responseFormat")
            except ConfigError as exc:
                raise UnsupportedResponseFormatError(exc.reason) from None
            if not isinstance(data_type, T.StructType):
                raise UnsupportedResponseFormatError(f"a DDL responseFormat must be a STRUCT, got "
                                                     f"{data_type.simpleString()}")
            return {"type": "json_schema", "json_schema": {"name": "response", "schema": to_json_schema(data_type),
                                                           "strict": True}}
    if not isinstance(document, Mapping):
        raise UnsupportedResponseFormatError(f"responseFormat must be a string or a JSON object, got "
                                             f"{type(document).__name__}")
    kind = document.get("type")
    if kind in ("text", "json_object"):
        return {"type": kind}
    if kind != "json_schema":
        raise UnsupportedResponseFormatError(f"responseFormat type {kind!r} is not supported")
    inner = document.get("json_schema")
    if not isinstance(inner, Mapping) or not isinstance(inner.get("schema"), Mapping):
        raise UnsupportedResponseFormatError("a json_schema responseFormat needs json_schema.schema (an object)")
    return {"type": "json_schema", "json_schema": {"name": str(inner.get("name") or "response"),
                                                   "schema": dict(inner["schema"]),
                                                   "strict": bool(inner.get("strict", True))}}
