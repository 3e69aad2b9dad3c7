"""Start the simulator in a child process and point a job at it (`run --sim`, tests, bench).

A separate process keeps the simulator off the engine's core: both get a CPU of their own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from pipeline.errors import FlashpipeError

SIM_KEY = "sim-key"


class SimProcess:
    """`with SimProcess(["--profile", "hostile"]) as sim: sim.url ...`

    Owns the child process, its URL and, when given one, the path of the ledger the simulator
    appends a JSON line to per request (`ledger`; None: the simulator keeps no ledger).
    """

    def __init__(
        self,
        args: Sequence[str] = (),
        *,
        key: str = SIM_KEY,
        ledger: Path | None = None,
        startup_timeout: float = 20,
    ):
        self.args = list(args)
        self.key = key
        self.ledger = ledger
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> SimProcess:
        cmd = [sys.executable, "-m", "pipeline.sim", "--port", "0", "--key", self.key, *self.args]
        if self.ledger is not None:
            cmd += ["--ledger", str(self.ledger)]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.startup_timeout
        line = b""
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if b"listening on" in line:
                self.url = line.decode().strip().rsplit(" ", 1)[-1]
                return self
        self.stop()
        raise FlashpipeError(
            f"the simulator did not start: {line.decode(errors='replace').strip()}"
        )

    def base_url(self, api: str) -> str:
        return f"{self.url}/v1" if api == "openai" else self.url

    def service_account(self, path: Path, project: str = "sim-project") -> Path:
        """A service-account key file whose `token_uri` is this simulator's token endpoint:
        google-auth signs a JWT with the fresh key and trades it for short-lived tokens, as it
        does against Google's endpoint."""
        return write_service_account(path, f"{self.url}/token", project)

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        code = self.proc.returncode
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None
        return code

    def __enter__(self) -> SimProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def write_service_account(path: Path, token_uri: str, project: str) -> Path:
    """Write a service-account JSON with a freshly generated RSA key (mode 0600)."""
    import orjson
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    doc = {
        "type": "service_account",
        "project_id": project,
        "private_key_id": os.urandom(20).hex(),
        "private_key": pem,
        "client_email": f"flashpipe@{project}.iam.gserviceaccount.com",
        "client_id": "100000000000000000000",
        "token_uri": token_uri,
    }
    path.write_bytes(orjson.dumps(doc))
    path.chmod(0o600)
    return path
