"""The lane and reception defaults of `serve.limits`, in a module of plain numbers so that `lesionlab serve
--help` can show them without importing the web stack (every `lesionlab` command builds that help)."""

DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_HEAVY_PIXELS = 4_000_000
DEFAULT_HEAVY_WORKERS = 1
DEFAULT_HEAVY_QUEUE = 4
RECEIVING_UPLOADS = 8
