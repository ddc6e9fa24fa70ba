"""``medeff protocols OUT_DIR``: collect the test predictions of several split protocols and models, evaluate them
side by side (:mod:`medeff.evaluation.protocols`) and write ``splits.csv``, ``predictions.csv``, ``results.json``
and ``report.html`` into OUT_DIR, atomically.

Inputs (``conf/protocols.yaml``): ``splits``, entries ``PROTOCOL:SPLIT_DIR`` naming the output folders of
``medeff split`` (``splits.csv``, ``split_leakage.json``); ``inputs``, entries ``PROTOCOL:MODEL:PREDICTIONS.csv``
(``medeff predict`` or ``medeff knn`` output: ``case_id`` and ``p_<class>`` per class). Predictions are joined with
the protocol's ``splits.csv`` on ``case_id`` for the file, the reference class and the group; every test case of the
protocol must be predicted.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from medeff.errors import ConfigError, InputError
from medeff.evaluation.protocols import HEADLINE, compare_protocols
from medeff.utils.atomic import check_writable, write_json_atomic, write_text_atomic
from medeff.utils.logging import get_logger

__all__ = ["protocols_config", "protocol_report", "OUTPUTS"]

log = get_logger(__name__)

OUTPUTS = ("splits.csv", "predictions.csv", "results.json", "report.html")


def protocols_config(overrides: Sequence[str] = ()) -> Any:
    """Compose ``conf/protocols.yaml`` with Hydra ``key=value`` overrides."""
    from medeff.config import compose

    return compose("protocols", overrides)


def _parse(entries: Sequence[str], parts: int, key: str) -> list[list[str]]:
    out = []
    for e in entries or []:
        bits = str(e).split(":", parts - 1)
        if len(bits) != parts or not all(bits):
            form = "PROTOCOL:SPLIT_DIR" if parts == 2 else "PROTOCOL:MODEL:PREDICTIONS.csv"
            raise ConfigError(f"{key} entry {str(e)!r} is not of the form {form}.",
                              hint=f"e.g. {key}=['{form}'] (quote the list on the command line).")
        out.append(bits)
    if not out:
        raise ConfigError(f"{key} is empty.", hint=f"give at least one {key} entry (see conf/protocols.yaml).")
    return out


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise InputError(f"{what} '{path}' does not exist.", hint="check the path (run the step that writes it).",
                         path=str(path))
    return pd.read_csv(path, dtype={"case_id": str, "group": str, "file": str})


def _thumb_png(path: Path, size: int = 96) -> str | None:
    """A small grey PNG of an image file as a data URI (None when it cannot be read)."""
    try:
        from medeff.io import read_image

        arr = np.asarray(read_image(path).array, float).T  # rows x columns for display
    except Exception:  # noqa: BLE001 - a missing example image must not stop the report
        return None
    step = max(1, max(arr.shape) // size)
    arr = arr[::step, ::step]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    plt.imsave(buf, arr, cmap="gray", format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _fmt(rec: dict | None, pct: bool = False) -> str:
    if not rec or rec.get("value") is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}%") if pct else (lambda v: f"{v:.3f}")
    if rec.get("ci_low") is None:
        return f(rec["value"])
    return f"{f(rec['value'])} ({f(rec['ci_low'])} to {f(rec['ci_high'])})"


def _delong_html(d: dict | None, names: Sequence[str]) -> list[str]:
    """The one-vs-rest AUC table (DeLong, and clustered by group) and the paired DeLong tests of a protocol."""
    if not d:
        return []
    e = html.escape
    keys = ["macro", *names]

    def ci(r: dict, pre: str = "") -> str:
        return "n/a" if r.get("auc") is None else (f"{r['auc']:.3f} ({r[pre + 'ci_low']:.3f} to "
                                                     f"{r[pre + 'ci_high']:.3f})")

    out = [f"<p>One-vs-rest AUC with DeLong 95% intervals ({d['n']} images, assumed independent); below each, the "
           f"interval with DeLong's components summed per near-duplicate group ({d['n_groups']} groups)</p>"
           "<table><tr><th>model</th>" + "".join(f"<th>{e(k)}</th>" for k in keys) + "</tr>"]
    for m, rows in d["models"].items():
        out.append(f"<tr><td>{e(m)}</td>" + "".join(f"<td>{ci(rows[k])}</td>" for k in keys) + "</tr>")
        if d.get("n_groups") is not None:
            out.append("<tr><td>(clustered)</td>" + "".join(
                f"<td>{'n/a' if rows[k].get('auc') is None else ci(rows[k], 'clustered_')}</td>" for k in keys)
                + "</tr>")
    out.append("</table><p>Paired DeLong tests (A minus B, same images)</p><table><tr><th>A</th><th>B</th><th>AUC</th>"
               "<th>difference (95% CI)</th><th>p</th><th>clustered 95% CI</th><th>clustered p</th></tr>")
    for r in d["paired"]:
        clu = (f"<td>{r['clustered_ci_low']:+.3f} to {r['clustered_ci_high']:+.3f}</td><td>{r['clustered_p']:.3g}</td>"
               if "clustered_p" in r else "<td></td><td></td>")
        out.append(f"<tr><td>{e(r['a'])}</td><td>{e(r['b'])}</td><td>{e(r['auc'])}</td><td>{r['difference']:+.3f} "
                   f"({r['ci_low']:+.3f} to {r['ci_high']:+.3f})</td><td>{r['p']:.3g}</td>{clu}</tr>")
    out.append("</table>")
    return out


def margin_in_words(model: str, diff: dict, versus: str, delong: dict | None = None) -> str:
    """One plain sentence on a model's paired margin over the reference (accuracy and, when present, macro AUC:
    ``delong["macro"]`` with ``difference`` as model minus reference, :func:`_macro_delong_vs`).

    The verdict follows the 95% interval of the accuracy difference: above the reference only when the whole
    interval is above zero, below it only when the whole interval is below, otherwise "cannot be told apart".
    """
    acc = diff["accuracy"]
    v, lo, hi = 100 * acc["value"], 100 * acc["ci_low"], 100 * acc["ci_high"]
    if lo > 0:
        verdict = f"does better than {versus}"
    elif hi < 0:
        verdict = f"does worse than {versus}"
    else:
        verdict = f"cannot be told apart from {versus} on this test set (the interval includes zero)"
    text = (f"{model} {verdict}: accuracy {v:+.1f} points (95% CI {lo:+.1f} to {hi:+.1f})")
    auc = (delong or {}).get("macro")
    if auc is not None:
        p = auc.get("clustered_p", auc.get("p"))
        text += (f", macro AUC {auc['difference'] + 0.0:+.3f} (paired DeLong p = {auc['p']:.2g}; with the "
                 f"near-duplicate groups as clusters p = {p:.2g})")
    return text + "."


def _macro_delong_vs(delong: dict | None, model: str, versus: str) -> dict | None:
    """The macro-AUC DeLong comparison of ``model`` against ``versus`` (difference: model minus versus), if held."""
    for r in (delong or {}).get("paired", []):
        if r.get("auc") != "macro" or {r.get("a"), r.get("b")} != {model, versus}:
            continue
        sign = 1.0 if r["a"] == model else -1.0
        return {"macro": dict(r, difference=sign * r["difference"])}
    return None


def _render(res: dict, root: Path | None) -> str:
    e = html.escape
    names = res["class_names"]
    out = ["<!doctype html><html><head><meta charset='utf-8'><title>", e(res["title"]), "</title><style>",
           "body{font-family:sans-serif;max-width:70em;margin:2em auto}table{border-collapse:collapse;margin:1em 0}",
           "td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}th{background:#eee}",
           "td:first-child{text-align:left}</style></head><body>", f"<h1>{e(res['title'])}</h1>"]
    pub = res.get("published") or {}
    if pub.get("accuracy") is not None:
        out.append(f"<p>Published: accuracy {100 * float(pub['accuracy']):.1f}% ({e(str(pub.get('label', '')))}).</p>")
    out.append("<p>95% intervals: cluster bootstrap over near-duplicate groups "
               f"({res['bootstrap']['n_resamples']} resamples). Decisions are the most probable class.</p>")
    g = res.get("grouping")
    if g:
        sizes = ", ".join(f"{n} of size {k}" for k, n in g.get("size_counts", {}).items())
        out.append(f"<p>Near-duplicate groups: {g['n_cases']} images in {g['n_groups']} groups (largest "
                   f"{g['largest']}, {g['n_singletons']} single; {g.get('mixed_class_groups', 'n/a')} mixing "
                   f"classes): {e(sizes)}.</p>")
    out.append("<h2>Headline</h2><table><tr><th>protocol</th><th>model</th><th>n (groups)</th><th>accuracy</th>"
               "<th>balanced accuracy</th><th>macro AUC</th><th>test images with a near-duplicate in training</th>"
               "</tr>")
    if pub.get("accuracy") is not None:
        out.append(f"<tr><td>published</td><td>{e(str(pub.get('model', 'published')))}</td><td></td>"
                   f"<td>{100 * float(pub['accuracy']):.1f}% (reported)</td><td></td><td></td><td></td></tr>")
    for p, part in res["protocols"].items():
        leak = (part.get("leakage") or {}).get("leakage") or {}
        lk = f"{leak.get('n_leaked')} of {leak.get('n_test')}" if leak else "n/a"
        for m, mm in part["models"].items():
            met = mm["metrics"]
            out.append(f"<tr><td>{e(p)}</td><td>{e(m)}</td><td>{mm['n']} ({mm['n_groups']})</td>"
                       f"<td>{_fmt(met['accuracy'], True)}</td><td>{_fmt(met['balanced_accuracy'], True)}</td>"
                       f"<td>{_fmt(met['macro_auc'])}</td><td>{lk}</td></tr>")
    out.append("</table>")
    for p, part in res["protocols"].items():
        out.append(f"<h2>Protocol {e(p)}</h2>")
        out.append("<table><tr><th>model</th>" + "".join(f"<th>sensitivity {e(c)}</th><th>specificity {e(c)}</th>"
                                                         for c in names) + "</tr>")
        for m, mm in part["models"].items():
            met = mm["metrics"]
            out.append(f"<tr><td>{e(m)}</td>" + "".join(
                f"<td>{_fmt(met[f'sensitivity_{c}'], True)}</td><td>{_fmt(met[f'specificity_{c}'], True)}</td>"
                for c in names) + "</tr>")
        out.append("</table>")
        for m, mm in part["models"].items():
            out.append(f"<p>Confusion matrix, {e(m)} (rows: reference, columns: predicted)</p><table><tr><th></th>"
                       + "".join(f"<th>{e(c)}</th>" for c in names) + "</tr>")
            for c, row in zip(names, mm["confusion"]):
                out.append(f"<tr><td>{e(c)}</td>" + "".join(f"<td>{v}</td>" for v in row) + "</tr>")
            out.append("</table>")
        if part.get("paired"):
            out.append("<p>Paired differences on the same test images (model minus reference)</p><table><tr>"
                       "<th>model</th><th>versus</th>" + "".join(f"<th>{h}</th>" for h in HEADLINE) + "</tr>")
            for m, d in part["paired"].items():
                out.append(f"<tr><td>{e(m)}</td><td>{e(d['versus'])}</td>"
                           + "".join(f"<td>{_fmt(d[h])}</td>" for h in HEADLINE) + "</tr>")
            out.append("</table><p><b>In plain words.</b> " + " ".join(
                e(margin_in_words(m, d, d["versus"], _macro_delong_vs(part.get("delong"), m, d["versus"])))
                for m, d in part["paired"].items()) + "</p>")
        out.extend(_delong_html(part.get("delong"), names))
        leak = (part.get("leakage") or {}).get("leakage") or {}
        if leak:
            out.append(f"<p>Leakage: {leak['n_leaked']} of {leak['n_test']} test images "
                       f"({100 * leak['fraction_leaked']:.0f}%) have an identical ({leak['n_identical']}) or "
                       f"near-identical training image (thumbnail correlation &ge; {leak['threshold']}).</p>")
            if leak.get("examples"):
                out.append("<table><tr><th>test image</th><th>training image</th><th>r</th></tr>")
                for ex in leak["examples"]:
                    cells = []
                    for f in (ex["test"], ex["train"]):
                        uri = _thumb_png(root / f) if root is not None else None
                        img = f"<br><img src='{uri}' alt=''>" if uri else ""
                        cells.append(f"<td>{e(f)}{img}</td>")
                    out.append("<tr>" + "".join(cells) + f"<td>{ex['r']}</td></tr>")
                out.append("</table>")
    out.append("</body></html>\n")
    return "".join(out)


def protocol_report(out_dir: str | os.PathLike, cfg: Any = None) -> dict[str, Any]:
    """Collect, evaluate and report (see the module docstring); returns the results written to results.json.

    Raises:
        ConfigError: malformed ``splits``/``inputs`` entries, or an input naming an unknown protocol.
        InputError: a missing file, a prediction without its test case, or a test case without prediction.
        OutputExistsError: an output exists and ``overwrite`` is false.
    """
    from omegaconf import OmegaConf

    cfg = protocols_config() if cfg is None else cfg
    out = Path(out_dir)
    for n in OUTPUTS:
        check_writable(out / n, overwrite=bool(cfg.overwrite))
    splits = {p: Path(d) for p, d in _parse(cfg.splits, 2, "splits")}
    split_tables, leakage = {}, {}
    for p, d in splits.items():
        split_tables[p] = _read_csv(d / "splits.csv", "Split table")
        lpath = d / "split_leakage.json"
        leakage[p] = json.loads(lpath.read_text(encoding="utf-8")) if lpath.is_file() else {}
    first = next(iter(split_tables.values()))
    class_names = [str(c) for c in (cfg.class_names or [])] or [
        str(n) for _, n in sorted(set(zip(first["label"].astype(int), first["class_name"].astype(str))))]
    pcols = [f"p_{c}" for c in class_names]
    rows = []
    for p, model, path in _parse(cfg.inputs, 3, "inputs"):
        if p not in split_tables:
            raise ConfigError(f"inputs entry for protocol {p!r} has no splits entry (protocols: {sorted(splits)}).",
                              hint="add PROTOCOL:SPLIT_DIR to splits, or fix the protocol name.")
        pred = _read_csv(Path(path), "Predictions")
        missing = [c for c in ["case_id", *pcols] if c not in pred.columns]
        if missing:
            raise InputError(f"Predictions '{path}' lack column(s) {missing} (classes: {class_names}).",
                             hint="use the predictions.csv of medeff predict or medeff knn for this index.",
                             path=str(path))
        test = split_tables[p][split_tables[p]["split"] == "test"][["case_id", "file", "label", "group"]]
        joined = test.merge(pred[["case_id", *pcols]], on="case_id", how="left", indicator=True)
        unpredicted = joined.loc[joined["_merge"] != "both", "file"].tolist()
        extra = sorted(set(pred["case_id"]) - set(test["case_id"]))
        if unpredicted or extra:
            raise InputError(f"Predictions '{path}' ({p}/{model}) do not match the protocol's test set: "
                             f"{len(unpredicted)} test image(s) without prediction (e.g. {unpredicted[:3]}), "
                             f"{len(extra)} predicted case(s) outside the test set (e.g. {extra[:3]}).",
                             hint="predict exactly the test.json written by medeff split for this protocol.",
                             path=str(path))
        part = joined.drop(columns="_merge").rename(columns={f"p_{c}": f"prob_{c}" for c in class_names})
        part.insert(1, "protocol", p)
        part.insert(2, "model", model)
        rows.append(part)
    table = pd.concat(rows, ignore_index=True)
    bs = cfg.bootstrap
    log.info("Evaluating %d protocol(s) x model(s) with %d bootstrap resamples.", len(rows), int(bs.n_resamples))
    res = compare_protocols(table, class_names, reference_model=cfg.get("reference_model"),
                            n_resamples=int(bs.n_resamples), confidence=float(bs.confidence), seed=int(bs.seed))
    for p in res["protocols"]:
        res["protocols"][p]["leakage"] = leakage.get(p, {})
        res["protocols"][p]["split_dir"] = splits[p].name
    if cfg.get("index"):
        ipath = Path(str(cfg.index))
        if not ipath.is_file():
            raise InputError(f"Index '{ipath}' does not exist.", hint="give the index the splits were drawn from, or "
                             "index=null.", path=str(ipath))
        res["grouping"] = (json.loads(ipath.read_text(encoding="utf-8")).get("leakage") or {}).get("groups")
    res["title"] = str(cfg.title)
    res["published"] = OmegaConf.to_container(cfg.published) if cfg.get("published") else None
    res["bootstrap"] = {"n_resamples": int(bs.n_resamples), "confidence": float(bs.confidence), "seed": int(bs.seed)}
    out.mkdir(parents=True, exist_ok=True)
    allsplits = pd.concat([t.assign(protocol=p)[["file", "protocol", "split", "case_id", "label", "class_name",
                                                 "group"]] for p, t in split_tables.items()], ignore_index=True)
    write_text_atomic(out / "splits.csv", allsplits.to_csv(index=False), overwrite=bool(cfg.overwrite))
    cols = ["file", "protocol", "model", "label", *[f"prob_{c}" for c in class_names]]
    write_text_atomic(out / "predictions.csv", table[cols].to_csv(index=False, float_format="%.6f"),
                      overwrite=bool(cfg.overwrite))
    write_json_atomic(out / "results.json", res, overwrite=bool(cfg.overwrite))
    root = Path(str(cfg.image_root)) if cfg.get("image_root") else None
    write_text_atomic(out / "report.html", _render(res, root), overwrite=bool(cfg.overwrite))
    return res
