"""What a class grading run leaves behind, besides the gradebook.

- ``grades.csv``: nbgrader's own export of the gradebook;
- ``questions.csv``: one row per student and question, with status and message;
- ``feedback/<student>/index.html``: each question's score and outcome. Hidden tests show
  only their outcome and message, never their source;
- ``report/index.html`` with PNG plots: the score histogram, each question's pass rate and
  mean, the slowest submissions, every submission that errored or timed out, with why, and
  every submission suspected of tampering: where the verdict inside the student's kernel and
  the one re-run outside it (:mod:`autograder.grade.judge`, the recorded grade) disagree.

Everything a student wrote (ids, messages) is HTML-escaped.
"""
from __future__ import annotations

import csv
from pathlib import Path

from jinja2 import Environment, select_autoescape


_ENV = Environment(autoescape=select_autoescape(default=True, default_for_string=True))

FEEDBACK = _ENV.from_string("""<!doctype html>
<html lang="en"><meta charset="utf-8"><title>servelab feedback: {{ r.student }}</title>
<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}td,th{padding:.3em .6em;border-bottom:1px solid #ddd;vertical-align:top}
.passed{color:#176f2c}.failed,.error,.timeout,.invalid,.missing,.unanswered{color:#a31515}pre{white-space:pre-wrap;margin:0}</style>
<h1>servelab: feedback for {{ r.student }}</h1>
<p>Total: <b>{{ "%g"|format(r.score) }} / {{ "%g"|format(r.max_score) }}</b></p>
{% for nb in r.notebooks %}
<h2>{{ nb.notebook }}: {{ "%g"|format(nb.score) }} / {{ "%g"|format(nb.max_score) }}</h2>
{% if nb.reason %}<p class="{{ nb.status }}">{{ nb.reason }}</p>{% endif %}
<table><tr><th>question</th><th>score</th><th>outcome</th><th>what the grader saw</th></tr>
{% for q in nb.questions %}<tr><td>{{ q.id }}</td><td>{{ "%g"|format(q.score) }} / {{ "%g"|format(q.max_score) }}</td>
<td class="{{ q.status }}">{{ q.status }}</td><td><pre>{{ q.message }}</pre></td></tr>{% endfor %}
</table>{% endfor %}
<p>Each question includes tests you did not see in your notebook; only their outcome is shown here.</p>
</html>""")

REPORT = _ENV.from_string("""<!doctype html>
<html lang="en"><meta charset="utf-8"><title>servelab class report</title>
<style>body{font-family:sans-serif;max-width:70em;margin:2em auto}td,th{padding:.3em .6em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}</style>
<h1>servelab class report</h1>
<p>{{ n }} submissions; mean score {{ "%.1f"|format(mean) }} / {{ "%g"|format(max_score) }}; grading time {{ "%.0f"|format(total_seconds) }} s of work.</p>
<h2>Scores</h2><img src="scores.png" alt="histogram of total scores">
<h2>Questions</h2><img src="questions.png" alt="pass rate and mean score per question">
<table><tr><th>notebook</th><th>question</th><th>pass rate</th><th>mean</th><th>max</th></tr>
{% for q in questions %}<tr><td>{{ q.notebook }}</td><td>{{ q.id }}</td><td>{{ "%.0f"|format(100 * q.pass_rate) }}%</td><td>{{ "%.2f"|format(q.mean) }}</td><td>{{ "%g"|format(q.max_score) }}</td></tr>{% endfor %}
</table>
<h2>Slowest submissions</h2>
<table><tr><th>student</th><th>seconds</th><th>score</th></tr>
{% for r in slowest %}<tr><td>{{ r.student }}</td><td>{{ "%.1f"|format(r.seconds) }}</td><td>{{ "%g"|format(r.score) }} / {{ "%g"|format(r.max_score) }}</td></tr>{% endfor %}
</table>
<h2>Isolation</h2>
<p>Which protections applied to each graded notebook (docs/grading.md).</p>
{% if isolation %}<table><tr><th>notebooks</th><th>protections</th></tr>
{% for text, count in isolation %}<tr><td>{{ count }}</td><td>{{ text }}</td></tr>{% endfor %}
</table>{% else %}<p>No notebook ran.</p>{% endif %}
<h2>Suspected tampering</h2>
<p>Questions where the result inside the student's kernel differs from the verdict re-run outside it. The outside verdict is the grade.</p>
{% if tampering %}<table><tr><th>student</th><th>notebook</th><th>question</th><th>in the kernel</th><th>outside (recorded)</th><th>outside message</th></tr>
{% for t in tampering %}<tr><td>{{ t.student }}</td><td>{{ t.notebook }}</td><td>{{ t.id }}</td><td>{{ "%g"|format(t.kernel_score) }} ({{ t.kernel_status }})</td><td>{{ "%g"|format(t.score) }} ({{ t.status }})</td><td>{{ t.message }}</td></tr>{% endfor %}
</table>{% else %}<p>None.</p>{% endif %}
<h2>Errored or timed out</h2>
{% if problems %}<table><tr><th>student</th><th>notebook</th><th>status</th><th>reason</th><th>sandbox log (last lines; instructors only)</th></tr>
{% for p in problems %}<tr><td>{{ p.student }}</td><td>{{ p.notebook }}</td><td>{{ p.status }}</td><td>{{ p.reason }}</td><td><pre>{{ p.log }}</pre></td></tr>{% endfor %}
</table>{% else %}<p>None.</p>{% endif %}
</html>""")


def write_outputs(out: Path, results: list[dict], expected: dict[str, dict[str, float]]) -> None:
    out = Path(out)
    write_question_csv(out / "questions.csv", results)
    export_grades(out)
    for r in results:
        dest = out / "feedback" / r["student"] / "index.html"
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(FEEDBACK.render(r=r), encoding="utf-8", errors="backslashreplace")
    write_class_report(out / "report", results, expected)


def isolation_text(record: dict | None) -> str:
    """``net=net namespace; pid=...`` for one notebook's isolation record (empty when it never ran)."""
    return "; ".join(f"{k}={v}" for k, v in (record or {}).items())


def write_question_csv(path: Path, results: list[dict]) -> None:
    # errors="backslashreplace": a message with an unpaired surrogate is written escaped, never raises.
    with open(path, "w", newline="", encoding="utf-8", errors="backslashreplace") as f:
        w = csv.writer(f)
        w.writerow(["student", "notebook", "question", "score", "max_score", "status", "message", "kernel_score",
                    "suspected_tampering", "isolation"])
        for r in results:
            for nb in r["notebooks"]:
                flagged = set(nb.get("suspected_tampering", []))
                for q in nb["questions"]:
                    w.writerow([r["student"], nb["notebook"], q["id"], q["score"], q["max_score"], q["status"], q["message"][:500],
                                q.get("kernel_score", ""), int(q["id"] in flagged), isolation_text(nb.get("isolation"))])


def export_grades(out: Path) -> None:
    """nbgrader's own CSV export of the gradebook (what ``nbgrader export`` writes) into ``grades.csv``."""
    from nbgrader.api import Gradebook
    from nbgrader.plugins.export import CsvExportPlugin

    with Gradebook(f"sqlite:///{out / 'gradebook.db'}") as gb:
        CsvExportPlugin(to=str(out / "grades.csv")).export(gb)


def question_stats(results: list[dict], expected: dict[str, dict[str, float]]) -> list[dict]:
    stats = []
    for nb_name, questions in expected.items():
        for qid, max_score in questions.items():
            scores = [
                q["score"] for r in results for nb in r["notebooks"] if nb["notebook"] == nb_name
                for q in nb["questions"] if q["id"] == qid
            ]
            n = len(scores) or 1
            stats.append({
                "notebook": nb_name, "id": qid, "max_score": max_score,
                "mean": sum(scores) / n, "pass_rate": sum(s >= max_score for s in scores) / n,
            })
    return stats


def write_class_report(dest: Path, results: list[dict], expected: dict[str, dict[str, float]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dest.mkdir(parents=True, exist_ok=True)
    max_score = sum(sum(q.values()) for q in expected.values())
    scores = [r["score"] for r in results]
    stats = question_stats(results, expected)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.hist(scores, bins=min(20, max(5, int(max_score) or 5)), range=(0, max_score or 1), color="#3b6ea5")
    ax.set_xlabel(f"total score (of {max_score:g})")
    ax.set_ylabel("submissions")
    ax.set_title("Score distribution")
    fig.tight_layout()
    fig.savefig(dest / "scores.png", dpi=100)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(stats) + 1.2))
    labels = [q["id"] for q in stats]
    ax.barh(labels, [100 * q["pass_rate"] for q in stats], color="#3b6ea5", label="pass rate (%)")
    ax.barh(labels, [100 * q["mean"] / q["max_score"] if q["max_score"] else 0 for q in stats], height=0.3, color="#e39b2d", label="mean (% of points)")
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.legend(loc="lower right", fontsize="small")
    ax.set_title("Per question")
    fig.tight_layout()
    fig.savefig(dest / "questions.png", dpi=100)
    plt.close(fig)

    problems = [
        {"student": r["student"], "notebook": nb["notebook"], "status": nb["status"], "reason": nb.get("reason", ""),
         "log": nb.get("sandbox_log", "")[-800:]}
        for r in results for nb in r["notebooks"] if nb["status"] not in ("ok",)
    ]
    tampering = [
        {"student": r["student"], "notebook": nb["notebook"], **q}
        for r in results for nb in r["notebooks"] for q in nb["questions"] if q["id"] in nb.get("suspected_tampering", [])
    ]
    slowest = sorted(results, key=lambda r: r["seconds"], reverse=True)[:10]
    isolation: dict[str, int] = {}
    for r in results:
        for nb in r["notebooks"]:
            if nb.get("isolation"):
                key = isolation_text(nb["isolation"])
                isolation[key] = isolation.get(key, 0) + 1
    html = REPORT.render(tampering=tampering, isolation=sorted(isolation.items(), key=lambda kv: -kv[1]),
        n=len(results), mean=sum(scores) / (len(scores) or 1), max_score=max_score,
        total_seconds=sum(r["seconds"] for r in results), questions=stats, slowest=slowest, problems=problems,
    )
    (dest / "index.html").write_text(html, encoding="utf-8", errors="backslashreplace")
    return dest / "index.html"
