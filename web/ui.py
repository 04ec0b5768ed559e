"""The page users live in: sign in, sessions at the side, each turn's live timeline.

Everything is served from here (templates/ and static/, plain ES modules, no build step,
no CDN). The page runs under a strict Content-Security-Policy: scripts, styles and
connections from this origin only, so even a rendering bug cannot load foreign code."""

import json

from flask import Blueprint, make_response, render_template

from shared import vocabulary
from shared.settings import get_settings

ui = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/static")

CONTENT_SECURITY_POLICY = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                           "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
                           "frame-ancestors 'none'")


@ui.get("/")
def index():
    response = make_response(render_template("index.html", dev=get_settings().dev))
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


@ui.get("/vocabulary.js")
def vocabulary_js():
    """The names the page shares with the server (statuses, steps, event types), generated from
    shared.vocabulary, so the scripts never hold a copy that can drift."""
    body = "".join(f"export const {name} = {json.dumps(values)};\n" for name, values in vocabulary.for_browser().items())
    response = make_response(body)
    response.mimetype = "text/javascript"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
