"""The signing secret of `turnstream dev`, kept in its data directory so the CLI can use it.

`turnstream dev` (what `make run` starts) needs a TURNSTREAM_SECRET and generates one when the
environment has none. It keeps that secret in `<data dir>/secret` (`.run/secret`, mode 0600)
and reuses it on the next start, so tokens outlive a restart; `turnstream token` reads it
from there when TURNSTREAM_SECRET is unset, so the README's token commands work as written.

Rules: the environment always wins; only the dev runner writes the file and only the `token`
command reads it (the web tier and workers get the secret in their environment, as in
production). Rejected: printing the generated secret for the user to export (it would sit in
terminal scrollback and CI logs, and every new shell would need it again), and a fixed
well-known dev secret (anyone who can reach a dev server could mint tokens for it)."""

import os
import secrets
from pathlib import Path

FILE_NAME = "secret"
DEFAULT_DATA_DIR = Path(".run")


def path(data_dir: Path = DEFAULT_DATA_DIR) -> Path:
    return Path(data_dir) / FILE_NAME


def ensure(data_dir: Path) -> str:
    """The dev runner's secret: the environment's, else the kept one, else a new one (kept)."""
    if os.environ.get("TURNSTREAM_SECRET"):
        return os.environ["TURNSTREAM_SECRET"]
    kept = read(data_dir)
    if kept:
        return kept
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(32)
    fd = os.open(path(data_dir), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")
    return value


def read(data_dir: Path = DEFAULT_DATA_DIR) -> str | None:
    try:
        return path(data_dir).read_text().strip() or None
    except OSError:
        return None
