"""The HTTP API under load: features/extract and dashboard/summary next to /health and `feast serve`.

    .venv/bin/python bench/api_load.py [--profile embedded|production|both] [--concurrency 32]
        [--requests 2000] [--seconds 20] [--rounds 3] [--workers 1] [--calls 200] [--users 500] [--days 270]
        [--dir /tmp/hm-bench-api] [--database hm_bench_api] [--feature-service health_risk_v1]

Per profile, in one run: a throw-away repository under --dir gets `make demo`'s data
(`healthmate-features demo --users --days`; production: its own Postgres database --database,
dropped at the end, and its own Feast project of that name, whose Redis keys are deleted at the
end), an admin API key, then our server (`healthmate-features serve`, real uvicorn) and Feast's
(`feast serve`, real CLI, with `--max-requests 0`: Feast's default recycles its one worker every
~1,000 requests) on spare loopback ports. Bounded load (at most --requests requests or
--seconds seconds per target, --concurrency keep-alive connections) goes to, in turn:

- `GET /health` of our server (the floor: no lookup, but audited like every request);
- `GET features/extract?user_id=U&feature_service=S`, one user per request, U cycling over the
  active users (a 7-day resting heart rate on the last day of data);
- `POST /get-online-features` of `feast serve`: the same feature service and users, the request
  time as epoch seconds under `entities.event_timestamp`;
- `GET dashboard/summary`.

/health and extract run in --rounds alternating rounds; their ratio is the median of the rounds'
ratios (neighbours in time share the machine's load of the moment).

It prints req/s, p50, p99 and errors per target, the audit rows the SQL store gained per target
next to the requests sent (every request, /health included, must have its row), the CPU the
server used per request (user + system of its processes, from the first request until its audit
rows settled: what req/s tends to be inversely proportional to when the server is the bottleneck,
and far steadier than req/s on a machine that other work shares), peak RSS (VmHWM) of each
server's processes, and the ratios issue 11 targets. Then, with the servers
stopped, the pieces of a request one call at a time in this process (p50/p99 of --calls calls):
what the extract handler calls (`stores.feature_store.online_features`), Feast's
`get_online_features` on one long-lived store (what `feast serve` does per request), the
temporal on-demand view's transformation alone, `dashboard.summary`, the key check and one
audit write. Read ratios, not seconds: the load generator (a few lines of asyncio per keep-alive
connection, `Connection`, far cheaper per request than an HTTP client library) shares the machine
with the servers. The dashboard is also driven one request at a time: at --concurrency 32 its p50
is the queue in front of a busy server (32 / req/s), the same for every endpoint.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFIX = "/api/v1/ml-data-preparation"


# -- the repository ----------------------------------------------------------------------------


def prepare(profile: str, work: Path, *, users: int, days: int, database: str):
    """Settings of a repository under `work` holding make demo's data on `profile`.

    Production: the database and the Feast project (the suffix of its Redis keys) are `database`."""
    from healthmate_features.config import Settings

    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for name in ("feature_store.yaml", "feature_store.production.yaml", ".feastignore"):
        shutil.copy(ROOT / name, work)
    for name in ("feature_repo", "configs"):
        shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
    overrides = {"profile": profile}
    if profile == "production":
        yaml_path = work / "feature_store.production.yaml"
        yaml_path.write_text(yaml_path.read_text().replace("project: healthmate", f"project: {database}"))
        overrides["pg_database"] = database
    settings = Settings.from_env(repo_path=work, **overrides)
    if profile == "production":
        drop_production(settings, database)
    cli = str(BIN / "healthmate-features")
    run([cli, "demo", "--profile", profile, "--users", str(users), "--days", str(days), "--quiet"], settings)
    return settings


def drop_production(settings, project: str) -> None:
    """Drop the bench's Postgres database and delete its Feast project's Redis keys."""
    import redis

    from healthmate_features.backends import postgres

    with postgres.connect(replace(settings, pg_database="postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{settings.pg_database}" WITH (FORCE)')
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(match=f"*{project}", count=5000))
        for i in range(0, len(keys), 5000):
            client.delete(*keys[i : i + 5000])
    finally:
        client.close()


def environment(settings) -> dict[str, str]:
    """The environment of a child process that uses `settings`."""
    return {**os.environ, **settings.to_env()}


def run(cmd: list[str], settings) -> str:
    """Run a command in the settings' repository; its stdout, or SystemExit with the tail of its output."""
    done = subprocess.run(cmd, cwd=settings.repo_path, env=environment(settings), capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-15:])
        raise SystemExit(f"command failed ({done.returncode}): {' '.join(cmd)}\n{tail}")
    return done.stdout


def active_users(settings) -> list[int]:
    """Users with a 7-day resting heart rate on the last day of data (what a client would look up)."""
    from healthmate_features.backends import backend_for

    rows = backend_for(settings).query_feature_tables(
        "SELECT user_id FROM {0} WHERE resting_heart_rate_mean_7d IS NOT NULL "
        "AND event_timestamp = (SELECT max(event_timestamp) FROM {0}) ORDER BY user_id",
        "health_rolling",
    )
    return [int(r[0]) for r in rows]


def audit_rows(settings) -> int:
    """Rows in the SQL store's audit_log now, once the server has stopped adding them."""
    from healthmate_features.backends import open_sql_store

    with open_sql_store(settings) as sql:

        def count() -> int:
            return int(sql.query("SELECT count(*) AS n FROM audit_log")[0]["n"])

        last, settled_at = count(), time.monotonic()
        while time.monotonic() - settled_at < 1.0:  # writes run after their response: let them land
            time.sleep(0.25)
            now = count()
            if now != last:
                last, settled_at = now, time.monotonic()
        return last


# -- servers -----------------------------------------------------------------------------------


def spare_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def peak_mib(pid: int) -> dict[int, float]:
    """Peak RSS (VmHWM, MiB) of a process and each of its live descendants, by pid."""
    import psutil

    peaks = {}
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return peaks
    for proc in procs:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peaks[proc.pid] = int(line.split()[1]) / 1024
    return peaks


@dataclass
class Server:
    """A server process in its own session, started by `start` and stopped by `stop`."""

    name: str
    cmd: list[str]
    cwd: Path
    env: dict[str, str]
    url: str
    ready_path: str
    log: Path
    proc: subprocess.Popen | None = None
    peaks: dict[int, float] = field(default_factory=dict)

    def start(self, timeout_s: float = 180.0) -> None:
        out = self.log.open("w")
        self.proc = subprocess.Popen(
            self.cmd, cwd=self.cwd, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"{self.name} exited ({self.proc.returncode}); its log:\n{self.tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code < 500:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        self.stop()
        raise SystemExit(f"{self.name} did not answer within {timeout_s:.0f} s; its log:\n{self.tail()}")

    def sample_memory(self) -> None:
        if self.proc is not None:
            for pid, mib in peak_mib(self.proc.pid).items():
                self.peaks[pid] = max(mib, self.peaks.get(pid, 0.0))

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the server's processes have used so far, workers included."""
        import psutil

        if self.proc is None:
            return 0.0
        try:
            root = psutil.Process(self.proc.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return 0.0
        total = 0.0
        for proc in procs:
            try:
                times = proc.cpu_times()
            except psutil.NoSuchProcess:
                continue
            total += times.user + times.system
        return total

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.sample_memory()
        os.killpg(self.proc.pid, signal.SIGTERM)  # its own session: the server and its workers
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


# -- load --------------------------------------------------------------------------------------


@dataclass
class Result:
    name: str
    sent: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    audit_rows: int | None = None
    rounds: list[float] = field(default_factory=list)  # req/s of each round (`merged`)
    server_cpu_s: float | None = None  # CPU the server used meanwhile (`measure` with a server)
    cpu_rounds: list[float] = field(default_factory=list)  # server CPU ms per request of each round

    @property
    def ok(self) -> int:
        return len(self.latencies) - sum(self.errors.values())

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float | None:
        """The server's CPU milliseconds per request (its background work after the requests included);
        0.0 when the server used less than the kernel's CPU accounting tick (10 ms) over a short run."""
        if self.server_cpu_s is None or not self.latencies:
            return None
        return self.server_cpu_s * 1000 / len(self.latencies)

    def ms(self, q: float) -> float:
        return float(np.percentile(np.array(self.latencies) * 1000, q)) if self.latencies else float("nan")


def merged(results: list[Result]) -> Result:
    """Rounds of one target as one Result (all requests and latencies), with each round's req/s."""
    audited = [r.audit_rows for r in results if r.audit_rows is not None]
    cpu = [r.server_cpu_s for r in results if r.server_cpu_s is not None]
    errors: dict[str, int] = {}
    for r in results:
        for kind, count in r.errors.items():
            errors[kind] = errors.get(kind, 0) + count
    return Result(
        results[0].name,
        sent=sum(r.sent for r in results),
        seconds=sum(r.seconds for r in results),
        latencies=[x for r in results for x in r.latencies],
        errors=errors,
        audit_rows=sum(audited) if audited else None,
        rounds=[r.rate for r in results],
        server_cpu_s=sum(cpu) if len(cpu) == len(results) else None,
        cpu_rounds=[r.cpu_ms for r in results if r.cpu_ms is not None],
    )


@dataclass(frozen=True)
class Call:
    """One HTTP/1.1 request, pre-encoded: what `drive` writes on a keep-alive connection."""

    url: str  # http://host:port (the server)
    data: bytes  # request line, headers and body

    @classmethod
    def get(cls, url: str, path: str, *, params: dict | None = None, headers: dict | None = None) -> Call:
        return cls.of(url, "GET", path + (f"?{urlencode(params)}" if params else ""), headers or {}, b"")

    @classmethod
    def post(cls, url: str, path: str, body: object, *, headers: dict | None = None) -> Call:
        data = json.dumps(body).encode()
        return cls.of(url, "POST", path, {**(headers or {}), "Content-Type": "application/json"}, data)

    @classmethod
    def of(cls, url: str, method: str, target: str, headers: dict, body: bytes) -> Call:
        host = urlsplit(url).netloc
        lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        return cls(url, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)


class Connection:
    """One keep-alive HTTP/1.1 connection that sends a Call and reads its whole response.

    A few dozen lines of asyncio instead of an HTTP client library: the load generator shares
    two cores with the servers it measures, and httpx spends several times the CPU per request
    of the servers' own /health; this leaves the cores to the servers."""

    def __init__(self) -> None:
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, call: Call) -> int:
        """Send `call`, read the response (Content-Length or chunked); return its status code."""
        if self.streams is None:
            parts = urlsplit(call.url)
            self.streams = await asyncio.open_connection(parts.hostname, parts.port)
        reader, writer = self.streams
        try:
            writer.write(call.data)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            headers = head.lower()
            if b"transfer-encoding: chunked" in headers:
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            else:
                at = headers.find(b"content-length:")
                length = int(headers[at + 15 : headers.index(b"\r\n", at)]) if at >= 0 else 0
                await reader.readexactly(length)
            if b"connection: close" in headers:
                self.close()
            return status
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


async def drive(name: str, request, *, concurrency: int, requests: int, seconds: float) -> Result:
    """Send the Call `request(i)` for i = 0, 1, ... from `concurrency` keep-alive connections.

    Stops after `requests` requests or `seconds` seconds, whichever comes first (requests in
    flight finish). Anything but a 200 counts as an error, by status or exception name."""
    result = Result(name)
    counter = itertools.count()
    started = time.perf_counter()
    deadline = started + seconds

    async def worker() -> None:
        connection = Connection()
        try:
            while time.perf_counter() < deadline:
                i = next(counter)
                if i >= requests:
                    return
                result.sent += 1
                t0 = time.perf_counter()
                try:
                    status = await asyncio.wait_for(connection.send(request(i)), 120)
                    kind = None if status == 200 else str(status)
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                    kind = type(exc).__name__
                result.latencies.append(time.perf_counter() - t0)
                if kind:
                    result.errors[kind] = result.errors.get(kind, 0) + 1
        finally:
            connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.seconds = time.perf_counter() - started
    return result


def measure(
    name: str, request, args, *, settings=None, concurrency: int | None = None, server: Server | None = None
) -> Result:
    """Warm up (one request per connection, not counted), then drive; count audit rows if `settings`,
    and the CPU `server` used from the first request until its audit rows settled."""
    concurrency = concurrency or args.concurrency
    asyncio.run(drive(name, request, concurrency=concurrency, requests=concurrency, seconds=60))
    before = audit_rows(settings) if settings is not None else 0
    cpu_before = server.cpu_seconds() if server is not None else 0.0
    result = asyncio.run(drive(name, request, concurrency=concurrency, requests=args.requests, seconds=args.seconds))
    if settings is not None:
        result.audit_rows = audit_rows(settings) - before
    if server is not None:
        result.server_cpu_s = server.cpu_seconds() - cpu_before
    return result


# -- one profile -------------------------------------------------------------------------------


def bench_profile(profile: str, args) -> dict[str, object]:
    work = args.dir / profile
    print(f"\n== {profile}: preparing {work} (healthmate-features demo --users {args.users} --days {args.days})")
    settings = prepare(profile, work, users=args.users, days=args.days, database=args.database)
    try:
        return _bench_servers(profile, args, settings)
    finally:
        if profile == "production":
            drop_production(settings, args.database)


def _bench_servers(profile: str, args, settings) -> dict[str, object]:
    from healthmate_features.backends import backend_for

    cli = str(BIN / "healthmate-features")
    work, env = settings.repo_path, environment(settings)
    key = json.loads(run([cli, "keys", "create", "--role", "admin", "--name", "bench", "--json"], settings))
    users = active_users(settings)
    if not users:
        raise SystemExit("no active users in the feature tables; is the demo data there?")
    ours_port, feast_port = spare_port(), spare_port()
    ours = Server(
        "healthmate-features serve",
        [
            cli,
            "serve",
            "--profile",
            profile,
            "--host",
            "127.0.0.1",
            "--port",
            str(ours_port),
            "--workers",
            str(args.workers),
        ],
        work,
        env,
        f"http://127.0.0.1:{ours_port}",
        "/health",
        work / "serve.log",
    )
    feast_yaml = backend_for(settings).feature_store_yaml.name
    feast = Server(
        "feast serve",
        # --max-requests 0: no worker recycling mid-run (Feast's default restarts its worker every ~1000 requests)
        [
            str(BIN / "feast"),
            "-f",
            feast_yaml,
            "serve",
            "-h",
            "127.0.0.1",
            "-p",
            str(feast_port),
            "--max-requests",
            "0",
        ],
        work,
        {**env, **backend_for(settings).feast_env()},
        f"http://127.0.0.1:{feast_port}",
        "/health",
        work / "feast_serve.log",
    )
    service = args.feature_service
    auth = {"Authorization": f"Bearer {key['secret']}"}

    health_call = Call.get(ours.url, "/health")
    dashboard_call = Call.get(ours.url, PREFIX + "/dashboard/summary", headers=auth)

    def health(i):
        return health_call

    def extract(i):
        params = {"user_id": users[i % len(users)], "feature_service": service}
        return Call.get(ours.url, PREFIX + "/features/extract", params=params, headers=auth)

    def feast_online(i):
        body = {
            "feature_service": service,
            "entities": {"user_id": [users[i % len(users)]], "event_timestamp": [int(time.time())]},
        }
        return Call.post(feast.url, "/get-online-features", body)

    def dashboard(i):
        return dashboard_call

    results = []
    try:
        ours.start()
        feast.start()
        check_same_features(ours.url, feast.url, auth, service, users[0])
        print(
            f"   {len(users)} active users; concurrency {args.concurrency}, at most {args.requests} requests "
            f"or {args.seconds:g} s per target"
        )
        # /health and extract in alternating rounds: their ratio is the median of the rounds' ratios,
        # each taken from neighbours in time (on a shared machine the load moves between rounds).
        paired: list[list[Result]] = [[], []]
        for _ in range(args.rounds):
            for k, (name, request) in enumerate(
                (("GET /health (ours)", health), ("GET features/extract (ours)", extract))
            ):
                paired[k].append(measure(name, request, args, settings=settings, server=ours))
            ours.sample_memory()
        results.extend(merged(rounds) for rounds in paired)
        for name, request, server, audited, concurrency in (
            ("POST /get-online-features (feast serve)", feast_online, feast, False, None),
            ("GET dashboard/summary (ours)", dashboard, ours, True, None),
            ("GET dashboard/summary, one at a time (ours)", dashboard, ours, True, 1),
        ):
            results.append(
                measure(
                    name,
                    request,
                    args,
                    settings=settings if audited else None,
                    concurrency=concurrency,
                    server=server,
                )
            )
            server.sample_memory()
    finally:
        ours.stop()
        feast.stop()
    report(profile, results, ours, feast)
    in_process(settings, users, key["secret"], service, args.calls)
    by_name = {r.name.split(" (")[0]: r for r in results}
    return {"profile": profile, "results": by_name}


def in_process(settings, users: list[int], secret: str, service: str, calls: int) -> None:
    """The pieces of a request, called one at a time in this process: p50 and p99 of `calls` calls each."""
    from datetime import datetime, timezone

    import pyarrow as pa

    from healthmate_features.access.audit import AuditLog
    from healthmate_features.access.keys import ApiKeys
    from healthmate_features.api import dashboard
    from healthmate_features.backends import open_sql_store
    from healthmate_features.stores import feature_store as store
    from healthmate_features.tracking import Tracker

    cwd = Path.cwd()
    os.chdir(settings.repo_path)  # Feast's embedded stores resolve data/ against the working directory
    try:
        fs = store.open_feature_store(settings)
        selection = fs.get_feature_service(service)
        odfv = fs.get_on_demand_feature_view("temporal")
        one_row = pa.Table.from_pydict(
            {"user_id": [users[0]], "event_timestamp": [datetime.now(timezone.utc)], "signup_epoch_s": [1_700_000_000]}
        )
        with open_sql_store(settings) as sql:
            keys, audit, tracker = ApiKeys(sql), AuditLog(sql), Tracker(sql)
            summaries = dashboard.SummaryCache(settings, tracker=tracker)
            pieces = {
                "online_features (the extract handler's call)": lambda i: store.online_features(
                    settings, users[i % len(users)], feature_service=service, at=datetime.now(timezone.utc)
                ),
                "Feast get_online_features, one store": lambda i: fs.get_online_features(
                    features=selection,
                    entity_rows=[{"user_id": users[i % len(users)], "event_timestamp": datetime.now(timezone.utc)}],
                ).to_dict(),
                "temporal view transformation, 1 row": lambda i: odfv.transform_arrow(one_row),
                "dashboard.summary": lambda i: dashboard.summary(settings, tracker=tracker),
                "dashboard SummaryCache.json (cached)": lambda i: summaries.json(),
                "ApiKeys.authenticate (reads the key)": lambda i: keys.authenticate(secret),
                "SqlStore.revisions (the per-request check)": lambda i: sql.revisions(),
                "AuditLog.write (one row, one commit)": lambda i: audit.write(
                    endpoint="GET /bench", status=200, latency_ms=1.0
                ),
            }
            print(f"   in process, one call at a time ({calls} calls each)")
            print(f"   {'call':<48}{'p50 ms':>10}{'p99 ms':>10}")
            for name, call in pieces.items():
                call(0)  # warm: imports, connections, caches
                seconds = []
                for i in range(calls):
                    t0 = time.perf_counter()
                    call(i)
                    seconds.append(time.perf_counter() - t0)
                ms = np.array(seconds) * 1000
                print(f"   {name:<48}{np.percentile(ms, 50):>10.2f}{np.percentile(ms, 99):>10.2f}")
    finally:
        os.chdir(cwd)


def check_same_features(ours: str, feast: str, auth: dict, service: str, user: int) -> None:
    """Both servers answer the same feature names for one user (a sanity check, not timed)."""
    mine = httpx.get(
        ours + PREFIX + "/features/extract", params={"user_id": user, "feature_service": service}, headers=auth
    )
    theirs = httpx.post(
        feast + "/get-online-features",
        json={"feature_service": service, "entities": {"user_id": [user], "event_timestamp": [int(time.time())]}},
    )
    if mine.status_code != 200 or theirs.status_code != 200:
        raise SystemExit(
            f"a lookup of user {user} failed: ours {mine.status_code} {mine.text[:300]}; "
            f"feast serve {theirs.status_code} {theirs.text[:300]}"
        )
    names = set(mine.json()["features"]) - {"user_id", "event_timestamp"}
    feast_names = set(theirs.json()["metadata"]["feature_names"]) - {"user_id", "event_timestamp"}
    if names != feast_names:
        raise SystemExit(f"ours and feast serve answer different features: {sorted(names ^ feast_names)[:10]}")


def report(profile: str, results: list[Result], ours: Server, feast: Server) -> None:
    print(
        f"   {'target':<46}{'sent':>7}{'errors':>8}{'req/s':>9}{'p50 ms':>10}{'p99 ms':>10}{'audit rows':>12}"
        f"{'CPU ms/req':>12}"
    )
    for r in results:
        audit = "" if r.audit_rows is None else f"{r.audit_rows}/{r.sent}"
        errors = sum(r.errors.values())
        cpu = "" if r.cpu_ms is None else f"{r.cpu_ms:.3f}"
        print(
            f"   {r.name:<46}{r.sent:>7}{errors:>8}{r.rate:>9.1f}{r.ms(50):>10.1f}{r.ms(99):>10.1f}{audit:>12}{cpu:>12}"
        )
        if len(r.rounds) > 1:
            print(f"     req/s of its {len(r.rounds)} rounds: " + ", ".join(f"{rate:.1f}" for rate in r.rounds))
            if r.cpu_rounds:
                print("     server CPU ms/req of its rounds: " + ", ".join(f"{ms:.3f}" for ms in r.cpu_rounds))
        if r.errors:
            print(f"     errors: {r.errors}")
    for server in (ours, feast):
        peaks = server.peaks
        shown = ", ".join(f"{mib:.0f}" for mib in peaks.values())
        print(f"   peak RSS {server.name}: {sum(peaks.values()):.0f} MiB over {len(peaks)} process(es) ({shown})")


def targets(summaries: list[dict]) -> None:
    """The ratios issue 11 asks for, per profile."""
    print("\ntargets of issue 11 (ratios within one run)")
    print(f"   {'profile':<12}{'what':<48}{'measured':>12}  target")
    for s in summaries:
        r = s["results"]
        health, extract, feast, dash, dash_one = (
            r["GET /health"],
            r["GET features/extract"],
            r["POST /get-online-features"],
            r["GET dashboard/summary"],
            r["GET dashboard/summary, one at a time"],
        )
        ratio = float(np.median([e / h for e, h in zip(extract.rounds, health.rounds, strict=True)]))
        rows = [
            ("extract req/s / /health req/s (median round)", ratio, ">= 0.5", ratio >= 0.5),
        ]
        if health.cpu_rounds and extract.cpu_rounds:  # what req/s tends to when the server is the bottleneck
            cpu_ratio = float(np.median([h / e for h, e in zip(health.cpu_rounds, extract.cpu_rounds, strict=True)]))
            rows.append(("/health CPU / extract CPU per request (median round)", cpu_ratio, "info", None))
        rows += [
            ("extract req/s / feast serve req/s", extract.rate / feast.rate, ">= 5", extract.rate >= 5 * feast.rate),
            ("dashboard p50, one request at a time (ms)", dash_one.ms(50), "< 20", dash_one.ms(50) < 20),
            ("dashboard req/s / /health req/s", dash.rate / health.rate, "~ 1", True),
        ]
        if s["profile"] == "production":
            rows.append(("extract p99 (ms)", extract.ms(99), "< 50", extract.ms(99) < 50))
        missing = [x for x in (health, extract, dash, dash_one) if x.audit_rows != x.sent]
        rows.append(
            ("requests without an audit row", sum(x.sent - (x.audit_rows or 0) for x in missing), "0", not missing)
        )
        for what, value, target, met in rows:
            verdict = "" if met is None else "met" if met else "NOT met"
            print(f"   {s['profile']:<12}{what:<48}{value:>12.2f}  {target:<7} {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=("embedded", "production", "both"), default="both")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--requests", type=int, default=2000, help="at most this many requests per target")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of /health and extract")
    parser.add_argument("--workers", type=int, default=1, help="our server's worker processes (serve --workers)")
    parser.add_argument("--seconds", type=float, default=20.0, help="at most this long per target")
    parser.add_argument("--users", type=int, default=500, help="demo population (make demo: 500)")
    parser.add_argument("--days", type=int, default=270, help="demo days (make demo: 270)")
    parser.add_argument("--calls", type=int, default=200, help="calls per piece in the in-process section")
    parser.add_argument("--feature-service", default="health_risk_v1")
    parser.add_argument("--database", default="hm_bench_api", help="production: database and Feast project")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/hm-bench-api"))
    args = parser.parse_args()
    if min(args.concurrency, args.requests, args.calls) < 1 or args.seconds <= 0:
        parser.error("--concurrency, --requests, --calls and --seconds must be positive")

    profiles = ["embedded", "production"] if args.profile == "both" else [args.profile]
    print(f"HTTP API under load, {os.cpu_count()} cores; profiles: {', '.join(profiles)}")
    summaries = [bench_profile(profile, args) for profile in profiles]
    targets(summaries)


if __name__ == "__main__":
    main()
