"""Image folder source: files sorted naturally, timestamps i / fps (synthetic), optional intrinsics.json."""

from __future__ import annotations

from pathlib import Path

from spark3r_stream.errors import SourceError
from spark3r_stream.sources.base import (
    IMAGE_SUFFIXES,
    FrameEntry,
    IndexedSource,
    SourceOptions,
    load_intrinsics_json,
    natural_key,
    require_dir,
)


def image_files(folder: Path) -> list[Path]:
    return sorted(
        (p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()),
        key=lambda p: natural_key(p.name),
    )


class FolderSource(IndexedSource):
    """Every image in a folder, in natural order (`frame_2` before `frame_10`)."""

    kind = "folder"

    def __init__(
        self,
        path: str | Path,
        options: SourceOptions | None = None,
        *,
        fps: float = 30.0,
        intrinsics: str | None = None,
    ) -> None:
        folder = require_dir(Path(path), "image folder")
        files = image_files(folder)
        if not files:
            raise SourceError(f"image folder {folder}: no images ({', '.join(IMAGE_SUFFIXES)})")
        if fps <= 0:
            raise SourceError(f"image folder {folder}: fps must be > 0, got {fps}")
        k_file = Path(intrinsics) if intrinsics else folder / "intrinsics.json"
        k = load_intrinsics_json(k_file) if (intrinsics or k_file.is_file()) else None
        entries = [FrameEntry(t_capture=i / fps, path=f, intrinsics=k) for i, f in enumerate(files)]
        super().__init__(folder, entries, options, timestamps_synthetic=True, info={"fps": fps})
