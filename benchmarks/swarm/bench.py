"""Serving on the local multi-node Swarm: throughput through the gateway with 1, 2 and 3
replicas, the CPU each replica got, and the time from `deploy` start to every replica on the
new version.

    python benchmarks/swarm/bench.py [--image BAKED_IMAGE --body FILE.json] [--duration 10]

Without --image the replicas run the stand-in server (tests/release/fake_serving: the serving
HTTP contract, no model), which measures the path itself: host port -> node -> HAProxy gateway
-> overlay -> replica. With a baked serving image (and a /predict body) it measures the model.
The swarm is this run's own (scripts/swarm.sh up/down, names conveyor-bench-<id>); load comes
from wrk on 127.0.0.1 (closed loop: throughput, not zero-downtime). On a 2-core machine three
replicas share two cores with the nodes' engines, the gateway and wrk: do not expect linear
scaling; the CPU column shows what each replica got. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from release.target import Release  # noqa: E402
from release.targets import swarm as swarm_target  # noqa: E402
from scripts.local_swarm import LocalSwarm, SwarmUpError  # noqa: E402

CGROUP_CPU = Path("/sys/fs/cgroup/cpuacct/conveyor-swarm")
CONNECTIONS = 16


def wrk(url: str, body: bytes, seconds: int, tmp: Path) -> dict:
    script = tmp / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(body.decode())}\n"
        "done = function(summary, latency, requests)\n"
        '  io.write(string.format("JSON {\\"p50\\": %d, \\"p99\\": %d, \\"errors\\": %d}\\n",\n'
        "    latency:percentile(50), latency:percentile(99),\n"
        "    summary.errors.connect + summary.errors.read + summary.errors.write\n"
        "    + summary.errors.status + summary.errors.timeout))\nend\n"
    )
    out = subprocess.run(
        ["wrk", "-t2", f"-c{CONNECTIONS}", f"-d{seconds}s", "-s", str(script), url],
        capture_output=True,
        text=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    stats = json.loads(out.split("JSON ", 1)[1].splitlines()[0])
    return {
        "rps": rps,
        "p50_ms": stats["p50"] / 1000,
        "p99_ms": stats["p99"] / 1000,
        "errors": stats["errors"],
    }


def replica_cgroups(client, prefix: str, service: str) -> dict[str, Path]:
    """The cpuacct cgroup of each running replica (the nodes run inner containers under
    --cgroup-parent=/conveyor-swarm/<node>): task name -> directory."""
    found = {}
    for node in client.containers.list(
        filters={"label": f"io.conveyor.swarm={prefix}", "name": f"{prefix}-node-"}
    ):
        out = (
            node.exec_run(
                [
                    "docker",
                    "ps",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    f"label=com.docker.swarm.service.name={service}",
                    "--format",
                    "{{.ID}} {{.Names}}",
                ]
            )
            .output.decode()
            .split("\n")
        )
        for line in filter(None, out):
            cid, name = line.split()
            found[name] = CGROUP_CPU / node.name / cid
    return found


def cpu_seconds(cgroups: dict[str, Path]) -> dict[str, float]:
    return {
        name: int((path / "cpuacct.usage").read_text()) / 1e9
        for name, path in cgroups.items()
        if (path / "cpuacct.usage").exists()
    }


def scale(prefix: str, service: str, replicas: int) -> None:
    subprocess.run(
        [
            "docker",
            "exec",
            f"{prefix}-node-1",
            "docker",
            "service",
            "scale",
            "--detach=false",
            f"{service}={replicas}",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", help="a baked serving image (default: the stand-in)")
    parser.add_argument("--body", type=Path, help="JSON body of POST /predict for --image")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--cpus", default="1", help="CPU limit per replica")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("bench: `wrk` not found (Debian: apt-get install -y wrk)")
    import docker

    client = docker.from_env()
    run = uuid.uuid4().hex[:8]
    made: list[str] = []
    if args.image:
        first, second = args.image, f"{args.image.rsplit(':', 1)[0]}:bench-{run}"
        client.images.get(first).tag(second)  # a second tag: the deploy has something to roll
        made.append(second)
        body = args.body.read_bytes() if args.body else b"{}"
    else:
        from tests.release.fakes import build_fake

        first = build_fake(client, f"conveyor-bench/fake-serving:v1-{run}", "1", ready=True)
        second = build_fake(client, f"conveyor-bench/fake-serving:v2-{run}", "2", ready=True)
        made += [first, second]
        body = b'{"inputs": [[0]]}'
    local = LocalSwarm(
        "conveyor-bench",
        first,
        run,
        SWARM_UPDATE_MONITOR="3s",
        SERVING_REPLICAS="1",
        SERVING_CPUS=args.cpus,
        SERVING_MEMORY_MB="1024",
    )
    prefix, stack = local.prefix, local.stack
    tmp = Path(tempfile.mkdtemp(prefix="swarm-bench-"))
    rows, deploy_row = [], {}
    try:
        started = time.monotonic()
        try:
            wiring = local.up()
        except SwarmUpError as exc:
            sys.exit(f"bench: {exc}")
        up_s = time.monotonic() - started
        url = f"{wiring['SWARM_GATEWAY_URL']}/predict"
        service = wiring["SWARM_SERVICE"]
        for replicas in (1, 2, 3):
            if replicas > 1:
                scale(prefix, service, replicas)
            wrk(url, body, 2, tmp)  # warm-up
            cgroups = replica_cgroups(client, prefix, service)
            gateway = replica_cgroups(client, prefix, f"{stack}_gateway")
            before, t0 = cpu_seconds({**cgroups, **gateway}), time.monotonic()
            load0 = os.getloadavg()[0]
            result = wrk(url, body, args.duration, tmp)
            after, elapsed = cpu_seconds({**cgroups, **gateway}), time.monotonic() - t0
            used = {n: (after[n] - before[n]) / elapsed for n in after if n in before}
            cores = sorted(used[n] for n in cgroups if n in used)
            rows.append(
                {
                    "replicas": replicas,
                    **result,
                    "cpu": cores,
                    "gateway": sum(used[n] for n in gateway if n in used),
                    "load": max(load0, os.getloadavg()[0]),
                }
            )
            print(f"bench: {replicas} replica(s): {result['rps']:.0f} req/s", file=sys.stderr)
        settings = local.release_settings(
            wiring, SERVING_CPUS=float(args.cpus), SERVING_MEMORY_MB=1024
        )
        t0 = time.monotonic()
        summary = swarm_target.deploy(Release(image=second, ready_timeout=600), settings)
        deploy_row = {
            "total_s": time.monotonic() - t0,
            "rollout_s": summary["seconds"],
            "nodes": summary["nodes"],
            "up_s": up_s,
        }
    finally:
        local.down()
        for tag in made:
            client.images.remove(tag, force=False, noprune=False)
        shutil.rmtree(tmp, ignore_errors=True)

    what = args.image or "stand-in server (no model)"
    print(
        f"\nSwarm serving through the gateway: {what}; 3 engine nodes on {os.cpu_count()} "
        f"cores, {args.cpus} CPU limit per replica, wrk -c{CONNECTIONS} {args.duration} s\n"
    )
    print(
        "| replicas | req/s | p50 ms | p99 ms | errors | CPU per replica (cores) "
        "| gateway CPU | load avg |"
    )
    print("|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        cpu = ", ".join(f"{c:.2f}" for c in r["cpu"])
        print(
            f"| {r['replicas']} | {r['rps']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | "
            f"{r['errors']} | {cpu} | {r['gateway']:.2f} | {r['load']:.1f} |"
        )
    if deploy_row:
        print(
            f"\n`make swarm-up` from built images to serving: {deploy_row['up_s']:.0f} s. "
            f"Deploy of a new version to 3 replicas (push + start-first rolling update): "
            f"{deploy_row['total_s']:.1f} s from start to all replicas on it "
            f"(rolling update {deploy_row['rollout_s']:.1f} s), on {deploy_row['nodes']}."
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
