"""The service's web pages, rendered on the server (Jinja2, no script, no build step): the triage
worklist, each study's results (measurements, overlay thumbnail, result files, deliveries, audit
trail), the audit log and the models with their cards. They read only: a browser signs in with
HTTP Basic (any user name, an API token as password), which the API accepts for GET alone."""

from __future__ import annotations

import io
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import HTMLResponse, Response
from markupsafe import Markup

from medsight import __version__
from medsight.service.node import Node
from medsight.service.store import Job, as_utc, utcnow

__all__ = ["register_pages"]

_PICTURES = ("_overlay.dcm", "_heatmap.dcm")  # secondary captures a study page shows as its thumbnail

_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #1b1f24; background: #f6f7f9; }
header { background: #12314f; color: #fff; padding: 10px 20px; display: flex; gap: 24px; align-items: baseline; }
header a { color: #dbe8f5; text-decoration: none; } header b { font-size: 17px; }
main { padding: 16px 20px; } h1 { font-size: 20px; margin: 4px 0 12px; } h2 { font-size: 16px; margin: 20px 0 8px; }
table { border-collapse: collapse; background: #fff; width: 100%; } td, th { padding: 5px 8px; text-align: left;
border-bottom: 1px solid #e3e6ea; vertical-align: top; } th { background: #eef1f4; font-weight: 600; }
tr.flagged td { background: #fff1ef; } .flag { color: #b3261e; font-weight: 700; } .muted { color: #68707a; }
.status-failed, .status-dead { color: #b3261e; } .status-done, .status-sent { color: #1e7a34; }
pre { background: #fff; padding: 12px; border: 1px solid #e3e6ea; white-space: pre-wrap; }
img.overlay { max-width: 320px; border: 1px solid #ccd; background: #000; } dl { display: grid;
grid-template-columns: max-content auto; gap: 2px 16px; } dt { color: #68707a; }
"""

_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} - medsight</title>
<style>{{ style }}</style></head>
<body><header><b>medsight</b><a href="/">Worklist</a><a href="/ui/audit">Audit log</a>
<a href="/ui/models">Models</a><span class="muted">v{{ version }}, signed in as {{ actor }}</span></header>
<main>{{ body }}</main></body></html>"""

_WORKLIST = """<h1>Worklist</h1>
<p class="muted">{{ jobs|length }} studies{% if offset %} from {{ offset + 1 }}{% endif %}: flagged ones first (highest
score first), then the others in the order they arrived. A flag only moves a study up; no study is hidden.</p>
<table id="worklist"><tr><th>Priority</th><th>Status</th><th>Score</th><th>Study</th><th>Modality</th><th>Route /
model</th><th>Age of study</th><th>Received</th></tr>
{% for job in jobs %}<tr class="{{ 'flagged' if job.flagged else '' }}">
<td>{% if job.flagged %}<span class="flag">FLAGGED</span>{% else %}routine{% endif %}</td>
<td class="status-{{ job.status }}">{{ job.status }}</td><td>{{ score(job.score) }}</td>
<td><a href="/ui/jobs/{{ job.id }}">{{ job.accession or job.study_uid }}</a><br><span class="muted">
{{ job.description }}</span></td><td>{{ job.modalities }}</td><td>{{ job.route or '-' }}{% if job.model %} /
{{ job.model }}{% endif %}</td><td>{{ age(job) }}</td><td>{{ when(job.received_at) }}</td></tr>
{% else %}<tr><td colspan="8" class="muted">No study yet: send one to the DICOM listener or POST /studies.</td></tr>
{% endfor %}</table>
{% if more %}<p><a href="/?offset={{ offset + jobs|length }}">Next studies</a></p>{% endif %}"""

_JOB = """<h1>Study {{ job.accession or job.study_uid }}</h1>
<dl><dt>Status</dt><dd class="status-{{ job.status }}">{{ job.status }}{% if job.flagged %} <span class="flag">
FLAGGED</span>{% endif %}</dd><dt>Study UID</dt><dd>{{ job.study_uid }}</dd><dt>Description</dt>
<dd>{{ job.description or '-' }}</dd><dt>Received</dt><dd>{{ when(job.received_at) }} from {{ job.submitted_by }}
({{ job.source }}, {{ job.instances }} instances)</dd><dt>Route, model, version</dt><dd>{{ job.route or '-' }},
{{ job.model or '-' }}, {{ job.model_version or '-' }}</dd><dt>Score</dt><dd>{{ score(job.score) }}</dd>
{% if job.note %}<dt>Note</dt><dd>{{ job.note }}</dd>{% endif %}</dl>
{% if thumbnail %}<h2>Overlay</h2>
<img class="overlay" alt="overlay of the results" src="/ui/jobs/{{ job.id }}/overlay.png">
{% endif %}
{% if predictions %}<h2>Measurements</h2><table id="measurements"><tr>{% for key in columns %}<th>{{ key }}</th>
{% endfor %}</tr>{% for row in predictions %}<tr>{% for key in columns %}<td>{{ value(row.get(key)) }}</td>{% endfor %}
</tr>{% endfor %}</table>{% endif %}
{% if files %}<h2>Result files</h2><ul>{% for name in files %}<li><a href="/jobs/{{ job.id }}/files/{{ name }}">
{{ name }}</a></li>{% endfor %}</ul>{% endif %}
{% if deliveries %}<h2>Deliveries</h2><table><tr><th>Destination</th><th>Status</th><th>Tries</th><th>Sent</th>
<th>Last error</th></tr>{% for d in deliveries %}<tr><td>{{ d.destination }}</td><td class="status-{{ d.status }}">
{{ d.status }}</td><td>{{ d.attempts }}</td><td>{{ when(d.sent_at) }}</td><td>{{ d.error }}</td></tr>{% endfor %}
</table>{% endif %}
<h2>Audit trail</h2>{{ audit_table(events) }}"""

_AUDIT = """<h1>Audit log</h1><p class="muted">Newest first; the database refuses changes to it.</p>
{{ audit_table(events) }}"""

_AUDIT_TABLE = """<table class="audit"><tr><th>When</th><th>Who</th><th>What</th><th>Study</th><th>Model</th>
<th>Detail</th></tr>{% for e in events %}<tr><td>{{ when(e.at) }}</td><td>{{ e.actor }}</td><td>{{ e.action }}</td>
<td>{% if e.job_id %}<a href="/ui/jobs/{{ e.job_id }}">{{ e.study_uid }}</a>{% endif %}</td>
<td>{{ e.model or '' }} {{ e.model_version or '' }}</td><td class="muted">{{ e.detail }}</td></tr>{% endfor %}
</table>"""

_MODELS = """<h1>Models</h1>{% for m in models %}<h2 id="{{ m.name }}">{{ m.name }}: {{ m.recipe }}</h2>
<dl><dt>Task</dt><dd>{{ m.task }}</dd><dt>Version</dt><dd>{{ m.version }}</dd><dt>Runs on</dt><dd>{{ m.backend }}</dd>
<dt>Routes</dt><dd>{{ m.routes|join(', ') or '-' }}</dd></dl>{% if m.card_text %}<pre>{{ m.card_text }}</pre>
{% else %}<p class="muted">A run folder: no model card (medsight export makes one).</p>{% endif %}{% endfor %}"""


def _when(value: datetime | None) -> str:
    return "-" if value is None else as_utc(value).strftime("%Y-%m-%d %H:%M:%S UTC")


def _age(job: Job) -> str:
    start = job.study_time or job.received_at
    if start is None:
        return "-"
    minutes = max(int((utcnow() - as_utc(start)).total_seconds() // 60), 0)
    if minutes < 60:
        return f"{minutes} min"
    if minutes < 48 * 60:
        return f"{minutes // 60} h {minutes % 60} min"
    return f"{minutes // (24 * 60)} days"


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def register_pages(app: FastAPI, node: Node, caller: Callable[..., str]) -> None:
    """Add the web pages to ``app``; ``caller`` is the API's token check (Basic accepted on GET)."""
    import jinja2

    environment = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    templates = {t: environment.from_string(t) for t in (_LAYOUT, _WORKLIST, _JOB, _AUDIT, _MODELS)}  # once
    audit_table = environment.from_string(_AUDIT_TABLE)
    helpers = {"when": _when, "age": _age, "score": _score, "value": _value,
               "audit_table": lambda events: Markup(audit_table.render(events=events, when=_when))}  # fmt: skip

    def page(title: str, template: str, actor: str, **values: Any) -> HTMLResponse:
        body = templates[template].render(**helpers, **values)
        html = templates[_LAYOUT].render(title=title, style=_STYLE, version=__version__, actor=actor,
                                                       body=Markup(body))  # fmt: skip
        return HTMLResponse(html)

    @app.get("/", tags=["pages"], response_class=HTMLResponse, include_in_schema=False)
    def worklist_page(offset: int = Query(0, ge=0), actor: str = Depends(caller)) -> HTMLResponse:
        jobs = node.store.worklist(limit=201, offset=offset)
        return page("Worklist", _WORKLIST, actor, jobs=jobs[:200], more=len(jobs) > 200, offset=offset)

    @app.get("/ui/jobs/{job_id}", tags=["pages"], response_class=HTMLResponse, include_in_schema=False)
    def job_page(job_id: str, actor: str = Depends(caller)) -> HTMLResponse:
        job = node.store.job(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r}")
        result = node.result(job_id) or {}
        predictions = result.get("predictions", [])
        columns = list(dict.fromkeys(k for row in predictions for k in row if k != "output"))
        files = result.get("downloads", [])
        if result:
            node.store.audit(actor, "viewed", job)
        return page(f"Study {job.study_uid}", _JOB, actor, job=job, predictions=predictions, columns=columns,
                    files=files, thumbnail=any(f.endswith(_PICTURES) for f in files),
                    deliveries=node.store.deliveries(job_id), events=node.store.events(job_id))  # fmt: skip

    @app.get("/ui/jobs/{job_id}/overlay.png", tags=["pages"], include_in_schema=False)
    def overlay_png(job_id: str, _: str = Depends(caller)) -> Response:
        import numpy as np
        import pydicom
        from PIL import Image

        folder = node.results_folder(job_id)
        found = sorted(p for p in (folder / "dicom").glob("*.dcm") if p.name.endswith(_PICTURES)) if folder else []
        if not found:
            raise HTTPException(404, f"job {job_id!r} has no overlay")
        pixels = np.asarray(pydicom.dcmread(found[0]).pixel_array)
        picture = Image.fromarray(pixels.astype(np.uint8))
        picture.thumbnail((320, 320))
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        return Response(buffer.getvalue(), media_type="image/png")

    @app.get("/ui/audit", tags=["pages"], response_class=HTMLResponse, include_in_schema=False)
    def audit_page(actor: str = Depends(caller)) -> HTMLResponse:
        return page("Audit log", _AUDIT, actor, events=node.store.events(limit=500))

    @app.get("/ui/models", tags=["pages"], response_class=HTMLResponse, include_in_schema=False)
    def models_page(actor: str = Depends(caller)) -> HTMLResponse:
        models = [{**m.summary(), "card_text": m.card(),
                   "routes": [r.name for r in node.config.routes if r.model == name]}
                  for name, m in node.models.items()]  # fmt: skip
        return page("Models", _MODELS, actor, models=models)
