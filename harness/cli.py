"""Command line: argument parsing only; each subcommand calls one stage."""

from __future__ import annotations

import argparse
import contextlib
import re
import sys

from harness import children
from harness.errors import HarnessError, InfraError
from harness.progress import configure_logging
from harness.results import regressions

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_INFRA = 0, 1, 2, 3


def _add_kernel_options(
    parser: argparse.ArgumentParser,
    kernel_default: str = "",
    kernel_help: str = "debian:6.1 (default), debian:6.12, /path/to/linux[@REV], or a bzImage",
) -> None:
    parser.add_argument("--kernel", default=kernel_default, help=kernel_help)
    parser.add_argument(
        "--series",
        default=None,
        help="patch series: a name under patches/, a directory, a series file, "
        "an mbox, or 'none' (default: the kernel's default series)",
    )
    parser.add_argument(
        "--config-fragment",
        action="append",
        default=[],
        metavar="FILE",
        help="extra Kconfig fragment merged after the base one (repeatable)",
    )
    parser.add_argument("-j", "--jobs", type=int, default=0, help="make -j (default: nproc)")


_TERMINAL_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Text for the terminal: a message may quote the guest's console or output, whose
    escape sequences must not reach the user's terminal (kept visible as ^[ etc.)."""
    return _TERMINAL_CONTROL.sub(lambda m: "^" + chr((ord(m.group()) + 64) % 128), text)


def _build_request(args):
    from harness.build.kernel import BuildRequest

    return BuildRequest(
        kernel=args.kernel,
        series=args.series,
        fragments=tuple(args.config_fragment),
        jobs=args.jobs,
    )


def cmd_build(args) -> int:
    from harness.build import kernel

    built = kernel.build(_build_request(args))
    if args.json:
        print(kernel.main_json(built))
    else:
        print(
            f"kernel   {built.label}{' + ' + built.series if built.series else ''}"
            f"{' (cached)' if built.cached else ''}"
        )
        print(f"release  {built.release}")
        for name, path in (
            ("bzImage", built.bzimage),
            ("config", built.config),
            ("System.map", built.system_map),
            ("vmlinux", built.vmlinux),
            ("metadata", built.metadata),
        ):
            if path:
                print(f"{name:<10} {path}")
    return EXIT_OK


def _add_machine_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smp", type=int, default=1, help="vCPUs (default 1)")
    parser.add_argument("--memory", type=int, default=0, help="guest memory in MiB")
    parser.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    parser.add_argument(
        "--tcg-threads",
        default="multi",
        choices=["multi", "single"],
        help="TCG threading: multi (true parallelism) or single (exact cross-modifying code)",
    )
    parser.add_argument("--oops-panic", action="store_true", help="boot with oops=panic")
    parser.add_argument(
        "--machine",
        default="auto",
        choices=["auto", "microvm", "pc"],
        help="QEMU machine type (default auto: microvm where the kernel has virtio-mmio)",
    )


def _machine_spec(args):
    from harness.machine.vm import MachineSpec

    return MachineSpec(
        smp=args.smp,
        memory_mb=args.memory,
        accel=args.accel,
        tcg_threads=args.tcg_threads,
        oops_panic=args.oops_panic,
        machine=args.machine,
    )


def cmd_boot(args) -> int:
    """Boot a guest; run one command (exit with its status) or open an interactive shell."""
    import subprocess

    from harness.build import kernel
    from harness.machine import image, vm
    from harness.machine.keys import ensure_keys
    from harness.progress import Progress

    progress = Progress.auto()
    built = kernel.build(_build_request(args), progress)
    img = image.build_image()
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    with vm.VM(built, img, _machine_spec(args)) as machine:
        record = machine.record
        assert record is not None  # set once the machine is up
        progress.note(
            f"guest up in {machine.boot_seconds:.1f}s: {record.kernel_release}, "
            f"{record.vcpus_seen} vCPU(s), {record.accel}"
            f"{'/' + record.tcg_threads if record.tcg_threads else ''}, "
            f"machine {record.machine}, ssh 127.0.0.1:{machine.port}, console {machine.console_log}"
        )
        if command:
            import shlex

            result = machine.ssh.run(shlex.join(command), timeout=args.timeout)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            status = result.status
        else:
            known_hosts = machine.workdir / "known_hosts"
            line = ensure_keys().known_hosts_line("127.0.0.1", machine.port)
            known_hosts.write_text(line + "\n")
            status = subprocess.call(
                [
                    "ssh",
                    "-F",
                    "none",
                    "-o",
                    "ForwardAgent=no",
                    "-o",
                    "ForwardX11=no",
                    "-i",
                    str(img.client_key),
                    "-p",
                    str(machine.port),
                    "-o",
                    f"UserKnownHostsFile={known_hosts}",
                    "-o",
                    "StrictHostKeyChecking=yes",
                    "-o",
                    "IdentitiesOnly=yes",
                    "root@127.0.0.1",
                ]
            )
        findings = machine.watch.findings
    for finding in findings:
        print(f"uprobe-harness: kernel: {finding.title}", file=sys.stderr)
    return status if not findings else EXIT_FAIL


def cmd_image(args) -> int:
    """Build (or find) the guest initramfs and print its artefacts."""
    import json
    from pathlib import Path

    from harness.machine import image

    built = image.build_image(args.recipe, tuple(Path(m) for m in args.modules))
    info = {
        "initramfs": str(built.initramfs),
        "identity": built.identity,
        "client_key": str(built.client_key),
        "host_key_line": built.host_key_line,
        "ready_marker": built.ready_marker,
        "size": built.initramfs.stat().st_size,
    }
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        width = max(map(len, info))
        for key, value in info.items():
            print(f"{key:<{width}}  {value}")
    return EXIT_OK


def cmd_console(args) -> int:
    """The crash verdicts of a saved console log: 0 clean, 1 findings, 2 unreadable."""
    import json
    from dataclasses import asdict

    from harness.machine import console

    try:
        text = console.read_log(args.log)
    except OSError as exc:
        print(f"console: cannot read {args.log}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    findings = console.scan(text)
    if args.json:
        print(json.dumps([asdict(finding) for finding in findings], indent=2))
    else:
        print(console.format_findings(findings))
    return 1 if findings else 0


def cmd_main(args) -> int:
    """The main job: build the kernel, run every scenario on it, write a report."""
    from harness.jobs import main as main_job

    result = main_job.run(
        main_job.MainRequest(
            kernel=args.kernel,
            series=args.series,
            fragments=tuple(args.config_fragment),
            smp=args.smp,
            accel=args.accel,
            jobs=args.jobs,
            results=args.results,
            pytest_args=tuple(args.pytest_args),
        )
    )
    if result.summary:
        print(result.summary)
        print(f"report: {result.report}\njunit:  {result.junit}")
    if result.problem:
        print(f"uprobe-harness: {printable(result.problem)}", file=sys.stderr)
    return {
        main_job.Status.PASSED: EXIT_OK,
        main_job.Status.FAILED: EXIT_FAIL,
        main_job.Status.USAGE: EXIT_USAGE,
        main_job.Status.INFRA: EXIT_INFRA,
    }[result.status]


def _add_bisect_options(parser: argparse.ArgumentParser, kernel_help: str) -> None:
    _add_kernel_options(parser, ".", kernel_help)
    parser.add_argument("--smp", default="1,4", help="vCPU counts for SMP scenarios")
    parser.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="K",
        help="run the selection K times per commit: bad if any run shows the "
        "original failure, good only if all K pass",
    )
    parser.add_argument(
        "--find-fix", action="store_true", help="look for the commit that fixed the scenario"
    )
    parser.add_argument("--results", help="results directory (default results/bisect-TIMESTAMP)")
    parser.add_argument("selection", nargs="*", help="-- PYTEST SELECTION (e.g. -m smp -k riprel)")


def _scenario_options(args):
    from harness.build import sources
    from harness.errors import SourceError
    from harness.jobs import bisect

    spec = sources.parse_spec(args.kernel or ".")
    if spec.kind != "git" or "@" in args.kernel:
        raise SourceError(
            f"--kernel {args.kernel}: give a git tree without @REV (bisect picks the revisions)."
        )
    return bisect.absolute_options(
        str(spec.path),
        args.series,
        args.config_fragment,
        smp=args.smp,
        accel=args.accel,
        repeat=max(1, args.repeat),
        selection=tuple(args.selection),
        jobs=args.jobs,
    )


def cmd_bisect(args) -> int:
    """Bisect in a private clone; exit 0 found, 3 aborted, 4 endpoints disagree, 5 only
    skipped commits left (see harness.jobs.bisect)."""
    from pathlib import Path

    from harness.jobs import bisect

    options = _scenario_options(args)
    results = Path(args.results).resolve() if args.results else bisect.default_results_dir()
    request = bisect.BisectRequest(args.good, args.bad, options, results, args.find_fix)
    outcome = bisect.run_bisect(request, bisect.HarnessRunner(options, results / "steps"))
    print(bisect.format_outcome(outcome))
    return bisect.exit_code(outcome)


def cmd_bisect_step(args) -> int:
    """One `git bisect run` step on HEAD of --kernel: exit 0 good/old, 1 bad/new, 125 skip,
    128 abort (infrastructure error: git bisect run stops on codes >= 128)."""
    from pathlib import Path

    from harness.jobs import bisect

    try:
        options = _scenario_options(args)
        results = Path(args.results or "results/bisect-step").resolve()
        reference = Path(args.reference).resolve() if args.reference else None
        result, code = bisect.run_step(
            options, bisect.HarnessRunner(options, results), args.find_fix, reference
        )
    except HarnessError as error:
        kind = "infrastructure error" if isinstance(error, InfraError) else "error"
        print(
            f"uprobe-harness: bisect-step: {kind}: {printable(str(error))}\n"
            f"uprobe-harness: bisect-step: "
            f"exit {bisect.STEP_ABORT} (abort the bisect)",
            file=sys.stderr,
        )
        return bisect.STEP_ABORT
    print(bisect.format_steps([result]))
    if result.excerpt:
        print(result.excerpt)
    print(f"uprobe-harness: bisect-step: {result.verdict} -> exit {code}", file=sys.stderr)
    return code


def cmd_mutate(args) -> int:
    """Build every known-bad mutant, run the scenario families on it, print the mutation
    table; exit 1 if a declared family missed its mutant or the baseline was not clean."""
    from pathlib import Path

    from harness.jobs import mutate

    outcome = mutate.run(
        mutate.MutateRequest(
            tuple(args.mutants),
            Path(args.results) if args.results else None,
            smp=args.smp,
            accel=args.accel,
            scope=args.scope,
            jobs=args.jobs,
            baseline_runs=args.baseline_runs,
            run_first=not args.no_run_first,
            baseline_kernel=args.baseline_kernel,
            baseline_series=args.baseline_series,
            baseline_only=args.baseline_only,
            resume=args.resume,
            saved_only=args.saved_only,
        )
    )
    print(mutate.format_outcome(outcome))
    for problem in outcome.problems():
        print(f"uprobe-harness: {problem}", file=sys.stderr)
    return EXIT_OK if outcome.ok else EXIT_FAIL


def cmd_sweep(args) -> int:
    """Probe every generated instruction form, compare with an unprobed run; exit 1 if a
    difference is not in the known-bugs table."""
    from pathlib import Path

    from harness.build import kernel
    from harness.machine import image, vm
    from harness.probing.guest import Guest
    from harness.progress import Progress
    from harness.sweep import runner as sweep

    progress = Progress.auto()
    built = kernel.build(_build_request(args), progress)
    img = image.build_image()
    spec = vm.MachineSpec(smp=1, memory_mb=args.memory, accel=args.accel)
    count = args.machines or sweep.default_machines()
    if count < 1:
        raise HarnessError(f"sweep: --machines must be at least 1, not {count}")
    with contextlib.ExitStack() as stack:
        guests = []
        for number in range(count):
            machine = vm.VM(built, img, spec, name=f"sweep-{number}")
            guests.append(Guest(stack.enter_context(machine)))
        report = sweep.sweep_guest(guests[0], built, args.filter, args.batch, guests[1:])
    print(sweep.format_report(report, limit=args.limit))
    if args.json:
        sweep.write_json(report, Path(args.json))
        print(f"json: {args.json}")
    return EXIT_FAIL if report.unexpected() or report.stale else EXIT_OK


def _reporting(args):
    from harness.nightly import job

    return job.Reporting(args.fail_on, args.history, args.flake_window, args.flake_threshold)


def _nightly_done(result) -> int:
    for line in result.notes:
        print(line)
    print(result.summary)
    for name, path in result.outputs.items():
        print(f"{name + ':':<8} {path}")
    return EXIT_FAIL if result.status else EXIT_OK


def cmd_nightly(args) -> int:
    """Run a matrix (or one shard of it) into the results history, compare each cell with
    its previous run, write the reports; exit 1 on new failures (see --fail-on)."""
    from pathlib import Path

    from harness.nightly import job

    return _nightly_done(
        job.run_shard(
            job.ShardRequest(
                Path(args.matrix),
                Path(args.results_dir),
                args.shard,
                args.run_id or "",
                Path(args.db) if args.db else None,
                args.jobs,
                _reporting(args),
            )
        )
    )


def cmd_merge(args) -> int:
    """Fold shard (or other) results directories into one history and report on the run."""
    from pathlib import Path

    from harness.nightly import job

    return _nightly_done(
        job.merge(
            Path(args.into),
            [Path(s) for s in args.sources],
            args.run_id or "",
            args.keep_run_dirs,
            _reporting(args),
        )
    )


def cmd_nightly_report(args) -> int:
    from pathlib import Path

    from harness.nightly import job

    return _nightly_done(
        job.report_stored(Path(args.results_dir), args.run_id or "", _reporting(args))
    )


def _add_nightly_outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--fail-on",
        choices=["new", "failures", "never"],
        default=None,
        help="exit 1 on new failures only (default; `never` for one shard of "
        "several), on any failing test, or never",
    )
    parser.add_argument(
        "--history",
        type=int,
        default=10,
        metavar="N",
        help="runs shown in the report's per-test history (default 10)",
    )
    parser.add_argument(
        "--flake-window",
        type=_runs(2),
        default=regressions.FLAKE_WINDOW,
        metavar="K",
        help="flake rates over a cell's last K runs with "
        f"identical inputs (default {regressions.FLAKE_WINDOW})",
    )
    parser.add_argument(
        "--flake-threshold",
        type=_fraction,
        default=regressions.FLAKE_THRESHOLD,
        metavar="RATE",
        help="a test is flaky from this flip rate, with at least "
        f"{regressions.MIN_FLIPS} flips (default {regressions.FLAKE_THRESHOLD})",
    )


def _runs(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of runs >= {minimum}")
        return value

    return parse


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a rate in (0, 1], e.g. 0.2")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m harness", description="uprobe-harness: build, boot and probe kernels"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="build a kernel (cached)")
    _add_kernel_options(p)
    p.add_argument("--json", action="store_true", help="print the artefacts as JSON")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("image", help="build the guest initramfs (cached)")
    p.add_argument(
        "--recipe", default="default", help="recipe name in images/ or path to a .toml file"
    )
    p.add_argument(
        "--module",
        dest="modules",
        action="append",
        default=[],
        metavar="KO",
        help="kernel module for /init to insmod at boot (repeatable)",
    )
    p.add_argument("--json", action="store_true", help="print a JSON object")
    p.set_defaults(func=cmd_image)

    p = sub.add_parser("boot", help="boot a guest: interactive shell, or `-- CMD`")
    _add_kernel_options(p)
    _add_machine_options(p)
    p.add_argument("--timeout", type=float, default=600, help="timeout for CMD in seconds")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD ARGS... to run and exit")
    p.set_defaults(func=cmd_boot)

    p = sub.add_parser("main", help="build, boot, run every scenario, write a report")
    _add_kernel_options(p)
    p.add_argument("--smp", default="1,4", help="vCPU counts for SMP scenarios")
    p.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    p.add_argument("--results", help="results directory (default results/TIMESTAMP)")
    p.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    p.set_defaults(func=cmd_main)

    p = sub.add_parser(
        "bisect",
        help="find the commit that broke (or fixed) a scenario",
        description="Bisect REPO between --good (the selection passes) and --bad "
        "(it fails) in a private clone; --find-fix: --bad is the "
        "older commit. Exit: 0 found, 3 aborted (infrastructure), "
        "4 an endpoint disagrees, 5 only skipped commits left.",
    )
    _add_bisect_options(
        p, "the git tree to bisect (default: the current directory); it is never modified"
    )
    p.add_argument("--good", required=True, help="a commit where the selection passes")
    p.add_argument("--bad", required=True, help="a commit where the selection fails")
    p.set_defaults(func=cmd_bisect)

    p = sub.add_parser(
        "bisect-step",
        help="one `git bisect run` step: build HEAD, run the selection, exit 0/1/125 (128 = abort)",
    )
    _add_bisect_options(p, "the git tree whose HEAD is built (default: the current directory)")
    p.add_argument(
        "--reference",
        metavar="JUNIT",
        help="JUnit XML from the bad commit: only the same failing tests (and crash "
        "titles) count as bad; other failures skip",
    )
    p.set_defaults(func=cmd_bisect_step)

    p = sub.add_parser(
        "mutate",
        help="known-bad kernels: is every mutant caught by the scenario families it declares?",
    )
    p.add_argument("mutants", nargs="*", help="names under patches/known-bad/ (default: all)")
    p.add_argument(
        "--scope",
        choices=["all", "declared"],
        default="all",
        help="run all families on each mutant (the full table, default) or only "
        "the declared ones (faster)",
    )
    p.add_argument(
        "--no-run-first",
        action="store_true",
        help="with --scope declared: run every declared family in full instead of the "
        "mutant's run_first tests (mutant.toml) first",
    )
    p.add_argument(
        "--baseline-runs",
        type=int,
        default=0,
        metavar="N",
        help="first run the full suite N times on the unmutated kernel (the mutants' "
        "own, or --baseline-kernel with --baseline-only) and report the flake rate",
    )
    p.add_argument(
        "--baseline-kernel",
        metavar="SPEC",
        help="with --baseline-only: the kernel the baseline runs (default debian:6.1)",
    )
    p.add_argument(
        "--baseline-series",
        metavar="SERIES",
        help="with --baseline-only: its series (default: the kernel's default series; "
        "'none': the stock kernel, whose known bugs are XFAILs, not unexpected failures)",
    )
    p.add_argument(
        "--baseline-only",
        action="store_true",
        help="run the baseline (--baseline-runs N) and no mutant",
    )
    p.add_argument("--smp", default="1,4", help="vCPU counts for SMP scenarios")
    p.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    p.add_argument("-j", "--jobs", type=int, default=0, help="make -j (default: nproc)")
    p.add_argument("--results", help="results directory (default results/mutate-TIMESTAMP)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="with --results DIR of an earlier run: take each mutant's saved result "
        "(DIR/NAME/result.json) when its patches and these options are unchanged, run the rest",
    )
    p.add_argument(
        "--saved-only",
        action="store_true",
        help="with --results DIR: print the table of the saved results (those whose "
        "patches and options still match) and the mutants still to run; run nothing",
    )
    p.set_defaults(func=cmd_mutate)

    p = sub.add_parser(
        "sweep",
        help="differential instruction sweep: probe every generated "
        "instruction form, compare with an unprobed run",
    )
    _add_kernel_options(p)
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="REGEX",
        help="only forms whose name, disassembly or class matches (repeatable; "
        "classes: onebyte twobyte x87 sse avx branch)",
    )
    p.add_argument("--json", metavar="FILE", help="write every verdict as JSON")
    p.add_argument(
        "--batch", type=int, default=700, help="forms per program and probed run (default 700)"
    )
    p.add_argument("--limit", type=int, default=0, help="list at most N differences")
    p.add_argument("--memory", type=int, default=0, help="guest memory in MiB")
    p.add_argument("--accel", default="auto", choices=["auto", "tcg", "kvm"])
    p.add_argument(
        "--machines",
        type=int,
        default=0,
        help="guests sharing the batches, one vCPU each (default: one per host CPU, at most 4)",
    )
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "nightly",
        help="run a kernel matrix into the results history, flag "
        "regressions, write HTML/JUnit/KCIDB reports",
    )
    p.add_argument("--matrix", required=True, help="matrix TOML (sample: nightly.toml)")
    p.add_argument(
        "--results-dir",
        default="results/nightly",
        help="where the history and the reports live (default results/nightly)",
    )
    p.add_argument("--db", help="results database (default RESULTS_DIR/results.db)")
    p.add_argument(
        "--shard",
        default="1/1",
        metavar="I/N",
        help="run only shard I of N (fold shards with `merge`)",
    )
    p.add_argument(
        "--run-id",
        help="run identifier (default: UTC timestamp); shards of one CI run must share it",
    )
    p.add_argument("-j", "--jobs", type=int, default=0, help="make -j (default: nproc)")
    _add_nightly_outputs(p)
    p.set_defaults(func=cmd_nightly)

    p = sub.add_parser(
        "merge", help="fold nightly shard results directories into one history and report"
    )
    p.add_argument("--into", required=True, help="the merged results directory")
    p.add_argument("--run-id", help="the run to report on (default: the last one merged)")
    p.add_argument(
        "--keep-run-dirs",
        type=_runs(1),
        metavar="N",
        default=None,
        help="delete the directories (logs, reports) of all but the latest N runs; "
        "their results stay in results.db (a history kept in a CI cache)",
    )
    p.add_argument("sources", nargs="+", help="shard results directories (or results.db files)")
    _add_nightly_outputs(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("nightly-report", help="re-render the reports of a stored nightly run")
    p.add_argument("--results-dir", default="results/nightly")
    p.add_argument("--run-id", help="default: the latest run")
    _add_nightly_outputs(p)
    p.set_defaults(func=cmd_nightly_report)

    p = sub.add_parser("console", help="print the crash verdicts of a saved console log")
    p.add_argument("log")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_console)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging()
    try:
        # SIGTERM unwinds like Ctrl-C: guests shut down, their work directories go
        with children.sigterm_interrupts():
            return args.func(args)
    except InfraError as error:
        print(f"uprobe-harness: infrastructure error: {error}", file=sys.stderr)
        return EXIT_INFRA
    except HarnessError as error:
        print(f"uprobe-harness: error: {printable(str(error))}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        print("uprobe-harness: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
