"""Cluster configs: every YAML parses, the AWS config passes Ray's schema, GPU worker types declare
their accelerator type, job commands name real job scripts, and the defaults are private: Ray token
authentication on, the dashboard/job API on the head's loopback (VMs) or behind a ClusterIP service
(Kubernetes), S3 access from EC2 instance profiles / IRSA and never from static keys."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
KUBERAY = CLUSTER / "kuberay"
KNOWN_JOBS = {p.name for p in (ROOT / "jobs").glob("*.py") if not p.name.startswith("_")}
GPU_INSTANCE_ACCELERATOR = {"p3.2xlarge": "V100", "p4d.24xlarge": "A100"}
RAY_VERSION = "2.60.0"
# credentials that must not appear in a default config (the MinIO opt-in in cluster/README.md adds them)
STATIC_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
RAY_KINDS = ("RayCluster", "RayJob", "RayCronJob")
SERVICE_ACCOUNT = "pianoeval"
IRSA_ANNOTATION = "eks.amazonaws.com/role-arn"
JOB_COMMAND = re.compile(r"python\s+(?:\S*/)?jobs/([\w.-]+\.py)")


def _yaml_files() -> list[Path]:
    return sorted(CLUSTER.rglob("*.yaml")) + sorted(CLUSTER.rglob("*.yml"))


def _load_one(path: Path) -> dict[str, Any]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert len(docs) == 1, f"{path.name}: expected one YAML document, got {len(docs)}"
    return docs[0]


def _kuberay_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(p.name, _load_one(p)) for p in sorted(KUBERAY.glob("*.yaml"))]


def _ray_docs() -> list[tuple[str, dict[str, Any]]]:
    return [(name, doc) for name, doc in _kuberay_docs() if doc["kind"] in RAY_KINDS]


def _ray_cluster_spec(doc: dict[str, Any]) -> dict[str, Any]:
    """The RayClusterSpec inside a RayCluster, RayJob or RayCronJob."""
    kind, spec = doc["kind"], doc["spec"]
    if kind == "RayCluster":
        return spec
    if kind == "RayJob":
        return spec["rayClusterSpec"]
    if kind == "RayCronJob":
        return spec["jobTemplate"]["rayClusterSpec"]
    raise AssertionError(f"unexpected kind {kind}")


def _groups(cluster_spec: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    yield "head", cluster_spec["headGroupSpec"]
    for group in cluster_spec.get("workerGroupSpecs", []):
        yield group["groupName"], group


def _start_resources(group: dict[str, Any]) -> dict[str, float]:
    """Decode KubeRay's quoted-JSON `rayStartParams.resources` ('"{\\"X\\": 1}"')."""
    text = group.get("rayStartParams", {}).get("resources")
    if not text:
        return {}
    assert text.startswith('"') and text.endswith('"'), f"resources must be KubeRay's quoted JSON: {text!r}"
    return json.loads(text[1:-1].replace('\\"', '"'))


def _entrypoints() -> list[tuple[str, str]]:
    out = []
    for name, doc in _kuberay_docs():
        if doc["kind"] == "RayJob":
            out.append((name, doc["spec"]["entrypoint"]))
        elif doc["kind"] == "RayCronJob":
            out.append((name, doc["spec"]["jobTemplate"]["entrypoint"]))
    return out


# --- every file ------------------------------------------------------------------------------------

def test_the_expected_files_exist():
    names = {p.relative_to(CLUSTER).as_posix() for p in _yaml_files()}
    assert {"aws.yaml", "kuberay/raycluster.yaml", "kuberay/rayjob-train.yaml",
            "kuberay/raycronjob-score.yaml"} <= names
    assert (CLUSTER / "README.md").is_file()


@pytest.mark.parametrize("path", _yaml_files(), ids=lambda p: p.relative_to(CLUSTER).as_posix())
def test_yaml_parses(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    assert docs and all(isinstance(d, dict) for d in docs)


# --- AWS cluster launcher ----------------------------------------------------------------------------

def test_aws_config_passes_rays_cluster_schema():
    util = pytest.importorskip("ray.autoscaler._private.util")
    config = util.prepare_config(_load_one(CLUSTER / "aws.yaml"))   # merges defaults.yaml, offline
    util.validate_config(config)


def test_aws_gpu_node_types_declare_their_accelerator():
    config = _load_one(CLUSTER / "aws.yaml")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    seen = set()
    for name, node in types.items():
        instance = node["node_config"]["InstanceType"]
        resources = node.get("resources", {})
        declared = [k.split(":", 1)[1] for k in resources if k.startswith("accelerator_type:")]
        if instance in GPU_INSTANCE_ACCELERATOR:
            assert resources.get("GPU", 0) >= 1, f"{name}: GPU instance without GPU resources"
            assert declared == [GPU_INSTANCE_ACCELERATOR[instance]], f"{name}: accelerator {declared}"
            seen.add(declared[0])
        else:
            assert not declared and not resources.get("GPU"), f"{name}: CPU instance declares a GPU"
    assert seen == {"V100", "A100"}
    assert any(not n.get("resources", {}).get("GPU") for k, n in types.items() if k != config["head_node_type"])


def test_aws_nodes_get_s3_access_from_instance_profiles_not_keys():
    config = _load_one(CLUSTER / "aws.yaml")
    for name, node in config["available_node_types"].items():
        profile = node["node_config"].get("IamInstanceProfile", {})
        assert re.fullmatch(r"arn:aws:iam::\d{12}:instance-profile/[\w+=,.@/-]+", profile.get("Arn", "")) \
            or profile.get("Name"), f"{name}: no IamInstanceProfile"
    text = json.dumps(config)
    assert not [k for k in STATIC_KEYS if k in text], "aws.yaml names a static AWS key"
    assert not [m for m in config["file_mounts"] if ".aws" in m], "aws.yaml copies AWS credentials to the nodes"


def test_aws_token_auth_is_on_and_the_dashboard_listens_on_loopback():
    config = _load_one(CLUSTER / "aws.yaml")
    assert "--env RAY_AUTH_MODE=token" in config["docker"]["run_options"]        # every Ray process and CLI
    assert config["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"  # the same token on every node
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head
    commands = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"]
                        + config["setup_commands"])
    assert "RAY_AUTH_MODE=disabled" not in commands


def test_aws_image_and_setup_install_the_project():
    config = _load_one(CLUSTER / "aws.yaml")
    assert config["docker"]["image"].startswith(f"rayproject/ray:{RAY_VERSION}-")
    assert "." in config["file_mounts"].values()
    commands = " ; ".join(config["setup_commands"])
    assert "pip install -q -e ." in commands and "torch==2.13.0" in commands


# --- KubeRay -----------------------------------------------------------------------------------------

def test_kuberay_kinds_and_ray_versions():
    kinds = {name: doc["kind"] for name, doc in _kuberay_docs()}
    assert kinds == {"raycluster.yaml": "RayCluster", "rayjob-train.yaml": "RayJob",
                     "raycronjob-score.yaml": "RayCronJob", "serviceaccount.yaml": "ServiceAccount",
                     "networkpolicy.yaml": "NetworkPolicy"}
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert f"FROM rayproject/ray:{RAY_VERSION}-" in dockerfile
    for name, doc in _ray_docs():
        assert doc["apiVersion"] == "ray.io/v1", name
        assert _ray_cluster_spec(doc)["rayVersion"] == RAY_VERSION, name


def test_raycronjob_has_a_schedule_and_a_rayjob_template():
    doc = _load_one(KUBERAY / "raycronjob-score.yaml")
    fields = doc["spec"]["schedule"].split()
    assert len(fields) == 5, "schedule must be a 5-field cron expression"
    assert {"entrypoint", "rayClusterSpec"} <= set(doc["spec"]["jobTemplate"])


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-train.yaml", "raycronjob-score.yaml"])
def test_kuberay_gpu_groups_declare_accelerator_and_target_gpu_nodes(name):
    cluster = _ray_cluster_spec(_load_one(KUBERAY / name))
    gpu_groups = 0
    for group_name, group in _groups(cluster):
        assert all(isinstance(v, str) for v in group["rayStartParams"].values()), \
            f"{name}/{group_name}: rayStartParams values must be strings"
        pod = group["template"]["spec"]
        gpus = sum(int(c["resources"].get("limits", {}).get("nvidia.com/gpu", 0)) for c in pod["containers"])
        declared = [k.split(":", 1)[1] for k in _start_resources(group) if k.startswith("accelerator_type:")]
        if not gpus:
            assert not declared, f"{name}/{group_name}: CPU group declares {declared}"
            continue
        gpu_groups += 1
        instance = pod["nodeSelector"]["node.kubernetes.io/instance-type"]
        assert declared == [GPU_INSTANCE_ACCELERATOR[instance]], f"{name}/{group_name}: {declared} on {instance}"
        assert any(t.get("key") == "nvidia.com/gpu" for t in pod.get("tolerations", [])), \
            f"{name}/{group_name}: no toleration for the GPU taint"
    assert gpu_groups >= 1


def test_the_service_account_carries_an_irsa_role():
    doc = _load_one(KUBERAY / "serviceaccount.yaml")
    assert doc["apiVersion"] == "v1" and doc["kind"] == "ServiceAccount"
    assert doc["metadata"]["name"] == SERVICE_ACCOUNT
    role = doc["metadata"].get("annotations", {}).get(IRSA_ANNOTATION, "")
    assert re.fullmatch(r"arn:aws:iam::\d{12}:role/[\w+=,.@/-]+", role), role


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-train.yaml", "raycronjob-score.yaml"])
def test_every_ray_pod_gets_s3_access_from_irsa_and_no_static_key(name):
    cluster = _ray_cluster_spec(_load_one(KUBERAY / name))
    for group_name, group in _groups(cluster):
        pod = group["template"]["spec"]
        assert pod.get("serviceAccountName") == SERVICE_ACCOUNT, f"{name}/{group_name}: not the IRSA ServiceAccount"
        assert pod.get("automountServiceAccountToken", True), f"{name}/{group_name}: IRSA needs the token"
        for container in pod["containers"] + pod.get("initContainers", []):
            where = f"{name}/{group_name}/{container['name']}"
            env = container.get("env", [])
            assert not {e["name"] for e in env} & set(STATIC_KEYS), f"{where}: static AWS key in env"
            assert not [e for e in env if "secretKeyRef" in e.get("valueFrom", {})], f"{where}: env from a Secret"
            assert not container.get("envFrom"), f"{where}: envFrom brings in a Secret/ConfigMap wholesale"
    text = json.dumps(_load_one(KUBERAY / name))
    assert not [k for k in STATIC_KEYS if k in text], f"{name}: names a static AWS key"


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-train.yaml", "raycronjob-score.yaml"])
def test_kuberay_token_auth_is_on_and_the_dashboard_is_not_exposed(name):
    cluster = _ray_cluster_spec(_load_one(KUBERAY / name))
    assert cluster.get("authOptions", {}).get("mode") == "token", f"{name}: Ray token authentication is off"
    head = cluster["headGroupSpec"]
    assert head.get("serviceType") == "ClusterIP", f"{name}: head Service {head.get('serviceType')!r}"
    assert head.get("enableIngress") is not True, f"{name}: Ingress enabled"
    assert head.get("headService", {}).get("spec", {}).get("type", "ClusterIP") == "ClusterIP"
    for group_name, group in _groups(cluster):
        for container in group["template"]["spec"]["containers"]:
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("RAY_AUTH_MODE", "token") == "token", f"{name}/{group_name}: auth turned off"
            assert not [p for p in container.get("ports", []) if "hostPort" in p], f"{name}/{group_name}: hostPort"


def test_the_network_policy_covers_every_ray_pod_and_admits_the_job_api_from_inside_only():
    policy = _load_one(KUBERAY / "networkpolicy.yaml")
    selected = policy["spec"]["podSelector"]["matchLabels"]
    assert selected and policy["spec"]["policyTypes"] == ["Ingress"]
    for name, doc in _ray_docs():                            # a RayJob's generated cluster is covered too
        for group_name, group in _groups(_ray_cluster_spec(doc)):
            labels = group["template"].get("metadata", {}).get("labels", {})
            assert selected.items() <= labels.items(), f"{name}/{group_name}: not selected by the NetworkPolicy"
    rules = policy["spec"]["ingress"]
    sources = [peer for rule in rules for peer in rule["from"]]
    assert sources and not [p for p in sources if "ipBlock" in p], "an ipBlock admits addresses outside the cluster"
    for rule in rules:
        peers = rule["from"]
        if not rule.get("ports"):                            # any port: only from the Ray pods themselves
            assert peers == [{"podSelector": {"matchLabels": selected}}], rule
        for peer in peers:
            if "namespaceSelector" in peer:                  # another namespace: named, never "all namespaces"
                assert peer["namespaceSelector"].get("matchLabels"), rule
                assert [p["port"] for p in rule["ports"]] == [8265], rule


def test_raycluster_gpu_groups_cover_v100_and_a100():
    cluster = _ray_cluster_spec(_load_one(KUBERAY / "raycluster.yaml"))
    declared = {k.split(":", 1)[1] for _, g in _groups(cluster) for k in _start_resources(g)
                if k.startswith("accelerator_type:")}
    assert declared == {"V100", "A100"}


# --- job commands ------------------------------------------------------------------------------------

def test_job_entrypoints_name_known_job_scripts():
    entrypoints = dict(_entrypoints())
    assert set(entrypoints) == {"rayjob-train.yaml", "raycronjob-score.yaml"}
    train = entrypoints["rayjob-train.yaml"]
    assert JOB_COMMAND.findall(train) == ["train.py"] and "train.py" in KNOWN_JOBS
    for flag in ("--config mert-v1-95m", "--data s3://", "--storage s3://", "--gpu", "--num-workers 4"):
        assert flag in train
    score = entrypoints["raycronjob-score.yaml"]
    assert JOB_COMMAND.findall(score) == ["score.py"]
    for flag in ("--input s3://", "--checkpoint s3://", "--out s3://", "--max-error-rate"):
        assert flag in score


def test_readme_commands_name_known_jobs_and_existing_files():
    readme = (CLUSTER / "README.md").read_text()
    scripts = JOB_COMMAND.findall(readme)
    assert scripts and set(scripts) <= KNOWN_JOBS
    for applied in re.findall(r"kubectl (?:apply|delete) -f (\S+)", readme):
        assert (ROOT / applied).is_file(), applied
    assert "ray up cluster/aws.yaml" in readme and "ray job submit --address" in readme
    for needed in ("ray get-auth-token --generate", "RAY_AUTH_MODE=token", "kubectl port-forward",
                   "ray dashboard cluster/aws.yaml", IRSA_ANNOTATION, "IamInstanceProfile", "MinIO"):
        assert needed in readme, needed


def _job_options(script: str) -> set[str]:
    """The --options a job's argparse parser accepts (from its --help, run without Ray)."""
    import subprocess
    import sys
    text = subprocess.run([sys.executable, str(ROOT / "jobs" / script), "--help"], capture_output=True, text=True,
                          timeout=120, check=True).stdout
    return set(re.findall(r"(?<![\w-])(--[a-z][\w-]*)", text))


def test_every_job_command_in_the_cluster_files_uses_real_flags():
    """Each `python jobs/X.py --flag ...` in a manifest, the cluster README or the top README names a job
    that exists and only flags that job accepts (a renamed flag would fail every night)."""
    texts = {p.name: p.read_text() for p in _yaml_files()}
    texts["cluster/README.md"] = (CLUSTER / "README.md").read_text()
    texts["README.md"] = (ROOT / "README.md").read_text()
    options: dict[str, set[str]] = {}
    checked = 0
    for name, text in texts.items():
        for match in re.finditer(r"python\s+(?:\S*/)?jobs/([\w.-]+\.py)((?:[^\n`]|\\\n)*)", text):
            script, rest = match.group(1), match.group(2)
            assert script in KNOWN_JOBS, f"{name} runs jobs/{script}, which does not exist"
            if script not in options:
                options[script] = _job_options(script)
            for flag in re.findall(r"(?<![\w-])(--[a-z][\w-]*)", rest.split(" -- ")[0]):
                assert flag in options[script], f"{name}: jobs/{script} has no option {flag}"
                checked += 1
    assert checked > 10 and "score.py" in options
