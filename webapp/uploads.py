"""Upload handling: files stream to a temporary file and stop at a size cap."""

from __future__ import annotations

from django.conf import settings
from django.core.files.uploadhandler import StopUpload, TemporaryFileUploadHandler


def upload_cap_bytes() -> int:
    return settings.ORCHARD_MAX_UPLOAD_MB * 1024 * 1024


class CappedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Streams uploads to disk (never into memory) and stops reading past the cap.

    The view sees ``request.upload_too_large`` and answers 413 with a clear message.
    """

    def new_file(self, *args, **kwargs) -> None:
        self.received = 0
        super().new_file(*args, **kwargs)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes | None:
        self.received += len(raw_data)
        if self.received > upload_cap_bytes():
            self.request.upload_too_large = True
            # Drain the rest of the body so the browser gets our 413 page, not a reset.
            raise StopUpload(connection_reset=False)
        return super().receive_data_chunk(raw_data, start)
