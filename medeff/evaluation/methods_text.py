"""Report sections for a paper: a methods paragraph written from what was actually computed, and a reporting
checklist saying which items (in the spirit of TRIPOD+AI and CLAIM; item names are medeff's own) the report covers
and which it cannot.

Everything is read from the results dict (counts, settings, the interval method recorded on each number, the
software versions of the provenance), so the text states what this run did, not what the defaults would do.
"""

from __future__ import annotations

from collections import Counter

__all__ = ["methods_paragraphs", "checklist_rows", "methods_sections"]

NR = "not recorded"


def _num(value) -> str:
    return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else NR


def _versions(res: dict) -> str:
    prov = res.get("provenance") if isinstance(res.get("provenance"), dict) else {}
    pk = prov.get("packages") or {}
    parts = [f"medeff {prov.get('medeff_version') or NR}"]
    parts += [f"{name} {pk.get(name) or NR}" for name in ("numpy", "scikit-learn", "scipy")]
    py = prov.get("python")
    return ", ".join(parts) + (f" (Python {py})" if py else "")


def _interval_methods(res: dict) -> tuple[Counter, int]:
    """How often each interval method was actually used, and the number of bootstrap intervals."""
    from medeff.evaluation.sections import interval_records

    used: Counter = Counter()
    for _, rec in interval_records(res):
        m = rec.get("ci_method_used")
        if m:
            used[str(m)] += 1
    for p in res.get("decision_curve") or []:
        if p.get("ci_method_used"):
            used[str(p["ci_method_used"])] += 2
    return used, sum(used.values())


def _ci_sentence(res: dict, s: dict) -> str:
    conf = s.get("confidence")
    level = f"{round(conf * 100):d}%" if isinstance(conf, (int, float)) else "Confidence"
    used, total = _interval_methods(res)
    configured = s.get("bootstrap_method")
    head = (f"{level} confidence intervals were obtained by a cluster bootstrap resampling patients (groups) with "
            f"replacement ({_num(s.get('n_resamples'))} resamples, {configured or NR} method, seed "
            f"{s.get('seed', NR)}; scipy.stats.bootstrap)")
    other = {m: c for m, c in used.items() if m != configured and not m.startswith("not estimable")}
    if other:
        n_other = sum(other.values())
        head += (f"; for {n_other} of {total} intervals the configured method was undefined or degenerate and the "
                 f"percentile interval of the valid resamples was used instead")
    n_na = sum(c for m, c in used.items() if m.startswith("not estimable"))
    if n_na:
        head += f"; {n_na} intervals were not estimable"
    return head + "."


def _and(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def _op_text(op: dict) -> str:
    t = op.get("threshold")
    t = f"{t:.3g}" if isinstance(t, (int, float)) else NR
    name = str(op.get("name", ""))
    if name == "configured":
        return f"the prespecified threshold ({t})"
    if name == "youden":
        return f"the threshold maximising Youden's J ({t}, chosen on these data)"
    if op.get("target_sensitivity") is not None:
        return (f"the highest threshold reaching {op['target_sensitivity'] * 100:g}% sensitivity ({t}, chosen on "
                "these data)")
    return f"{str(op.get('label', name)).lower()} ({t})"


def methods_paragraphs(res: dict) -> list[str]:
    """Paragraphs a user can paste into the methods section of a paper (plain text, past tense)."""
    s = res.get("settings") or {}
    c = res.get("counts") or {}
    unit = s.get("unit", "case")
    paras = []
    if res.get("kind") == "classification":
        first = (f"The model was evaluated on {_num(c.get('cases'))} {unit}s from {_num(c.get('groups'))} patients")
        if c.get("positive") is not None:
            first += f" ({_num(c.get('positive'))} positive and {_num(c.get('negative'))} negative by the reference)"
        first += "."
        if s.get("aggregate"):
            first += (f" Scores of the {_num(c.get('input_rows'))} input rows were combined per {unit} by their "
                      f"{s['aggregate']}.")
        paras.append(first)
        heads = {r.get("key") for r in res.get("headline") or []}
        what = []
        if res.get("triage_only"):
            what.append("Without two reference classes, only the number of flagged cases and the estimable rate at "
                        f"the configured threshold ({s.get('threshold', NR)}) were reported")
        elif res.get("multiclass"):
            what.append("Discrimination was measured by one-vs-rest ROC AUC per class with DeLong confidence "
                        "intervals (DeLong et al. 1988) and their macro average; accuracy used the highest-scoring "
                        "class")
        else:
            what.append("Discrimination was measured by the area under the ROC curve with DeLong confidence "
                        "intervals (DeLong et al. 1988) and by average precision")
            ops = res.get("operating_points") or []
            if ops:
                what.append("sensitivity, specificity, predictive values and F1 were reported at "
                            + _and([_op_text(o) for o in ops]))
            if "brier" in heads:
                cal = res.get("calibration") or {}
                what.append(f"calibration by the Brier score, the expected calibration error ({cal.get('bins', NR)} "
                            f"{cal.get('binning', '')} bins) and a reliability diagram")
            if "calibration_slope" in heads:
                what.append("the calibration slope and calibration-in-the-large from an unpenalised logistic "
                            "recalibration on the logit of the predicted probability (Cox 1958; Van Calster et al. "
                            "2019)")
            if res.get("decision_curve"):
                ds = res.get("decision_curve_settings") or {}
                what.append(f"clinical utility by decision-curve analysis (net benefit at threshold probabilities "
                            f"{ds.get('threshold_min', NR)} to {ds.get('threshold_max', NR)}; Vickers and Elkin "
                            "2006)")
            if res.get("comparison"):
                what.append("the two models' AUCs were compared by a paired DeLong test")
            if res.get("subgroups"):
                what.append("performance was reported by subgroup ("
                            + ", ".join(str(g.get("name")) for g in res["subgroups"]) + ")")
        paras.append("; ".join(what) + ".")
    else:
        paras.append(f"Segmentations of {_num(c.get('cases'))} cases from {_num(c.get('groups'))} patients were "
                     f"compared with the reference masks for {_num(c.get('labels'))} labels.")
        tol = s.get("tolerance_mm")
        paras.append(
            "Per case and label we computed the Dice similarity coefficient, intersection over union, the "
            "95th-percentile Hausdorff distance and the average symmetric surface distance (mm, using the voxel "
            f"spacing), the normalised surface Dice at a tolerance of {tol if tol is not None else NR} mm (Nikolov "
            "et al. 2021) and the volumes in ml. A label absent from both masks was "
            + ("scored as perfect agreement" if s.get("empty_both") == "perfect" else
               "excluded from the aggregates (counted)")
            + "; a label absent from one mask scored Dice 0. Aggregates are means with medians and interquartile "
            "ranges."
            + (" Volume agreement was assessed per label by Bland-Altman analysis (bias and 95% limits of agreement "
               "in ml; Bland and Altman 1986)." if res.get("volume_agreement") else ""))
    paras.append(_ci_sentence(res, s))
    paras.append(f"Analyses used {_versions(res)}.")
    return paras


def checklist_rows(res: dict) -> list[list[str]]:
    """``[item, status, where / why]`` rows: reporting items this report covers, partly covers, or cannot cover."""
    cls = res.get("kind") == "classification"
    heads = {r.get("key") for r in res.get("headline") or []}
    c = res.get("counts") or {}
    rows = []

    def add(item, ok, where, missing=""):
        rows.append([item, "covered" if ok is True else ("partly" if ok == "partly" else "not covered"),
                     where if ok else missing])

    add("Numbers of cases and patients analysed", bool(c.get("cases")), "Summary; methods paragraph",
        "counts missing from the results")
    add("Unit of analysis and clustering", True, "Summary (cases, patients/groups); cluster bootstrap")
    if cls:
        add("Reference class distribution", c.get("positive") is not None or bool(res.get("per_class")),
            "Summary", "not recorded in the results")
        add("Discrimination with confidence intervals", "auc" in heads or bool(res.get("per_class")),
            "Headline results (ROC AUC, DeLong)", "not estimable on these data")
        add("Calibration (slope, intercept, plot)", "partly" if "brier" in heads and "calibration_slope" not in heads
            else "calibration_slope" in heads, "Headline results; Calibration section; reliability diagram",
            "scores are not probabilities (or not computed)")
        add("Clinical utility (decision curve)", bool(res.get("decision_curve")), "Decision curve section",
            "needs binary probabilities")
        add("Operating point and how it was chosen", bool(res.get("operating_points")), "Operating points section",
            "not available")
        add("Subgroup performance", bool(res.get("subgroups")), "Subgroup sections",
            "no subgroups configured (classification.subgroups)")
        add("Comparison with another model or reader", bool(res.get("comparison")), "Model comparison section",
            "no comparison configured (classification.compare)")
    else:
        add("Overlap and boundary metrics per label", bool(res.get("aggregates")), "Summary tables", "not available")
        add("Volume agreement in physical units", bool(res.get("volume_agreement")),
            "Volume agreement (Bland-Altman) section", "not available in these results")
        add("Handling of empty masks", True, "Summary (conventions)")
        add("Failure cases shown", bool(res.get("worst_cases")), "Worst cases section", "not available")
    add("Uncertainty method stated", True, "Methods paragraph; CI method column; Confidence interval notes")
    add("Software versions", isinstance(res.get("provenance"), dict), "Provenance; methods paragraph",
        "provenance missing from the results")
    add("Reproducibility (configuration, seed, input hashes)", isinstance(res.get("provenance"), dict),
        "Provenance", "provenance missing from the results")
    add("Missing data handling", "partly", "cases without a reference label are refused; NaN metrics are excluded "
        "and counted")
    cannot = [
        ("External validation", "the report cannot tell whether the evaluation data come from another site or period"),
        ("Sample size justification", "state how the number of cases was chosen"),
        ("Eligibility criteria and recruitment dates", "describe the source of the cases and their selection"),
        ("Reference standard definition and readers", "describe how reference labels/masks were made, by whom, "
                                                      "and any blinding"),
        ("Model development and training data", "describe the training data, preprocessing and model selection; "
                                                "ensure no patient is in both training and evaluation"),
        ("Data flow (participant diagram)", "report exclusions between the source data and the analysed cases"),
        ("Fairness beyond the configured subgroups", "only the configured subgroups are analysed"),
        ("Code and data availability, ethics approval", "state these in the paper"),
    ]
    rows += [[item, "not covered", why] for item, why in cannot]
    return rows


def methods_sections(res: dict) -> list[dict]:
    """The "Methods (for a paper)" and "Reporting checklist" report sections."""
    return [
        {"title": "Methods (for a paper)",
         "paragraphs": ["Generated from what this evaluation computed; check it against your study before use."]
                       + methods_paragraphs(res),
         "tables": []},
        {"title": "Reporting checklist",
         "paragraphs": ["Reporting items in the spirit of TRIPOD+AI (prediction models) and CLAIM (medical imaging "
                        "AI), named in medeff's own words: what this report covers, and what the paper must add."],
         "tables": [{"caption": "Reporting items", "headers": ["Item", "Status", "Where in this report / what to add"],
                     "rows": checklist_rows(res)}]},
    ]
