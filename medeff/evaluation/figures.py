"""Report figures (matplotlib, Agg backend): ROC with CI band, PR, reliability, confusion matrix, score
distributions, Dice box plots. Each function returns a Figure; the caller renders it to PNG and/or PDF."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg", force=False)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = ["classification_figures", "segmentation_figures"]


def _fig(w: float = 5.5, h: float = 4.5) -> tuple[Figure, plt.Axes]:
    fig = Figure(figsize=(w, h), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    return fig, ax


def classification_figures(res: dict) -> list[tuple[str, Figure]]:
    """(caption, figure) pairs for a classification result; figures whose data the result lacks (``curves``, or
    ``per_case`` in a summary.json) are left out."""
    if res.get("multiclass"):
        return _multiclass(res)
    if res.get("triage_only"):
        return _triage(res)
    figs = []
    if res.get("curves"):
        figs += _roc_pr(res)
    if res.get("calibration"):
        figs.append(_reliability(res))
    if res.get("decision_curve"):
        figs.append(_decision_curve(res))
    if res.get("operating_points"):
        op = res["operating_points"][0]
        c = op["confusion"]
        figs.append((f"Confusion matrix at the {op['label'].lower()}",
                     _confusion(np.array([[c["tn"], c["fp"]], [c["fn"], c["tp"]]]), ["negative", "positive"])))
    if res.get("per_case") and res.get("operating_points"):
        figs.append(_score_histograms(res, res["operating_points"][0]))
    return figs


def _roc_pr(res: dict) -> list[tuple[str, Figure]]:
    figs = []
    roc = res["curves"]["roc"]
    auc = res["headline"][0]
    fig, ax = _fig()
    ax.fill_between(roc["band_fpr"], roc["band_low"], roc["band_high"], color="tab:blue", alpha=0.2,
                    label="95% CI band (cluster bootstrap)")
    ax.plot(roc["fpr"], roc["tpr"], color="tab:blue", lw=2, label=f"{res.get('model_name', 'Model')} "
            f"(AUC {auc['value']:.2f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    for op in res["operating_points"]:
        m = {r["key"]: r["value"] for r in op["metrics"]}
        if m["sensitivity"] is not None and m["specificity"] is not None:
            ax.plot(1 - m["specificity"], m["sensitivity"], "o", ms=5, label=op["label"])
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="Sensitivity (true-positive rate)",
           xlim=(0, 1), ylim=(0, 1.01), title="ROC curve")
    ax.legend(loc="lower right", fontsize=7)
    figs.append(("ROC curve with 95% confidence band", fig))

    pr = res["curves"]["pr"]
    fig, ax = _fig()
    ax.step(pr["recall"], pr["precision"], where="post", color="tab:orange", lw=2)
    ax.axhline(pr["prevalence"], ls="--", color="grey", lw=1, label=f"prevalence {pr['prevalence']:.2f}")
    ax.set(xlabel="Sensitivity (recall)", ylabel="Positive predictive value (precision)", xlim=(0, 1),
           ylim=(0, 1.01), title="Precision-recall curve")
    ax.legend(loc="lower left", fontsize=8)
    figs.append(("Precision-recall curve", fig))
    return figs


def _reliability(res: dict) -> tuple[str, Figure]:
    tab = [r for r in res["calibration"]["table"] if r["n"]]
    fig, ax = _fig()
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.plot([r["mean_predicted"] for r in tab], [r["observed_fraction"] for r in tab], "o-", color="tab:green",
            label="observed")
    for r in tab:
        ax.annotate(f"n={r['n']}", (r["mean_predicted"], r["observed_fraction"]), fontsize=6,
                    textcoords="offset points", xytext=(3, -8))
    ax.set(xlabel="Mean predicted probability", ylabel="Observed fraction positive", xlim=(0, 1), ylim=(0, 1),
           title=f"Reliability diagram ({res['calibration']['bins']} {res['calibration']['binning']} bins)")
    ax.legend(loc="upper left", fontsize=8)
    return "Reliability diagram (calibration)", fig


def _decision_curve(res: dict) -> tuple[str, Figure]:
    pts = res["decision_curve"]
    t = np.array([p["threshold"] for p in pts], float)

    def col(key):
        return np.array([np.nan if p.get(key) is None else p[key] for p in pts], float)

    nb, lo, hi, all_ = col("net_benefit"), col("net_benefit_ci_low"), col("net_benefit_ci_high"), \
        col("net_benefit_treat_all")
    fig, ax = _fig()
    ax.fill_between(t, lo, hi, color="tab:blue", alpha=0.2, label="95% CI (cluster bootstrap)")
    ax.plot(t, nb, color="tab:blue", lw=2, label=res.get("model_name", "Model"))
    ax.plot(t, all_, color="tab:red", lw=1, ls="--", label="treat all")
    ax.axhline(0.0, color="k", lw=1, ls=":", label="treat none")
    top = float(np.nanmax(np.r_[nb, hi, all_, 0.0]))
    ax.set(xlabel="Threshold probability", ylabel="Net benefit", title="Decision curve",
           xlim=(float(t.min()), float(t.max())), ylim=(-0.05 * max(top, 0.01), 1.1 * max(top, 0.01)))
    ax.legend(loc="upper right", fontsize=8)
    return "Decision curve: net benefit of the model, of treating all and of treating none", fig


def _score_histograms(res: dict, op: dict) -> tuple[str, Figure]:
    scores = np.array([r["score"] for r in res["per_case"]], float)
    ref = np.array([r["reference"] for r in res["per_case"]], int)
    fig, ax = _fig()
    bins = np.linspace(np.nanmin(scores), np.nanmax(scores), 31)
    ax.hist(scores[ref == 0], bins=bins, alpha=0.6, label=f"reference negative (n={int((ref == 0).sum())})")
    ax.hist(scores[ref == 1], bins=bins, alpha=0.6, label=f"reference positive (n={int((ref == 1).sum())})")
    ax.axvline(op["threshold"], color="k", ls="--", lw=1, label=f"threshold {op['threshold']:.3g}")
    ax.set(xlabel="Score", ylabel="Number of cases", title="Score distributions per class")
    ax.legend(fontsize=8)
    return "Score distributions per reference class", fig


def _multiclass(res: dict) -> list[tuple[str, Figure]]:
    from sklearn.metrics import roc_curve

    names = res["class_names"]
    confusion = ("Confusion matrix (rows: reference, columns: highest-scoring class)",
                 _confusion(np.asarray(res["confusion_matrix"]), names))
    if not res.get("per_case"):
        return [confusion]
    ref = np.array([r["reference"] for r in res["per_case"]])
    figs = []
    fig, ax = _fig()
    for row, name in zip(res["per_class"], names):
        y = ref == name
        if 0 < y.sum() < len(y):
            fpr, tpr, _ = roc_curve(y, [r[f"score_{name}"] for r in res["per_case"]])
            ax.plot(fpr, tpr, lw=2, label=f"{name} vs rest (AUC {row['auc']['value']:.2f}, n={int(y.sum())})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set(xlabel="1 - specificity (false-positive rate)", ylabel="Sensitivity (true-positive rate)", xlim=(0, 1),
           ylim=(0, 1.01), title="ROC curves, one class vs the rest")
    ax.legend(loc="lower right", fontsize=7)
    figs.append(("ROC curve of each class against the rest", fig))
    figs.append(confusion)
    fig = Figure(figsize=(4.0 * len(names), 3.6), dpi=100)
    for i, name in enumerate(names):
        ax = fig.add_subplot(1, len(names), i + 1)
        sc = np.array([r[f"score_{name}"] for r in res["per_case"]], float)
        bins = np.linspace(np.nanmin(sc), np.nanmax(sc), 21)
        ax.hist(sc[ref != name], bins=bins, alpha=0.6, label=f"other classes (n={int((ref != name).sum())})")
        ax.hist(sc[ref == name], bins=bins, alpha=0.6, label=f"{name} (n={int((ref == name).sum())})")
        ax.set(xlabel=f"Score of {name}", ylabel="Number of cases" if i == 0 else None)
        ax.legend(fontsize=7)
    fig.tight_layout()
    figs.append(("Score distributions: each class's score for cases of that class and of the others", fig))
    return figs


def _confusion(cm: np.ndarray, names) -> Figure:
    fig, ax = _fig(4.5 + 0.3 * len(names), 4.0 + 0.3 * len(names))
    ax.imshow(cm, cmap="Blues")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(len(names)), [f"predicted\n{n}" for n in names], fontsize=8)
    ax.set_yticks(range(len(names)), [f"reference\n{n}" for n in names], fontsize=8)
    ax.set_title("Confusion matrix (number of cases)")
    fig.tight_layout()
    return fig


def segmentation_figures(res: dict) -> list[tuple[str, Figure]]:
    """(caption, figure) pairs for a segmentation result (none without per-case rows, e.g. from a summary.json)."""
    figs = []
    if not res.get("per_case") or not res.get("labels"):
        return figs
    names = [lab["name"] for lab in res["labels"]]
    for key, title, unit in (("dice", "Dice similarity coefficient per label", ""),
                             ("hd95", "95th-percentile Hausdorff distance per label", " (mm)")):
        data = []
        for lab in res["labels"]:
            vals = np.array([r[key] for r in res["per_case"] if r["label"] == lab["value"] and r[key] is not None],
                            float)
            data.append(vals[np.isfinite(vals)])
        fig, ax = _fig(max(5.5, 0.8 * len(names) + 2), 4.5)
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(names) + 1), [f"{n}\n(n={len(d)})" for n, d in zip(names, data)], fontsize=7,
                      rotation=30 if len(names) > 6 else 0)
        ax.set(ylabel=title.split(" per ")[0] + unit, title=title)
        if key == "dice":
            ax.set_ylim(-0.02, 1.02)
        fig.tight_layout()
        figs.append((f"{title} (boxes: quartiles; triangles: means; NaN values excluded)", fig))
    figs += _bland_altman(res)
    figs += _overlays(res)
    return figs


def _overlays(res: dict) -> list[tuple[str, Figure]]:
    """The stored overlay images (worst and median case) as figures."""
    import base64
    import io

    import matplotlib.image as mpimg

    figs = []
    for ov in res.get("overlays") or []:
        img = mpimg.imread(io.BytesIO(base64.b64decode(ov["png"])), format="png")
        h, w = img.shape[:2]
        fig = Figure(figsize=(w / 90, h / 90), dpi=90)
        ax = fig.add_axes((0, 0, 1, 1))
        ax.imshow(img)
        ax.axis("off")
        figs.append((f"{str(ov['which']).capitalize()} case by mean Dice ({ov['case']}, {ov['mean_dice']:.3f}): "
                     f"slices {', '.join(str(k) for k in ov['slices'])} with reference (green) and prediction (red) "
                     "contours", fig))
    return figs


def _bland_altman(res: dict, per_figure: int = 6) -> list[tuple[str, Figure]]:
    """Bland-Altman plots of predicted vs reference volume (ml), up to ``per_figure`` labels per figure."""
    agreement = {va["label"]: va for va in res.get("volume_agreement") or [] if va.get("n")}
    labs = [lab for lab in res["labels"] if lab["value"] in agreement]
    figs = []
    for start in range(0, len(labs), per_figure):
        chunk = labs[start:start + per_figure]
        cols = min(3, len(chunk))
        rows = -(-len(chunk) // cols)
        fig = Figure(figsize=(4.2 * cols, 3.6 * rows), dpi=100)
        for i, lab in enumerate(chunk):
            ax = fig.add_subplot(rows, cols, i + 1)
            pts = [(r["volume_pred_ml"], r["volume_ref_ml"]) for r in res["per_case"] if r["label"] == lab["value"]
                   and r["volume_pred_ml"] is not None and r["volume_ref_ml"] is not None
                   and (r["volume_pred_ml"] > 0 or r["volume_ref_ml"] > 0)]
            pv, rv = np.array(pts, float).reshape(-1, 2).T
            m = {x["key"]: x["value"] for x in agreement[lab["value"]]["metrics"]}
            ax.scatter((pv + rv) / 2, pv - rv, s=12, alpha=0.7)
            for key, style, name in (("bias_ml", "-", "bias"), ("loa_low_ml", "--", "-1.96 SD"),
                                     ("loa_high_ml", "--", "+1.96 SD")):
                if m.get(key) is not None:
                    ax.axhline(m[key], color="tab:red" if key == "bias_ml" else "grey", ls=style, lw=1,
                               label=f"{name} {m[key]:.2f} ml")
            ax.axhline(0.0, color="k", lw=0.5)
            ax.set(xlabel="Mean of predicted and reference volume (ml)",
                   ylabel="Predicted - reference (ml)" if i % cols == 0 else None,
                   title=f"{lab['name']} (n={len(pv)})")
            ax.legend(fontsize=6, loc="best")
        fig.tight_layout()
        names = ", ".join(lab["name"] for lab in chunk)
        figs.append((f"Bland-Altman plot of volumes (ml): {names}", fig))
    return figs


def _triage(res: dict) -> list[tuple[str, Figure]]:
    """Scores of every case against the threshold (triage-only results: no ROC without two reference classes)."""
    if not res.get("per_case"):
        return []
    scores = np.array([r["score"] for r in res["per_case"]], float)
    thr = res["operating_points"][0]["threshold"]
    fig, ax = _fig()
    order = np.argsort(scores)
    colours = np.where(scores[order] >= thr, "tab:red", "tab:blue")
    ax.scatter(scores[order], np.arange(len(scores)), c=colours, s=18)
    ax.axvline(thr, color="k", ls="--", lw=1, label=f"threshold {thr:.3g}")
    ax.set(xlabel="Score", ylabel="Case (sorted by score)", title="Scores and triage threshold",
           xlim=(min(0.0, float(np.nanmin(scores))), max(1.0, float(np.nanmax(scores)))))
    ax.legend(fontsize=8)
    return [("Scores per case with the triage threshold (red: flagged)", fig)]
