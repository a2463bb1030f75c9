"""Rewrite the README's benchmark table from the benchmarks' saved JSON (``benchmarks/results/*.json``).

``make bench`` runs each benchmark, saves the JSON it prints as ``benchmarks/results/<script>.json`` and then
runs this script. One row per benchmark script (a row per part for scripts that report parts): what it
compares (the first paragraph of the script's docstring), the ratio and the agreement figures the JSON holds, the
script's ``TARGET`` (a module constant, when it has one) and the JSON's ``measured`` date. A script without
a saved JSON gets a row that says so. Only the lines between the README's ``bench:start`` and ``bench:end``
markers change.

    python scripts/bench_table.py            # rewrite README.md
    python scripts/bench_table.py --check    # exit 1 when README.md is not what the JSON gives
    python benchmarks/bench_rq3.py | python scripts/bench_table.py --save bench_rq3   # keep a run's JSON
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
START, END = "<!-- bench:start -->", "<!-- bench:end -->"
AGREEMENT = ("max_abs_diff", "identical_table", "same_tokens", "same_prediction", "same_prior", "spearman",
             "equal_to_1e-5", "jaccard")


def _script_facts(path: Path) -> tuple[str, str, str]:
    """(first docstring line, TARGET, RATIO) of a benchmark script, read without running it. ``RATIO`` says
    what its ratio is when it is not "how many times faster"."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    doc = (ast.get_docstring(tree) or "").strip().splitlines()
    consts = {"TARGET": "", "RATIO": "faster"}
    for node in tree.body:
        for name in consts:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets):
                consts[name] = ast.literal_eval(node.value)
    para = " ".join(doc[: doc.index("")] if "" in doc else doc).replace("; prints JSON", "").rstrip(".")
    return (para or path.stem), consts["TARGET"], consts["RATIO"]


def _fmt(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def _result(data: dict, ratio: str = "faster") -> str:
    parts = []
    if "ratio" in data:
        parts.append(f"**{data['ratio']}×** {ratio}")
    if "baseline_s" in data and "this_tree_s" in data:
        parts.append(f"{data['baseline_s']} s → {data['this_tree_s']} s")
    parts += [f"{key.replace('_', ' ')} {_fmt(data[key])}" for key in AGREEMENT if key in data]
    return "; ".join(parts) or "see the JSON"


def rows() -> list[str]:
    out = []
    for script in sorted((ROOT / "benchmarks").glob("bench_*.py")):
        what, target, ratio = _script_facts(script)
        saved = ROOT / "benchmarks" / "results" / f"{script.stem}.json"
        if not saved.is_file():
            out.append(f"| `{script.name}` | {what} | no saved JSON yet (`make bench`) | {target} | |")
            continue
        data = json.loads(saved.read_text(encoding="utf-8"))
        when = data.get("measured", "")
        n = f" (n = {data['n_examples']})" if "n_examples" in data else ""
        if isinstance(data.get("parts"), dict):
            for name, part in data["parts"].items():
                out.append(f"| `{script.name}` {name} | {what}{n} | {_result(part, ratio)} | {target} | {when} |")
        else:
            out.append(f"| `{script.name}` | {what}{n} | {_result(data, ratio)} | {target} | {when} |")
    return out


def table() -> str:
    head = ["| benchmark | what is compared | result | target | measured |", "| --- | --- | --- | --- | --- |"]
    return "\n".join([START, *head, *rows(), END])


def save(name: str, text: str) -> Path:
    """Keep the JSON object a benchmark printed (its last one, when it printed more) with today's date."""
    import datetime

    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = json.loads(text.strip().splitlines()[-1])
    data["measured"] = datetime.date.today().isoformat()
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--save", metavar="NAME", help="read a benchmark's JSON on stdin and keep it as results/NAME.json")
    a = ap.parse_args()
    if a.save:
        save(a.save, sys.stdin.read())
        return
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if START not in text or END not in text:
        raise SystemExit(f"README.md has no {START} ... {END} block; add one where the table belongs.")
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    new = before + table() + after
    if a.check:
        sys.exit(0 if new == text else 1)
    readme.write_text(new, encoding="utf-8")


if __name__ == "__main__":
    main()
