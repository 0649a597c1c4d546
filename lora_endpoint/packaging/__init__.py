"""Build, validate and upload the model artifact the endpoint serves.

``build(BuildOptions(...))`` writes a deterministic ``model.tar.gz`` (or a tree for an S3 prefix) with
the handler, adapters, optional base model and a manifest; ``safe_extract`` is the matching extractor;
``upload_artifact`` puts it in S3 under its content hash. The CLI is ``lora-endpoint package``.
"""

from lora_endpoint.packaging.archive import UnsafeArchiveError, safe_extract
from lora_endpoint.packaging.build import BuildResult, build
from lora_endpoint.packaging.config import BuildOptions, PackageError
from lora_endpoint.packaging.upload import upload_artifact

__all__ = ["BuildOptions", "BuildResult", "PackageError", "UnsafeArchiveError", "build", "safe_extract",
           "upload_artifact"]
