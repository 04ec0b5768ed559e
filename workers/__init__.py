"""Celery workers that run an agent turn: `celery -A workers worker -l info`."""

from workers.celery_app import app

__all__ = ["app"]
