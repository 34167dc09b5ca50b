"""The seed's query methods, each through its real client, accept the local endpoint's answers.

The openai client, the Databricks SDK, MLflow's Deployments client and LangChain's Databricks
chat and embedding classes, pointed at ``batch.serve`` the way a user points them at a workspace.
"""

from __future__ import annotations

import os
import warnings

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("databricks.sdk")

from databricks.sdk import WorkspaceClient  # noqa: E402
from databricks.sdk.errors import BadRequest  # noqa: E402
from databricks.sdk.service.serving import ChatMessage, ChatMessageRole  # noqa: E402

from batch.serve import ServerProcess, simulated_answer, simulated_embedding  # noqa: E402
from batch.serve.simulate import count_tokens  # noqa: E402

import support  # noqa: E402

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def srv():
    with ServerProcess(token=TOKEN, oauth_client_id="sp-id", oauth_client_secret="sp-secret",
                       record=True) as server:
        yield server


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, tmp_path, srv):
    """Keep a developer's own Databricks profile and credentials out of the tests."""
    for name in list(os.environ):
        if name.startswith(("DATABRICKS_", "OPENAI_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("DATABRICKS_CONFIG_FILE", str(tmp_path / "no-such.databrickscfg"))
    support.restore(srv)


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


# ---------------------------------------------------------------- MLflow Deployments client

@pytest.fixture
def databricks_env(monkeypatch, srv):
    """The workspace the Databricks clients find in the environment is the local server."""
    monkeypatch.setenv("DATABRICKS_HOST", srv.url)
    monkeypatch.setenv("DATABRICKS_TOKEN", TOKEN)


@pytest.fixture
def deploy_client(databricks_env):
    deployments = pytest.importorskip(
        "mlflow.deployments", reason="mlflow-skinny is not installed (pip install -e '.[dev]')")
    return deployments.get_deploy_client("databricks")


def test_mlflow_chat(srv, deploy_client):
    inputs = {"messages": [{"role": "user", "content": "Hello!"},
                           {"role": "assistant", "content": "Hello! How can I assist you today?"},
                           {"role": "user", "content": "What is a mixture of experts model??"}],
              "temperature": 0.1, "max_tokens": 20}
    answer = deploy_client.predict(endpoint="chat-ep", inputs=inputs)
    assert answer["object"] == "chat.completion" and answer["model"] == "chat-ep"
    assert [c["message"] for c in answer["choices"]] == [
        {"role": "assistant", "content": "[simulated] What is a mixture of experts model??"}]
    assert answer["choices"][0]["finish_reason"] == "stop"
    assert answer["usage"] == {"prompt_tokens": 1 + 7 + 7, "completion_tokens": 8, "total_tokens": 23}
    assert srv.bodies() == [inputs]
    stats = srv.stats()
    assert stats["by_task"]["chat"] == stats["answered"] == stats["requests"] == 1


def test_mlflow_completions_with_n(srv, deploy_client):
    inputs = {"prompt": "What is the capital of France?", "temperature": 0.1, "max_tokens": 10, "n": 2}
    answer = deploy_client.predict(endpoint="cmp-ep", inputs=inputs)
    text = simulated_answer("What is the capital of France?", 10)[0]
    assert answer["object"] == "text_completion" and answer["model"] == "cmp-ep"
    assert [(c["index"], c["text"], c["finish_reason"]) for c in answer["choices"]] == [
        (0, text, "stop"), (1, text, "stop")]
    assert answer["usage"] == {"prompt_tokens": 6, "completion_tokens": 2 * count_tokens(text), "total_tokens": 20}
    assert srv.bodies() == [inputs] and srv.stats()["by_task"]["completions"] == 1


def test_mlflow_completions_cut_at_max_tokens(deploy_client):
    answer = deploy_client.predict(endpoint="cmp-ep", inputs={"prompt": "one two three four", "max_tokens": 3})
    assert [(c["text"], c["finish_reason"]) for c in answer["choices"]] == [("[simulated] one two", "length")]


def test_mlflow_embeddings(srv, deploy_client):
    one = deploy_client.predict(endpoint="emb-ep", inputs={"input": "Here is some text to embed"})
    many = deploy_client.predict(endpoint="emb-ep", inputs={"input": ["first", "second input"]})
    assert one["object"] == "list" and one["model"] == "emb-ep"
    assert one["data"][0]["embedding"] == pytest.approx(simulated_embedding("Here is some text to embed", 16))
    assert one["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert [d["index"] for d in many["data"]] == [0, 1]
    assert [d["embedding"] for d in many["data"]] == [
        pytest.approx(simulated_embedding(t, 16)) for t in ("first", "second input")]
    assert srv.bodies() == [{"input": "Here is some text to embed"}, {"input": ["first", "second input"]}]
    stats = srv.stats()
    assert stats["by_task"]["embeddings"] == 2 and stats["inputs"] == 3


def test_mlflow_usage_matches_stats(srv, deploy_client):
    answers = [deploy_client.predict(endpoint="chat-ep", inputs={"messages": [{"role": "user", "content": f"q {i}"}]})
               for i in range(3)]
    assert srv.stats()["total_tokens"] == sum(a["usage"]["total_tokens"] for a in answers) == 3 * (2 + 3)


def test_mlflow_errors(srv, deploy_client, monkeypatch):
    import requests

    with pytest.raises(requests.HTTPError, match="simulated failure 400") as caught:
        deploy_client.predict(endpoint="chat-ep", inputs={"messages": [{"role": "user", "content": "[[fail:400]]"}]})
    assert caught.value.response.status_code == 400
    assert caught.value.response.json() == {"error_code": "BAD_REQUEST", "message": "simulated failure 400"}
    monkeypatch.setenv("DATABRICKS_TOKEN", "wrong")
    with pytest.raises(requests.HTTPError, match="missing or invalid bearer token") as caught:
        deploy_client.predict(endpoint="chat-ep", inputs={"prompt": "x"})
    assert caught.value.response.json()["error_code"] == "UNAUTHENTICATED"
    assert srv.stats()["by_status"] == {"400": 1, "401": 1}


def test_mlflow_retries_a_rate_limit_after_retry_after(srv, deploy_client):
    """The client (through the Databricks SDK) waits what Retry-After says, here 0 s, and asks again."""
    srv.configure(retry_after=0)
    try:
        answer = deploy_client.predict(endpoint="cmp-ep", inputs={"prompt": "once more [[flaky:1:429]]"})
    finally:
        srv.configure(retry_after="auto")
    assert answer["choices"][0]["text"] == "[simulated] once more [[flaky:1:429]]"
    assert srv.stats()["by_status"] == {"200": 1, "429": 1}
    assert srv.prompts() == {"calls": {"once more [[flaky:1:429]]": 2}, "answered": {"once more [[flaky:1:429]]": 1}}


# ---------------------------------------------------------------- LangChain: ChatDatabricks, DatabricksEmbeddings

LANGCHAIN_SKIP = "langchain-community is not installed (pip install -e '.[dev]')"


@pytest.fixture
def langchain(databricks_env):
    """LangChain's Databricks chat and embedding classes (deprecation notices about their new home silenced)."""
    pytest.importorskip("mlflow.deployments", reason="mlflow-skinny is not installed (pip install -e '.[dev]')")
    chat_models = pytest.importorskip("langchain_community.chat_models", reason=LANGCHAIN_SKIP)
    embeddings = pytest.importorskip("langchain_community.embeddings", reason=LANGCHAIN_SKIP)
    from langchain_core._api import LangChainDeprecationWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LangChainDeprecationWarning)
        yield chat_models.ChatDatabricks, embeddings.DatabricksEmbeddings


def _chat_body(*messages, max_tokens=None):
    body = {"messages": [{"content": text, "role": role} for role, text in messages], "temperature": 0.0, "n": 1}
    return body if max_tokens is None else {**body, "max_tokens": max_tokens}


def test_langchain_chat_invoke(srv, langchain):
    from langchain_core.messages import AIMessage, HumanMessage, SystemMessage

    chat_databricks, _ = langchain
    llm = chat_databricks(endpoint="chat-ep", max_tokens=256)
    answer = llm.invoke([SystemMessage(content="You're a helpful assistant"),
                         HumanMessage(content="What is a mixture of experts model?")])
    assert isinstance(answer, AIMessage)
    assert answer.content == "[simulated] What is a mixture of experts model?"
    assert answer.response_metadata == {"prompt_tokens": 4 + 7, "completion_tokens": 8, "total_tokens": 19}
    assert srv.bodies() == [_chat_body(("system", "You're a helpful assistant"),
                                       ("user", "What is a mixture of experts model?"), max_tokens=256)]
    assert srv.stats()["by_task"]["chat"] == 1


def test_langchain_chat_batch(srv, langchain):
    chat_databricks, _ = langchain
    prompts = ["first question", "second", "the third question here"]
    answers = chat_databricks(endpoint="chat-ep").batch(prompts)
    assert [a.content for a in answers] == [simulated_answer(p)[0] for p in prompts]
    assert [a.response_metadata["total_tokens"] for a in answers] == [2 + 3, 1 + 2, 4 + 5]
    assert sorted(srv.bodies(), key=str) == sorted((_chat_body(("user", p)) for p in prompts), key=str)
    assert srv.prompts()["calls"] == {p: 1 for p in prompts}
    stats = srv.stats()
    assert stats["by_task"]["chat"] == stats["answered"] == 3


def test_langchain_embeddings(srv, langchain):
    _, databricks_embeddings = langchain
    embeddings = databricks_embeddings(endpoint="emb-ep")
    texts = [f"document {i}" for i in range(25)]
    vectors = embeddings.embed_documents(texts)
    assert vectors == [pytest.approx(simulated_embedding(t, 16)) for t in texts]
    assert embeddings.embed_query("Can you explain AI in ten words?") == pytest.approx(
        simulated_embedding("Can you explain AI in ten words?", 16))
    # embed_documents sends batches of 20 inputs; embed_query one input
    assert srv.bodies() == [{"input": texts[:20]}, {"input": texts[20:]},
                            {"input": ["Can you explain AI in ten words?"]}]
    stats = srv.stats()
    assert stats["by_task"]["embeddings"] == 3 and stats["inputs"] == 26


def test_langchain_errors(srv, langchain):
    import requests

    chat_databricks, databricks_embeddings = langchain
    with pytest.raises(requests.HTTPError, match="simulated failure 400") as caught:
        chat_databricks(endpoint="chat-ep").invoke("please [[fail:400]]")
    assert caught.value.response.json() == {"error_code": "BAD_REQUEST", "message": "simulated failure 400"}
    with pytest.raises(requests.HTTPError, match="simulated failure 404") as caught:
        databricks_embeddings(endpoint="emb-ep").embed_query("[[fail:404]]")
    assert caught.value.response.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"
    assert srv.stats()["by_status"] == {"400": 1, "404": 1}
