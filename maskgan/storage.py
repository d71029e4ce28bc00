"""Map a URI (local path or s3://bucket/prefix) to a pyarrow filesystem, and small I/O helpers on it.

The same code talks to AWS S3, MinIO or a moto server: only the endpoint differs. Credentials are
taken from the config or the standard AWS environment variables and never appear in a repr, a
written config, a log line or an error message.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs


@dataclass(frozen=True, kw_only=True)
class StorageConfig:
    """How to reach object storage. Empty fields fall back to the AWS environment variables."""

    endpoint_url: str | None = None  # e.g. http://127.0.0.1:5000 for moto / MinIO; None = AWS
    region: str | None = None
    # Credentials are excluded from repr and from to_dict(): they never reach logs or written configs.
    access_key_id: str | None = field(default=None, repr=False, metadata={"secret": True})
    secret_access_key: str | None = field(default=None, repr=False, metadata={"secret": True})
    session_token: str | None = field(default=None, repr=False, metadata={"secret": True})
    connect_timeout_s: float = 5.0
    request_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.endpoint_url is not None and not self.endpoint_url.startswith(("http://", "https://")):
            raise ValueError(
                f"storage.endpoint_url must start with http:// or https://, got {self.endpoint_url!r}"
            )
        if (self.access_key_id is None) != (self.secret_access_key is None):
            raise ValueError("storage.access_key_id and storage.secret_access_key must be set together")

    def resolved_endpoint(self) -> str | None:
        return (
            self.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        )


class StorageError(RuntimeError):
    """Storage could not be reached or used; the message says which URI and what to check."""


@dataclass(frozen=True)
class Location:
    """A filesystem plus a path on it, and the URI it came from (for messages)."""

    fs: pafs.FileSystem
    path: str
    uri: str

    @property
    def is_s3(self) -> bool:
        return self.uri.startswith("s3://")

    def join(self, *parts: str) -> Location:
        path = posixpath.join(self.path, *parts)
        uri = self.uri.rstrip("/") + "/" + "/".join(p.strip("/") for p in parts) if parts else self.uri
        return Location(self.fs, path, uri)


def is_s3_uri(uri: str) -> bool:
    return uri.startswith("s3://")


def s3_filesystem(config: StorageConfig | None = None) -> pafs.S3FileSystem:
    """An explicit pyarrow S3 filesystem; pass it to every Ray Data read and write."""
    config = config or StorageConfig()
    endpoint = config.resolved_endpoint()
    kwargs: dict = {
        "region": config.region
        or os.environ.get("AWS_REGION")
        or os.environ.get("AWS_DEFAULT_REGION")
        or "us-east-1",
        "connect_timeout": config.connect_timeout_s,
        "request_timeout": config.request_timeout_s,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=3),
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc + parsed.path.rstrip("/")
        kwargs["scheme"] = parsed.scheme
        # Path-style addressing: MinIO and moto serve buckets under the endpoint's path.
        kwargs["force_virtual_addressing"] = False
    access_key = config.access_key_id or os.environ.get("AWS_ACCESS_KEY_ID")
    secret_key = config.secret_access_key or os.environ.get("AWS_SECRET_ACCESS_KEY")
    if access_key and secret_key:
        kwargs["access_key"] = access_key
        kwargs["secret_key"] = secret_key
        token = config.session_token or os.environ.get("AWS_SESSION_TOKEN")
        if token:
            kwargs["session_token"] = token
    return pafs.S3FileSystem(**kwargs)


def normalise_uri(uri: str) -> str:
    """One spelling per place: local paths absolute, `..` and links resolved, no trailing slash;
    s3://bucket/key with the key's `//`, `.` and `..` collapsed. Equal places give equal strings."""
    if not uri:
        raise ValueError("storage URI is empty; give a local path or s3://bucket/prefix")
    if is_s3_uri(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
        key = posixpath.normpath("/" + parsed.path).lstrip("/")
        return f"s3://{parsed.netloc}/{key}".rstrip("/")
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported storage URI {uri!r}; use a local path or s3://bucket/prefix")
    return os.path.realpath(os.path.abspath(os.path.expanduser(uri.removeprefix("file://"))))


def resolve(uri: str, config: StorageConfig | None = None) -> Location:
    """URI -> Location. `s3://bucket/prefix` gives an S3 filesystem; anything else a local one."""
    if not uri:
        raise ValueError("storage URI is empty; give a local path or s3://bucket/prefix")
    if is_s3_uri(uri):
        parsed = urlparse(uri)
        if not parsed.netloc:
            raise ValueError(f"S3 URI {uri!r} has no bucket; expected s3://bucket/prefix")
        path = (parsed.netloc + "/" + parsed.path.lstrip("/")).rstrip("/")
        return Location(s3_filesystem(config), path, uri.rstrip("/"))
    if "://" in uri and not uri.startswith("file://"):
        raise ValueError(f"unsupported storage URI {uri!r}; use a local path or s3://bucket/prefix")
    local = os.path.abspath(os.path.expanduser(uri.removeprefix("file://")))
    return Location(pafs.LocalFileSystem(), local, local)


def _describe(location: Location, action: str, error: Exception) -> StorageError:
    hint = (
        "check the bucket exists, the endpoint (storage.endpoint_url / AWS_ENDPOINT_URL) is reachable "
        "and the credentials (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) are valid"
        if location.is_s3
        else "check the path exists and is writable"
    )
    # Only the exception's type and first line: pyarrow messages can be long but never hold secrets.
    detail = str(error).splitlines()[0] if str(error) else type(error).__name__
    return StorageError(f"could not {action} {location.uri}: {detail}; {hint}")


def check_reachable(location: Location) -> None:
    """Raise StorageError with a fix if the location's filesystem cannot be listed."""
    try:
        location.fs.get_file_info(location.path)
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "reach", error) from None


def check_bucket(location: Location, role: str) -> None:
    """For s3:// locations: raise StorageError saying that the `role` ("source", "output") bucket is
    missing, rather than letting a missing bucket read as an empty folder."""
    if not location.is_s3:
        return
    bucket = location.path.split("/", 1)[0]
    try:
        missing = location.fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "reach", error) from None
    if missing:
        raise StorageError(
            f"the {role} bucket s3://{bucket} does not exist (for {location.uri}); create it, "
            "or check the bucket name and the endpoint (storage.endpoint_url / AWS_ENDPOINT_URL)"
        )


def check_writable(location: Location) -> None:
    """For local locations: raise StorageError unless a file can be created at or above the folder
    (a probe file is created and removed again; nothing else is written)."""
    if location.is_s3:
        return  # S3 permissions show only on the first PUT; the bucket check is what can be said early
    existing = location.path
    while not os.path.isdir(existing) and os.path.dirname(existing) != existing:
        if os.path.exists(existing):
            raise StorageError(f"could not write {location.uri}: {existing} is a file, not a folder")
        existing = os.path.dirname(existing)
    probe = os.path.join(existing, f".tmp-{uuid.uuid4().hex}-probe")
    try:
        with open(probe, "wb"):
            pass
        os.remove(probe)
    except OSError as error:
        raise StorageError(
            f"could not write {location.uri}: {existing} is not writable ({error.strerror}); "
            "choose a writable output or fix its permissions"
        ) from None


def exists(location: Location) -> bool:
    try:
        return location.fs.get_file_info(location.path).type != pafs.FileType.NotFound
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "reach", error) from None


def read_bytes(location: Location) -> bytes:
    try:
        with location.fs.open_input_stream(location.path) as stream:
            return stream.read()
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "read", error) from None


def read_text_if_exists(location: Location) -> str | None:
    """A whole object as UTF-8 text, or None when it does not exist."""
    if not exists(location):
        return None
    return read_bytes(location).decode("utf-8", errors="replace")


def write_bytes(location: Location, data: bytes) -> None:
    """Write a whole object. Local files go through a temporary name and a rename, so a reader never
    sees a half-written file; S3 PUTs are atomic already."""
    try:
        parent = posixpath.dirname(location.path)
        if not location.is_s3:
            location.fs.create_dir(parent, recursive=True)
            temporary = posixpath.join(parent, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(location.path)}")
            with location.fs.open_output_stream(temporary) as stream:
                stream.write(data)
            location.fs.move(temporary, location.path)
        else:
            with location.fs.open_output_stream(location.path) as stream:
                stream.write(data)
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "write", error) from None


def list_files(location: Location, recursive: bool = True) -> list[pafs.FileInfo]:
    """Files (not folders) under a location, sorted by path; empty if it does not exist."""
    try:
        selector = pafs.FileSelector(location.path, recursive=recursive, allow_not_found=True)
        infos = location.fs.get_file_info(selector)
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "list", error) from None
    return sorted((info for info in infos if info.type == pafs.FileType.File), key=lambda info: info.path)


def delete_file(location: Location) -> None:
    """Delete one file; nothing happens if it is absent."""
    try:
        location.fs.delete_file(location.path)
    except FileNotFoundError:
        pass
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "delete", error) from None


def delete_dir(location: Location) -> None:
    """Delete a folder and everything in it; nothing happens if it is absent."""
    try:
        if location.fs.get_file_info(location.path).type != pafs.FileType.NotFound:
            location.fs.delete_dir(location.path)
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "delete", error) from None


def ensure_dir(location: Location) -> None:
    if location.is_s3:
        return  # S3 has no folders; objects create their own prefixes.
    try:
        location.fs.create_dir(location.path, recursive=True)
    except (OSError, pa.ArrowException) as error:
        raise _describe(location, "create", error) from None
