"""Web data to a clean pretraining corpus: the ``corpus`` stage, one module per step.

:mod:`.sources` (read WARC, WET, HTML, zip, JSONL, text) -> :mod:`.url_filter` ->
:mod:`.extract` (HTML to text) -> :mod:`.langid` -> :mod:`.filters` (Gopher, C4, FineWeb) ->
:mod:`.dedup` (exact and MinHash) -> :mod:`.pii`; :mod:`.worker` runs the per-document steps on
chunks in worker processes, :mod:`.output` writes the corpus version and :mod:`.run` holds the
stage's config and entry point. The recipe and its thresholds are FineWeb's (see PIPELINE.md).

Nothing is imported here, so importing the config (``training.core.pipeline.run``) stays light.
"""
