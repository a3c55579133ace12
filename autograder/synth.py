"""Synthetic submissions for tests and benchmarks.

``WRONG`` holds deliberately wrong answers, each a small edit of a solution notebook's
answer cell, with the questions the bug must cost and no others. The edits are exact text
replacements, so a change to the solutions that they no longer match fails loudly instead
of silently testing nothing. :func:`make_class` builds a class of correct, partly wrong and
broken submissions from them.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Wrong:
    name: str
    notebook: str  # solution file name
    edits: tuple[tuple[str, str], ...]  # (old, new) in the answer cells, each old found exactly once
    fails: frozenset[str]  # grade ids that must score 0; every other question full marks
    why: str


O, H, A = "00_orientation.ipynb", "04_model_handler.ipynb", "05_flask_api.ipynb"

WRONG = [
    Wrong(
        "unsorted_mismatches", O,
        (("        for name in sorted(pins)\n", "        for name in pins\n"),),
        frozenset({"q00_version_mismatches"}),
        "lists version mismatches in the wrong order (caught only by the hidden tests)",
    ),
    Wrong(
        "exact_package_names", O,
        (("        return re.sub(r\"[-_.]+\", \"-\", name).strip().lower()", "        return name.strip()"),),
        frozenset({"q00_pinned_version"}),
        "matches package names exactly, so Flask != flask and scikit_learn != scikit-learn",
    ),
    Wrong(
        "extra_prediction", H,
        (("for k, row in zip(best, y)]", "for k, row in zip(best, y)] + [{\"label\": self.classes[0], \"confidence\": 1.0}]"),),
        frozenset({"q04_postprocess", "q04_handle"}),
        "returns one result too many: the wrong number of predictions",
    ),
    Wrong(
        "reversed_order", H,
        (("return [{\"label\": self.classes[int(k)], \"confidence\": float(row[k])} for k, row in zip(best, y)]",
          "return [{\"label\": self.classes[int(k)], \"confidence\": float(row[k])} for k, row in zip(best, y)][::-1]"),),
        frozenset({"q04_postprocess", "q04_handle"}),
        "predictions in the wrong order",
    ),
    Wrong(
        "dict_values_order", H,
        (("pairs = [(f, payload[f]) for f in self.features]", "pairs = list(zip(self.features, payload.values()))"),),
        frozenset({"q04_preprocess"}),
        "takes a named instance's values in the client's key order instead of the model's feature order",
    ),
    Wrong(
        "accepts_nan", H,
        (("                if not math.isfinite(value):\n", "                if False:\n"),),
        frozenset({"q04_rejects"}),
        "lets NaN and infinity through to the model (caught only by the hidden tests)",
    ),
    Wrong(
        "hardcoded_classes", H,
        (("self.classes = list(meta[\"classes\"])", "self.classes = [\"setosa\", \"versicolor\", \"virginica\"]"),),
        frozenset({"q04_initialize", "q04_postprocess"}),
        "hard-codes the class names instead of reading meta.json (caught only by the hidden tests)",
    ),
    Wrong(
        "handler_error_is_500", A,
        (("    @app.errorhandler(HandlerError)\n    def handler_error(exc):\n        return error(exc.status, exc.message)\n", ""),),
        frozenset({"q05_errors"}),
        "bad instances fall through to the catch-all handler: a 500 on bad input",
    ),
    Wrong(
        "no_predict_alias", A,
        (("    app.add_url_rule(\"/predict\", \"predict\", predict, methods=[\"POST\"])\n", ""),),
        frozenset({"q05_predict", "q05_errors"}),
        "POST /predict is missing: a missing route",
    ),
    Wrong(
        "unknown_model_400", A,
        (("            return error(404, f\"unknown model {model!r}; this server serves {name!r}\")\n        return jsonify",
          "            return error(400, f\"unknown model {model!r}; this server serves {name!r}\")\n        return jsonify"),),
        frozenset({"q05_metadata"}),
        "an unknown model gets 400 instead of 404: a wrong status",
    ),
    Wrong(
        "predictions_as_html", A,
        (("        return jsonify({\"predictions\": predictions})",
          "        import json as _json\n        return _json.dumps({\"predictions\": predictions})"),),
        frozenset({"q05_predict"}),
        "returns predictions as text/html: a wrong content type",
    ),
    Wrong(
        "crash_without_config", A,
        (("    app.config.update(config or {})", "    app.config.update(dict(config))"),),
        frozenset({"q05_health", "q05_metadata", "q05_predict"}),
        "create_app crashes when called without a config: a crash on startup",
    ),
    Wrong(
        "predict_hangs", A,
        (("    def predict():\n", "    def predict():\n        while True:\n            pass\n"),),
        frozenset({"q05_predict", "q05_errors"}),
        "every prediction request hangs: a hang",
    ),
]


def apply(wrong: Wrong, solutions: Path, dest: Path) -> Path:
    """Write the solution notebook with ``wrong``'s edits to ``dest``; return it."""
    nb = json.loads((solutions / wrong.notebook).read_text())
    for old, new in wrong.edits:
        hits = []
        for cell in nb["cells"]:
            if cell.get("metadata", {}).get("nbgrader", {}).get("solution"):
                text = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                if old in text:
                    hits.append((cell, text))
        assert len(hits) == 1 and hits[0][1].count(old) == 1, f"{wrong.name}: edit target not found exactly once: {old!r}"
        cell, text = hits[0]
        cell["source"] = text.replace(old, new)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(nb))
    return dest


BROKEN = {
    "invalid_json": b"{not a notebook",
    "empty_file": b"",
}


def make_class(dest: Path, n: int, solutions: Path, blanks: Path, notebooks: list[str]) -> dict[str, str]:
    """Write ``n`` submissions to ``dest/submitted/<student>/servelab/``; return ``{student: kind}``.

    Students rotate through: correct, partly wrong (one entry of ``WRONG`` per notebook that has
    one), blank, and broken (an unreadable file). ``notebooks`` are the file names to submit.
    """
    kinds = {}
    wrong_by_nb = {nb: [w for w in WRONG if w.notebook == nb and not w.name.endswith("hangs")] for nb in notebooks}
    for i in range(n):
        student = f"s{i:03d}"
        folder = dest / "submitted" / student / "servelab"
        folder.mkdir(parents=True, exist_ok=True)
        kind = ("correct", "wrong", "blank", "broken")[i % 4]
        for nb in notebooks:
            target = folder / nb
            if kind == "correct":
                target.write_bytes((solutions / nb).read_bytes())
            elif kind == "wrong" and wrong_by_nb[nb]:
                options = wrong_by_nb[nb]
                apply(options[(i // 4) % len(options)], solutions, target)
            elif kind == "broken":
                target.write_bytes(list(BROKEN.values())[(i // 4) % len(BROKEN)])
            else:
                target.write_bytes((blanks / nb).read_bytes())
        kinds[student] = kind
    return kinds
