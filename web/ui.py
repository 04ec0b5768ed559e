"""The page users live in: a prompt box and the turn's live progress."""

from flask import Blueprint, render_template

from shared.settings import get_settings

ui = Blueprint("ui", __name__, template_folder="templates", static_folder="static", static_url_path="/static")


@ui.get("/")
def index():
    return render_template("index.html", dev=get_settings().dev)
