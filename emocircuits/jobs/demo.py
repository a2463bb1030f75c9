"""The demo: a tour of the three papers on one model load, written as one run directory with one report.

``run_tour(config, out)`` loads the model once and runs, at small sizes (:data:`TOUR_DEFAULTS`, each an
option of ``emocircuits demo``), the same re-runnable jobs the per-step commands run:

============================  =======================================================================
``out/...``                   what it holds
============================  =======================================================================
``manifest.json``             command ``demo``: the config, ``timings`` (seconds per step), ``headlines``
``tour.json``                 the report's three parts: title, run directories, headline lines, a reading
``token_views.json``          two CircuitsVis views (an emotion's neurons on a text; two heads' attention)
``report.html``               the report of this run (written last; ``emocircuits report out`` redraws it)
``neurons/find``, ``/mask``   Lee et al.: ``neurons find`` on train dialogues, ``neurons mask`` with K controls
``circuits/elicit`` …         Wang et al.: ``circuits elicit``, ``directions`` (groups all), ``components``,
``… /steer``                  ``influence``, ``assemble`` (small budget), ``steer`` (circuit / residual /
                              prompt / none on a few SEV prompts, lexicon judge)
``inference``                 Tak et al.: probes by layer and one patching window sweep (with a stride),
                              on one ``prepare`` of the appraisal events (command ``demo inference``)
============================  =======================================================================

Every sub-directory is an ordinary run directory (``emocircuits report`` draws each alone; the ``neurons``
and ``circuits`` ones re-run alone with ``emocircuits rerun``); ``emocircuits rerun out`` re-runs the tour.
Each step prints its headline numbers with their 95% CIs as it finishes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import emocircuits.methods.inference as inf
from emocircuits.base.constants import DEMO_SIZES, EKMAN6, STEER_MAX_NEW_TOKENS, STEER_SENTENCES
from emocircuits.base.errors import EmocircuitsError
from emocircuits.base.io import write_json
from emocircuits.core.models import load_model
from emocircuits.core.readout import train_split_of
from emocircuits.data import load_data
from emocircuits.jobs.circuit_build import run_assemble, run_influence
from emocircuits.jobs.circuits import run_components, run_directions, run_elicit
from emocircuits.jobs.inference import PROBE_TABLE_DESCRIPTION
from emocircuits.jobs.neurons import run_find, run_mask
from emocircuits.jobs.steer import run_steer
from emocircuits.methods import tokenviews
from emocircuits.methods.circuits.steer import AUTO
from emocircuits.runs.rundir import MANIFEST, RunDir, check_out_dir, read_manifest
from emocircuits.viz.report import write_report

TOUR_DEFAULTS = DEMO_SIZES



PARTS: tuple[tuple[str, str], ...] = (("neurons", "Emotion neurons — Lee et al. 2025"),
                                      ("circuits", "Emotion circuits — Wang et al. 2025"),
                                      ("inference", "Emotion inference — Tak et al. 2025"))


"""The report's sections: (key, title)."""


TOUR_FILE = "tour.json"


_POSITIVE = ("train_per_label", "test_per_label", "skeletons", "max_new_tokens", "top_k", "influence_prompts",
             "budget", "steer_skeletons", "events_per_label", "prior_per_label", "folds", "span", "stride", "n_pairs",
             "probe_controls", "steer_calibration_prompts")


class TourResult(dict):
    """What :func:`run_tour` returns: ``headlines`` ({part: [lines]}), ``readings`` ({part: paragraph}),
    ``timings`` ({step: wall seconds}), ``cpu_seconds`` ({step: CPU seconds}), ``report`` (report.html)."""


def check_tour_config(config: dict[str, Any]) -> dict[str, Any]:
    """``TOUR_DEFAULTS`` updated by ``config``; one sentence for an unknown key or a bad size."""
    unknown = sorted(set(config) - set(TOUR_DEFAULTS))
    if unknown:
        raise EmocircuitsError(f"Unknown demo setting {unknown[0]!r}; known: {', '.join(TOUR_DEFAULTS)}.")
    cfg = {**TOUR_DEFAULTS, **config}
    for key in _POSITIVE:
        if int(cfg[key]) < 1:
            raise EmocircuitsError(f"--{key.replace('_', '-')} must be at least 1 (got {cfg[key]}).")
    for key in ("controls", "n_boot", "shuffles"):
        if int(cfg[key]) < 0:
            raise EmocircuitsError(f"--{key.replace('_', '-')} must be 0 or more (got {cfg[key]}).")
    if not 0 < float(cfg["top_rate"]) <= 1:
        raise EmocircuitsError(f"--top-rate {cfg['top_rate']} is out of range; use a share in (0, 1], e.g. 0.01.")
    if not cfg["steer_emotions"]:
        raise EmocircuitsError("--steer-emotion is empty; name at least one emotion to steer toward, e.g. anger.")

    for key in ("mask_emotions", "steer_emotions"):
        bad = [e for e in cfg[key] if e not in EKMAN6]
        if bad:
            raise EmocircuitsError(f"--{key[:-1].replace('_', '-')} {bad[0]!r} is not one of {', '.join(EKMAN6)}.")
    return cfg


def run_tour(config: dict[str, Any], out: Path, quiet: bool = False, model_pair: Any = None,
             echo: Callable[[str], None] | None = print) -> TourResult:
    """Run the three papers' steps on one model load into the run directory ``out``, then write
    ``out/report.html``; prints each step's headline lines through ``echo`` (None: silent)."""

    say = echo or (lambda _line: None)
    cfg = check_tour_config(dict(config))
    out = Path(out)
    check_out_dir(out, "demo")
    timings: dict[str, float] = {}  # wall seconds
    cpu: dict[str, float] = {}  # CPU seconds of this process (all threads): what a busy machine does not inflate
    t_all, c_all = time.perf_counter(), time.process_time()
    t0 = time.perf_counter()
    pair = model_pair or load_model(cfg["model"], dtype=cfg["dtype"], progress=not quiet)
    timings["load"] = time.perf_counter() - t0
    bridge, spec = pair
    headlines: dict[str, list[str]] = {}
    readings: dict[str, str] = {}
    runs: dict[str, list[str]] = {}

    def step(name: str, fn: Callable[[], Any]) -> Any:
        t, c = time.perf_counter(), time.process_time()
        value = fn()
        timings[name], cpu[name] = time.perf_counter() - t, time.process_time() - c
        return value

    with RunDir.create(out, command="demo", config=cfg, model_spec=spec, seed=cfg["seed"],
                       staged=False) as run:
        for key, title in PARTS:
            say(f"\n== {title}")
            t_part = time.perf_counter()
            part = {"neurons": _neurons, "circuits": _circuits, "inference": _inference}[key]
            lines, reading, part_runs, views = part(cfg, out, pair, quiet, step, say)
            timings[key] = time.perf_counter() - t_part
            headlines[key], readings[key], runs[key] = lines, reading, part_runs
            if views is not None:
                run.write_json("token_views", views, "CircuitsVis token views shown in the neurons section")
        timings["after_load"] = time.perf_counter() - t_all - timings["load"]
        cpu["all"] = time.process_time() - c_all
        timings = {k: round(v, 1) for k, v in timings.items()}
        cpu = {k: round(v, 1) for k, v in cpu.items()}
        run.write_json("tour", {"parts": [{"key": k, "title": t, "runs": runs[k], "headlines": headlines[k],
                                           "reading": readings[k]} for k, t in PARTS]},
                       "the report's sections: key, title, run directories (relative), headline lines, reading")
        run.update(timings=timings, cpu_seconds=cpu, headlines=headlines)
    t = time.perf_counter()
    report = write_report([out], out / "report.html", title="emocircuits demo: three papers on one model",
                          progress=False)
    timings["report"] = round(time.perf_counter() - t, 1)
    timings["total"] = round(time.perf_counter() - t_all, 1)
    _add_timings(out, timings)
    say(f"\ntimings (s): {', '.join(f'{k} {v:g}' for k, v in timings.items())}")
    return TourResult(headlines=headlines, readings=readings, timings=timings, cpu_seconds=cpu, report=report.path)


def _add_timings(out: Path, timings: dict[str, float]) -> None:
    """Record report.html and the report's and the total time in the finished manifest."""

    manifest = read_manifest(out)
    manifest["timings"] = timings
    manifest.setdefault("files", {})["report.html"] = {"kind": "html", "description": "the report of this run"}
    write_json(out / MANIFEST, manifest)


def _pp(x: float) -> str:
    return f"{100 * x:+.0f} pp"


def _ci(lo: float, hi: float, pp: bool = False) -> str:
    if pp:
        return f"[{100 * lo:+.0f}, {100 * hi:+.0f}]"
    return f"[{lo:.2f}, {hi:.2f}]"


def _excludes_zero(lo: float, hi: float) -> bool:
    return bool(lo > 0 or hi < 0)


def _neurons(cfg: dict[str, Any], out: Path, pair: Any, quiet: bool, step: Callable, say: Callable) -> tuple:

    find_dir, mask_dir = out / "neurons" / "find", out / "neurons" / "mask"
    common = {"model": cfg["model"], "data": cfg["neurons_data"], "template": cfg["template"], "dtype": cfg["dtype"],
              "seed": cfg["seed"], "drop_unknown": False, "prepend_bos": None}
    find_cfg = {**common, "split": "train", "limit_per_label": cfg["train_per_label"], "activation": "gated",
                "tokens": "all", "top_rate": cfg["top_rate"], "assign": "argmax", "labels": None}
    stats, sel = step("neurons.find", lambda: run_find(find_cfg, find_dir, quiet=quiet, model_pair=pair))
    say("neurons per emotion: " + ", ".join(f"{e} {len(s)}" for e, s in sel.sets.items()))
    mask_cfg = {**common, "neurons": str(find_dir), "split": "test", "limit_per_label": cfg["test_per_label"],
                "layers": "all", "ratio": None, "ratio_mode": "truncate", "controls": cfg["controls"],
                "emotions": list(cfg["mask_emotions"]),
                "allow_other_model": False}
    res = step("neurons.mask", lambda: run_mask(mask_cfg, mask_dir, quiet=quiet, model_pair=pair, selection=sel))
    eff = res.effects
    own = eff[eff.masked_emotion == eff.true_label]
    base = "control" if cfg["controls"] else "normal"
    lines = [f"masking each emotion's neurons: own-label accuracy, masked − {base} "
             f"({cfg['controls']} random sets), 95% CI"]
    excl: list[str] = []
    for r in own.itertuples():
        ex = _excludes_zero(r.ci_low, r.ci_high)
        excl += [r.masked_emotion] if ex else []
        lines.append(f"  {r.masked_emotion:<9} {int(r.n_neurons):>3} neurons  {r.acc_normal:.2f} → {r.acc_masked:.2f} "
                     f"(control {r.acc_control:.2f})  {_pp(r.diff)} {_ci(r.ci_low, r.ci_high, pp=True)}  "
                     f"{'excludes 0' if ex else 'includes 0' + (': no effect beyond the controls' if cfg['controls'] else '')}")
    for e, why in (mask_cfg.get("left_out") or {}).items():
        lines.append(f"  {e:<9} left out: {why}")
    for line in lines:
        say(line)
    test = load_data(cfg["neurons_data"], split="test", limit_per_label=cfg["test_per_label"], seed=cfg["seed"])
    views = step("neurons.views", lambda: token_views(pair[0], test, sel))
    reading = _neurons_reading(cfg, sel, own, excl)
    return lines, reading, ["neurons/find", "neurons/mask", "."], views


def _neurons_reading(cfg: dict[str, Any], sel: Any, own: Any, excl: list[str]) -> str:
    if own.empty:
        return "No emotion had a neuron set to mask at these sizes."
    n = len(own)
    total = sum(len(s) for s in sel.sets.values())
    k = int(cfg["controls"])
    against = (f"relative to {k} random neuron set{'s' if k > 1 else ''} with the same per-layer counts" if k
               else "relative to the unmasked model (no controls)")
    effects = "; ".join(f"{r.masked_emotion} {_pp(r.diff)} {_ci(r.ci_low, r.ci_high, pp=True)} "
                        f"({r.acc_normal:.2f} → {r.acc_masked:.2f})" for r in own.itertuples())
    null = [r.masked_emotion for r in own.itertuples() if r.masked_emotion not in excl]
    beyond = "no effect beyond the controls" if k else "no effect beyond the unmasked model"
    finding = (f"the interval excludes 0 for {len(excl)} of {n} ({', '.join(excl)})" if excl
               else f"no interval excludes 0 ({n} emotion{'s' if n > 1 else ''} masked)")
    if null:
        finding += f"; for {', '.join(null)} the interval includes 0: {beyond}"
    return (f"Selecting the {100 * cfg['top_rate']:g}% lowest-entropy MLP neurons on {cfg['train_per_label']} training "
            f"dialogues per emotion gave {total} emotion neurons. Zeroing one emotion's set at a time and classifying "
            f"{cfg['test_per_label']} test dialogues per emotion changes accuracy on that emotion's own texts, "
            f"{against}, by: {effects}; {finding}. With so few test texts the intervals are wide: this shows the "
            "method end to end, and emocircuits neurons find and mask at full size give the estimates (Lee et al. "
            "report the own-emotion drop without controls).")


def token_views(bridge: Any, test: Any, sel: Any) -> dict[str, Any]:
    """Two token views for the report: the first test text of an emotion with neurons coloured by that
    emotion's set (summed values), and two heads' attention on the start of the second test text."""

    n_layers = sel.n_layers
    views = [tokenviews.attention_view(bridge, test[1].text[:300], [(n_layers // 2, 0), (n_layers - 1, 1)])]
    with_neurons = [ex for ex in test if len(sel.sets.get(ex.label, ()))]
    if with_neurons:  # a tiny model may select no neuron for some emotions
        ex = with_neurons[0]
        views.insert(0, tokenviews.neuron_set_view(bridge, ex.text, sel, ex.label))
    return tokenviews.views_document(views)


def _circuits(cfg: dict[str, Any], out: Path, pair: Any, quiet: bool, step: Callable, say: Callable) -> tuple:

    d = {name: out / "circuits" / name for name in ("elicit", "directions", "components", "influence", "assemble",
                                                     "steer")}
    q = {"quiet": quiet, "model_pair": pair}
    el = step("circuits.elicit", lambda: run_elicit(
        {"model": cfg["model"], "data": "builtin:sev", "split": "all", "limit": cfg["skeletons"],
         "judges": ["lexicon"], "accept": "first", "emotions": list(EKMAN6), "max_new_tokens": cfg["max_new_tokens"],
         "dtype": cfg["dtype"], "seed": cfg["seed"]}, d["elicit"], **q))
    acc = el.accuracy[(el.accuracy.emotion == "all") & (el.accuracy.valence == "all")].iloc[0]
    lines = [f"elicited replies judged as the instructed emotion (lexicon): {acc.accuracy:.2f} "
             f"{_ci(acc.ci_low, acc.ci_high)} of {int(acc.n)}"]
    say(lines[-1])
    dr = step("circuits.directions", lambda: run_directions(
        {"from": str(d["elicit"]), "model": None, "groups": "all", "n_boot": cfg["n_boot"], "shuffles": cfg["shuffles"],
         "seed": cfg["seed"]}, d["directions"], **q))
    ctl = dr.control.dropna(subset=["real"])
    beats = int(ctl.beats.sum()) if len(ctl) else 0
    lines.append(f"directions from {dr.summary['n_groups']} groups; cross-valence cosine beats the shuffled "
                 f"control at {beats}/{len(ctl)} site-layers")
    say(lines[-1])
    co = step("circuits.components", lambda: run_components(
        {"from": str(d["directions"]), "model": None, "top_k": cfg["top_k"], "top_k_heads": None}, d["components"], **q))
    top_heads = _top_heads(co.head_scores)
    lines.append("top heads (drop of the MLP input's emotion projection when removed): "
                 + "; ".join(f"{e} {', '.join(hs)}" for e, hs in top_heads.items()))
    say(lines[-1])
    step("circuits.influence", lambda: run_influence(
        {"from": str(d["directions"]), "model": None, "alphas": cfg["alphas"], "emotions": [], "readout": "final.norm",
         "sigma_from": "output", "ref_fraction": 1 / 6, "max_prompts": cfg["influence_prompts"], "method": "fast"},
        d["influence"], **q))
    asm = step("circuits.assemble", lambda: run_assemble(
        {"influence": str(d["influence"]), "components": str(d["components"]), "model": None,
         "k_total": cfg["budget"], "neuron_share": 0.7, "min_neurons": 1, "min_heads": 1, "cap_ratio": 0.4,
         "groups": "all"}, d["assemble"], **q))
    sizes = {e: (len(c.neurons), len(c.heads)) for e, c in asm.circuits.items()}
    lines.append(f"circuits (budget {cfg['budget']}): " + ", ".join(f"{e} {n}n+{h}h" for e, (n, h) in sizes.items()))
    say(lines[-1])
    st = step("circuits.steer", lambda: run_steer(
        {"from": str(d["assemble"]), "model": None, "data": "builtin:sev", "split": "test",
         "limit": cfg["steer_skeletons"], "emotions": list(cfg["steer_emotions"]), "methods": cfg["steer_methods"],
         "scale": AUTO, "alpha": AUTO, "band": None, "n_random": 1, "judges": ["lexicon"],
         "max_new_tokens": STEER_MAX_NEW_TOKENS, "sentences": STEER_SENTENCES, "dose": cfg["steer_dose"],
         "calibration_prompts": cfg["steer_calibration_prompts"], "seed": cfg["seed"]}, d["steer"], **q))
    pooled = st.accuracy[(st.accuracy.emotion == "all") & (st.accuracy.valence == "all")]
    steer = {r.method: (r.accuracy, r.ci_low, r.ci_high, int(r.n)) for r in pooled.itertuples()}
    for choice in st.strengths.values():
        lines.append(choice.line())
        say(lines[-1])
    qual = st.quality[st.quality.emotion == "all"].set_index("method")
    lines.append(f"steering toward {', '.join(cfg['steer_emotions'])} (lexicon-judged accuracy, 95% CI; perplexity "
                 "ratio to unsteered replies; cut-off share): "
                 + "; ".join(f"{m} {a:.2f} {_ci(lo, hi)} ppl ×{qual.loc[m, 'ppl_ratio']:.2f} cut-off "
                             f"{qual.loc[m, 'cut_off']:.2f}" for m, (a, lo, hi, _n) in steer.items()))
    say(lines[-1])
    for note in st.notes:
        lines.append(f"note: {note}")
        say(lines[-1])
    chosen = "; ".join(f"{n} {c.chosen:g}" + ("" if c.fluent else " (no fluent strength found)")
                       for n, c in st.strengths.items())
    reading = _circuits_reading(cfg, acc, dr, beats, len(ctl), top_heads, steer, chosen)
    return lines, reading, [f"circuits/{name}" for name in d], None


def _top_heads(head_scores: Any, k: int = 3) -> dict[str, list[str]]:
    out = {}
    for e, g in head_scores.groupby("emotion", sort=False):
        top = g.nlargest(k, "score")
        out[str(e)] = [f"L{int(r.layer)}H{int(r.head)}" for r in top.itertuples()]
    return out


def _circuits_reading(cfg: dict[str, Any], acc: Any, dr: Any, beats: int, n_ctl: int, top_heads: dict,
                      steer: dict[str, tuple], chosen: str = "") -> str:
    best = max(steer, key=lambda m: steer[m][0])
    ranked = _stands_out(steer[best][1], [hi for m, (_a, _lo, hi, _n) in steer.items() if m != best])
    items = sorted(steer.items(), key=lambda kv: -kv[1][0]) if ranked else list(steer.items())
    order = ", ".join(f"{m} {a:.2f} {_ci(lo, hi)}" for m, (a, lo, hi, _n) in items)
    top = ("" if len(steer) == 1 else
           f"{best} expresses the target most often (its interval lies above every other method's)." if ranked
           else "the methods' intervals overlap, so this size does not rank them.")
    n = next(iter(steer.values()))[3]
    sep = ""
    if "circuit" in steer and "residual" in steer:
        (a, alo, ahi, _), (b, blo, bhi, _) = steer["circuit"], steer["residual"]
        overlap = not (alo > bhi or blo > ahi)
        sep = (" The circuit and residual intervals overlap, so this size cannot tell the two apart."
               if overlap else f" Circuit steering {'beats' if a > b else 'trails'} residual steering with "
                               "non-overlapping intervals.")
    heads = "; ".join(f"{e} {hs[0]}" for e, hs in list(top_heads.items())[:3] if hs)
    return (f"Instructed to reply in an emotion, the model's {int(acc.n)} short replies ({cfg['max_new_tokens']} tokens, "
            f"{cfg['skeletons']} SEV skeleton(s)) were judged as that emotion {acc.accuracy:.0%} of the time "
            f"{_ci(acc.ci_low, acc.ci_high)} by the lexicon judge. Emotion directions from {dr.summary['n_groups']} "
            f"skeleton × valence groups are consistent across valences beyond the shuffled-label control at "
            f"{beats} of {n_ctl} site-layers; the heads that write most along them include {heads}. Steering "
            f"{n} emotion-free prompt(s) toward {', '.join(cfg['steer_emotions'])}"
            + (f" at strengths chosen on fluency for this model ({chosen}; the dose-response figure compares the "
               "methods at matched fluency)" if chosen else "")
            + f", the judged accuracy is: {order}; {top}{sep} The lexicon judge and the tiny sizes make these "
            "numbers illustrative; the emocircuits circuits commands at full size give the paper's comparison.")


def _inference(cfg: dict[str, Any], out: Path, pair: Any, quiet: bool, step: Callable, say: Callable) -> tuple:

    bridge, spec = pair
    probe_sites = [s.strip() for s in str(cfg["probe_sites"]).split(",") if s.strip()]
    patch_sites = [s.strip() for s in str(cfg["patch_sites"]).split(",") if s.strip()]
    inf.windows(spec.n_layers, int(cfg["span"]), int(cfg["stride"]))  # checks the span before any pass
    sub = {k: cfg[k] for k in ("model", "dtype", "seed", "inference_data", "events_per_label", "prior_per_label",
                               "all_examples", "probe_sites", "folds", "probe_controls", "random_features",
                               "patch_sites", "span", "stride", "n_pairs")}
    data = load_data(cfg["inference_data"], split="test", limit_per_label=cfg["events_per_label"], seed=cfg["seed"])
    prior = train_split_of(data, data.labels, per_label=int(cfg["prior_per_label"]))  # the label prior's sample
    with RunDir.create(out / "inference", command="demo inference", config=sub, model_spec=spec,
                       seed=cfg["seed"]) as run:
        prep = step("inference.prepare", lambda: inf.prepare(bridge, data, prior_examples=prior,
                                                                only_correct=not cfg["all_examples"]))
        ex = prep.summary()
        if len(prep) < 2 * int(cfg["folds"]):
            raise EmocircuitsError(f"Only {len(prep)} of {ex['n_total']} events were kept, too few for "
                                   f"{cfg['folds']}-fold probes; raise --events-per-label (now "
                                   f"{cfg['events_per_label']}) or pass --all-examples.")
        say(f"events: {ex['n_kept']} of {ex['n_total']} kept (clean accuracy {ex['clean_accuracy']:.2f}"
            f"{'' if cfg['all_examples'] else '; only the correctly classified ones'})")
        probes = step("inference.probe", lambda: inf.probe(prep, sites=probe_sites, folds=int(cfg["folds"]),
                                                           controls=int(cfg["probe_controls"]),
                                                           random_features=bool(cfg["random_features"])))
        run.write_table("probes", probes.table, PROBE_TABLE_DESCRIPTION)
        pairs = inf.make_pairs(prep.pred, int(cfg["n_pairs"]), int(cfg["seed"]))
        patching = step("inference.patch", lambda: inf.patch(prep, sites=patch_sites, span=int(cfg["span"]),
                                                             stride=int(cfg["stride"]), pairs=pairs,
                                                             seed=int(cfg["seed"])))
        run.write_table("patching", patching, "site, start, end, flip/stay/other shares with _low/_high CIs, "
                        "logit_diff_change, n_pairs")
        emo = probes.table[probes.table.target == "emotion"]
        best = {str(s): g.loc[g.cv_mean.idxmax()] for s, g in emo.groupby("site", sort=False)}
        flips = {str(s): g.loc[g.flip.idxmax()] for s, g in patching.groupby("site", sort=False)}
        summary = {"examples": ex,
                   "best_probe": {s: {k: _plain(r[k]) for k in _BEST_PROBE_KEYS} for s, r in best.items()},
                   "best_patch": {s: {k: _plain(r[k]) for k in ("start", "end", "flip", "flip_low", "flip_high")}
                                  for s, r in flips.items()}}
        run.write_json("summary", summary, "examples kept, best probe layer per site, best patching window per site")
    lines = [_probe_line(s, r) for s, r in best.items()]
    lines += [f"patching {s} (windows of {cfg['span']}, stride {cfg['stride']}, {len(pairs)} pairs): "
              + (f"most flips at layers {int(r.start)}–{int(r.end)}: {r.flip:.2f} {_ci(r.flip_low, r.flip_high)}"
                 if r.flip > 0 else "no window flips any pair [0.00, 0.00]") for s, r in flips.items()]
    for line in lines:
        say(line)
    return lines, _inference_reading(cfg, ex, emo, best, flips, len(pairs), patching), ["inference"], None


def _plain(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


_BEST_PROBE_KEYS = ("layer", "cv_mean", "ci_low", "ci_high", "control", "control_std", "control_low", "control_high",
                    "k_controls", "selectivity", "selectivity_low", "selectivity_high", "random_features",
                    "random_features_low", "random_features_high")


def _probe_line(site: str, r: Any) -> str:
    """The demo's headline of a site's best probe layer: accuracy, the permutation controls, selectivity."""
    k = int(r.k_controls)
    line = (f"emotion probe ({site}): best layer {int(r.layer)} accuracy {r.cv_mean:.2f} {_ci(r.ci_low, r.ci_high)} "
            f"vs label-permutation control {r.control:.2f} ± {r.control_std:.2f} sd {_ci(r.control_low, r.control_high)} "
            f"({k} permutation{'s' if k > 1 else ''}); selectivity {r.selectivity:+.2f} "
            f"{_ci_signed(r.selectivity_low, r.selectivity_high)}")
    if r.random_features == r.random_features:  # not NaN: the random-feature control ran
        line += f"; random features {r.random_features:.2f} {_ci(r.random_features_low, r.random_features_high)}"
    return line


def _ci_signed(lo: float, hi: float) -> str:
    return f"[{lo:+.2f}, {hi:+.2f}]"


def _stands_out(best_low: float, others_high: Any) -> bool:
    """Whether the best item's interval lies above every other item's (only then is it ranked first)."""
    others = [float(h) for h in others_high]
    return bool(others) and all(best_low > h for h in others)


def _inference_reading(cfg: dict[str, Any], ex: dict, emo: Any, best: dict, flips: dict, n_pairs: int,
                       patching: Any = None) -> str:
    parts = []
    for s, r in best.items():
        rows = emo[emo.site == s]
        first = rows.sort_values("layer").iloc[0]
        others = rows[rows.layer != r.layer]
        k = int(r.k_controls)
        where = (f"probed at layer {int(r.layer)} only" if others.empty else
                 f"most accurate at layer {int(r.layer)}" if _stands_out(r.ci_low, others.ci_high) else
                 f"highest at layer {int(r.layer)} (a point estimate: its interval overlaps other layers', so the "
                 "layers are not ranked)")
        sel = f"selectivity {r.selectivity:+.2f} {_ci_signed(r.selectivity_low, r.selectivity_high)}"
        verdict = (f"above its {k} label-permutation control{'s' if k > 1 else ''} ({sel})" if r.selectivity_low > 0
                   else f"no effect beyond the controls ({sel} includes 0), so this size cannot show decoding")
        parts.append(f"a last-token probe at {s} is {where}: {r.cv_mean:.2f} {_ci(r.ci_low, r.ci_high)} on held-out "
                     f"examples (layer {int(first.layer)}: {first.cv_mean:.2f}; control {r.control:.2f} ± "
                     f"{r.control_std:.2f} sd), {verdict}")
    patch = []
    for s, r in flips.items():
        if r.flip <= 0:
            patch.append(f"{s}: no window flips any pair")
            continue
        others = (patching[(patching.site == s) & (patching.start != r.start)].flip_high
                  if patching is not None else [])
        rank = ("" if len(others) == 0 or _stands_out(r.flip_low, others) else
                " (its interval overlaps other windows', so the windows are not ranked)")
        above = " (interval above 0)" if r.flip_low > 0 else " (interval reaches 0)"
        patch.append(f"{s} at layers {int(r.start)}–{int(r.end)} flips {r.flip:.0%} {_ci(r.flip_low, r.flip_high)}"
                     f"{above}{rank}")
    kept = ("the events it classified correctly" if not cfg["all_examples"] else "all events")
    return (f"On {ex['n_kept']} appraisal events ({kept}; {ex['n_total']} drawn, {cfg['events_per_label']} per "
            f"emotion), {'; '.join(parts)}. Patching a source event's last-token output into a target event of "
            f"another emotion over windows of {cfg['span']} layers every {cfg['stride']} ({n_pairs} pairs), the "
            f"window with the most targets moved to the source's emotion is: {'; '.join(patch)}. Tak et al. find "
            "emotion readable from the middle layers on and carried by a window of MLP and attention outputs; sizes "
            "this small show the measurement, not a confirmation.")


