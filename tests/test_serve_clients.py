"""The official OpenAI and Databricks SDK clients accept the local endpoint's answers."""

from __future__ import annotations

import os

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("databricks.sdk")

from databricks.sdk import WorkspaceClient  # noqa: E402
from databricks.sdk.errors import BadRequest  # noqa: E402
from databricks.sdk.service.serving import ChatMessage, ChatMessageRole  # noqa: E402

from batch.serve import ServerProcess, simulated_answer, simulated_embedding  # noqa: E402

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def srv():
    with ServerProcess(token=TOKEN, oauth_client_id="sp-id", oauth_client_secret="sp-secret") as server:
        yield server


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path, srv):
    """Keep a developer's own Databricks profile and credentials out of the tests."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-such.databrickscfg"))
    srv.reset()


@pytest.fixture
def oai(srv):
    with openai.OpenAI(base_url=srv.url + "/v1", api_key=TOKEN, max_retries=0) as client:
        yield client


@pytest.fixture
def workspace(srv):
    return WorkspaceClient(host=srv.url, token=TOKEN)


# ---------------------------------------------------------------- openai

def test_openai_chat(oai):
    answer = oai.chat.completions.create(model="m", messages=[{"role": "system", "content": "sys"},
                                                               {"role": "user", "content": "hi there"}])
    assert answer.choices[0].message.content == simulated_answer("hi there")[0]
    assert answer.choices[0].finish_reason == "stop"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens, answer.usage.total_tokens) == (3, 3, 6)


def test_openai_completions(oai):
    answer = oai.completions.create(model="m", prompt="one two three", max_tokens=2)
    assert answer.choices[0].text == "[simulated] one" and answer.choices[0].finish_reason == "length"
    assert answer.usage.completion_tokens == 2


@pytest.mark.parametrize("encoding", [None, "float"])
def test_openai_embeddings(oai, encoding):
    extra = {"encoding_format": encoding} if encoding else {}
    answer = oai.embeddings.create(model="e", input=["a b", "c"], **extra)
    assert [d.index for d in answer.data] == [0, 1]
    assert answer.data[1].embedding == pytest.approx(simulated_embedding("c", 16), abs=1e-6)
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == 3


def test_openai_against_databricks_paths(srv):
    with openai.OpenAI(base_url=srv.url + "/serving-endpoints", api_key=TOKEN, max_retries=0) as client:
        answer = client.chat.completions.create(model="ep", messages=[{"role": "user", "content": "hey"}])
        assert answer.model == "ep" and answer.choices[0].message.content == "[simulated] hey"
        assert len(client.embeddings.create(model="ep", input="x").data[0].embedding) == 16


def test_openai_errors(srv, oai):
    with pytest.raises(openai.BadRequestError):
        oai.chat.completions.create(model="m", messages=[{"role": "user", "content": "[[fail:400]]"}])
    with pytest.raises(openai.InternalServerError):
        oai.completions.create(model="m", prompt="[[fail:503]]")
    with openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0) as client:
        with pytest.raises(openai.AuthenticationError):
            client.completions.create(model="m", prompt="x")


def test_openai_usage_matches_stats(srv, oai):
    answers = [oai.chat.completions.create(model="m", messages=[{"role": "user", "content": f"q {i}"}])
               for i in range(4)]
    stats = srv.stats()
    assert stats["total_tokens"] == sum(a.usage.total_tokens for a in answers)
    assert stats["answered"] == 4


# ---------------------------------------------------------------- databricks-sdk

def test_databricks_chat(workspace):
    answer = workspace.serving_endpoints.query(
        name="chat-ep", messages=[ChatMessage(role=ChatMessageRole.USER, content="hello sdk")], max_tokens=50)
    assert answer.object.value == "chat.completion" and answer.model == "chat-ep"
    assert answer.served_model_name == "chat-ep"
    assert answer.choices[0].message.content == "[simulated] hello sdk"
    assert answer.choices[0].message.role == ChatMessageRole.ASSISTANT
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens == 5


def test_databricks_embeddings(workspace):
    answer = workspace.serving_endpoints.query(name="emb-ep", input=["first", "second input"])
    assert answer.object.value == "list" and [d.index for d in answer.data] == [0, 1]
    assert answer.data[1].embedding == pytest.approx(simulated_embedding("second input", 16))
    assert answer.usage.prompt_tokens == 3


def test_databricks_completions(workspace):
    answer = workspace.serving_endpoints.query(name="cmp-ep", prompt="complete me")
    assert answer.object.value == "text_completion"
    assert answer.choices[0].text == "[simulated] complete me"
    assert answer.usage.completion_tokens == 3


def test_databricks_custom_model(workspace):
    answer = workspace.serving_endpoints.query(name="model", dataframe_records=[{"x": 2, "s": "ab"}, {"x": 1}])
    assert answer.predictions == [4.0, 1.0] and answer.usage is None


def test_databricks_error_mapping(workspace):
    with pytest.raises(BadRequest, match="simulated failure 400"):
        workspace.serving_endpoints.query(name="ep", prompt="[[fail:400]]")


def test_databricks_oauth_m2m(srv):
    workspace = WorkspaceClient(host=srv.url, client_id="sp-id", client_secret="sp-secret")
    answer = workspace.serving_endpoints.query(name="ep", prompt="via oauth")
    assert workspace.config.auth_type == "oauth-m2m"
    assert answer.choices[0].text == "[simulated] via oauth"
    assert srv.stats()["oauth_tokens_issued"] >= 1
