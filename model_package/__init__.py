"""Build, validate and upload the model artifact the endpoint serves.

``build(BuildOptions(...))`` writes a deterministic ``model.tar.gz`` (or a tree for an S3 prefix) with
the handler, adapters, optional base model and a manifest; ``safe_extract`` is the matching extractor;
``upload_artifact`` puts it in S3 under its content hash. The CLI is ``python -m model_package``.
"""

from model_package.archive import UnsafeArchiveError, safe_extract
from model_package.build import BuildResult, build
from model_package.config import BuildOptions, PackageError
from model_package.upload import upload_artifact

__all__ = ["BuildOptions", "BuildResult", "PackageError", "UnsafeArchiveError", "build", "safe_extract",
           "upload_artifact"]
