"""docker/k8s/: no cluster runs here, so the manifests are validated offline against the
Kubernetes schemas (kubernetes-validate), read for the names, ports and paths they must
share, and their very commands (init scripts, master, agents) are run on this machine,
each pod's paths mapped into a temporary folder: a full test with keys, exact totals."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

from loadmaster.config import load_config
from tests.e2e_helpers import (
    ROOT,
    LineReader,
    Result,
    Target,
    free_port,
    tagged_env,
    wait_no_tagged,
)

K8S = ROOT / "docker" / "k8s"
KUBERNETES = "1.30"


def docs() -> dict[tuple[str, str], dict[str, Any]]:
    """(kind, name) -> manifest, from every file of docker/k8s."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def pod(kind: str, name: str) -> dict[str, Any]:
    spec: dict[str, Any] = docs()[(kind, name)]["spec"]["template"]["spec"]
    return spec


def option(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def test_every_manifest_is_valid_for_kubernetes() -> None:
    found = docs()
    assert set(found) == {("Service", "loadtest-master"), ("Job", "loadtest-master"),
                          ("Deployment", "loadtest-agent"), ("ConfigMap", "loadtest-job")}
    for doc in found.values():
        kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_master_job_never_reruns_a_test_and_its_ports_are_served() -> None:
    job = docs()[("Job", "loadtest-master")]["spec"]
    assert job["backoffLimit"] == 0 and job["template"]["spec"]["restartPolicy"] == "Never"
    master = pod("Job", "loadtest-master")["containers"][0]
    args = master["args"]
    control = int(option(args, "--bind").rsplit(":", 1)[1])
    dashboard = int(option(args, "--dash-bind").rsplit(":", 1)[1])
    service = docs()[("Service", "loadtest-master")]["spec"]
    assert service["clusterIP"] == "None"  # agents reach the pod: stats port is per run
    assert {p["port"] for p in service["ports"]} == {control, dashboard}
    assert {p["containerPort"] for p in master["ports"]} == {control, dashboard}
    labels = docs()[("Job", "loadtest-master")]["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= labels.items()


def test_agents_dial_the_masters_service_spread_over_nodes_and_are_probed() -> None:
    spec = pod("Deployment", "loadtest-agent")
    agent = spec["containers"][0]
    assert agent["command"] == ["loadagent", "start"]
    host, port = re.fullmatch(r"tcp://([\w-]+):(\d+)", option(agent["args"], "--master")).groups()
    master_args = pod("Job", "loadtest-master")["containers"][0]["args"]
    assert host == "loadtest-master"
    assert int(port) == int(option(master_args, "--bind").rsplit(":", 1)[1])
    anti = spec["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert agent["resources"]["requests"]["cpu"] and agent["resources"]["requests"]["memory"]
    assert agent["livenessProbe"]["exec"]["command"] == ["loadagent", "status"]


def test_every_container_runs_the_image_compose_builds() -> None:
    compose = yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())
    image = re.fullmatch(r"\$\{LOADTEST_IMAGE:-(.+)\}", compose["x-image"]["image"])
    assert image is not None
    for kind, name in (("Job", "loadtest-master"), ("Deployment", "loadtest-agent")):
        spec = pod(kind, name)
        for c in spec["containers"] + spec["initContainers"]:
            assert c["image"] == image.group(1), (name, c["name"])
        assert spec["securityContext"]["runAsUser"] == 10001  # the image's user


def test_the_configmap_holds_the_example_client_and_a_config_that_loads(
        tmp_path: Path) -> None:
    data = docs()[("ConfigMap", "loadtest-job")]["data"]
    assert data["http_fast.py"] == (ROOT / "examples" / "http_fast.py").read_text()
    (tmp_path / "conf.yml").write_text(data["conf.yml"])
    (tmp_path / "http_fast.py").write_text(data["http_fast.py"])
    cfg = load_config(tmp_path / "conf.yml", cwd=tmp_path)
    assert cfg.benchmark_class_file.name == "http_fast.py"


# -- the manifests' own commands, on this machine -----------------------------------------
def configmap_volume(folder: Path, data: dict[str, str]) -> None:
    """Files laid out as a configMap volume: symlinks into a ..data folder."""
    real = folder / "..2026_11_30" / "x"
    real.parent.mkdir(parents=True)
    for name, text in data.items():
        (real.parent / name).write_text(text)
        (folder / name).symlink_to(Path("..data") / name)
    (folder / "..data").symlink_to(real.parent.name)


def secret_volume(folder: Path, files: dict[str, Path]) -> None:
    folder.mkdir(parents=True)
    for name, source in files.items():
        shutil.copy(source, folder / name)
        (folder / name).chmod(0o644)  # as a secret volume's files are, group/other readable


class PodPaths:
    """A pod's absolute paths mapped under a folder of its own."""

    def __init__(self, root: Path, *prefixes: str) -> None:
        self.root = root
        self.prefixes = prefixes

    def __call__(self, text: str) -> str:
        for p in self.prefixes:
            text = re.sub(rf"(?<![\w.]){re.escape(p)}(?=/|\b)", str(self.root) + p, text)
        return text


def run_init(spec: dict[str, Any], paths: PodPaths, tag: str) -> None:
    for c in spec["initContainers"]:
        script = paths(" ".join(c["args"]))
        subprocess.run([*c["command"], script], check=True, env=tagged_env(tag), timeout=30)


def test_the_manifests_commands_run_a_keyed_test_with_exact_totals(tmp_path: Path,
                                                                    tag: str) -> None:
    target = Target(tag)
    keys = tmp_path / "made"
    for program, folder in (("loadmaster", "master"), ("loadagent", "agent")):
        subprocess.run([sys.executable, "-m", program, "keygen", str(keys / folder)],
                       check=True, capture_output=True, timeout=30)
    # the Secrets the README's kubectl commands make, as volumes
    master_paths = PodPaths(tmp_path / "master-pod", "/job", "/keys", "/secret", "/results")
    agent_paths = PodPaths(tmp_path / "agent-pod", "/keys", "/secret")
    secret_volume(master_paths.root / "secret" / "master",
                  {"master.key": keys / "master" / "master.key",
                   "master.key_secret": keys / "master" / "master.key_secret"})
    secret_volume(master_paths.root / "secret" / "authorized",
                  {"agent.key": keys / "agent" / "agent.key"})
    secret_volume(agent_paths.root / "secret" / "agent",
                  {"agent.key": keys / "agent" / "agent.key",
                   "agent.key_secret": keys / "agent" / "agent.key_secret"})
    secret_volume(agent_paths.root / "secret" / "master",
                  {"master.key": keys / "master" / "master.key"})
    (master_paths.root / "results").mkdir()
    data = dict(docs()[("ConfigMap", "loadtest-job")]["data"])
    data["conf.yml"] = re.sub(r'host: "[^"]*"', f'host: "{target.url}"', data["conf.yml"])
    data["conf.yml"] = re.sub(r"run_time: \d+", "run_time: 3", data["conf.yml"])
    data["conf.yml"] = re.sub(r"users: \d+", "users: 6", data["conf.yml"])
    configmap_volume(master_paths.root / "job", data)
    master_spec, agent_spec = pod("Job", "loadtest-master"), pod("Deployment", "loadtest-agent")
    run_init(master_spec, master_paths, tag)
    run_init(agent_spec, agent_paths, tag)

    port, dash = free_port(), free_port()
    master = master_spec["containers"][0]
    m_args = [master_paths(a).replace("$(AGENTS)", "2") for a in master["args"]]
    m_args[m_args.index("--bind") + 1] = f"127.0.0.1:{port}"
    m_args[m_args.index("--dash-bind") + 1] = f"127.0.0.1:{dash}"
    m_cmd = [sys.executable, "-m", master["command"][0],
             *[master_paths(a) for a in master["command"][1:]], *m_args]
    agent = agent_spec["containers"][0]
    a_args = [agent_paths(a).replace("tcp://loadtest-master:5556", f"tcp://127.0.0.1:{port}")
              for a in agent["args"]]
    agents = [subprocess.Popen([sys.executable, "-m", "loadagent", "start", *a_args,
                                "--name", f"pod-{i}"], env=tagged_env(tag),
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               stdin=subprocess.DEVNULL, cwd=tmp_path)
              for i in range(2)]
    try:
        logs = [LineReader(a.stdout) for a in agents]
        proc = subprocess.run(m_cmd, cwd=master_paths(master["workingDir"]), timeout=90,
                              capture_output=True, text=True, env=tagged_env(tag),
                              stdin=subprocess.DEVNULL)
        r = Result(proc.returncode, proc.stdout, proc.stderr)
        assert r.code == 0, (r.stdout, r.stderr, [log.text(0) for log in logs])
        assert r.final_int("success count") == target.counts()["ok"] > 0
        assert (master_paths.root / "results" / "result.json").is_file()
        assert (master_paths.root / "results" / "summary.json").is_file()
    finally:
        for a in agents:
            a.terminate()
        for a in agents:
            assert a.wait(15) == 0
        target.stop()
    assert wait_no_tagged(tag, 10) == []
