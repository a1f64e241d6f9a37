"""Export a nightly run as KCIDB JSON (the KernelCI common reporting schema), validated
with the kcidb-io package's schema before it is written.

One checkout per kernel source + series, one build per built kernel, one test per
(cell, test). A known bug that showed (xfail) is reported as FAIL: the tested code is
faulty, the harness merely expected it; the reason goes into the test's misc."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from harness.results.outcome import Outcome

ORIGIN = "uprobe_harness"
STATUS = {o.value: o.kcidb for o in Outcome}
_PATH_PART = re.compile(r"[^A-Za-z0-9_-]+")


def _id(*parts: str) -> str:
    return f"{ORIGIN}:" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:24]


def _path_part(text: str) -> str:
    return _PATH_PART.sub("-", text).strip("-") or "unnamed"


def export(db, run_id: str) -> dict:
    checkouts: dict[str, dict] = {}
    builds: dict[str, dict] = {}
    tests: list[dict] = []
    run = db.run(run_id)
    for cell in db.cells(run_id):
        checkout_id = _id(
            "checkout",
            cell["kernel_spec"] or "",
            cell["kernel_commit"] or "",
            cell["series_digest"] or "",
        )
        checkout = {
            "id": checkout_id,
            "origin": ORIGIN,
            "valid": cell["status"] == "ok",
            "tree_name": cell["kernel_label"] or cell["kernel_spec"] or "unknown",
            "misc": {
                "kernel_spec": cell["kernel_spec"],
                "series": cell["series"],
                "series_digest": cell["series_digest"],
            },
        }
        if re.fullmatch(r"[0-9a-f]{40}", cell["kernel_commit"] or ""):
            checkout["git_commit_hash"] = cell["kernel_commit"]
        if cell["started"]:
            checkout["start_time"] = cell["started"]
        checkouts.setdefault(checkout_id, checkout)
        build_id = _id("build", cell["kernel_identity"] or cell["cell"] + run_id)
        build = {
            "id": build_id,
            "checkout_id": checkout_id,
            "origin": ORIGIN,
            "architecture": "x86_64",
            "status": "PASS" if cell["kernel_identity"] else "FAIL",
            "config_name": f"tinyconfig+uprobe-harness:{cell['config_digest'] or '?'}"[:120],
            "misc": {"release": cell["kernel_release"], "identity": cell["kernel_identity"]},
        }
        builds.setdefault(build_id, build)
        for result in db.results(run_id, cell["cell"]).values():
            family, _, name = result.test.partition("::")
            test: dict[str, Any] = {
                "id": _id("test", run_id, cell["cell"], result.test),
                "build_id": build_id,
                "origin": ORIGIN,
                "path": ".".join(["uprobes", _path_part(family), _path_part(name or family)]),
                "status": STATUS.get(result.outcome, "ERROR"),
                "duration": float(result.seconds or 0.0),
                "environment": {
                    "comment": f"QEMU {result.machine or cell['accel']}",
                    "misc": {"cell": cell["cell"], "smp": cell["smp"]},
                },
                "misc": {
                    "run_id": run_id,
                    "outcome": result.outcome,
                    "harness_version": cell["harness_version"],
                    "matrix": run["matrix"] if run else "",
                },
            }
            if result.outcome == "xfail":
                test["misc"]["known_bug"] = result.message[:2000]
            if result.crash_title:
                test["misc"]["crash_title"] = result.crash_title
            if result.message and result.outcome not in ("passed", "xfail"):
                test["log_excerpt"] = result.message.replace("\0", "")[:16000]
            if cell["started"]:
                test["start_time"] = cell["started"]
            tests.append(test)
    data = {
        "version": {"major": 5, "minor": 3},
        "checkouts": list(checkouts.values()),
        "builds": list(builds.values()),
        "tests": tests,
    }
    validate(data)
    return data


def validate(data: dict) -> None:
    """Raises jsonschema's ValidationError if `data` is not valid KCIDB I/O data."""
    import kcidb_io

    kcidb_io.schema.LATEST.validate(data)
