"""Probe programs compiled by concurrent workers (pytest-xdist, threads): each compile
writes a file of its own and the first complete binary is published; none sees a partial
one."""

import threading

from harness.probing import targets


def test_concurrent_compiles_of_one_target(isolated_cache):
    built, errors = [], []

    def compile_it():
        try:
            built.append(targets.compile_target("stack"))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=compile_it) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors
    assert len({t.binary for t in built}) == 1
    binary = built[0].binary
    assert binary.read_bytes()[:4] == b"\x7fELF"
    assert not list(binary.parent.glob("*.tmp")), "a temporary file was left behind"
