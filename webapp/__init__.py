# The Celery app is loaded with Django so that @shared_task and .delay() use it.
from webapp.celery import app as celery_app

__all__ = ("celery_app",)
