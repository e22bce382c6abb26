"""docker-compose.yml: valid Compose, the production shape, and only names that exist.

No Docker engine runs where the tests do, so the files are parsed and interpolated
here (tests/compose.py) and checked against the Compose Specification's schema.
"""

import importlib
import json
import re
import tomllib

import jsonschema
import pytest

from cli.main import main as cli_main
from covidscan.settings import ClientSettings, load_settings, variable_names
from devtools.devstack import gunicorn_command, worker_command
from tests import compose
from tests.conftest import ROOT

LONG_RUNNING = (
    "redis",
    "postgres",
    "seaweedfs",
    "api",
    "worker",
    "sweep",
    "dicom",
    "flower",
    "nginx",
    "prometheus",
    "grafana",
)
MONITORING = ("flower", "prometheus", "grafana")
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SCHEMA = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())


@pytest.fixture(scope="module")
def config():
    return compose.compose_config()


@pytest.fixture(scope="module")
def services(config):
    return config["services"]


def seconds(duration: str) -> int:
    """A compose duration such as ``10m``, ``90s`` or ``1h30m`` in seconds."""
    parts = re.findall(r"(\d+)(h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"unexpected duration {duration!r}"
    return sum(int(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in parts)


@pytest.mark.parametrize("overrides", [(), (compose.CPU_OVERRIDE,)], ids=["gpu", "cpu"])
def test_the_files_are_valid_compose(overrides):
    jsonschema.validate(compose.compose_config(*overrides), SCHEMA)


def test_the_stack_refuses_to_start_without_a_database_password():
    env = compose.read_env_file()
    env.pop("POSTGRES_PASSWORD", None)
    with pytest.raises(ValueError, match="POSTGRES_PASSWORD"):
        compose.compose_config(env=env)


def test_the_services_and_their_order_of_start(services):
    assert set(services) == {
        "redis",
        "postgres",
        "seaweedfs",
        "migrate",
        "api",
        "worker",
        "sweep",
        "dicom",
        "flower",
        "nginx",
        "prometheus",
        "grafana",
    }
    assert services["nginx"]["depends_on"] == {"api": {"condition": "service_healthy"}}
    assert services["sweep"]["command"][:2] == ["covidscan", "sweep"]
    for name in ("api", "worker", "sweep", "dicom"):
        assert services[name]["depends_on"] == {
            "redis": {"condition": "service_healthy"},
            "postgres": {"condition": "service_healthy"},
            "migrate": {"condition": "service_completed_successfully"},
        }
    assert services["migrate"]["depends_on"] == {
        "postgres": {"condition": "service_healthy"},
        "seaweedfs": {"condition": "service_healthy"},
    }
    assert services["migrate"]["command"] == ["covidscan", "migrate"]
    for name in MONITORING:
        assert services[name]["profiles"] == ["monitoring"], name
    assert all("profiles" not in services[name] for name in services if name not in MONITORING)


def test_healthchecks_and_restart_policies_everywhere(services):
    for name in LONG_RUNNING:
        assert services[name]["restart"] == "unless-stopped", name
        assert services[name]["healthcheck"]["test"], name
    # The one-shot migration's health is its exit status, which api and worker wait for.
    assert services["migrate"]["restart"] == "no"


def test_any_number_of_workers_can_run(services):
    worker = services["worker"]
    assert "ports" not in worker and "container_name" not in worker
    assert all("container_name" not in service for service in services.values())
    assert compose.option(worker["command"], "--hostname") == "worker@%h"
    health = " ".join(worker["healthcheck"]["test"])
    assert "inspect ping" in health and '"worker@$HOSTNAME"' in health


def test_each_worker_reserves_one_gpu(services):
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_the_docs_multi_gpu_override_pins_one_gpu_per_worker_service():
    page = (ROOT / "docs" / "run" / "compose.md").read_text()
    section = page[page.index("## Multi-GPU hosts") :]
    snippet = section[section.index("```yaml\n") + 8 : section.index("```\n", 8)]
    override = compose.load(snippet, compose.example_env())
    merged = compose.merge(compose.compose_config(), override)
    jsonschema.validate(merged, SCHEMA)
    extends = merged["services"]["worker-gpu1"]["extends"]
    assert (ROOT / extends["file"]).is_file() and extends["service"] in merged["services"]
    gpus = [
        merged["services"][name]["deploy"]["resources"]["reservations"]["devices"]
        for name in ("worker", "worker-gpu1")
    ]
    assert gpus == [
        [{"driver": "nvidia", "device_ids": [gpu], "capabilities": ["gpu"]}] for gpu in ("0", "1")
    ]


def test_the_cpu_variant_reserves_no_gpu_and_builds_on_tensorflows_cpu_image():
    worker = compose.compose_config(compose.CPU_OVERRIDE)["services"]["worker"]
    tensorflow = compose.pins()["tensorflow"]
    assert "deploy" not in worker
    assert worker["build"]["args"]["BASE_IMAGE"] == f"tensorflow/tensorflow:{tensorflow}"
    assert worker["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert worker["image"] == f"covidscan-worker-cpu:{PYPROJECT['project']['version']}"
    migrate = compose.compose_config(compose.CPU_OVERRIDE)["services"]["migrate"]
    assert (migrate["image"], migrate["build"]) == (worker["image"], worker["build"])


def test_a_stopping_worker_has_time_to_finish_its_batch(services):
    grace = seconds(services["worker"]["stop_grace_period"])
    visibility = load_settings({}).visibility_timeout
    # Far above any batch, and below the visibility timeout so Redis does not hand the
    # batch being finished to a second worker.
    assert 300 <= grace < visibility
    assert services["worker"]["stop_signal"] == "SIGTERM"  # Celery's warm shutdown


def test_blobs_live_in_the_object_store_and_workers_mount_no_uploads(config, services):
    def container_settings(name):  # without what only exists inside the container
        environment = dict(services[name]["environment"])
        environment.pop("PROMETHEUS_MULTIPROC_DIR", None)  # the api's tmpfs
        return load_settings(environment)

    stores = {
        name: container_settings(name).blob_store for name in ("migrate", "api", "worker", "sweep")
    }
    assert {location.url for location in stores.values()} == {"s3://covidscan/blobs/"}
    assert {location.endpoint_url for location in stores.values()} == {"http://seaweedfs:8333"}
    for name, service in services.items():
        assert "BLOB_DIR" not in service.get("environment", {}), name
        assert not [v for v in service.get("volumes", []) if "blobs" in v or "uploads" in v]
    assert "uploads" not in config["volumes"]
    assert "objects:/data" in services["seaweedfs"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in services["postgres"]["volumes"]
    assert {"objects", "postgres-data", "redis-data"} <= set(config["volumes"])


def test_the_object_store_holds_the_key_pair_out_of_its_command_line(services):
    seaweedfs = services["seaweedfs"]
    assert re.fullmatch(r"chrislusf/seaweedfs:\d+\.\d+", seaweedfs["image"])
    script = seaweedfs["command"][0]
    assert "k3y" not in script and "s3cr3tkey" not in script
    assert "-s3.config=/tmp/s3.json" in script and "umask 077" in script
    assert (
        seaweedfs["environment"]["AWS_ACCESS_KEY_ID"]
        == services["worker"]["environment"]["AWS_ACCESS_KEY_ID"]
        == "k3y"
    )
    assert "8333/healthz" in seaweedfs["healthcheck"]["test"][1]
    env = compose.example_env()
    env.pop("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(ValueError, match="AWS_SECRET_ACCESS_KEY"):
        compose.compose_config(env=env)
    managed = dict(compose.example_env(), BLOB_STORE="s3://my-bucket/covidscan", S3_ENDPOINT_URL="")
    worker = compose.compose_config(env=managed)["services"]["worker"]["environment"]
    assert load_settings(worker).blob_store.endpoint_url is None  # AWS S3 itself


def test_models_live_on_volumes(services):
    (models,) = [v for v in services["worker"]["volumes"] if v.endswith(":/models:ro")]
    assert models.startswith("./var/models:")  # MODELS_DIR from .env.example
    # The migration registers MODEL_PATH into the store the workers load from.
    for name in ("migrate", "worker"):
        assert models in services[name]["volumes"], name
        assert (
            services[name]["environment"]["MODEL_PATH"]
            == services["worker"]["environment"]["MODEL_PATH"]
        ), name
    store = services["worker"]["environment"]["MODEL_STORE_DIR"]
    assert services["migrate"]["environment"]["MODEL_STORE_DIR"] == store
    assert f"model-store:{store}" in services["migrate"]["volumes"]


def test_the_api_runs_the_local_stacks_gunicorn_command_and_checks_readiness(services):
    api = services["api"]
    workers = int(compose.option(api["command"], "--workers"))
    assert workers >= 2
    assert api["command"] == ["gunicorn", *gunicorn_command(5000, "0.0.0.0", workers)[3:]]
    assert "http://127.0.0.1:5000/readyz" in " ".join(api["healthcheck"]["test"])
    assert api["environment"]["TRUSTED_HOSTS"].startswith("localhost,")


def test_only_nginx_publishes_a_port_and_on_loopback_by_default(services):
    published = {
        name: service["ports"]
        for name, service in services.items()
        if "ports" in service and name not in MONITORING
    }
    assert published == {"nginx": ["127.0.0.1:8443:8443"], "dicom": ["127.0.0.1:11112:11112"]}
    for name in MONITORING:
        assert [port.split(":")[0] for port in services[name]["ports"]] == ["127.0.0.1"], name
    env = dict(compose.example_env(), PUBLIC_BIND="0.0.0.0")
    assert compose.compose_config(env=env)["services"]["nginx"]["ports"] == ["0.0.0.0:8443:8443"]
    nginx = services["nginx"]
    assert nginx["environment"]["API_UPSTREAM"] == "api:5000"
    assert (
        nginx["environment"]["MAX_UPLOAD_BYTES"]
        == services["api"]["environment"]["MAX_UPLOAD_BYTES"]
    )
    assert "./var/tls:/etc/nginx/tls:ro" in nginx["volumes"]


def test_redis_requires_the_password_every_client_carries(services):
    env = compose.example_env()
    env.pop("REDIS_PASSWORD")
    with pytest.raises(ValueError, match="REDIS_PASSWORD"):
        compose.compose_config(env=env)
    redis = services["redis"]
    assert "requirepass" in redis["command"][-1] and "r3dis" not in redis["command"][-1]
    assert "REDISCLI_AUTH" in redis["healthcheck"]["test"][1]
    for name in ("api", "worker", "migrate"):
        assert services[name]["environment"]["REDIS_URL"] == "redis://:r3dis@redis:6379/0", name
    assert services["flower"]["environment"]["CELERY_BROKER_URL"] == "redis://:r3dis@redis:6379/0"


def test_the_dicom_gateway_listens_on_every_interface_of_its_container(services):
    """Published on DICOM_BIND, so reachable by a PACS only where the operator says."""
    dicom = services["dicom"]
    command = dicom["command"]
    assert command[:2] == ["covidscan", "dicom-listen"] and "dicom-listen" in cli_main.commands
    assert compose.option(command, "--host") == "0.0.0.0"
    assert compose.option(command, "--owner") == "pacs"
    assert compose.option(command, "--port") == "11112"
    assert "echo('127.0.0.1', 11112, 'COVIDSCAN')" in dicom["healthcheck"]["test"][-1]
    env = dict(compose.example_env(), DICOM_BIND="10.0.0.5", DICOM_PORT="104")
    assert compose.compose_config(env=env)["services"]["dicom"]["ports"] == ["10.0.0.5:104:11112"]


def test_the_worker_runs_the_local_stacks_celery_command(services):
    command = services["worker"]["command"]
    expected = worker_command(compose.option(command, "--loglevel"), "worker@%h")
    assert command == ["celery", *expected[3:]]
    assert compose.option(command, "--pool") == "threads"  # never fork after TensorFlow
    assert "--concurrency" not in command  # WORKER_CONCURRENCY, read by the worker


def test_every_entry_point_the_services_name_exists(services):
    assert PYPROJECT["project"]["scripts"]["covidscan"] == "cli.main:main"
    assert "migrate" in cli_main.commands
    module, _, factory = services["api"]["command"][-1].partition(":")
    assert factory == "create_app()" and callable(importlib.import_module(module).create_app)
    celery_app = compose.option(services["worker"]["command"], "-A")
    assert importlib.import_module(celery_app).app.main == "covidscan"
    for name in ("migrate", "api", "worker", "nginx"):
        build = services[name]["build"]
        assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name


def test_images_built_from_one_dockerfile_share_a_tag_of_the_project_version(services):
    version = PYPROJECT["project"]["version"]
    assert services["api"]["image"] == f"covidscan-api:{version}"
    # The migration registers MODEL_PATH, which loads the model: it runs on the worker image.
    assert (
        services["migrate"]["image"] == services["worker"]["image"] == f"covidscan-worker:{version}"
    )
    for name in ("migrate", "worker"):
        assert services[name]["build"]["dockerfile"] == "docker/worker.Dockerfile", name
    assert services["nginx"]["image"] == f"covidscan-nginx:{version}"
    for name in ("redis", "postgres", "flower", "seaweedfs", "prometheus", "grafana"):
        assert re.search(r":v?\d+(\.\d+)+(-\w+)?$", services[name]["image"]), name


def test_every_variable_the_services_set_is_read_by_someone(services):
    known = variable_names() | set(compose.THIRD_PARTY_VARIABLES)
    for name, service in services.items():
        unknown = set(service.get("environment", {})) - known
        assert not unknown, f"{name} sets {unknown}, which nothing reads"


def test_env_example_documents_every_variable_and_nothing_else(services):
    documented = compose.documented_names()
    set_by_services = {v for service in services.values() for v in service.get("environment", {})}
    interpolated = compose.referenced_variables(
        compose.COMPOSE_FILE
    ) | compose.referenced_variables(compose.CPU_OVERRIDE)
    cli_variables = {str(field.alias) for field in ClientSettings.model_fields.values()}
    undocumented = (set_by_services | interpolated | variable_names()) - documented
    assert not undocumented, f".env.example does not document {sorted(undocumented)}"
    unknown = documented - (
        set_by_services
        | interpolated
        | variable_names()
        | cli_variables
        | compose.COMPOSE_CLI_VARIABLES
    )
    assert not unknown, f".env.example documents {sorted(unknown)}, which nothing reads"


def test_the_front_image_is_pinned_unprivileged_and_copies_what_exists():
    dockerfile = (ROOT / "docker" / "nginx.Dockerfile").read_text()
    assert re.search(r"^FROM nginx:\d+\.\d+\.\d+-alpine$", dockerfile, re.MULTILINE)
    assert re.search(r"^USER nginx$", dockerfile, re.MULTILINE)
    for source in re.findall(r"^COPY (\S+) ", dockerfile, re.MULTILINE):
        assert (ROOT / source).is_file(), source
    assert "EXPOSE 8443" in dockerfile


def _mounted(service: dict, target: str):
    """The repository path mounted at ``target`` in ``service`` (read-only)."""
    for volume in service["volumes"]:
        source, _, rest = volume.partition(":")
        if rest.split(":")[0] == target:
            assert source.startswith("./") and rest.endswith(":ro"), volume
            return ROOT / source[2:]
    raise AssertionError(f"nothing is mounted at {target}")


def test_prometheus_scrapes_the_api_every_worker_replica_and_the_sweep(services):
    import yaml

    prometheus = services["prometheus"]
    config_path = _mounted(prometheus, "/etc/prometheus/prometheus.yml")
    assert f"--config.file={'/etc/prometheus/prometheus.yml'}" in prometheus["command"]
    jobs = {
        job["job_name"]: job for job in yaml.safe_load(config_path.read_text())["scrape_configs"]
    }
    api_port = compose.option(services["api"]["command"], "--bind").rsplit(":", 1)[1]
    assert jobs["covidscan-api"]["static_configs"] == [{"targets": [f"api:{api_port}"]}]
    api = services["api"]["environment"]
    assert api["METRICS_ACCESS"] == "public"  # nginx refuses /metrics from outside
    assert "api" in api["TRUSTED_HOSTS"].split(",")  # the Host header Prometheus sends
    # gunicorn's processes add up their values in a directory that is empty at each start.
    assert f"{api['PROMETHEUS_MULTIPROC_DIR']}:mode=1777" in services["api"]["tmpfs"]
    for name in ("worker", "sweep"):
        # Docker's DNS answers a service name with every replica's address.
        (discovery,) = jobs[f"covidscan-{name}"]["dns_sd_configs"]
        assert discovery["names"] == [name] and discovery["type"] == "A"
        environment = services[name]["environment"]
        assert str(discovery["port"]) == environment["METRICS_PORT"], name
        assert environment["METRICS_HOST"] == "0.0.0.0", name
        assert "ports" not in services[name], name
    dicom = services["dicom"]["environment"]
    assert jobs["covidscan-dicom"]["static_configs"] == [
        {"targets": [f"dicom:{dicom['METRICS_PORT']}"]}
    ]
    assert dicom["METRICS_HOST"] == "0.0.0.0"
    nginx = (ROOT / "docker" / "nginx" / "nginx.conf.template").read_text()
    assert "location = /metrics {" in nginx


def test_grafana_is_provisioned_from_the_repository(services):
    import yaml

    grafana = services["grafana"]
    provisioning = _mounted(grafana, "/etc/grafana/provisioning")
    dashboards = _mounted(grafana, "/etc/grafana/dashboards")
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    assert services["prometheus"]["ports"][0].endswith(":9090")
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "covidscan.yml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/etc/grafana/dashboards"
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith("/etc/grafana/dashboards/")
    dashboard = json.loads((dashboards / home.rsplit("/", 1)[1]).read_text())
    assert {panel["datasource"]["uid"] for panel in dashboard["panels"]} == {source["uid"]}
    assert grafana["depends_on"] == {"prometheus": {"condition": "service_healthy"}}


def defined_metric_names() -> set[str]:
    """Every series name covidscan's code can expose (counters with ``_total``, histograms
    with ``_bucket``, ``_sum`` and ``_count``), from the metric objects themselves."""
    from prometheus_client.metrics import MetricWrapperBase

    import api.metrics
    import core.metrics
    import worker.metrics

    families = [
        family
        for module in (api.metrics, core.metrics, worker.metrics)
        for metric in vars(module).values()
        if isinstance(metric, MetricWrapperBase)
        for family in metric.describe()
    ]
    families += list(core.metrics.QueueCollector(None).describe())
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    return {family.name + suffix for family in families for suffix in suffixes[family.type]}


def dashboard_queries() -> list[str]:
    dashboard = json.loads(
        (ROOT / "docker" / "grafana" / "dashboards" / "covidscan.json").read_text()
    )
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def test_the_dashboard_queries_only_metrics_the_code_defines():
    defined = defined_metric_names()
    assert all(name.startswith("covidscan_") for name in defined)
    queries = dashboard_queries()
    used = set()
    for expr in queries:
        # Series names: covidscan_… anywhere, and any name followed by a selector or a range.
        used |= set(re.findall(r"\bcovidscan_\w+", expr))
        used |= set(re.findall(r"\b([a-z_:][a-z0-9_:]*)\s*[{\[]", expr))
    unknown = used - defined - {"up"}  # up: Prometheus' own, per scrape target
    assert not unknown, f"the dashboard queries metrics nothing defines: {sorted(unknown)}"
    # What an operator looks at first: throughput, queue, batch fill, latency, errors.
    text = "\n".join(queries)
    for needed in (
        "rate(covidscan_scans_classified_total",
        "covidscan_scans_waiting",
        "covidscan_batch_fill_ratio_sum",
        "histogram_quantile(0.99, sum by (le) (rate(covidscan_scan_latency_seconds",
        'status="failed"',
        'status=~"5.."',
    ):
        assert needed in text, needed
