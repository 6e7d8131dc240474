"""The deployment files agree with stack.yml: every function has a buildable template, a Knative
Service with its image and target, its secrets mounted where OpenFaaS mounts them, and every
Kafka trigger a KafkaSource with retries and a dead-letter sink."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from shared.stack import REPO_ROOT, load_stack

KNATIVE = REPO_ROOT / "knative"
TEMPLATES = REPO_ROOT / "template"
SECRETS_PATH = "/var/openfaas/secrets"
# Deployment defaults: what ${REGISTRY:-…}/${TAG:-…} expand to when nothing is set.
STACK = load_stack(REPO_ROOT / "stack.yml", environ={})
FUNCTIONS = {spec.name: spec for spec in STACK.functions}


def documents(kind: str) -> dict[str, dict]:
    found = {}
    for path in sorted(KNATIVE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == kind:
                found[doc["metadata"]["name"]] = doc
    return found


SERVICES = documents("Service")
SOURCES = documents("KafkaSource")
SINKS = documents("KafkaSink")


def container(service: dict) -> dict:
    [only] = service["spec"]["template"]["spec"]["containers"]
    return only


def env_value(service: dict, name: str) -> str | None:
    return next((e.get("value") for e in container(service).get("env", []) if e["name"] == name), None)


def test_every_yaml_file_loads():
    files = [*KNATIVE.glob("*.yaml"), *TEMPLATES.glob("*/template.yml"), REPO_ROOT / "stack.yml"]
    assert len(files) >= 5
    for path in files:
        assert list(yaml.safe_load_all(path.read_text())), path


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_every_function_has_a_knative_service_with_its_image_and_target(name):
    spec = FUNCTIONS[name]
    assert name in SERVICES, f"knative/ has no Service {name!r}"
    service = SERVICES[name]
    assert service["apiVersion"] == "serving.knative.dev/v1"
    assert container(service)["image"] == spec.image
    assert env_value(service, "FUNCTION_TARGET") == spec.target
    probe = container(service)["readinessProbe"]["httpGet"]["path"]
    assert probe == "/_/ready"


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_function_secrets_are_mounted_where_openfaas_mounts_them(name):
    service = SERVICES[name]
    mounts = {m["name"]: m["mountPath"] for m in container(service).get("volumeMounts", [])}
    volumes = {v["name"]: v for v in service["spec"]["template"]["spec"].get("volumes", [])}
    mounted: set[str] = set()
    for volume_name, path in mounts.items():
        if path != SECRETS_PATH:
            continue
        for source in volumes[volume_name].get("projected", {}).get("sources", []):
            secret = source.get("secret")
            if secret:
                assert all(item["path"] == item["key"] for item in secret.get("items", []))
                mounted.add(secret["name"])
    assert set(FUNCTIONS[name].secrets) <= mounted


def test_inference_scales_to_zero_on_a_gpu():
    service = SERVICES["inference"]
    annotations = service["spec"]["template"]["metadata"]["annotations"]
    assert annotations["autoscaling.knative.dev/min-scale"] == "0"
    assert container(service)["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_every_topic_annotation_has_a_kafkasource_for_its_function():
    for spec in STACK.functions:
        for topic in spec.topics:
            assert any(topic in s["spec"]["topics"] and s["spec"]["sink"]["ref"]["name"] == spec.name
                       for s in SOURCES.values()), f"no KafkaSource delivers {topic} to {spec.name}"


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_kafkasources_retry_with_exponential_backoff_then_dead_letter_to_the_dlq_topic(name):
    source = SOURCES[name]
    assert source["apiVersion"] == "sources.knative.dev/v1beta1"
    delivery = source["spec"]["delivery"]
    assert delivery["retry"] >= 1
    assert delivery["backoffPolicy"] == "exponential"
    assert re.fullmatch(r"PT[\d.]+S", delivery["backoffDelay"])
    sink = SINKS[delivery["deadLetterSink"]["ref"]["name"]]
    [topic] = source["spec"]["topics"]
    assert sink["spec"]["topic"] == f"{topic}.dlq"


def test_every_kafkasource_delivers_to_a_defined_service():
    assert SOURCES
    for source in SOURCES.values():
        assert source["spec"]["sink"]["ref"]["name"] in SERVICES
        assert source["spec"]["consumerGroup"]


def faas_cli_build_context(name: str, tmp_path: Path) -> Path:
    """The folder faas-cli hands to docker: template/<lang>/ + function/ (the handler folder)
    + function/<path> for each configuration.copy path."""
    spec = FUNCTIONS[name]
    context = tmp_path / "build" / name
    shutil.copytree(TEMPLATES / spec.lang, context)
    shutil.copytree(spec.handler, context / "function", ignore=shutil.ignore_patterns("__pycache__"))
    for extra in STACK.copy:
        source = (STACK.path.parent / extra).resolve()
        shutil.copytree(source, context / "function" / source.name, ignore=shutil.ignore_patterns("__pycache__"),
                        dirs_exist_ok=True)
    return context


def copy_sources(dockerfile: str) -> list[str]:
    sources = []
    for line in dockerfile.splitlines():
        parts = line.split()
        if parts[:1] != ["COPY"] or any(p.startswith("--from") for p in parts):
            continue
        args = [p for p in parts[1:] if not p.startswith("--")]
        sources += args[:-1]
    return sources


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_dockerfile_finds_every_file_it_copies_in_the_faas_cli_build_context(name, tmp_path):
    context = faas_cli_build_context(name, tmp_path)
    dockerfile = (context / "Dockerfile").read_text()
    sources = copy_sources(dockerfile)
    assert sources
    for source in sources:
        assert (context / source.replace("${FUNCTION_DIR}", name)).exists(), f"{name}: COPY {source}: missing"
    # The image starts functions/<FUNCTION_DIR>/main.py: stack.yml must say which folder that is.
    assert (context / "function" / "main.py").exists()


@pytest.mark.parametrize("name", sorted(FUNCTIONS))
def test_stack_passes_the_handler_folder_as_a_build_arg(name):
    raw = yaml.safe_load(STACK.path.read_text())["functions"][name]
    assert (raw.get("build_args") or {}).get("FUNCTION_DIR") == FUNCTIONS[name].handler.name


def test_templates_lint_clean_with_hadolint():
    hadolint = Path(sys.executable).with_name("hadolint")
    dockerfiles = sorted(TEMPLATES.glob("*/Dockerfile"))
    assert len(dockerfiles) >= 2
    result = subprocess.run([str(hadolint), "--no-color", "--failure-threshold", "info", *map(str, dockerfiles)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("template", ["python3-ff", "python3-ff-gpu"])
def test_templates_run_the_function_as_non_root_with_a_healthcheck(template):
    dockerfile = (TEMPLATES / template / "Dockerfile").read_text()
    assert re.search(r"^USER (?!root|0)\S+", dockerfile, re.M)
    assert "HEALTHCHECK" in dockerfile and "/_/health" in dockerfile
    assert "ENV PYTHONPATH" in dockerfile or "PYTHONPATH=/home/app" in dockerfile


def test_gpu_template_swaps_onnxruntime_for_the_gpu_build():
    requirements = (TEMPLATES / "python3-ff-gpu" / "requirements.txt").read_text()
    assert re.search(r"^onnxruntime-gpu==\S+$", requirements, re.M)
    assert "nvidia/cuda" in (TEMPLATES / "python3-ff-gpu" / "Dockerfile").read_text()
