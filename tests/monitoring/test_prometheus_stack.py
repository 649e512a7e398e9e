"""Prometheus and Alertmanager from the project's images on a private network, with serving
targets found by Docker service discovery through a read-only socket proxy.

1. the proxy (socket-proxy image, monitoring/docker-sd-proxy.cfg) answers the list endpoints
   and refuses writes and container inspect;
2. a container labelled io.conveyor.role=serving on the serving network is scraped (up, with its
   container and run labels), and so is the Compose service `serving`; an unlabelled container
   and another Compose service beside them are not;
3. a second serving container appears as a target, the first one's removal drops it;
4. with no serving container left, ServingDown's expression holds: the alert is pending (its
   `for: 1m` is promtool's to check, monitoring/rule-tests/; the stack's e2e test sees it fire
   and reach Alertmanager).
"""

from __future__ import annotations

import pytest

from tests.docker.toolchain import docker, wait_until
from tests.monitoring.containers import docker_gid, http_json, monitoring_path

pytestmark = pytest.mark.docker

# A stand-in serving container: /metrics in the exposition format on port 8000.
FAKE_SERVING = """
import http.server
body = b'conveyor_http_requests_total{endpoint="/predict",method="POST",status="200"} 5\\n'
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.HTTPServer(("", 8000), H).serve_forever()
"""

PROBE_PROXY = """
import json, sys, urllib.request, urllib.error
out = {}
for method, path in json.loads(sys.argv[1]):
    req = urllib.request.Request("http://docker-sd-proxy:2375" + path, method=method,
                                 data=b"{}" if method == "POST" else None,
                                 headers={"Content-Type": "application/json"})
    try:
        out[method + " " + path] = urllib.request.urlopen(req, timeout=10).status
    except urllib.error.HTTPError as exc:
        out[method + " " + path] = exc.code
print(json.dumps(out))
"""


def _serving(containers, role, image, network, *, labels=None, run_id="run-1"):
    """A fake serving container; labelled as the deploy step labels them unless `labels`."""
    if labels is None:
        labels = {"io.conveyor.role": "serving", "io.conveyor.run_id": run_id}
    options = [arg for k, v in labels.items() for arg in ("--label", f"{k}={v}")]
    return containers.run(
        role,
        image,
        "python",
        "-c",
        FAKE_SERVING,
        network=network,
        options=(*options, "--expose", "8000"),
    )


def _serving_targets(port: int) -> dict[str, str]:
    data = http_json(f"http://127.0.0.1:{port}/api/v1/targets?state=active")
    return {
        t["labels"].get("container", "?"): t["health"]
        for t in data["data"]["activeTargets"]
        if t["labels"].get("job") == "serving"
    }


def test_serving_containers_are_discovered_scraped_and_alerted_on(images, base_images, containers):
    import json

    net = containers.network()
    proxy_cfg = monitoring_path("docker-sd-proxy.cfg")
    containers.run(
        "docker-sd-proxy",
        images["SOCKET_PROXY_IMAGE"],
        "haproxy",
        "-W",
        "-db",
        "-f",
        "/etc/conveyor/docker-sd-proxy.cfg",
        network=net,
        options=(
            "--group-add",
            docker_gid(),
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            f"{proxy_cfg}:/etc/conveyor/docker-sd-proxy.cfg:ro",
        ),
    )
    containers.run("alertmanager", images["ALERTMANAGER_IMAGE"], network=net)
    python = base_images["PYTHON_IMAGE"]
    first = _serving(containers, "serving-a", python, net, run_id="run-a")
    # The Compose service `serving` (the gateway's fallback): scraped too; another Compose
    # service and an unlabelled container beside them are not.
    fallback = _serving(
        containers, "compose-serving", python, net, labels={"com.docker.compose.service": "serving"}
    )
    decoy = _serving(containers, "not-serving", python, net, labels={})
    gateway = _serving(
        containers, "gateway", python, net, labels={"com.docker.compose.service": "gateway"}
    )
    prometheus, prom_port = containers.prometheus(images["PROMETHEUS_IMAGE"], net)

    # 1. read-only proxy
    probes = [
        ["GET", "/_ping"],
        ["GET", "/v1.41/containers/json"],
        ["GET", "/networks"],
        ["POST", "/v1.41/containers/create"],
        ["GET", f"/containers/{first}/json"],
        ["POST", f"/containers/{first}/stop"],
        ["DELETE", f"/containers/{decoy}"],
        ["GET", "/images/json"],
        ["POST", "/build"],
    ]
    out = docker(
        "run", "--rm", "--network", net, python, "python", "-c", PROBE_PROXY, json.dumps(probes)
    ).stdout
    status = json.loads(out.strip().splitlines()[-1])
    allowed = {"GET /_ping", "GET /v1.41/containers/json", "GET /networks"}
    assert {k for k, v in status.items() if v == 200} == allowed, status
    assert {v for k, v in status.items() if k not in allowed} == {403}, status

    # 2. the serving containers are targets and up; the others are not targets
    def both_up():
        try:
            targets = _serving_targets(prom_port)
        except OSError:
            return False
        return targets.get(first) == "up" and targets.get(fallback) == "up"

    wait_until(
        both_up,
        timeout=90,
        interval=2,
        what=f"{first} up in Prometheus (logs: {containers.logs(prometheus)[-1500:]})",
    )
    assert set(_serving_targets(prom_port)) == {first, fallback}
    series = http_json(
        f"http://127.0.0.1:{prom_port}/api/v1/query?query=conveyor_http_requests_total"
    )["data"]["result"]
    assert {(s["metric"]["container"], s["metric"].get("airflow_run_id")) for s in series} == {
        (first, "run-a"),
        (fallback, None),
    }
    # The decoy and the gateway ran beside them all along and were never scraped.
    assert {decoy, gateway}.isdisjoint(_serving_targets(prom_port))

    # 3. a new container appears, the removed one is gone
    second = _serving(containers, "serving-b", python, net, run_id="run-b")
    wait_until(
        lambda: _serving_targets(prom_port).get(second) == "up",
        timeout=60,
        interval=2,
        what=f"{second} up",
    )
    docker("rm", "-f", first, fallback)
    wait_until(
        lambda: set(_serving_targets(prom_port)) == {second},
        timeout=60,
        interval=2,
        what=f"{first} and {fallback} gone from the targets",
    )
    assert _serving_targets(prom_port) == {second: "up"}

    # 4. nothing serves: ServingDown's expression holds, the alert is pending
    def serving_down() -> list[dict]:
        alerts = http_json(f"http://127.0.0.1:{prom_port}/api/v1/alerts")["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "ServingDown"]

    assert serving_down() == []  # a serving container is up: nothing pending
    docker("stop", "-t", "2", second)
    wait_until(serving_down, timeout=60, interval=2, what="ServingDown pending in Prometheus")
    (alert,) = serving_down()
    assert alert["state"] in ("pending", "firing") and alert["labels"]["severity"] == "critical"
