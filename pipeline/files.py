"""Where input and output files live: local paths, s3://, gs://, https://, and globs of them.

Everything goes through pyarrow's filesystems (credentials from the standard environment:
AWS_* / AWS_ENDPOINT_URL for S3, GOOGLE_APPLICATION_CREDENTIALS for GCS); https:// goes through
fsspec's HTTP filesystem when fsspec is installed. No protocol code of our own lives here,
only the choice of filesystem, glob matching and the file's format and compression.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.fs as pafs

from pipeline.errors import SpecError, UsageError

Format = Literal["jsonl", "parquet", "csv", "tsv"]
Codec = Literal["gzip", "bz2", "zstd"]

_FORMATS: dict[str, Format] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
}
_CODECS: dict[str, Codec] = {
    ".gz": "gzip",
    ".gzip": "gzip",
    ".bz2": "bz2",
    ".zst": "zstd",
    ".zstd": "zstd",
}
SUPPORTED = ".jsonl, .ndjson, .csv, .tsv (each optionally .gz, .bz2 or .zst) or .parquet"
HEAD_BYTES = 64 * 1024  # hashed to notice a changed input that has no id column


@dataclass(frozen=True, slots=True)
class InputFile:
    """One input file: how to open it, what it holds, and what it looked like when listed."""

    uri: str  # as the user would write it (shown in messages, recorded in the store)
    fs: Any  # pyarrow.fs.FileSystem
    path: str  # the path inside `fs`
    format: Format
    codec: Codec | None
    size: int
    mtime_ns: int | None

    @property
    def name(self) -> str:
        return self.path.rstrip("/").rsplit("/", 1)[-1]

    def open_raw(self) -> Any:
        """The stored bytes (still compressed), as a pyarrow input stream."""
        return self.fs.open_input_stream(self.path, compression=None)

    def open(self) -> Any:
        """The file's content, decompressed on the fly, as a pyarrow input stream."""
        raw = self.open_raw()  # one codec path for every filesystem
        return pa.CompressedInputStream(raw, self.codec) if self.codec else raw

    def open_random_access(self) -> Any:
        return self.fs.open_input_file(self.path)

    def head_hash(self) -> str:
        with self.open_raw() as fh:
            return hashlib.sha256(fh.read(HEAD_BYTES)).hexdigest()[:32]


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def file_format(name: str) -> tuple[Format, Codec | None] | None:
    """(format, compression) from a file name, or None when flashpipe cannot read it."""
    lower = name.lower()
    codec: Codec | None = None
    for suffix, c in _CODECS.items():
        if lower.endswith(suffix):
            codec, lower = c, lower[: -len(suffix)]
            break
    for suffix, fmt in _FORMATS.items():
        if lower.endswith(suffix):
            if fmt == "parquet" and codec is not None:
                return None  # Parquet compresses inside; an outer codec is not a Parquet file
            return fmt, codec
    return None


def filesystem(uri: str) -> tuple[Any, str]:
    """The pyarrow filesystem for a URI and the path inside it."""
    if uri.startswith(("http://", "https://")):
        try:
            import fsspec
        except ImportError:
            raise SpecError(f"{uri!r}: https:// paths need fsspec (pip install fsspec)") from None
        handler = pafs.FSSpecHandler(fsspec.filesystem("https"))
        return pafs.PyFileSystem(handler), uri
    if not is_remote(uri):
        return pafs.LocalFileSystem(), str(Path(uri.removeprefix("file://")).absolute())
    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, str(path)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... per scheme
        raise SpecError(f"{uri!r}: {_first_line(exc)}") from None


def input_files(pattern: str) -> list[InputFile]:
    """The files an input path or glob names, sorted; no match or an unknown format is a
    job-file error (one line)."""
    if not is_remote(pattern):
        local = pattern.removeprefix("file://")
        paths = sorted(glob.glob(local, recursive=True)) if glob.has_magic(local) else [local]
        uris = [p for p in paths if Path(p).is_file()]
        if not uris:
            raise SpecError(f"input.path: {pattern!r} matches no file")
        fs: Any = pafs.LocalFileSystem()
        infos = fs.get_file_info([str(Path(p).absolute()) for p in uris])
        return [_input_file(u, fs, i) for u, i in zip(uris, infos, strict=True)]
    fs, path = filesystem(pattern)
    try:
        infos = _remote_matches(fs, path) if glob.has_magic(path) else fs.get_file_info([path])
    except OSError as exc:
        raise SpecError(f"input.path: {pattern!r} cannot be listed: {_first_line(exc)}") from None
    infos = [i for i in infos if i.type == pafs.FileType.File]
    if not infos:
        raise SpecError(f"input.path: {pattern!r} matches no file")
    scheme = pattern.split("://", 1)[0]
    out = []
    for info in sorted(infos, key=lambda i: i.path):
        uri = info.path if "://" in info.path else f"{scheme}://{info.path}"
        out.append(_input_file(uri, fs, info))
    return out


def _input_file(uri: str, fs: Any, info: Any) -> InputFile:
    kind = file_format(info.base_name)
    if kind is None:
        raise SpecError(f"input.path: {uri!r} is not {SUPPORTED}")
    mtime = info.mtime_ns if info.mtime is not None else None
    return InputFile(uri, fs, info.path, kind[0], kind[1], int(info.size or 0), mtime)


def _remote_matches(fs: Any, pattern: str) -> list[Any]:
    """List below the pattern's fixed prefix and keep what matches, segment by segment
    (`*` stays inside one segment, `**` spans any number)."""
    parts = pattern.split("/")
    fixed = []
    for part in parts:
        if glob.has_magic(part):
            break
        fixed.append(part)
    base = "/".join(fixed)
    deep = "**" in pattern or len(fixed) < len(parts) - 1
    selector = pafs.FileSelector(base, allow_not_found=True, recursive=deep)
    return [i for i in fs.get_file_info(selector) if _match(i.path.split("/"), parts)]


def _match(path: list[str], pattern: list[str]) -> bool:
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_match(path[i:], pattern[1:]) for i in range(len(path) + 1))
    return bool(path) and fnmatch.fnmatchcase(path[0], pattern[0]) and _match(path[1:], pattern[1:])


def open_output(uri: str) -> Any:
    """A writable pyarrow stream for a local path or a remote URI (s3://, gs://)."""
    fs, path = filesystem(uri)
    try:
        if not is_remote(uri):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        return fs.open_output_stream(path)
    except (OSError, FileNotFoundError) as exc:
        raise UsageError(f"-o {uri}: cannot write ({_first_line(exc)})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
