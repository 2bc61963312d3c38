"""Self-contained HTML reports: images inline as data URIs, no network needed to open them."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import cv2
import numpy as np

from camcli.data import read_image
from camcli.errors import CamcliError
from camcli.files import atomic_write, printable

THUMBNAIL_SIDE = 256

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>camcli overlay report</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
header{margin-bottom:1rem} .controls{margin:.5rem 0 1rem} select{margin-right:1rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(540px,1fr));gap:1rem}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem}
.pics{display:flex;flex-wrap:wrap;gap:.5rem} .pics img{max-width:256px;max-height:256px;min-width:0;border-radius:3px}
.path{font-size:.8rem;color:#555;word-break:break-all;margin:.3rem 0}
.pred{display:flex;align-items:center;font-size:.85rem;margin:.1rem 0}
.pred span.l{width:11rem;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.bar{height:.6rem;background:#3b7dd8;border-radius:2px;margin:0 .4rem}
.box{font-size:.8rem;color:#555} .err{color:#b00}
</style></head>
<body data-images="__COUNT__">
<header><h1>camcli overlay report</h1><p>__SUMMARY__</p></header>
<div class="controls">
<label>Predicted class <select id="label"><option value="">all</option>__OPTIONS__</select></label>
<label>Sort <select id="sort"><option value="input">input order</option>
<option value="desc">confidence, high first</option><option value="asc">confidence, low first</option></select></label>
</div>
<div class="grid" id="grid">
__CARDS__
</div>
<script>
(function () {
  var grid = document.getElementById("grid");
  var cards = Array.prototype.slice.call(grid.children);
  function update() {
    var label = document.getElementById("label").value;
    var sort = document.getElementById("sort").value;
    var shown = cards.slice();
    if (sort !== "input") {
      shown.sort(function (a, b) {
        var d = parseFloat(a.dataset.prob) - parseFloat(b.dataset.prob);
        return sort === "asc" ? d : -d;
      });
    }
    shown.forEach(function (card) {
      card.style.display = !label || card.dataset.label === label ? "" : "none";
      grid.appendChild(card);
    });
  }
  document.getElementById("label").addEventListener("change", update);
  document.getElementById("sort").addEventListener("change", update);
  window.addEventListener("load", function () {
    var images = document.querySelectorAll("img");
    var loaded = 0;
    images.forEach(function (img) { if (img.complete && img.naturalWidth > 0) { loaded += 1; } });
    document.body.dataset.loaded = String(loaded);
  });
})();
</script>
</body></html>
"""


def _esc(text: object) -> str:
    """Outside text (paths, labels) for HTML: printable (see files.printable), then escaped."""
    return html.escape(printable(text))


def thumbnail(image_rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> np.ndarray:
    """The image with its longer side at most ``side`` pixels (area-averaged; as it is when smaller)."""
    h, w = image_rgb.shape[:2]
    scale = min(1.0, side / max(h, w))
    if scale == 1.0:
        return image_rgb
    return cv2.resize(image_rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)


def thumbnail_uri(image_rgb: np.ndarray, side: int = THUMBNAIL_SIDE) -> str:
    """A JPEG data URI of the image, its longer side at most ``side`` pixels."""
    image_rgb = thumbnail(image_rgb, side)
    ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise CamcliError("cannot encode a report thumbnail")
    return "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")


def write_overlay_report(path: Path, rows: list[dict], total: int, before_rename=None) -> None:
    """Write the overlay report for ``rows`` (overlay result rows; ``total`` rows in the job).

    Per image: the input and overlay thumbnails (each mapped class's, with ``--maps K``), the
    top-k predictions with probabilities, and the box. The page filters by predicted class and sorts by confidence.
    Written atomically; ``before_rename`` records it (an :class:`camcli.files.OutputGuard`'s
    recorder: the command checks the path like every other output, before any work).
    """
    cards, labels = [], set()
    for row in rows:
        name = _esc(row["path"])
        if "error" in row:
            cards.append(f'<div class="card" data-label="" data-prob="0"><div class="path">{name}</div>'
                         f'<div class="err">failed: {_esc(row["error"])}</div></div>')
            continue
        top = row["predictions"][0]
        labels.add(top["label"])
        pictures = [thumbnail_uri(read_image(Path(row["path"])))]
        overlays = [p for p in row.get("outputs", []) if not p.endswith(".npy")]  # one per mapped class (--maps K)
        pictures += [thumbnail_uri(read_image(Path(p))) for p in overlays]
        images = "".join(f'<img src="{uri}" alt="{"input" if i == 0 else "overlay"}">' for i, uri in enumerate(pictures))
        preds = "".join(
            f'<div class="pred"><span class="l">{_esc(p["label"])}</span>'
            f'<span class="bar" style="width:{max(1, round(p["prob"] * 150))}px"></span>{p["prob"]:.1%}</div>'
            for p in row["predictions"]
        )
        box = row.get("box")
        box_text = f"box {box} for {_esc(row.get('box_label', ''))} at threshold {row.get('box_threshold')}" if box else "no box"
        box_text = f"{_esc(row.get('method', 'cam'))} map, {_esc(row.get('normalize', 'minmax'))} scale; {box_text}"
        if row.get("precision") == "int8":
            box_text += "; INT8 backbone"
        elif row.get("precision") == "fp32":  # only an INT8 run says fp32: this image was a near tie, run again
            box_text += "; fp32 backbone (a near tie under INT8)"
        cards.append(
            f'<div class="card" data-label="{_esc(top["label"])}" data-prob="{top["prob"]:.6f}">'
            f'<div class="pics">{images}</div><div class="path">{name}</div>{preds}<div class="box">{box_text}</div></div>'
        )
    left_out = total - len(rows)
    summary = f"{len(rows)} of {total} images" + (f"; {left_out} left out (--report-limit)" if left_out else "")
    if any("precision" in row for row in rows):
        near = sum(row.get("precision") == "fp32" for row in rows)
        summary += f"; INT8 backbone (checked against fp32), {near} near tie{'s' * (near != 1)} run again in fp32"
    options = "".join(f'<option value="{_esc(label)}">{_esc(label)}</option>' for label in sorted(labels))
    page = (_PAGE.replace("__COUNT__", str(sum(c.count("<img") for c in cards)))
            .replace("__SUMMARY__", _esc(summary)).replace("__OPTIONS__", options)
            .replace("__CARDS__", "\n".join(cards)))
    atomic_write(Path(path), page, before_rename)




def svg_chart(series: dict[str, list[float]], title: str, y_label: str, width: int = 460, height: int = 260) -> str:
    """An inline SVG line chart of per-epoch values (x = epoch 1..n)."""
    n = max(len(v) for v in series.values())
    top = max(max(v) for v in series.values()) or 1.0
    top = 1.0 if top <= 1.0 else top * 1.05
    left, right, upper, lower = 58, 12, 30, 36
    pw, ph = width - left - right, height - upper - lower

    def x(i: int) -> float:
        return left + (pw * i / (n - 1) if n > 1 else pw / 2)

    def y(v: float) -> float:
        return upper + ph * (1 - v / top)

    colors = ["#3b7dd8", "#d8493b", "#2e9e44", "#8d5fd3"]
    # the title above the plot on the left, the legend above it on the right, the y label along
    # the axis: nothing overlaps, and no curve runs under the legend
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" aria-label="{_esc(title)}">',
             f'<text x="{left}" y="18" font-size="13" font-weight="bold">{_esc(title)}</text>',
             f'<rect x="{left}" y="{upper}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>']
    for k in range(5):
        value = top * k / 4
        parts.append(f'<text x="{left - 6}" y="{y(value) + 4:.1f}" font-size="10" text-anchor="end">{value:.2f}</text>')
        parts.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(value):.1f}" y2="{y(value):.1f}" stroke="#eee"/>')
    for i in sorted({0, n - 1, (n - 1) // 2}):
        parts.append(f'<text x="{x(i):.1f}" y="{upper + ph + 14}" font-size="10" text-anchor="middle">{i + 1}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 6}" font-size="11" text-anchor="middle">epoch</text>')
    parts.append(f'<text transform="translate(14 {upper + ph / 2:.1f}) rotate(-90)" font-size="11" text-anchor="middle">'
                 f'{_esc(y_label)}</text>')
    for j, values in enumerate(series.values()):  # the first series widest: where a later one covers it, it shows at the edges
        points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colors[j % len(colors)]}" stroke-width="{4 if j == 0 else 2}"/>')
    entry_x = left + pw
    for j, label in reversed(list(enumerate(series))):
        color = colors[j % len(colors)]
        text_x = entry_x - 8 * len(str(label)) - 4
        parts.append(f'<line x1="{text_x - 22}" x2="{text_x - 4}" y1="14" y2="14" stroke="{color}" stroke-width="{4 if j == 0 else 2}"/>')
        parts.append(f'<text x="{entry_x}" y="18" font-size="11" text-anchor="end">{_esc(label)}</text>')
        entry_x = text_x - 30
    parts.append("</svg>")
    return "".join(parts)


def write_train_report(
    path: Path, history: list[dict], class_names: list[str], confusion: list[list[int]],
    examples: list[tuple[np.ndarray, str, str, float]], summary: str, before_rename=None,
) -> None:
    """RUN_DIR/report.html: loss and accuracy curves, the validation confusion matrix, and
    validation overlays, correctly classified beside misclassified.

    Args:
        examples: (overlay RGB, true label, predicted label, predicted probability).
    """
    curves = svg_chart({"train": [r["train_loss"] for r in history], "val": [r["val_loss"] for r in history]}, "Loss", "loss")
    curves += svg_chart({"train": [r["train_acc"] for r in history], "val": [r["val_acc"] for r in history]}, "Accuracy", "accuracy")
    head = "".join(f"<th>{_esc(c)}</th>" for c in class_names)
    body = "".join(
        f"<tr><th>{_esc(c)}</th>" + "".join(
            f'<td class="{"diag" if i == j else ("off" if v else "")}">{v}</td>' for j, v in enumerate(row)) + "</tr>"
        for i, (c, row) in enumerate(zip(class_names, confusion))
    )

    def cards(correct: bool) -> str:
        chosen = [e for e in examples if (e[1] == e[2]) == correct]
        if not chosen:
            return "<p>none</p>"
        return "".join(
            f'<figure><img src="{thumbnail_uri(img, 200)}" alt="overlay"><figcaption>true {_esc(t)}<br>'
            f'predicted {_esc(p)} {prob:.1%}</figcaption></figure>' for img, t, p, prob in chosen
        )

    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>camcli training report</title>
<style>body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}} .charts svg{{margin-right:1rem}}
table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}}
td.diag{{background:#dcefdc}} td.off{{background:#f6d5d5}} .cols{{display:flex;gap:2rem}}
figure{{display:inline-block;margin:.3rem;font-size:.8rem}} figure img{{display:block;max-width:200px}}</style>
</head><body data-images="{sum(1 for _ in examples)}">
<h1>camcli training report</h1><p>{_esc(summary)}</p>
<h2>Curves</h2><div class="charts">{curves}</div>
<h2>Validation confusion matrix (rows: true class)</h2>
<table><tr><th>true \\ predicted</th>{head}</tr>{body}</table>
<h2>Validation overlays</h2>
<div class="cols"><div><h3>Correct</h3>{cards(True)}</div><div><h3>Misclassified</h3>{cards(False)}</div></div>
<script>window.addEventListener("load",function(){{var n=0;
document.querySelectorAll("img").forEach(function(i){{if(i.complete&&i.naturalWidth>0){{n+=1;}}}});
document.body.dataset.loaded=String(n);}});</script>
</body></html>
"""
    atomic_write(Path(path), page, before_rename)


_COMPARE_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>camcli compare report</title>
<style>
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#222;background:#fafafa}
table.s{border-collapse:collapse;margin:.5rem 0 1rem} table.s td{padding:.15rem .8rem;border-bottom:1px solid #ddd}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6rem;margin-bottom:1rem}
.pics{display:flex;flex-wrap:wrap;gap:.5rem} figure{margin:0} figcaption{font-size:.8rem;color:#555}
.pics img{max-width:256px;max-height:256px;border-radius:3px}
.path{font-size:.8rem;color:#555;word-break:break-all;margin:.3rem 0} .num{font-size:.85rem}
</style></head>
<body data-images="__COUNT__">
<header><h1>camcli compare report</h1><p>__WHO__</p></header>
<table class="s">__SUMMARY__</table>
<h2>The images whose maps changed most</h2>
<p>__SHOWN__</p>
__CARDS__
</body></html>
"""


def write_compare_report(path: Path, changed: list, summary: dict, settings: dict, before_rename=None) -> None:
    """The compare report: the summary, and per most-changed image (:class:`camcli.comparison.Changed`,
    most changed first) the input and both models' overlays of the base's top-1 class, side by side.
    Self-contained (data URIs); written atomically, ``before_rename`` recording it."""
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{v:.4g}</td></tr>" if isinstance(v, float) else
                   f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in summary.items() if k != "requirements")
    rows += "".join(f"<tr><td>{'PASS' if r['passed'] else 'FAIL'}</td><td>{_esc(r['metric'])} {_esc(r['op'])} {r['value']:.10g} "
                    f"(got {'nan' if r['got'] is None else format(r['got'], '.10g')})</td></tr>"
                    for r in summary.get("requirements", []))
    cards = []
    for item in changed:
        row = item.row
        figures = "".join(f'<figure><img src="{thumbnail_uri(p)}" alt="{alt}"><figcaption>{alt}</figcaption></figure>'
                          for p, alt in zip(item.pictures, ("input", "base", "candidate")))
        cards.append(
            f'<div class="card"><div class="pics">{figures}</div><div class="path">{_esc(row["path"])}</div>'
            f'<div class="num">base: {_esc(row["base"]["label"])} {row["base"]["prob"]:.1%}; candidate: '
            f'{_esc(row["candidate"]["label"])} {row["candidate"]["prob"]:.1%} (the base\'s class: '
            f'{row["candidate_prob_of_base_top1"]:.1%}); map Spearman {row["map_spearman"]:.3f}, box IoU '
            f'{row["map_iou"]:.3f}, peak shift {row["peak_shift"]:.3f} of the diagonal</div></div>')
    who = (f"base {settings.get('base')} against candidate {settings.get('candidate')}, "
           f"{' / '.join(dict.fromkeys(settings.get('method', [])))} maps of the base's top-1 class")
    shown = f"{len(cards)} of {summary.get('num_images', 0)} images, lowest map Spearman first (--report-limit)"
    page = (_COMPARE_PAGE.replace("__COUNT__", str(3 * len(cards))).replace("__WHO__", _esc(who))
            .replace("__SUMMARY__", rows).replace("__SHOWN__", _esc(shown)).replace("__CARDS__", "\n".join(cards)))
    atomic_write(Path(path), page, before_rename)
