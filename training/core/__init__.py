"""Orchard's ML library: pure Python + torch/HF, no Django, no Celery.

Every stage is a module with a pydantic config and one entry point
``run(cfg, inputs, out_dir, reporter) -> dict``. It reads only the paths it is given and talks
to the outside world through a :class:`~training.core.reporting.Reporter`. The same entry point
runs from a Celery worker and from the shell::

    python -m training.core tokenizer --config cfg.json --input corpus=path/to/corpus.txt --out out/
"""
