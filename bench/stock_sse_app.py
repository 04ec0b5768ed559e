"""Baseline for bench/sse_fanout.py: stock flask-sse, served by the same gunicorn+gevent config.

    SSE_REDIS_URL=redis://... gunicorn -c deploy/gunicorn.conf.py stock_sse_app:app
"""

import os

from flask import Flask
from flask_sse import sse

app = Flask(__name__)
app.config["SSE_REDIS_URL"] = os.environ["SSE_REDIS_URL"]
app.register_blueprint(sse, url_prefix="/stream")


@app.get("/healthz")
def healthz():
    return {"ok": True}
