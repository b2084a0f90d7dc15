"""Synthetic sequences from `spark3r_stream.synth` (procedural rooms with exact ground truth), as a FrameSource."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

from spark3r_stream.sources.base import Pacer, SourceOptions
from spark3r_stream.transport.messages import Frame


class SyntheticSource:
    """Renders `frames` views of scene `seed` up front (synth.render_sequence), then yields them with GT."""

    kind = "synth"

    def __init__(
        self,
        options: SourceOptions | None = None,
        *,
        seed: int = 0,
        frames: int = 60,
        height: int = 112,
        width: int = 112,
        path: str = "handheld",
        step_m: float | None = None,
        turn_deg: float | None = None,
        fov_deg: float | None = None,
        num_objects: int | None = None,
        fps: float = 30.0,
    ) -> None:
        from spark3r_stream.synth import render_sequence  # lazy: rendering pulls in scipy and the scene code

        self.options = options or SourceOptions()
        self.source_id = self.options.source_id or f"synth:seed={seed},frames={frames},path={path}"
        self.counters: Counter[str] = Counter()
        self.sequence = render_sequence(
            seed,
            frames,
            height=height,
            width=width,
            path=path,  # type: ignore[arg-type]  # render_sequence checks the path kind
            step_m=step_m,
            turn_deg=turn_deg,
            fov_deg=fov_deg,
            num_objects=num_objects,
            fps=fps,
        )
        self._indices = [i for i in range(self.sequence.num_frames) if self.options.selects(i)]
        self.info = {
            "kind": self.kind,
            "seed": seed,
            "path": path,
            "num_frames": len(self._indices),
            "num_native_frames": self.sequence.num_frames,
            "has_gt": True,
            "has_intrinsics": True,
            "timestamps_synthetic": True,
        }

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[Frame]:
        seq_data = self.sequence
        pacer = Pacer(self.options.rate)
        for seq, i in enumerate(self._indices):
            t_capture = float(seq_data.timestamps_s[i])
            pacer.wait(t_capture)
            yield Frame(
                frame_seq=seq,
                t_capture=t_capture,
                image=seq_data.images[i],
                source_id=self.source_id,
                world_from_cam=seq_data.world_from_cam[i],
                intrinsics=seq_data.intrinsics,
            )
            self.counters["frames"] += 1

    def close(self) -> None:
        """Nothing held open."""
