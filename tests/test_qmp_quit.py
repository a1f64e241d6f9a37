"""VM shutdown's QMP quit is bounded: a monitor that accepts but never greets (a wedged
QEMU) costs the timeout, not forever; a monitor that answers is told to quit."""

import json
import socket
import threading
import time

from harness.machine import vm


def _serve(path, greet: bool, seen: list):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run():
        conn, _ = server.accept()
        if greet:
            conn.sendall(
                json.dumps(
                    {
                        "QMP": {
                            "version": {
                                "qemu": {"micro": 0, "minor": 2, "major": 7},
                                "package": "",
                            },
                            "capabilities": [],
                        }
                    }
                ).encode()
                + b"\r\n"
            )
            decoder, buffer = json.JSONDecoder(), ""
            while "quit" not in seen:
                data = conn.recv(4096)
                if not data:
                    break
                buffer += data.decode()
                while buffer.strip():  # the client sends no newline between messages
                    request, end = decoder.raw_decode(buffer.lstrip())
                    buffer = buffer.lstrip()[end:]
                    seen.append(request["execute"])
                    conn.sendall(
                        json.dumps({"return": {}, "id": request.get("id")}).encode() + b"\r\n"
                    )
        else:
            time.sleep(5)
        conn.close()
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_a_silent_monitor_costs_the_timeout_only(tmp_path):
    path = tmp_path / "qmp.sock"
    _serve(path, greet=False, seen=[])
    started = time.monotonic()
    problem = vm.qmp_quit(path, 0.5)
    assert time.monotonic() - started < 2.0
    assert problem and "no answer within 0.5 s" in problem


def test_no_monitor_is_reported(tmp_path):
    problem = vm.qmp_quit(tmp_path / "missing.sock", 0.5)
    assert problem and "no answer" not in problem


def test_a_monitor_that_answers_is_told_to_quit(tmp_path):
    path, seen = tmp_path / "qmp.sock", []
    thread = _serve(path, greet=True, seen=seen)
    assert vm.qmp_quit(path, 3.0) is None
    thread.join(5)
    assert seen == ["qmp_capabilities", "quit"]


def test_a_comma_in_the_socket_path_stays_one_qemu_option_value():
    assert vm.qemu_option_value("/tmp/a,b/qmp.sock") == "/tmp/a,,b/qmp.sock"
