"""SSH to the guest with paramiko: host key pinned, commands quoted, files over `cat`.

The guest's dropbear has no SFTP server, so put/get stream file contents through an exec
channel. Commands given as a list are joined with shlex.join; a string is passed as is and
must already be a well-formed shell command written by the harness, never user data.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import paramiko

from harness.errors import InfraError


@dataclass(frozen=True)
class Result:
    status: int  # exit status; 128 + N when killed by signal N; -1: the server sent neither
    stdout: str
    stderr: str
    signal: str | None = None  # e.g. "SIGSEGV" when the command was killed by a signal

    @property
    def ok(self) -> bool:
        return self.status == 0

    def describe(self) -> str:
        """'status 1', 'killed by SIGSEGV'."""
        return f"killed by {self.signal}" if self.signal else f"status {self.status}"


def _channel_request(chan: paramiko.Channel, m: paramiko.Message) -> None:
    """paramiko's handler of channel requests, plus `exit-signal`."""
    start = m.packet.tell()
    if m.get_text() == "exit-signal":
        m.get_boolean()  # want reply (never, for exit-signal)
        transport = chan.get_transport()
        if isinstance(transport, _SignalAwareTransport):
            transport.exit_signals[chan.get_id()] = f"SIG{m.get_text()}"
        chan.status_event.set()
        return
    m.packet.seek(start)
    paramiko.Channel._handle_request(chan, m)  # type: ignore[attr-defined]


class _SignalAwareTransport(paramiko.Transport):
    """A transport that keeps the SSH `exit-signal` request (RFC 4254 6.10), which paramiko
    drops: the server sends it instead of an exit status when the command dies of a signal,
    and without it such a death reads as status -1 with nothing to say why."""

    _channel_handler_table = {
        **paramiko.Transport._channel_handler_table,  # type: ignore[attr-defined]
        paramiko.common.MSG_CHANNEL_REQUEST: _channel_request,
    }

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.exit_signals: dict[int, str] = {}


def _signal_status(name: str) -> int:
    try:
        return 128 + signal.Signals[name].value
    except KeyError:
        return -1


MAX_COMMAND = 4000  # longer commands travel as a script file


class CommandTimeout(InfraError):
    pass


class SSHSession:
    def __init__(
        self,
        host: str,
        port: int,
        key_file: Path,
        host_key_line: str,
        user: str = "root",
        nodelay: bool = True,
    ):
        self.host, self.port, self.user = host, port, user
        self.nodelay = nodelay  # False only to measure what TCP_NODELAY saves
        self.key_file = Path(key_file)
        self.host_key_line = host_key_line
        self._client: paramiko.SSHClient | None = None

    # -- connection -------------------------------------------------------------------------
    def _pinned_client(self) -> paramiko.SSHClient:
        client = paramiko.SSHClient()
        key_type, key_b64 = self.host_key_line.split()[:2]
        host_key = paramiko.PKey.from_type_string(key_type, base64.b64decode(key_b64))
        client.get_host_keys().add(f"[{self.host}]:{self.port}", key_type, host_key)
        client.set_missing_host_key_policy(paramiko.RejectPolicy())
        return client

    def connect(self, timeout: float = 10.0) -> None:
        client = self._pinned_client()
        pkey = paramiko.Ed25519Key.from_private_key_file(str(self.key_file))
        # Nagle's algorithm off: SSH sends small messages back to back, and with it on each
        # second one waited for the guest's delayed ACK (~40 ms): a handshake took 150 ms
        # instead of 63, a command 56 ms instead of 14 (benchmarks/bench_ssh.py)
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, int(self.nodelay))
        try:
            client.connect(
                self.host,
                port=self.port,
                username=self.user,
                pkey=pkey,
                sock=sock,
                timeout=timeout,
                banner_timeout=timeout,
                auth_timeout=timeout,
                look_for_keys=False,
                allow_agent=False,
                transport_factory=_SignalAwareTransport,
            )
        except BaseException:
            client.close()
            sock.close()
            raise
        transport = client.get_transport()
        if transport is not None:
            transport.set_keepalive(5)
        self._client = client

    def wait_ready(self, deadline: float, command: str = "true", alive=lambda: True) -> Result:
        """Connect and run COMMAND, retrying until the monotonic deadline; its result (the
        first answered with status 0)."""
        last_error: Exception | None = None
        while time.monotonic() < deadline and alive():
            try:
                self.connect(timeout=min(5.0, max(0.5, deadline - time.monotonic())))
                result = self.run(command, timeout=10)
                if result.ok:
                    return result
            except paramiko.BadHostKeyException as error:
                raise InfraError(
                    f"The guest's SSH host key does not match the pinned key "
                    f"({error}). Refusing to connect."
                ) from error
            except (OSError, paramiko.SSHException, EOFError) as error:
                last_error = error
            self.close()
            time.sleep(0.2)
        raise InfraError(
            f"SSH on {self.host}:{self.port} did not answer in time (last error: {last_error})."
        )

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _transport(self) -> paramiko.Transport:
        transport = self._client.get_transport() if self._client else None
        if transport is None:
            raise InfraError("the SSH connection to the guest is gone")
        return transport

    @property
    def connected(self) -> bool:
        transport = self._client.get_transport() if self._client else None
        return bool(transport and transport.is_active())

    # -- commands ---------------------------------------------------------------------------
    def run(
        self,
        cmd: str | list[str],
        timeout: float = 60.0,
        stdin: bytes | None = None,
        check: bool = False,
    ) -> Result:
        command = shlex.join(cmd) if isinstance(cmd, list) else cmd
        if not self.connected:
            self.connect()
        if len(command) > MAX_COMMAND and stdin is None:
            # dropbear refuses long exec requests ("String too long"): send it as a script
            script = f"/tmp/uph-cmd-{hashlib.sha256(command.encode()).hexdigest()[:16]}.sh"
            self.put(command.encode() + b"\n", script, mode=0o700)
            command = f"sh {script}"
        channel = self._transport().open_session(timeout=10)
        channel.settimeout(timeout)
        try:
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin)
            channel.shutdown_write()
            out, err = _drain(channel, time.monotonic() + timeout)
            status = channel.recv_exit_status()
        except socket.timeout as error:
            channel.close()
            raise CommandTimeout(f"Guest command timed out after {timeout}s: {command}") from error
        finally:
            channel.close()
            killed_by = self._exit_signal(channel)  # taken even on a timeout (no leftovers)
        if killed_by is not None:
            status = _signal_status(killed_by)
        result = Result(
            status, out.decode(errors="replace"), err.decode(errors="replace"), killed_by
        )
        if check and not result.ok:
            raise InfraError(
                f"Guest command failed ({result.describe()}): {command}\n"
                f"{result.stderr.strip()[-2000:]}"
            )
        return result

    def _exit_signal(self, channel: paramiko.Channel) -> str | None:
        transport = self._client.get_transport() if self._client else None
        if isinstance(transport, _SignalAwareTransport):
            return transport.exit_signals.pop(channel.get_id(), None)
        return None

    def put(self, local: Path | bytes, remote: str, mode: int = 0o644) -> None:
        data = local if isinstance(local, bytes) else Path(local).read_bytes()
        self.run(
            f"cat > {shlex.quote(remote)} && chmod {mode:o} {shlex.quote(remote)}",
            stdin=data,
            check=True,
        )

    def get(self, remote: str, local: Path | None = None) -> bytes:
        result = self._raw_run(["cat", remote])
        if local is not None:
            Path(local).write_bytes(result)
        return result

    def _raw_run(self, cmd: list[str], timeout: float = 60.0) -> bytes:
        if not self.connected:
            self.connect()
        channel = self._transport().open_session(timeout=10)
        channel.settimeout(timeout)
        try:
            channel.exec_command(shlex.join(cmd))
            channel.shutdown_write()
            out, err = _drain(channel, time.monotonic() + timeout)
            status = channel.recv_exit_status()
        finally:
            channel.close()
            killed_by = self._exit_signal(channel)
        if status != 0:
            how = f"killed by {killed_by}" if killed_by else f"status {status}"
            raise InfraError(
                f"Guest command failed ({how}): {shlex.join(cmd)}: "
                f"{err.decode(errors='replace').strip()}"
            )
        return out


MAX_OUTPUT = 16 << 20  # bytes kept of each of stdout and stderr; the rest is counted


def _drain(
    channel: paramiko.Channel, deadline: float, limit: int = MAX_OUTPUT
) -> tuple[bytes, bytes]:
    """stdout and stderr until the command exits. The deadline holds even while the guest
    keeps writing, and each stream keeps its first `limit` bytes (a note says how many more
    were dropped)."""
    streams = {"out": bytearray(), "err": bytearray()}
    dropped = {"out": 0, "err": 0}

    def take(name: str, data: bytes) -> None:
        room = limit - len(streams[name])
        streams[name] += data[: max(room, 0)]
        dropped[name] += max(len(data) - max(room, 0), 0)

    def result() -> tuple[bytes, bytes]:
        for name in streams:
            if dropped[name]:
                streams[name] += (
                    f"\n[uprobe-harness: {dropped[name]} more bytes dropped]\n".encode()
                )
        return bytes(streams["out"]), bytes(streams["err"])

    while True:
        if time.monotonic() > deadline:
            raise socket.timeout()
        if channel.recv_ready():
            take("out", channel.recv(65536))
            continue
        if channel.recv_stderr_ready():
            take("err", channel.recv_stderr(65536))
            continue
        if channel.exit_status_ready():
            # one last read: data may arrive just after the status
            while channel.recv_ready() and time.monotonic() <= deadline:
                take("out", channel.recv(65536))
            while channel.recv_stderr_ready() and time.monotonic() <= deadline:
                take("err", channel.recv_stderr(65536))
            return result()
        channel.status_event.wait(0.01)
