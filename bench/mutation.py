"""Mutation score of the money modules: the ledger, the call lifecycle, admission, charge resolution, image-job billing.

`mutmut` (configured under `[tool.mutmut]` in pyproject.toml) copies `downcity/` into `mutants/`, mutates the money
modules listed there and runs the unit tests (no Ray) that reach each mutated function. Two passes: every mutant
against the SQLite half of the database tests, then the mutants that pass lets live (or that no SQLite test reaches,
such as PostgreSQL's one-trip commit) again against SQLite and PostgreSQL. Not part of CI: the first pass alone takes
about 2.5 hours on two cores with nothing else running (mutants of the Ledger's hot functions each run nearly
every ledger test); a test suite beside it slows it tenfold. Results persist in `mutants/`, so a stopped run
resumes where it left off; `save` writes the verdicts to `mutation_results.json` (committed), and a run in a
checkout without `mutants/` starts from them: mutmut runs again only the mutants of functions whose source
changed since (it keeps a hash of each function). A survivor no test should kill (an equivalent mutant, say)
is listed in `mutation_survivors.toml` with its reason.

    .venv/bin/python bench/mutation.py run [--max-children 2] [MUTANT ...]   # both passes, then the report
    .venv/bin/python bench/mutation.py recheck [--workers 2]                 # survivors against all their tests
    .venv/bin/python bench/mutation.py report [--survivors]                  # score per module from mutants/
    .venv/bin/python bench/mutation.py save                                  # verdicts to mutation_results.json
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTANTS = ROOT / "mutants"
EXPLAINED = Path(__file__).with_name("mutation_survivors.toml")
TEST_TIMEOUT_S = 30
# Survivors run again against every unit test of their package (mutmut runs only the tests its call-tracing
# associated with the mutated function, and that association misses some): name -> pytest's exit code.
RECHECKED = MUTANTS / "rechecked.json"
# The verdicts and function hashes of the last saved run, per module: a new checkout resumes from them.
SAVED = Path(__file__).with_name("mutation_results.json")

# mutmut's exit codes (mutmut/stats.py): a test run that fails is a kill.
KILLED = {1: "killed", 3: "killed"}
STATUS = {0: "survived", 5: "no tests", 33: "no tests", 34: "skipped", 36: "timeout", 37: "type check", None: "not run"}
TIMEOUTS = {-24, 24, 152, 255}


def status_of(exit_code: int | None) -> str:
    """The verdict mutmut gives an exit code: killed, survived, timeout, no tests, not run or suspicious."""
    if exit_code in KILLED:
        return KILLED[exit_code]
    if exit_code in TIMEOUTS:
        return "timeout"
    return STATUS.get(exit_code, "suspicious")


@dataclass
class ModuleScore:
    """The verdicts of one module's mutants."""

    path: str
    counts: Counter[str] = field(default_factory=Counter)
    survivors: list[str] = field(default_factory=list)

    @property
    def judged(self) -> int:
        """Mutants run (or found untested): a mutant no test covers counts against the score, as mutmut counts it."""
        return sum(n for verdict, n in self.counts.items() if verdict not in ("not run", "skipped", "type check"))

    @property
    def score(self) -> float:
        """Killed share of the judged mutants, in percent (a timeout counts as a kill)."""
        killed = self.counts["killed"] + self.counts["timeout"]
        return 100.0 * killed / self.judged if self.judged else 0.0

    def row(self) -> str:
        """One line of the report table."""
        c = self.counts
        return (
            f"{self.path:<34} {c['killed']:>7} {c['timeout']:>7} {c['survived']:>8} {c['no tests']:>8}"
            f" {c['not run']:>7} {self.score:>6.1f}%"
        )


def read_scores() -> list[ModuleScore]:
    """Every mutated module's verdicts, from the `.meta` files mutmut leaves under `mutants/`."""
    scores = []
    rechecked: dict[str, int] = json.loads(RECHECKED.read_text()) if RECHECKED.exists() else {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        path = str(meta.relative_to(MUTANTS))[: -len(".meta")]
        exit_codes: dict[str, int | None] = json.loads(meta.read_text())["exit_code_by_key"]
        exit_codes |= {name: code for name, code in rechecked.items() if name in exit_codes and code in KILLED}
        module = ModuleScore(path)
        for name, exit_code in sorted(exit_codes.items()):
            verdict = status_of(exit_code)
            module.counts[verdict] += 1
            if verdict in ("survived", "no tests", "suspicious"):
                module.survivors.append(f"{name} ({verdict})")
        scores.append(module)
    return scores


def explained() -> dict[str, str]:
    """The survivors judged not worth killing (equivalent mutants and the like), each with its reason."""
    return dict(tomllib.loads(EXPLAINED.read_text())["survivors"])


def report(*, survivors: bool) -> None:
    """Print the score per module and overall; with `survivors`, every mutant the tests let live, with the
    reason it may live (from `mutation_survivors.toml`) or UNEXPLAINED."""
    scores = read_scores()
    if not scores:
        sys.exit("no mutation results under mutants/: run `bench/mutation.py run` first")
    total: Counter[str] = Counter()
    print(f"{'module':<34} {'killed':>7} {'timeout':>7} {'survived':>8} {'no tests':>8} {'not run':>7} {'score':>7}")
    for module in scores:
        total.update(module.counts)
        print(module.row())
    print(ModuleScore("all", total).row())
    reasons = explained()
    alive = [name for module in scores for name in module.survivors]
    unexplained = [name for name in alive if name.split(" ")[0] not in reasons]
    print(f"{len(alive)} survivors: {len(alive) - len(unexplained)} explained, {len(unexplained)} unexplained")
    if survivors:
        for name in alive:
            print(f"{name}: {reasons.get(name.split(' ')[0], 'UNEXPLAINED')}")


def save() -> None:
    """Write every module's verdicts and function hashes, and the rechecks, to `mutation_results.json`."""
    modules = {}
    for meta in sorted(MUTANTS.rglob("*.py.meta")):
        data = json.loads(meta.read_text())
        verdicts = {name: code for name, code in data["exit_code_by_key"].items() if code is not None}
        modules[str(meta.relative_to(MUTANTS))] = {"hashes": data["hash_by_function_name"], "verdicts": verdicts}
    rechecked = json.loads(RECHECKED.read_text()) if RECHECKED.exists() else {}
    SAVED.write_text(json.dumps({"modules": modules, "rechecked": rechecked}, indent=0, sort_keys=True) + "\n")
    print(f"saved {sum(len(m['verdicts']) for m in modules.values())} verdicts of {len(modules)} modules to {SAVED}")


def restore() -> None:
    """In a checkout without mutation results, start from the saved ones: mutmut keeps a verdict only while its
    function's hash is unchanged, and runs the rest."""
    if any(MUTANTS.rglob("*.py.meta")) or not SAVED.exists():
        return
    saved = json.loads(SAVED.read_text())
    for path, module in saved["modules"].items():
        meta = MUTANTS / path
        meta.parent.mkdir(parents=True, exist_ok=True)
        meta.write_text(
            json.dumps(
                {
                    "exit_code_by_key": module["verdicts"],
                    "hash_by_function_name": module["hashes"],
                    "type_check_error_by_key": {},
                    "durations_by_key": {},
                    "estimated_durations_by_key": {},
                }
            )
        )
    RECHECKED.write_text(json.dumps(saved["rechecked"], indent=1))
    print(f"resuming from {SAVED.name}: {len(saved['modules'])} modules")


def run(max_children: int, mutants: list[str]) -> None:
    """Run mutmut from the repository root (resuming any earlier run): SQLite, then both databases for what lived."""
    restore()
    mutmut(max_children, mutants, backends="sqlite")
    alive = [name.split(" ")[0] for module in read_scores() for name in module.survivors]
    alive = [name for name in alive if name not in explained()]
    if mutants:
        alive = [name for name in alive if name in mutants]
    if alive:
        print(f"{len(alive)} mutants lived on SQLite: running them on SQLite and PostgreSQL")
        mutmut(max_children, alive, backends="sqlite,postgresql")
    report(survivors=False)


def mutmut(max_children: int, mutants: list[str], *, backends: str) -> None:
    """One `mutmut run` on the given databases (named mutants are run again even if an earlier run judged them)."""
    command = Path(sys.executable).with_name("mutmut")
    # A mutant that hangs a test (a Ledger worker that never answers, say) fails that test after PYTEST_TIMEOUT
    # seconds instead of waiting out mutmut's timeout for the whole test set; no unit test takes near that long.
    env = {**os.environ, "DOWNCITY_TEST_BACKENDS": backends, "PYTEST_TIMEOUT": str(TEST_TIMEOUT_S)}
    subprocess.run([str(command), "run", "--max-children", str(max_children), *mutants], cwd=ROOT, env=env, check=False)


def recheck(workers: int) -> None:
    """Run every unexplained survivor against all unit tests of its package, on both databases; record kills."""
    alive = [name.split(" ")[0] for module in read_scores() for name in module.survivors]
    alive = [name for name in alive if name not in explained()]
    env = {**os.environ, "DOWNCITY_TEST_BACKENDS": "sqlite,postgresql", "PYTEST_TIMEOUT": str(TEST_TIMEOUT_S)}
    pytest = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:randomly", "-p", "no:cacheprovider"]

    def run_one(name: str) -> tuple[str, int]:
        package = name.split(".")[1]
        tests = f"tests/unit/{package}"
        done = subprocess.run(
            [*pytest, tests], cwd=MUTANTS, env={**env, "MUTANT_UNDER_TEST": name}, capture_output=True, check=False
        )
        return name, done.returncode

    # Unmutated, every package's tests must pass, or a failure would count as a kill.
    for package in sorted({name.split(".")[1] for name in alive}):
        _, code = run_one(f"downcity.{package}.baseline")
        if code != 0:
            sys.exit(f"tests/unit/{package} fails without a mutant (exit {code}): fix that first")
    rechecked: dict[str, int] = json.loads(RECHECKED.read_text()) if RECHECKED.exists() else {}
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        for name, code in pool.map(run_one, [name for name in alive if name not in rechecked]):
            rechecked[name] = code
            RECHECKED.write_text(json.dumps(rechecked, indent=1))
            print(f"{name}: {'killed' if code in KILLED else 'survived' if code == 0 else code}")
    report(survivors=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="mutate the money modules and test every mutant")
    run_parser.add_argument("--max-children", type=int, default=2, help="parallel test workers (default 2)")
    run_parser.add_argument("mutants", nargs="*", help="only these mutants (names as `report --survivors` prints)")
    recheck_parser = commands.add_parser("recheck", help="run each survivor against its package's unit tests")
    recheck_parser.add_argument("--workers", type=int, default=2, help="survivors checked at once (default 2)")
    report_parser = commands.add_parser("report", help="the score per module from an earlier run")
    report_parser.add_argument("--survivors", action="store_true", help="list every surviving mutant")
    commands.add_parser("save", help="write the verdicts to mutation_results.json")
    args = parser.parse_args()
    if args.command == "run":
        run(args.max_children, args.mutants)
    elif args.command == "recheck":
        recheck(args.workers)
    elif args.command == "save":
        save()
    else:
        report(survivors=args.survivors)


if __name__ == "__main__":
    main()
