"""One Optuna study shared by parallel `wmh tune` workers through a real PostgreSQL server,
logging to a real MLflow tracking server whose backend store is PostgreSQL too.

The session fixture starts a throwaway PostgreSQL cluster on 127.0.0.1 (Debian's
``postgresql`` package; installed with apt-get when missing, only as root with ``CI`` or
``WMH_INSTALL_POSTGRES=1`` set, otherwise the test is skipped and says why). The test then
runs two workers in parallel on one study, kills a third in the middle of a trial, lets a
fourth resume the study, and checks that no trial is lost or duplicated, in Optuna and in
MLflow.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from cohorts import write_prepared_cohort

PASSWORD = "wmh-test-password"
STUDY = "pg-study"
EXPERIMENT = "wmh-tune-pg"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def postgres_binaries() -> Path | None:
    """The newest Debian PostgreSQL server folder (``/usr/lib/postgresql/<v>/bin``), or
    the folder of an ``initdb`` on PATH."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"),
                   key=lambda path: int(path.parent.parent.name)
                   if path.parent.parent.name.isdigit() else 0)
    if found:
        return found[-1].parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def install_postgres() -> None:
    allowed = os.environ.get("CI") or os.environ.get("WMH_INSTALL_POSTGRES") == "1"
    if os.geteuid() != 0 or not allowed or not shutil.which("apt-get"):
        pytest.skip("PostgreSQL server not installed (apt-get install postgresql, or run as "
                    "root with WMH_INSTALL_POSTGRES=1 to let the test install it)")
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update", "-qq"],
                    ["apt-get", "install", "-y", "-qq", "--no-install-recommends",
                     "postgresql"]):
        subprocess.run(command, check=True, env=environment, capture_output=True,
                       timeout=600)


class PostgresServer:
    """A throwaway cluster in a temporary folder; as root it runs as the postgres user
    (initdb refuses root)."""

    def __init__(self, binaries: Path):
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="wmh-pg-"))  # outside root-only trees
        self.data = self.folder / "data"
        self.port = free_port()
        self.user = "wmh"
        self.as_postgres = os.geteuid() == 0
        if self.as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.folder, account.pw_uid, account.pw_gid)

    def run(self, *command: str, **kwargs) -> subprocess.CompletedProcess:
        command = [str(self.binaries / command[0]), *command[1:]]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        return subprocess.run(command, check=True, capture_output=True, text=True,
                              timeout=120, **kwargs)

    def start(self) -> None:
        password_file = self.folder / "password"
        password_file.write_text(PASSWORD + "\n")
        if self.as_postgres:
            shutil.chown(password_file, "postgres")
        self.run("initdb", "-D", str(self.data), "-U", self.user, "-E", "UTF8",
                 "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                 f"--pwfile={password_file}", "--no-sync")
        self.run("pg_ctl", "-D", str(self.data), "-l", str(self.folder / "server.log"), "-w",
                 "-t", "60", "-o",
                 f"-k {self.folder} -h 127.0.0.1 -p {self.port} -c fsync=off", "start")

    def url(self, database: str, driver: str = "") -> str:
        return (f"postgresql{driver}://{self.user}:{PASSWORD}@127.0.0.1:{self.port}/"
                f"{database}")

    def create_database(self, name: str) -> str:
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user=self.user,
                                      password=PASSWORD, dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return self.url(name)  # plain postgresql://: wmh tune picks the installed driver

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    binaries = postgres_binaries()
    if binaries is None:
        install_postgres()
        binaries = postgres_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries not found after installing postgresql")
    server = PostgresServer(binaries)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def start_process(command, log: Path, **kwargs) -> subprocess.Popen:
    with open(log, "w") as stream:
        return subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, **kwargs)


def stop_process_group(process: subprocess.Popen) -> None:
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=15)


@pytest.fixture(scope="session")
def mlflow_server(postgres, tmp_path_factory):
    """``mlflow server`` on a PostgreSQL backend store, artifacts proxied to a folder."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    postgres.create_database("mlflow")
    backend = postgres.url("mlflow", driver="+psycopg2")  # the pinned driver (SQLAlchemy
    # 2.1 maps a plain postgresql:// to psycopg 3)
    log = folder / "server.log"
    process = start_process(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", backend,
         "--artifacts-destination", str(folder / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        log, cwd=folder, start_new_session=True,  # its own process group: stopped whole
        # tracking only: no GenAI job runner (it starts eight more processes)
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                pytest.fail(f"mlflow server exited:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"mlflow server not up after 180 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield uri
    finally:
        stop_process_group(process)


@pytest.fixture
def tiny_sample_set(tmp_path):
    from wmh import config as config_module
    from wmh import sampling

    prepared = write_prepared_cohort(tmp_path / "prepared", n_subjects=6)
    settings = config_module.load_config(None, ["sampling.validation_fraction=0.2",
                                                "sampling.test_fraction=0.0"]).sampling
    return prepared, sampling.build_samples(prepared, tmp_path / "samples", settings)


@pytest.mark.slow  # 100 s on 2 cores (server start + 2 worker processes); make test-all
def test_parallel_workers_share_one_study_without_losing_or_duplicating_trials(
        postgres, mlflow_server, tiny_sample_set, tmp_path):
    import optuna
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    prepared, samples = tiny_sample_set
    storage_url = postgres.create_database("optuna")
    environment = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server,
                   "TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1",
                   "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2",
                   "MPLBACKEND": "Agg", "PYTHONUNBUFFERED": "1"}
    settings = {"model.width": 0.1, "train.epochs": 1, "train.batch_size": 32,
                "train.max_train_samples": 512, "train.max_validation_samples": 256,
                "sampling.validation_fraction": 0.2, "sampling.test_fraction": 0.0,
                "train.experiment": EXPERIMENT, "tune.pruner": "none",
                "tune.heartbeat_seconds": 2}

    def worker(name: str, n_trials: int) -> subprocess.Popen:
        # each worker its own cache, as on its own machine; one study, one MLflow server
        command = [sys.executable, "-m", "wmh.cli", "tune", "--storage", storage_url,
                   "--study", STUDY, "--n-trials", str(n_trials), "--samples", str(samples),
                   "--prepared", str(prepared), "--data-label", "synthetic",
                   "--set", f"data.cache_dir={tmp_path / name}"]
        for key, value in settings.items():
            command += ["--set", f"{key}={value}"]
        return start_process(command, tmp_path / f"{name}.log", cwd=tmp_path,
                             env=environment)

    def finish(name: str, process: subprocess.Popen) -> str:
        process.wait(timeout=400)
        output = (tmp_path / f"{name}.log").read_text()
        assert process.returncode == 0, f"worker {name} failed:\n{output[-4000:]}"
        return output

    storages = []

    def trials():
        """The study's trials; none until a worker has created the tables and the study
        (the test must not create them itself: that is the workers' race to win)."""
        if not storages:
            try:
                storages.append(optuna.storages.RDBStorage(
                    postgres.url("optuna", driver="+psycopg2"), skip_table_creation=True))
            except Exception:  # no tables yet
                return []
        try:
            return optuna.load_study(study_name=STUDY, storage=storages[0]).get_trials()
        except KeyError:  # no study yet
            return []

    # two workers in parallel on one study of 5 trials; one is killed in a trial once
    # the study has a finished trial, the other goes on; a third resumes the study to 6
    first, second = worker("a", 5), worker("b", 5)
    deadline = time.monotonic() + 300
    while True:
        current = trials()
        if (any(t.state == TrialState.COMPLETE for t in current)
                and any(t.state == TrialState.RUNNING
                        and t.user_attrs.get("worker", "").endswith(f":{second.pid}")
                        for t in current)):
            break
        assert second.poll() is None, (tmp_path / "b.log").read_text()[-4000:]
        assert time.monotonic() < deadline, "worker b never ran a trial"
        time.sleep(0.2)
    second.send_signal(signal.SIGKILL)
    second.wait(timeout=30)
    output = finish("a", first)
    assert "study pg-study (postgresql: postgresql://wmh:***@" in output
    assert PASSWORD not in output
    study_trials = trials()
    assert [t.number for t in study_trials] == list(range(5))
    # resuming: one more trial; the heartbeat marks the killed worker's trial failed
    finish("d", worker("d", 6))

    study_trials = trials()
    assert [t.number for t in study_trials] == list(range(6))
    failed = [t for t in study_trials if t.state != TrialState.COMPLETE]
    assert len(failed) == 1 and failed[0].state == TrialState.FAIL
    assert failed[0].user_attrs["worker"].endswith(f":{second.pid}")
    complete = [t for t in study_trials if t.state == TrialState.COMPLETE]
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in study_trials}
    assert {str(first.pid), str(second.pid)} < workers  # plus the resuming worker
    assert complete[-1].number == 5 and complete[-1].user_attrs["worker"] not in {
        t.user_attrs["worker"] for t in study_trials[:5]}

    # MLflow: one nested run per complete trial, under its worker's parent run
    client = MlflowClient(tracking_uri=mlflow_server)
    run_ids = [t.user_attrs["mlflow_run_id"] for t in complete]
    assert len(set(run_ids)) == len(complete) == 5
    parents = {}
    for trial, run_id in zip(complete, run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.info.run_name == f"trial-{trial.number}"
        assert run.data.tags["optuna.study"] == STUDY
        assert float(run.data.params["model.alpha"]) == pytest.approx(
            trial.params["model.alpha"])
        assert PASSWORD not in str(run.data.params)
        parent_id = run.data.tags["mlflow.parentRunId"]
        assert parent_id == trial.user_attrs["mlflow_parent_run_id"]
        parents.setdefault(parent_id, client.get_run(parent_id))
    assert len(parents) in (2, 3)  # workers a, d, and b if it finished a trial first
    for parent in parents.values():
        assert parent.data.tags["optuna.study"] == STUDY
        assert parent.data.tags["optuna.storage"] == "postgresql"
        assert PASSWORD not in parent.data.tags["optuna.storage_location"]
        assert parent.data.params["tune.storage"].startswith("postgresql://wmh:***@")
        recorded = client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path))
        assert PASSWORD not in Path(recorded).read_text()
    experiment = client.get_experiment_by_name(EXPERIMENT)
    finished_children = client.search_runs(
        [experiment.experiment_id],
        f"tags.optuna.study = '{STUDY}' and tags.`optuna.state` = 'COMPLETE'")
    assert sorted(run.info.run_id for run in finished_children) == sorted(run_ids)
    last_parent = parents[complete[-1].user_attrs["mlflow_parent_run_id"]]
    figures = {a.path for a in client.list_artifacts(last_parent.info.run_id, "figures")}
    assert {"figures/optimization_history.png", "figures/param_importances.png"} <= figures
    assert last_parent.data.metrics["study_trials"] == 6

    # and the tracking server really keeps its runs in PostgreSQL
    import psycopg2

    connection = psycopg2.connect(postgres.url("mlflow"))
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM runs WHERE experiment_id = %s",
                       (int(experiment.experiment_id),))
        assert cursor.fetchone()[0] >= 5 + 3  # complete trials + parents of a, b and d
    connection.close()
