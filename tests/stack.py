"""A research team's MLflow, started by the tests: PostgreSQL (Debian's package) as the backend store, an S3
endpoint (moto's server: no real S3 server installs here on its own) for artifacts, and `mlflow server` with
`--app-name basic-auth`. Each one a real server process that dies with the test process (tests/scripts/guard.py).

Between the S3 endpoint and everyone who talks to it (the tracking server's uploads, the clients' presigned reads)
sits a :class:`Gate`: a plain TCP relay the tests close to make the store refuse connections, reopen to bring it
back, and read to count the bytes the store sent.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

from tests.helpers import GuardedProcess, MlflowServer, free_port

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BUCKET = "flux-artifacts"
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
ADMIN = ("admin", "admin-password-1234")


def missing_stack() -> str | None:
    """Why the stack cannot start here (None: it can)."""
    if not (PG_BIN / "postgres").exists():
        return "PostgreSQL 15 is not installed (apt-get install postgresql; `make test` does it as root)"
    for module in ("moto", "psycopg2", "boto3", "flask_wtf"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[stack]'; `make test` does it)"
    return None


class Postgres(GuardedProcess):
    """A throwaway PostgreSQL cluster on 127.0.0.1, owned by the ``postgres`` user when we are root (initdb refuses
    root), trust authentication, one database per :meth:`database` call."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="flux-pg-"))  # outside pytest's 0700 tmp: postgres reads it
        super().__init__("postgres", self.directory / "postgres.log")
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0

    def _run_as(self, command: list[str]) -> list[str]:
        return ["runuser", "-u", "postgres", "--", *command] if self._as_postgres else command

    def start(self) -> Postgres:
        data = self.directory / "data"
        if self._as_postgres:
            entry = pwd.getpwnam("postgres")
            os.chown(self.directory, entry.pw_uid, entry.pw_gid)
        subprocess.run(self._run_as([str(PG_BIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres",
                                     "--no-sync"]), check=True, capture_output=True, text=True, timeout=120)
        self.spawn(self._run_as([str(PG_BIN / "postgres"), "-D", str(data), "-h", "127.0.0.1", "-p", str(self.port),
                                 "-k", str(self.directory), "-c", "fsync=off"]))
        self.wait_until(self._accepts, timeout=60)
        return self

    def _accepts(self) -> bool:
        import psycopg2

        psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres").close()
        return True

    def database(self, name: str) -> str:
        """Create database ``name``; its SQLAlchemy URI for MLflow."""
        import psycopg2

        connection = psycopg2.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres")
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        return f"postgresql+psycopg2://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        super().stop()
        shutil.rmtree(self.directory, ignore_errors=True)


class Gate:
    """A TCP relay to ``target``: open, it passes every byte both ways and counts those coming back; closed, its
    port refuses connections (and the connections in flight are cut), as a store that went down does."""

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.port = free_port()
        self.received = 0  # bytes sent by the target to the clients
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._connections: list[socket.socket] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def open(self) -> Gate:
        if self._listener is not None:
            return self
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def close(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.close()
        with self._lock:
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
                connection.close()
            self._connections.clear()

    def reset_count(self) -> None:
        with self._lock:
            self.received = 0

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._connections += [client, upstream]
            threading.Thread(target=self._pipe, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client, True), daemon=True).start()

    def _pipe(self, source: socket.socket, sink: socket.socket, counted: bool) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
                if counted:
                    with self._lock:
                        self.received += len(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)


class S3Endpoint(GuardedProcess):
    """moto's S3 server on 127.0.0.1 with one bucket, reached through a :class:`Gate`."""

    def __init__(self, root: Path) -> None:
        super().__init__("moto server", root / "moto.log")
        self.port = free_port()
        self.gate = Gate(self.port)

    def start(self) -> S3Endpoint:
        self.spawn([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                   env={**os.environ, **S3_KEYS})
        self.wait_until(lambda: urllib.request.urlopen(f"http://127.0.0.1:{self.port}/", timeout=2), timeout=60)
        self.gate.open()
        import boto3

        boto3.client("s3", endpoint_url=f"http://127.0.0.1:{self.port}", **_boto_keys()).create_bucket(Bucket=BUCKET)
        return self

    @property
    def env(self) -> dict[str, str]:
        """What a process that talks to the store needs: the endpoint (through the gate) and keys."""
        return {"MLFLOW_S3_ENDPOINT_URL": self.gate.url, **S3_KEYS}

    def stop(self) -> None:
        self.gate.close()
        super().stop()


def _boto_keys() -> dict[str, str]:
    return {"aws_access_key_id": S3_KEYS["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": S3_KEYS["AWS_SECRET_ACCESS_KEY"], "region_name": S3_KEYS["AWS_DEFAULT_REGION"]}


class TeamStack:
    """PostgreSQL + S3 + `mlflow server --app-name basic-auth --artifacts-destination s3://...`, and its users."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.postgres = Postgres()
        self.s3 = S3Endpoint(root)
        self.server: MlflowServer | None = None

    def start(self) -> TeamStack:
        self.postgres.start()
        self.s3.start()
        backend = self.postgres.database("mlflow")
        auth_db = self.postgres.database("mlflow_auth")
        config = self.root / "basic_auth.ini"
        # auth_cache_ttl_seconds: MLflow's documented cache of successful credential checks, off by default; without
        # it every request pays a scrypt hash check (~0.5 s a request on this host's two cores), as a team's server
        # that follows MLflow's advice does not. A wrong password is never cached (its key differs), and
        # permissions are checked on every request either way.
        config.write_text("[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                          f"database_uri = {auth_db}\nadmin_username = {ADMIN[0]}\nadmin_password = {ADMIN[1]}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                          "auth_cache_ttl_seconds = 600\n")
        env = {**os.environ, **self.s3.env, "MLFLOW_AUTH_CONFIG_PATH": str(config),
               "MLFLOW_FLASK_SERVER_SECRET_KEY": "flux-tests-not-a-secret"}
        self.server = MlflowServer(self.root, backend=backend, artifacts=f"s3://{BUCKET}/artifacts",
                                   options=("--app-name", "basic-auth"), env=env).start(timeout=180)
        return self

    @property
    def uri(self) -> str:
        return self.server.uri

    def add_user(self, name: str, password: str) -> None:
        with credentials(*ADMIN):
            self._auth().create_user(name, password)

    def grant(self, experiment_id: str, user: str, permission: str = "MANAGE") -> None:
        with credentials(*ADMIN):
            self._auth().create_experiment_permission(experiment_id, user, permission)

    def _auth(self):
        from mlflow.server import get_app_client

        return get_app_client("basic-auth", tracking_uri=self.uri)

    def client_env(self, user: str, password: str) -> dict[str, str]:
        """A user's environment: the server, their credentials, and the S3 endpoint and keys (a direct store)."""
        return {"MLFLOW_TRACKING_URI": self.uri, "MLFLOW_TRACKING_USERNAME": user,
                "MLFLOW_TRACKING_PASSWORD": password, **self.s3.env}

    def stop(self) -> None:
        for part in (self.server, self.s3, self.postgres):
            if part is not None:
                part.stop()


@contextlib.contextmanager
def credentials(user: str, password: str):
    """MLflow's client reads the credentials from the environment at each request: set them for a block."""
    keys = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
    previous = {k: os.environ.get(k) for k in keys}
    os.environ.update(dict(zip(keys, (user, password))))
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
