"""Login latency with the password hash (argon2id):
`python -m bench.login_latency [-n 50] [--database-url postgresql+asyncpg://...] [--redis-url
redis://...]`.

Starts a real gateway (default: SQLite, embedded mode) on a free port, creates one user, then
times N sequential `POST /auth/login` over HTTP and prints p50, p95 and max in milliseconds."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from tests.gateway import create_user, run_gateway

PASSWORD = "login latency passphrase"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("-n", type=int, default=50, help="number of logins (default 50)")
    parser.add_argument("--database-url", default=None)
    parser.add_argument("--redis-url", default=None)
    args = parser.parse_args()
    env = {"RELAYPACS_RATE_LIMIT_LOGIN_IP": "100000/minute", "RELAYPACS_DICOM_WORKERS": "1"}
    if args.database_url:
        env["RELAYPACS_DATABASE_URL"] = args.database_url
    if args.redis_url:
        env["RELAYPACS_REDIS_URL"] = args.redis_url
        env["RELAYPACS_REDIS_PREFIX"] = f"bench-{time.time_ns()}:"
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        username = f"latency{time.time_ns()}"
        create_user(data_dir, username, PASSWORD, role="clinician", env=env)
        with run_gateway(data_dir, env) as url, httpx.Client(base_url=url, timeout=30) as client:
            body = {"username": username, "password": PASSWORD}
            client.post("/api/v1/auth/login", json=body).raise_for_status()  # warm up
            times = []
            for _ in range(args.n):
                start = time.perf_counter()
                response = client.post("/api/v1/auth/login", json=body)
                times.append((time.perf_counter() - start) * 1000)
                response.raise_for_status()
    times.sort()
    p95 = times[max(0, round(0.95 * len(times)) - 1)]
    print(
        f"{args.n} logins: p50 {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, "
        f"max {times[-1]:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
