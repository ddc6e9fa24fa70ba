"""Turn a results dict into report sections (titles, paragraphs, tables of strings), shared by the HTML and PDF
renderers so both show the same content."""

from __future__ import annotations

import json

from medeff.evaluation.operating_points import METRIC_LABELS
from medeff.evaluation.tables import format_ci

__all__ = ["build_sections", "flat_metrics", "interval_records"]


def _ci(rec: dict, digits: int = 2, confidence: float = 0.95) -> str:
    return format_ci(rec.get("value"), rec.get("ci_low"), rec.get("ci_high"), rec.get("digits", digits),
                     rec.get("unit", ""), confidence)


def _table(caption: str, headers: list[str], rows: list[list]) -> dict:
    return {"caption": caption, "headers": headers, "rows": [[str(c) for c in r] for r in rows]}


NA = "not available"
PER_CASE_NA = ("Not available: this results file holds no per-case rows (summary.json leaves them out); render the "
               "results.json of `medeff evaluate` to include this section.")


class _Known(dict):
    """Settings/counts of a results file; a missing entry reads as "not available" (results from other tools, or
    files written by earlier versions, may lack some)."""

    def __missing__(self, key):
        return NA


def _g(value) -> str:
    return f"{value:g}" if isinstance(value, (int, float)) and not isinstance(value, bool) else NA


def _unavailable(res: dict, paras: list[str]) -> list[str]:
    """The summary paragraphs, with those built from absent ``counts``/``settings`` replaced by one sentence each."""
    out = []
    if not res.get("counts"):
        out.append(f"Numbers of cases, patients/groups and reference classes: {NA} in this results file.")
    if not res.get("settings"):
        out.append(f"Evaluation settings (confidence level, bootstrap, conventions): {NA} in this results file.")
    return out + [p for p in paras if NA not in p]


def build_sections(res: dict) -> list[dict]:
    """Sections ``{"title", "paragraphs", "tables"}`` in report order (figures are added by the renderer).

    Parts of ``res`` that a section needs but that are absent (``settings``, ``counts``, ``per_case``,
    ``provenance`` ...) make that section say "not available" instead of failing.
    """
    conf = _Known(res.get("settings") or {}).get("confidence")
    conf = float(conf) if isinstance(conf, (int, float)) else None
    pct = f"{round(conf * 100):d}% " if conf is not None else ""  # headings read "95% CI", or "CI" when unknown
    # sections computed elsewhere (e.g. a cross-validation table of a pipeline), shown first, as given
    secs = [dict(s) for s in res.get("extra_sections") or []]
    if res.get("warnings"):
        secs.append({"title": "Warnings", "paragraphs": [str(w) for w in res["warnings"]], "tables": []})
    if res["kind"] == "classification":
        secs += _classification(res, pct, conf)
    else:
        secs += _segmentation(res, pct, conf)
    notes = _interval_notes(res)
    if notes:
        after = next((i + 1 for i, sec in enumerate(secs) if sec["title"] == "Summary"), len(secs))
        secs.insert(after, notes)
    from medeff.evaluation.methods_text import methods_sections

    secs += methods_sections(res)
    secs.append(_provenance(res))
    return secs


def _classification(res: dict, pct: str, conf: float) -> list[dict]:
    if res.get("triage_only"):
        return _triage(res, pct, conf)
    s, c = _Known(res.get("settings") or {}), _Known(res.get("counts") or {})
    unit = s.get("unit", "case")
    paras = ([f"Model: {res['model_name']}."] if res.get("model_name") else []) + [
        f"{c['cases']} {unit}s from {c['groups']} patients/groups ({c['input_rows']} input rows"
             + (f", aggregated per {unit} by {s['aggregate']}" if s.get("aggregate") else "") + ")."]
    if not res.get("multiclass"):
        paras.append(f"Reference: {c['positive']} positive and {c['negative']} negative {unit}s.")
    paras.append(f"Confidence intervals ({(pct or 'level ' + NA).strip()}): DeLong for ROC AUC, otherwise a cluster "
                 f"bootstrap that resamples patients/groups ({s['n_resamples']} resamples, {s['bootstrap_method']} "
                 f"method, seed {s['seed']}).")
    paras = _unavailable(res, paras)
    head = [[r["label"], _ci(r, 3 if r["key"] in ("brier", "ece", "calibration_intercept") else 2, conf),
             r.get("ci_method") or "",
             r.get("n") or ""] for r in res["headline"]]
    out = [{"title": "Summary", "paragraphs": paras,
            "tables": [_table("Headline results", ["Measure", f"Estimate ({pct}CI)", "CI method", "n"], head)]}]
    if res.get("multiclass"):
        rows = [[r["class"], r["n_positive"], _ci(r["auc"], 2, conf), _ci(r["auc_bootstrap"], 2, conf)]
                for r in res["per_class"]]
        names = res["class_names"]
        cm = [[f"reference {n}"] + row for n, row in zip(names, res["confusion_matrix"])]
        out.append({"title": "Per class (one-vs-rest)", "paragraphs": [],
                    "tables": [_table("ROC AUC of each class against the rest",
                                      ["Class", "n in class", f"AUC (DeLong {pct}CI)", f"AUC (bootstrap {pct}CI)"],
                                      rows),
                               _table("Confusion matrix (number of cases)", [""] + [f"predicted {n}" for n in names],
                                      cm)]})
        return out
    ops = res["operating_points"]
    rows = [["Threshold (positive if score >= threshold)"] + [f"{o['threshold']:.4g}" for o in ops]]
    for k in METRIC_LABELS:
        rows.append([METRIC_LABELS[k]] + [_ci(next(m for m in o["metrics"] if m["key"] == k), 2, conf)
                                          for o in ops])
    for key, lab in (("tp", "True positives"), ("fp", "False positives"), ("tn", "True negatives"),
                     ("fn", "False negatives")):
        rows.append([lab] + [o["confusion"][key] for o in ops])
    rows.append(["Cases flagged positive"] + [o["flagged"] for o in ops])
    rules = [f"{o['label']}: {o['rule']}." for o in ops]
    out.append({"title": "Operating points", "paragraphs": rules + [
        "Thresholds chosen on these data are held fixed in the bootstrap; their CIs do not include the uncertainty "
        "of choosing the threshold."],
        "tables": [_table("Metrics at each operating point", ["Measure"] + [o["label"] for o in ops], rows)]})
    if res.get("calibration"):
        cal = res["calibration"]
        rows = [[f"{r['bin_low']:.2f}-{r['bin_high']:.2f}", r["n"],
                 "" if r["mean_predicted"] is None else f"{r['mean_predicted']:.3f}",
                 "" if r["observed_fraction"] is None else f"{r['observed_fraction']:.3f}"] for r in cal["table"]]
        out.append({"title": "Calibration", "paragraphs": [
            f"Expected calibration error uses {cal['bins']} {cal['binning']} bins: the mean over bins of "
            "|mean predicted probability - observed fraction positive|, weighted by the share of cases in the bin.",
            "Calibration slope: coefficient of logit(p) in an unpenalised logistic regression of the reference on "
            "logit(p) (1 is ideal; below 1, predictions are too extreme). Calibration intercept: "
            "calibration-in-the-large, the intercept of that regression with the slope fixed at 1 (0 is ideal; above "
            "0, risks are under-estimated on average). Probabilities are clipped to [1e-6, 1 - 1e-6] before the logit."
            + _calibration_line(res, conf)],
            "tables": [_table("Reliability table", ["Probability bin", "n", "Mean predicted probability",
                                                    "Observed fraction positive"], rows)]})
    if res.get("decision_curve"):
        out.append(_decision_section(res, pct))
    if res.get("comparison"):
        cp = res["comparison"]
        rows = [[cp["model_a"], format_ci(cp["auc_a"], *_auc_ci(res), 2, "", conf)],
                [cp["model_b"], format_ci(cp["auc_b"], cp["auc_b_ci_low"], cp["auc_b_ci_high"], 2, "", conf)],
                ["Difference (DeLong)", format_ci(cp["difference"], cp["ci_low"], cp["ci_high"], 3, "", conf)],
                ["Difference (cluster bootstrap)", format_ci(cp["difference"], cp["difference_bootstrap_ci_low"],
                                                             cp["difference_bootstrap_ci_high"], 3, "", conf)],
                ["z statistic", f"{cp['z']:.3f}"], ["Two-sided p value", f"{cp['p']:.4g}"]]
        out.append({"title": "Model comparison", "paragraphs": [
            f"Paired DeLong test of equal ROC AUC on the same {cp['n_pos'] + cp['n_neg']} {unit}s."],
            "tables": [_table("ROC AUC of both models", ["", f"Estimate ({pct}CI)"], rows)]})
    for sg in res.get("subgroups", []):
        rows = []
        for r in sg["rows"]:
            m = {x["key"]: x for x in r["metrics"]}
            rows.append([r["level"], r["n"], f"{r['n_positive']} / {r['n_negative']}", _ci(m["auc"], 2, conf),
                         _ci(m["sensitivity"], 2, conf), _ci(m["specificity"], 2, conf)])
        out.append({"title": f"Subgroups by {sg['name']}", "paragraphs": [
            f"Sensitivity and specificity at the configured threshold ({sg['threshold']:g}). 'not estimable': the "
            "subgroup lacks positive or negative cases."],
            "tables": [_table(f"Results by {sg['name']}", ["Subgroup", "n", "positive / negative",
                                                           f"ROC AUC ({pct}CI)", "Sensitivity", "Specificity"],
                              rows)]})
    if res.get("probabilities") and "per_case" not in res:
        out.append({"title": "Most confidently wrong cases", "paragraphs": [PER_CASE_NA], "tables": []})
    elif res.get("probabilities"):
        wrong = sorted(res["per_case"], key=lambda r: -abs(r["score"] - r["reference"]))[:10]
        rows = [[r["case"], r["group"], "positive" if r["reference"] else "negative", f"{r['score']:.3f}"]
                for r in wrong]
        out.append({"title": "Most confidently wrong cases", "paragraphs": [
            "The cases whose predicted probability lies furthest from the reference (identifiers pseudonymised)."],
            "tables": [_table("Worst cases", ["Case", "Patient/group", "Reference", "Score"], rows)]})
    return out


def _calibration_line(res: dict, conf) -> str:
    rows = {r["key"]: r for r in res.get("headline") or []}
    parts = [f"{name} {_ci(rows[k], 3 if k == 'calibration_intercept' else 2, conf)}"
             for k, name in (("calibration_slope", "slope"), ("calibration_intercept", "intercept")) if k in rows]
    return (" Here: " + "; ".join(parts) + ".") if parts else ""


def _decision_section(res: dict, pct: str, rows_shown: int = 12) -> dict:
    """Decision-curve table at up to ``rows_shown`` evenly spread thresholds (all of them are in results.json)."""
    pts = res["decision_curve"]
    ds = res.get("decision_curve_settings") or {}
    step = max(1, -(-len(pts) // rows_shown))
    shown = pts[::step]
    if pts[-1] is not shown[-1]:
        shown.append(pts[-1])

    def nb(p, key):
        return format_ci(p.get(key), p.get(f"{key}_ci_low"), p.get(f"{key}_ci_high"), 3, "", None)

    rows = [[f"{p['threshold']:.3g}", nb(p, "net_benefit"), nb(p, "net_benefit_treat_all"), "0",
             f"{(p['net_benefit'] - max(p['net_benefit_treat_all'], 0.0)) * 100:+.1f}"] for p in shown]
    paras = [
        "Net benefit at a threshold probability pt (treat when the predicted probability >= pt) is TP/n - FP/n x "
        "pt/(1 - pt): true positives per case, with each false positive weighted by the odds of the threshold "
        "(Vickers and Elkin 2006). The model is useful at thresholds where its net benefit exceeds both treating "
        "all (prevalence - (1 - prevalence) x pt/(1 - pt)) and treating none (0).",
        f"Thresholds {_g(ds.get('threshold_min'))} to {_g(ds.get('threshold_max'))} in steps of "
        f"{_g(ds.get('threshold_step'))}; {pct}CIs: {ds.get('ci_method') or NA}. "
        + (f"The table shows {len(shown)} of the {len(pts)} thresholds; results.json lists all."
           if len(shown) < len(pts) else "")]
    return {"title": "Decision curve", "paragraphs": paras,
            "tables": [_table(f"Net benefit ({pct}CI)", ["Threshold probability", "Model", "Treat all", "Treat none",
                                                         "Model minus best default, per 100 cases"], rows)]}


def _triage(res: dict, pct: str, conf: float) -> list[dict]:
    """Sections of a triage-only result (no labels, or one reference class): statement, estimable numbers, list."""
    s, c = _Known(res.get("settings") or {}), _Known(res.get("counts") or {})
    unit = s.get("unit", "case")
    op = res["operating_points"][0]
    routine = c["cases"] - op["flagged"] if isinstance(c["cases"], int) else NA
    paras = [res.get("statement") or NA,
             f"{c['cases']} {unit}s from {c['groups']} patients/groups; triage threshold {_g(op['threshold'])} "
             f"(flag when score >= threshold): {op['flagged']} flagged, {routine} routine."]
    head = [[r["label"], r["value"] if r["key"] == "flagged" else _ci(r, 2, conf), r.get("ci_method") or "",
             r.get("n") or ""] for r in res["headline"]]
    if "per_case" not in res:
        return [{"title": "Summary", "paragraphs": paras,
                 "tables": [_table("Headline results", ["Measure", f"Estimate ({pct}CI)", "CI method", "n"], head)]},
                {"title": "Triage decisions", "paragraphs": [PER_CASE_NA], "tables": []}]
    rows = []
    for r in res["per_case"]:
        ref = "" if r.get("reference") is None else ("positive" if r["reference"] else "negative")
        rows.append([r["case"], r["group"], f"{r['score']:.3f}", r["decision"]] + ([ref] if "reference" in r else []))
    heads = ["Case", "Patient/group", "Score", "Decision"] + (["Reference"] if res["per_case"] and
                                                               "reference" in res["per_case"][0] else [])
    return [{"title": "Summary", "paragraphs": paras,
             "tables": [_table("Headline results", ["Measure", f"Estimate ({pct}CI)", "CI method", "n"], head)]},
            {"title": "Triage decisions", "paragraphs": [
                f"One row per {unit} (identifiers pseudonymised where they look identifying)."],
             "tables": [_table(f"Score and decision per {unit}", heads, rows)]}]


def interval_records(res: dict):
    """``(where, record)`` for every reported number with a bootstrap interval."""
    for r in res.get("headline") or []:
        yield "", r
    for o in res.get("operating_points") or []:
        for r in o.get("metrics") or []:
            yield f" at {o.get('label', o.get('name', ''))}", r
    for r in res.get("per_class") or []:
        for key in ("auc", "auc_bootstrap"):
            if isinstance(r.get(key), dict):
                yield f" ({r.get('class')})", r[key]
    for sg in res.get("subgroups") or []:
        for lv in sg.get("rows") or []:
            for r in lv.get("metrics") or []:
                yield f" in subgroup {sg.get('name')} = {lv.get('level')}", r
    for agg in res.get("aggregates") or []:
        for r in agg.get("metrics") or []:
            yield f" ({agg.get('name')})", r
    for va in res.get("volume_agreement") or []:
        for r in va.get("metrics") or []:
            yield f" ({va.get('name')})", r
    cp = res.get("comparison")
    if cp and cp.get("difference_bootstrap_ci_method_used"):
        yield "", {"label": "ROC AUC difference (cluster bootstrap)",
                   "ci_method_used": cp["difference_bootstrap_ci_method_used"],
                   "ci_clipped": cp.get("difference_bootstrap_ci_clipped"),
                   "ci_method": cp.get("difference_bootstrap_ci_method")}


def _interval_notes(res: dict, limit: int = 40) -> dict | None:
    """A section listing the intervals whose method differs from the configured one, or that were clipped."""
    configured = (res.get("settings") or {}).get("bootstrap_method")
    lines = []
    for where, r in interval_records(res):
        used = r.get("ci_method_used")
        plain = used == configured if configured else "(" not in str(used)
        if used is None or (plain and not r.get("ci_clipped")) or str(used).startswith("not estimable"):
            continue
        clip = str(r.get("ci_method") or "").partition("; ")[2] if r.get("ci_clipped") else ""
        lines.append(f"{r.get('label', r.get('key'))}{where}: {used}" + (f"; {clip}" if clip else "") + ".")
    if not lines:
        return None
    more = len(lines) - limit
    paras = [f"The configured interval method is {configured or NA}. These intervals used another method, or had an "
             "end clipped to the measure's range (e.g. the basic method can reach past 1 for a proportion):"]
    paras += lines[:limit] + ([f"... and {more} more (see the ci_method column of metrics.csv)."] if more > 0 else [])
    return {"title": "Confidence interval notes", "paragraphs": paras, "tables": []}


def _auc_ci(res: dict) -> tuple:
    r = res["headline"][0]
    return r["ci_low"], r["ci_high"]


def _segmentation(res: dict, pct: str, conf: float) -> list[dict]:
    s, c = _Known(res.get("settings") or {}), _Known(res.get("counts") or {})
    both = {"perfect": "Dice, IoU, NSD = 1 and distances = 0", "nan": "all metrics NaN (excluded)"}.get(
        s["empty_both"], NA)
    one = {"nan": "NaN (excluded)", NA: NA}.get(s["one_empty_distance"], f"set to {s['one_empty_distance']}")
    paras = [f"{c['cases']} cases from {c['groups']} patients/groups, {c['labels']} labels.",
             f"Means with {pct}cluster-bootstrap CIs ({s['n_resamples']} resamples, {s['bootstrap_method']}, seed "
             f"{s['seed']}); NaN values are excluded and counted per metric.",
             f"Empty masks: label absent from both reference and prediction -> "
             f"{both}"
             f"; absent from exactly one -> Dice = IoU = NSD = 0 and surface distances "
             f"{one}{' (image diagonal in mm)' if s['one_empty_distance'] == 'diagonal' else ''}.",
             f"Normalised surface Dice tolerance: {_g(s['tolerance_mm'])} mm."]
    paras = _unavailable(res, paras)
    groups = (("Overlap", ["dice", "iou", "nsd"]),
              ("Surface distance and volume", ["hd95", "assd", "volume_ref_ml", "volume_error_ml"]))
    tables = []
    for cap, keys in groups:
        rows = []
        for agg in res["aggregates"]:
            m = {x["key"]: x for x in agg["metrics"]}
            rows.append([agg["name"]] + [f"{_ci(m[k], 3, conf)} [n={m[k]['n']}]" for k in keys])
        heads = ["Label"] + [_metric_head(res, k) for k in keys]
        tables.append(_table(f"{cap}: mean ({pct}CI) [n]", heads, rows))
    med = []
    for agg in res["aggregates"]:
        m = {x["key"]: x for x in agg["metrics"]}
        med.append([agg["name"]] + [_median(m[k]) for k in ("dice", "hd95", "assd", "nsd")]
                   + [m["dice"]["n_excluded"]])
    tables.append(_table("Median [interquartile range]", ["Label", "Dice", "HD95 (mm)", "ASSD (mm)", "NSD",
                                                          "Dice NaN excluded"], med))
    out = [{"title": "Summary", "paragraphs": paras, "tables": tables}]
    if res.get("volume_agreement"):
        out.append(_volume_section(res, pct, conf))
    if res.get("postprocessing"):
        out.append(_postprocessing_section(res["postprocessing"]))
    rows = [[w["case"], "" if w["mean_dice"] is None else f"{w['mean_dice']:.3f}",
             ", ".join(f"{k}: {'NaN' if v is None else f'{v:.3f}'}" for k, v in w["dice_per_label"].items())]
            for w in res.get("worst_cases") or []]
    out.append({"title": "Worst cases", "paragraphs": ["Cases with the lowest mean Dice over labels "
                                                       "(identifiers pseudonymised where they look identifying)."],
                "tables": [_table("Worst cases", ["Case", "Mean Dice", "Dice per label"], rows)]})
    return out


def _postprocessing_section(pp: dict) -> dict:
    """The post-processing applied to the predicted masks, with the validation Dice it was chosen on."""
    def f(v):
        return NA if v is None else f"{v:.4f}"

    rows = [[e.get("name") or e.get("value"), " + ".join(e.get("steps") or []) or "none", f(e.get("dice_before")),
             f(e.get("dice_after")), e.get("n_cases") if e.get("n_cases") is not None else NA]
            for e in pp.get("labels") or []]
    if not rows:
        return {"title": "Post-processing", "paragraphs": [
            f"The predicted masks were written without post-processing (from {pp.get('source', NA)})."], "tables": []}
    n = pp.get("n_validation_cases")
    paras = [f"Per label, keep-largest-connected-component and fill-holes were tried on {n if n is not None else NA} "
             "validation case(s) and each kept only where it raised the mean validation Dice (from "
             f"{pp.get('source', NA)}). The Dice below is the validation Dice it was chosen on, not a test result."]
    return {"title": "Post-processing", "paragraphs": paras,
            "tables": [_table("Post-processing per label (validation Dice)",
                              ["Label", "Steps applied", "Dice before", "Dice after", "Validation cases"], rows)]}


def _volume_section(res: dict, pct: str, conf) -> dict:
    """Bland-Altman volume agreement per label (ml)."""
    rows = []
    for va in res["volume_agreement"]:
        m = {x["key"]: x for x in va["metrics"]}
        rows.append([va["name"], va["n"], _ci(m["bias_ml"], 2, conf), _ci(m["sd_ml"], 2, conf),
                     _ci(m["loa_low_ml"], 2, conf), _ci(m["loa_high_ml"], 2, conf)])
    paras = ["Volumes are voxel counts times the voxel volume from each mask's spacing, in ml. Per label, over the "
             "cases where the label is present in at least one mask: bias = mean of (predicted - reference volume), "
             "SD of the differences, and 95% limits of agreement bias -/+ 1.96 SD (Bland and Altman 1986); "
             f"{pct}CIs from the cluster bootstrap (patients resampled). Cases where the label is absent from both "
             "masks are left out."]
    return {"title": "Volume agreement (Bland-Altman)", "paragraphs": paras,
            "tables": [_table(f"Volume agreement in ml ({pct}CI)", ["Label", "n", "Bias (ml)", "SD (ml)",
                                                                     "Lower limit of agreement (ml)",
                                                                     "Upper limit of agreement (ml)"], rows)]}


def _metric_head(res: dict, key: str) -> str:
    from medeff.evaluation.segmentation import SEG_METRICS

    label, unit, _ = SEG_METRICS[key]
    if key == "nsd":
        label += f" at {_g((res.get('settings') or {}).get('tolerance_mm'))} mm"
    return f"{label} ({unit})" if unit else label


def _median(m: dict) -> str:
    if m.get("median") is None:
        return "not estimable"
    d = m.get("digits", 3)
    return f"{m['median']:.{d}f} [{m['q1']:.{d}f}-{m['q3']:.{d}f}]"


def _provenance(res: dict) -> dict:
    if not isinstance(res.get("provenance"), dict):
        return {"title": "Provenance", "paragraphs": [f"Provenance {NA} in this results file."], "tables": []}
    p = _Known(res["provenance"])
    rows = [["medeff version", p["medeff_version"]], ["git commit", p.get("git_commit") or "not available"],
            ["date", p["date_utc"]], ["python", p["python"]], ["platform", p["platform"]], ["seed", p["seed"]]]
    rows += [[f"package {k}", v] for k, v in (p.get("packages") or {}).items()]
    rows += [[f"input {role}", f"{v.get('file')} (sha256 {v.get('sha256')})"] for role, v in
             (p.get("inputs") or {}).items() if isinstance(v, dict)]
    return {"title": "Provenance", "paragraphs": [], "tables": [_table("Software and inputs", ["Item", "Value"], rows)],
            "config": json.dumps(p.get("config", {}), indent=2, default=str)}


def flat_metrics(res: dict) -> list[dict]:
    """Every summary number as flat rows (section, item, key, label, value, ci_low, ci_high, ci_method, n, unit)."""
    rows = []

    def add(section, item, rec):
        rows.append({"section": section, "item": item, **{k: rec.get(k) for k in
                     ("key", "label", "value", "ci_low", "ci_high", "ci_method", "ci_method_used", "ci_clipped",
                      "n", "unit")}})

    for r in res.get("headline", []):
        add("headline", "all", r)
    for o in res.get("operating_points", []):
        add("operating_point", o["name"], {"key": "threshold", "label": "Threshold", "value": o["threshold"]})
        for r in o["metrics"]:
            add("operating_point", o["name"], r)
        for k, v in o["confusion"].items():
            add("operating_point", o["name"], {"key": k, "label": k.upper(), "value": v})
    for r in res.get("per_class", []):
        add("per_class", r["class"], r["auc"])
        add("per_class", r["class"], r["auc_bootstrap"])
    for sg in res.get("subgroups", []):
        for lv in sg["rows"]:
            for r in lv["metrics"]:
                add(f"subgroup:{sg['name']}", lv["level"], r)
    if res.get("comparison"):
        cp = res["comparison"]
        add("comparison", f"{cp['model_a']} - {cp['model_b']}",
            {"key": "auc_difference", "label": "AUC difference (DeLong)", "value": cp["difference"],
             "ci_low": cp["ci_low"], "ci_high": cp["ci_high"], "ci_method": "DeLong"})
        add("comparison", f"{cp['model_a']} - {cp['model_b']}", {"key": "p", "label": "p value", "value": cp["p"]})
    for agg in res.get("aggregates", []):
        for r in agg["metrics"]:
            add("segmentation", agg["name"], r)
    for va in res.get("volume_agreement") or []:
        for r in va["metrics"]:
            add("volume_agreement", va["name"], r)
    for p in res.get("decision_curve") or []:
        for key, label in (("net_benefit", "Net benefit (model)"),
                           ("net_benefit_treat_all", "Net benefit (treat all)")):
            add("decision_curve", f"threshold {p['threshold']:g}",
                {"key": key, "label": label, "value": p.get(key), "ci_low": p.get(f"{key}_ci_low"),
                 "ci_high": p.get(f"{key}_ci_high"), "ci_method": (res.get("decision_curve_settings") or {}).get(
                     "ci_method"), "ci_method_used": p.get("ci_method_used")})
    return rows
