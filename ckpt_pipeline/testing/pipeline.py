"""One pipeline under test: a Redis, a sink, and the Procfile's processes running on them.

The chaos experiments and the benchmarks both use :class:`Pipeline`. The experiments hand it
a Redis of their own (they restart it under the processes) and a PostgreSQL database, and
kill, restart and redeploy its processes; the benchmarks let it start a private
``redis-server`` and a SQLite sink, and wait for the workers before they measure.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import redis

from ckpt_pipeline.testing.convergence import (
    JobLevel,
    Levels,
    caught_up,
    job_levels,
    levels,
    wait_until,
)
from ckpt_pipeline.testing.jobs import Job, ensure_sqlite_schema, setup_jobs, sqlite_path
from ckpt_pipeline.testing.local_redis import LocalRedis
from ckpt_pipeline.testing.processes import ROLES, Proc, pipeline_env, role_command

WORKERS_KEY = "rq:workers"  # rq's set of registered workers


class Pipeline:
    """A Redis, a sink, and the pump, ``scoring`` and ``sink`` processes of the Procfile.

    Use it as a context manager (``with Pipeline(...) as pipeline``), or call :meth:`start`
    and, at the end, :meth:`close`.

    Args:
        folder: where the logs go, and the private Redis and SQLite files.
        redis_url: a server to run on, which the pipeline neither starts nor stops; by
            default a private ``redis-server`` in ``folder/redis``, started by :meth:`open`
            and stopped by :meth:`close`.
        redis_args: more ``redis-server`` arguments of the private server.
        data_url: the data side (``CKPT_DATA_REDIS_URL``: a server or a cluster node) the
            pipeline neither starts nor stops; by default the data lives on ``redis_url``.
        sink_url: the sink; by default a SQLite file, ``folder/jobs.db``. A SQLite sink gets
            the sink's schema at :meth:`open`.
        pumps: ``ckpt-pipeline pump`` processes.
        scoring: ``rq worker scoring`` processes.
        sink: ``rq worker sink`` processes.
        settings: ``CKPT_*`` settings of the processes (see ``pipeline_env``).
        env: more environment variables of the processes, set last.
        python_paths: folders put first on the processes' ``PYTHONPATH``.
        inherit_settings: pass this process's ``CKPT_*``, ``PG*`` and ``PYTHONPATH`` on.
        worker_class: an rq worker class instead of the Procfile's.
        connection_class: an rq connection class instead of the Procfile's (``""``: none).
        model_name: the ``model_name`` of the rows :meth:`register` creates.
        token: the job token :meth:`register` gives a job passed by its id alone.
        log_dir: where the logs go, when not ``folder``.
        role_prefix: per role, a command its processes are started under (``ip netns exec
            NS``: a network experiment puts a role behind a link it can break).
        role_env: per role, more variables (the URLs as that role reaches the servers).
    """

    def __init__(
        self,
        folder: Path,
        *,
        redis_url: str | None = None,
        redis_args: Iterable[str] = (),
        data_url: str | None = None,
        sink_url: str | None = None,
        pumps: int = 1,
        scoring: int = 2,
        sink: int = 2,
        settings: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        python_paths: Iterable[str | Path] = (),
        inherit_settings: bool = False,
        worker_class: str | None = None,
        connection_class: str | None = None,
        model_name: str = "test-model",
        token: str = "test-token",
        log_dir: Path | None = None,
        role_prefix: Mapping[str, Sequence[str]] | None = None,
        role_env: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.log_dir = Path(log_dir) if log_dir is not None else self.folder
        # The port is chosen now, so the processes' environment is known before Redis starts.
        self.server = (
            None if redis_url else LocalRedis(self.folder / "redis", extra_args=list(redis_args))
        )
        self.url = redis_url or self.server.url  # type: ignore[union-attr]
        self.data_url = data_url
        self.sink_url = sink_url or f"sqlite:///{self.folder / 'jobs.db'}"
        self.db_path = sqlite_path(self.sink_url)
        self.model_name, self.token = model_name, token
        self.worker_class, self.connection_class = worker_class, connection_class
        self.env = pipeline_env(
            self.url,
            self.sink_url,
            settings=settings,
            python_paths=python_paths,
            inherit_settings=inherit_settings,
            extra={**({"CKPT_DATA_REDIS_URL": data_url} if data_url else {}), **(env or {})},
        )
        counts = {"pump": pumps, "scoring": scoring, "sink": sink}
        self.procs: dict[str, list[Proc]] = {
            role: [
                Proc(
                    role,
                    index,
                    [*(role_prefix or {}).get(role, ()), *self.command(role)],
                    {**self.env, **(role_env or {}).get(role, {})},
                    self.log_dir,
                )
                for index in range(counts[role])
            ]
            for role in ROLES
        }
        self.client: redis.Redis | None = None  # the queue side
        self.data: Any = None  # the data side: ``client`` itself, or a client of ``data_url``

    def command(self, role: str) -> list[str]:
        """The command a role's processes run: the Procfile's, with the class overrides."""
        return role_command(
            role, self.url, worker_class=self.worker_class, connection_class=self.connection_class
        )

    # --- lifecycle ------------------------------------------------------------------------

    def open(self) -> Pipeline:
        """Start the private Redis (if any), connect, and give a SQLite sink its schema."""
        if self.client is not None:
            return self
        if self.server is not None:
            self.folder.mkdir(parents=True, exist_ok=True)
            self.server.start()
        self.client = redis.Redis.from_url(self.url)
        self.data = self.client
        if self.data_url:
            from scorer_worker.connection import connect_data
            from scorer_worker.settings import Settings

            self.data = connect_data(Settings(redis_url=self.url, data_redis_url=self.data_url))
        if self.db_path is not None:
            ensure_sqlite_schema(self.db_path)
        return self

    def start(self, *, wait: bool = False, timeout_s: float = 30.0) -> Pipeline:
        """Open, then start every process; with ``wait``, until the workers are registered.

        Raises:
            RuntimeError: with ``wait``, a process exited before the workers were ready.
            TimeoutError: with ``wait``, the workers were not registered in ``timeout_s``.
        """
        self.open()
        for proc in self.all():
            proc.start()
        if wait:
            self.wait_ready(timeout_s)
        return self

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Wait until every worker process is registered with rq (it then takes tasks).

        Raises:
            RuntimeError: a process exited meanwhile (with the end of its log).
            TimeoutError: not all registered within ``timeout_s``.
        """
        expected = len(self.procs["scoring"]) + len(self.procs["sink"])

        def ready() -> bool:
            self.check_alive()
            return self._client().scard(WORKERS_KEY) >= expected

        wait_until(ready, timeout_s, 0.05, f"{expected} rq workers")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop every process cleanly (SIGTERM), killing what is left after ``timeout_s``."""
        for proc in self.all():
            proc.stop(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the processes, disconnect, and stop the private Redis. Safe to call twice."""
        self.stop(timeout_s)
        if self.client is not None:
            with contextlib.suppress(redis.RedisError):
                self.client.close()
                if self.data is not self.client:
                    self.data.close()
            self.client = self.data = None
        if self.server is not None:
            self.server.stop()

    def __enter__(self) -> Pipeline:
        return self.open()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- the processes --------------------------------------------------------------------

    def all(self) -> list[Proc]:
        """Every process, pumps first, then scoring, then sink workers."""
        return [proc for role in ROLES for proc in self.procs[role]]

    def by_pid(self, pid: int) -> Proc | None:
        """The running process with this pid, if it is one of ours."""
        return next((p for p in self.all() if p.pid == pid and p.alive), None)

    def redeploy(self, role: str, env: dict[str, str]) -> None:
        """Stop a role's processes cleanly and start them again with ``env`` (a new release)."""
        for proc in self.procs[role]:
            proc.stop()
            proc.env = env
            proc.start()

    def exited(self) -> list[str]:
        """Names of the started processes that exited on their own (none should)."""
        return [p.name for p in self.all() if p.popen is not None and not p.alive]

    def check_alive(self) -> None:
        """Raise if a started process exited.

        Raises:
            RuntimeError: naming the first one, its exit status and the end of its log.
        """
        for proc in self.all():
            if proc.popen is not None and not proc.alive:
                raise RuntimeError(f"{proc.name} exited ({proc.returncode}): {proc.log_tail()}")

    def kills(self) -> dict[str, int]:
        """SIGKILLs per role so far."""
        return {role: sum(p.kills for p in self.procs[role]) for role in ROLES}

    # --- jobs and where they stand --------------------------------------------------------

    def register(self, jobs: Iterable[Job | str]) -> None:
        """Create the jobs' ``pending`` rows in the sink and register them, as the platform
        would; a job given by its id alone gets the pipeline's ``token``."""
        found = [job if isinstance(job, Job) else Job(job, self.token) for job in jobs]
        setup_jobs(
            self.sink_url, self._client(), found, model_name=self.model_name, data=self._data()
        )

    def levels(self, job_ids: list[str]) -> Levels:
        """The jobs still behind the scorer or the sink (:func:`convergence.levels`)."""
        return levels(self._data(), job_ids)

    def job_levels(self, job_ids: list[str]) -> list[JobLevel]:
        """Per job: committed cursor, version, written version, status."""
        return job_levels(self._data(), job_ids)

    def caught_up(self, last_ids: dict[str, str], written: bool = True) -> bool:
        """True when every job's committed cursor reached its last entry (and, with
        ``written``, its row is written).

        Raises:
            RuntimeError: a process exited (waiting on would be in vain).
        """
        self.check_alive()
        return caught_up(self._data(), last_ids, written=written)

    def _client(self) -> redis.Redis:
        if self.client is None:
            raise RuntimeError("the pipeline is not open: use `with Pipeline(...)` or open()")
        return self.client

    def _data(self) -> Any:
        self._client()
        return self.data
