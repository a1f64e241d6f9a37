"""Results: read pytest's JUnit XML (with the harness's per-test properties), classify
each verdict, and render a summary (terminal) and a self-contained HTML report (jinja2)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import jinja2

from harness.errors import InfraError
from harness.paths import TEMPLATES_DIR
from harness.results import families
from harness.results.outcome import ORDER

# A probe the kernel refuses is a failure (pytest_plugin), not an outcome of its own.
OUTCOMES = tuple(o.value for o in ORDER)


@dataclass(frozen=True)
class TestResult:
    name: str
    module: str
    outcome: str
    seconds: float
    message: str = ""
    properties: dict = field(default_factory=dict)

    @property
    def exception(self) -> str:
        """The class name of the exception that failed the test (recorded by the plugin as
        a property, never read from the message, which may quote a guest), or ''."""
        return (self.properties.get("exception") or "").rsplit(".", 1)[-1]

    @property
    def family(self) -> str:
        return families.by_module().get(self.module.rsplit(".", 1)[-1], self.module)


def read_junit(path: Path) -> list[TestResult]:
    """The results of a pytest JUnit file; a file that is not one is an InfraError naming
    it (pytest was killed mid-write, or something else wrote there)."""
    try:
        root = ET.parse(path).getroot()
    except (ET.ParseError, OSError) as error:
        raise InfraError(
            f"{path} is not a readable JUnit XML file ({error}); the pytest run "
            f"that should have written it did not finish."
        ) from error
    results = []
    for case in root.iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        outcome, message = "passed", ""
        failure = case.find("failure")
        error_element = case.find("error")
        skipped = case.find("skipped")
        if failure is not None:
            message = failure.get("message", "") or (failure.text or "")
            outcome = "crashed" if props.get("verdict") == "crashed" else "failed"
            if "[XPASS(strict)]" in message:
                outcome = "xpass"
        elif error_element is not None:
            outcome, message = "error", error_element.get("message", "")
        elif skipped is not None:
            message = skipped.get("message", "")
            outcome = "xfail" if skipped.get("type") == "pytest.xfail" else "skipped"
        results.append(
            TestResult(
                case.get("name", ""),
                case.get("classname", ""),
                outcome,
                _seconds(case.get("time")),
                message.strip(),
                props,
            )
        )
    return results


def _seconds(text: str | None) -> float:
    try:
        return max(float(text or 0), 0.0)
    except ValueError:
        return 0.0


def summary_by_family(results: list[TestResult]) -> dict[str, Counter]:
    table: dict[str, Counter] = {}
    for result in results:
        table.setdefault(result.family, Counter())[result.outcome] += 1
    return table


def format_summary(results: list[TestResult], title: str) -> str:
    table = summary_by_family(results)
    used = [o for o in OUTCOMES if any(c[o] for c in table.values())]
    lines = [title, f"{'family':<10}" + "".join(f"{o:>9}" for o in used)]
    for family in sorted(table):
        lines.append(f"{family:<10}" + "".join(f"{table[family][o]:>9}" for o in used))
    problems = [r for r in results if r.outcome in ("failed", "crashed", "error")]
    for result in problems:
        first = result.message.splitlines()[0] if result.message else ""
        lines.append(f"  {result.outcome.upper()}: {result.name}: {first[:150]}")
    return "\n".join(lines)


def render_html(results: list[TestResult], title: str, context: dict, out: Path) -> Path:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html", "j2"]),
    )
    table = summary_by_family(results)
    page = env.get_template("report.html.j2").render(
        title=title, results=results, table=table, outcomes=OUTCOMES, context=context
    )
    out.write_text(page)
    return out
