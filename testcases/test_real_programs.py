"""Family: realcode - real programs built by someone else (Debian), a uprobe on every
function entry, their own workload run probed and unprobed.

Sites: every FDE of the unwind table and every function symbol (Debian strips the symbol
table; `harness.probing.functions`). The probed copy of the program is mapped by a sleeping
process of its own while the probes are enabled, so the kernel analyses every site then and
a refusal is reported with its errno (not silently skipped at a later mmap).

Oracles, per command of the workload (testcases/real_programs.toml): the unprobed run's
output and exit status; a ptrace breakpoint counter (testcases/targets/bpcount.c, no uprobes
involved) for how often each function entry ran, which must equal uprobe_profile's count.
"""

import hashlib
import re
import shlex
from pathlib import Path

import pytest

from harness.paths import REPO_ROOT
from harness.probing.functions import FunctionEntry, function_entries, load_programs
from harness.probing.probes import GROUP, TRACEFS, parse_profile
from harness.probing.targets import target_from_binary

pytestmark = pytest.mark.realcode

PROGRAMS = load_programs(REPO_ROOT / "testcases" / "real_programs.toml")
CHUNK = 400  # probes per registration command


def _register(guest, path: str, entries: list[FunctionEntry]) -> dict[str, str]:
    """Register and enable one probe per entry; {probe name: why it was refused}."""
    refused: dict[str, str] = {}
    for start in range(0, len(entries), CHUNK):
        lines = []
        for entry in entries[start : start + CHUNK]:
            name = entry.probe_name
            definition = shlex.quote(f"p:{GROUP}/{name} {path}:{entry.offset:#x}")
            enable = f"{TRACEFS}/events/{GROUP}/{name}/enable"
            lines.append(
                f"if echo {definition} >> {TRACEFS}/uprobe_events 2>/tmp/uph-err; then "
                f'echo 1 > {enable} 2>/tmp/uph-err || echo "REFUSED {name} enable '
                f'$(cat /tmp/uph-err)"; else echo "REFUSED {name} register '
                f'$(cat /tmp/uph-err)"; fi'
            )
        result = guest.run("\n".join(lines), timeout=600)
        for line in result.stdout.splitlines():
            if line.startswith("REFUSED "):
                _, name, why = line.split(" ", 2)
                refused[name] = why
    return refused


def _profile(guest) -> dict[str, int]:
    return parse_profile(guest.run(f"cat {TRACEFS}/uprobe_profile", check=True).stdout)


def _command_line(program: str, argv: list[str], stdin: str) -> str:
    line = shlex.join([program, *argv])
    return f"{line} < {shlex.quote(stdin)}" if stdin else line


@pytest.mark.vm(tcg="exact")
@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.name)
def test_every_function_entry_probed(guest, target, uprobe, program, request):
    binary = Path(program.path)
    entries = function_entries(binary)
    by_name = {e.probe_name: e for e in entries}
    digest = hashlib.sha256(binary.read_bytes()).hexdigest()[:16]
    path = guest.upload(target_from_binary(program.name, binary, digest))
    counter, _ = target("bpcount")
    work = f"/tmp/uph-real-{program.name}"
    addresses = "".join(f"{e.address:x}\n" for e in entries).encode()
    guest.run(f"rm -rf {work} && mkdir -p {work}", check=True)
    guest.vm.ssh.put(addresses, f"{work}/addresses")
    guest.run(f"cd {work} && {program.setup}", check=True)

    # unprobed, then under the ptrace counter (the same output, and counts per entry)
    unprobed, counted = [], []
    for command in program.commands:
        line = _command_line(path, command.argv, command.stdin)
        plain = guest.run(f"cd {work} && {line}", timeout=300)
        traced = guest.run(f"cd {work} && {counter} addresses -- {line}", timeout=900)
        summary = re.search(r"^bpcount status=(\d+) traps=(\d+)$", traced.stderr, re.M)
        assert summary, f"bpcount failed on {command.argv}: {traced.stderr[-2000:]}"
        assert traced.stdout == plain.stdout, f"{command.argv}: the ptrace oracle changed output"
        counts = {
            f"f_{a}": int(n) for a, n in re.findall(r"^([0-9a-f]+) (\d+)$", traced.stderr, re.M)
        }
        unprobed.append(plain)
        counted.append(counts)

    # probed: a sleeper maps the copy, so enabling analyses every site now
    sleeper = guest.run(
        f"cd / && ({shlex.quote(path)} sleep 900 >/dev/null 2>&1 & echo $!)", check=True
    ).stdout.strip()
    try:
        guest.run(f"echo 0 > {TRACEFS}/tracing_on", check=True)  # count, do not log
        refused = _register(guest, path, entries)
        differences = []
        before = _profile(guest)  # each command's "after" is the next one's "before"
        for command, plain, expected in zip(program.commands, unprobed, counted, strict=True):
            line = _command_line(path, command.argv, command.stdin)
            probed = guest.run(f"cd {work} && {line}", timeout=900)
            after = _profile(guest)
            if (probed.status, probed.stdout, probed.stderr) != (
                plain.status,
                plain.stdout,
                plain.stderr,
            ):
                differences.append(
                    f"{command.argv}: probed exit {probed.status} / output "
                    f"{probed.stdout[:200]!r} {probed.stderr[:200]!r}; unprobed exit "
                    f"{plain.status} / {plain.stdout[:200]!r} {plain.stderr[:200]!r}"
                )
            for name, entry in by_name.items():
                if name in refused:
                    continue
                hits = after.get(name, 0) - before.get(name, 0)
                if hits != expected.get(name, 0):
                    differences.append(
                        f"{command.argv}: {entry.name or hex(entry.address)} ({entry.insn}): "
                        f"{hits} hits, executed {expected.get(name, 0)} times"
                    )
            before = after
    finally:
        guest.run(f"kill {shlex.quote(sleeper)}", timeout=30)
    executed = {name for counts in counted for name in counts}
    request.node.user_properties.extend(
        [
            ("sites", len(entries)),
            ("sites_executed", len(executed)),
            ("refused", len(refused)),
            (
                "refused_sites",
                "; ".join(
                    f"{by_name[n].name or hex(by_name[n].address)} [{by_name[n].insn}]: {why}"
                    for n, why in sorted(refused.items())
                )[:4000],
            ),
        ]
    )
    assert len(executed) > 50, f"the workload ran only {len(executed)} probed functions"
    assert not differences, f"{len(differences)} difference(s):\n" + "\n".join(differences[:40])
