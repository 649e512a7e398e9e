"""The `kubernetes` target where no cluster can run: with the real kubectl and a kubeconfig
whose API server does not answer, the release fails before anything is pushed, with kubectl's
reason in one line (exit 4). The rollout itself (set image, rollout status, undo) has not run
against a cluster here; release/README.md says so."""

from __future__ import annotations

import socket

import pytest
import yaml

from release import deploy as release_deploy

pytestmark = pytest.mark.unit


def test_an_unreachable_cluster_fails_the_release_with_kubectls_reason(
    monkeypatch, tmp_path, capsys
):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "here",
                "clusters": [{"name": "here", "cluster": {"server": f"https://127.0.0.1:{port}"}}],
                "contexts": [{"name": "here", "context": {"cluster": "here", "user": "me"}}],
                "users": [{"name": "me", "user": {"token": "x"}}],
            }
        )
    )
    monkeypatch.setenv("HOME", str(tmp_path))  # kubectl keeps its cache under $HOME/.kube
    for name, value in {
        "DEPLOY_TARGET": "kubernetes",
        "KUBECONFIG": str(kubeconfig),
        "KUBE_NAMESPACE": "conveyor",
        "KUBE_DEPLOYMENT": "conveyor-serving",
        "KUBE_REGISTRY": "127.0.0.1:1",
        "DOCKER_HOST": "tcp://127.0.0.1:1",
        "SERVING_REPLICAS": "2",
        "SERVING_MAX_REPLICAS": "4",
        "SERVING_CPUS": "1",
        "SERVING_MEMORY_MB": "512",
    }.items():
        monkeypatch.setenv(name, value)
    assert release_deploy.main(["--image", "conveyor/serving-model:m-v1"]) == 4
    err = capsys.readouterr().err.strip()
    assert err.startswith("deploy: failed: kubectl get deployment/conveyor-serving")
    assert "refused" in err and f"127.0.0.1:{port}" in err and "\n" not in err
    print(err)
