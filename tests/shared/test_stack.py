"""shared.stack: the one reader of stack.yml."""
from __future__ import annotations

import pytest

from shared.stack import REPO_ROOT, StackError, expand, load_stack


@pytest.mark.parametrize(("text", "env", "expected"), [
    ("${REGISTRY:-ghcr.io/x}/auth:${TAG:-dev}", {}, "ghcr.io/x/auth:dev"),
    ("${REGISTRY:-ghcr.io/x}/auth:${TAG:-dev}", {"REGISTRY": "r.io", "TAG": "1.2"}, "r.io/auth:1.2"),
    ("${EMPTY:-fallback}", {"EMPTY": ""}, "fallback"),
    ("${PLAIN}", {"PLAIN": "v"}, "v"),
    ("${UNSET}", {}, ""),
    ("no vars", {}, "no vars"),
])
def test_variables_expand_like_faas_cli(text, env, expected):
    assert expand(text, env) == expected


def test_functions_come_with_source_target_topics_secrets_and_labels(tmp_path):
    (tmp_path / "stack.yml").write_text("""
version: 1.0
provider: {name: openfaas, gateway: "${GW:-http://127.0.0.1:8080}"}
configuration: {copy: [./shared]}
functions:
  worker:
    lang: python3-ff
    handler: ./functions/inference
    image: ${REGISTRY:-reg}/worker:dev
    environment: {FUNCTION_TARGET: inference_worker, N: 3}
    secrets: [s1]
    labels: {com.openfaas.scale.min: "0"}
    annotations: {topic: "a.b, c.d"}
""")
    stack = load_stack(tmp_path / "stack.yml", environ={"GW": "http://gw"})

    [worker] = stack.functions
    assert stack.gateway == "http://gw"
    assert stack.copy == ("./shared",)
    assert worker.target == "inference_worker"
    assert worker.source == tmp_path / "functions" / "inference" / "main.py"
    assert worker.topics == ("a.b", "c.d")
    assert worker.secrets == ("s1",)
    assert worker.environment["N"] == "3"
    assert worker.labels == {"com.openfaas.scale.min": "0"}
    assert worker.image == "reg/worker:dev"
    assert stack.subscriptions() == {"worker": ["a.b", "c.d"]}


def test_the_repository_stack_file_lists_functions_whose_sources_exist():
    stack = load_stack(REPO_ROOT / "stack.yml", environ={})
    assert stack.functions
    for spec in stack.functions:
        assert spec.source.is_file(), spec.source


def test_a_malformed_stack_file_is_a_stack_error(tmp_path):
    (tmp_path / "stack.yml").write_text("functions:\n  f: {lang: python3-ff}\n")
    with pytest.raises(StackError, match="no handler"):
        load_stack(tmp_path / "stack.yml")
    with pytest.raises(StackError, match="cannot read"):
        load_stack(tmp_path / "missing.yml")
