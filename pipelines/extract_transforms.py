"""The extraction pipeline's building blocks: list videos, decode them, run the networks, write records.

```
ListVideos ─► DecodeVideos ─► RunInference(FrameFeaturesHandler) ─► ToRecords ─► WriteToTFRecord
   │ duplicate ids   │ bad files
   └─────────────────┴──────────────────────────────────────────────► WriteDeadLetter
```

Every file matched ends up either as one record or as one dead letter (`source_file`, `id`, `reason`,
`message`; `byte_offset` and `record_base64` are null for video files), so
`videos_extracted + dead letters == files_matched` (Beam counter namespace `nextvlad`).
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from nextvlad.extraction.backbone import Backbone, BackboneSpec
from nextvlad.extraction.decode import VideoDecodeError, decode_video
from nextvlad.extraction.mel import log_mel_patches
from nextvlad.files import is_remote
from nextvlad.record_writer import frame_example_bytes
from nextvlad.records import AUDIO_SIZE, quantize
from pipelines.handler import enable_gpu_memory_growth
from pipelines.transforms import DEAD_LETTER, METRICS_NAMESPACE, dead_letter

logger = logging.getLogger(__name__)

DUPLICATE_ID = "duplicate_id"
_PROGRESS_SECONDS = 30  # how often a worker logs its progress


class VideoFile(NamedTuple):
    """One matched video file, with the id and labels it will be written under."""

    path: str
    size: int  # bytes, from the file listing
    video_id: str
    labels: tuple[int, ...]


def file_stem(path: str) -> str:
    """`videos/cat.mp4` → `cat` (the default video id)."""
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name[1:] else name


def _video_file(metadata: Any, labels: Mapping[str, tuple[tuple[int, ...], str | None]]) -> VideoFile:
    path = metadata.path
    name = path.rsplit("/", 1)[-1]
    for key in (path, name, file_stem(path)):
        if key in labels:
            ids, video_id = labels[key]
            return VideoFile(path, metadata.size_in_bytes, video_id or file_stem(path), ids)
    Metrics.counter(METRICS_NAMESPACE, "videos_unlabeled").inc()
    return VideoFile(path, metadata.size_in_bytes, file_stem(path), ())


def _unique_ids(item: tuple[str, Iterable[VideoFile]]) -> Iterator[Any]:
    """The first file (by path) keeps an id; any other file with the same id goes to the dead letter."""
    video_id, files = item
    first, *others = sorted(files, key=lambda f: f.path)
    yield first
    for other in others:
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER,
            dead_letter(
                other.path,
                None,
                DUPLICATE_ID,
                f"{other.path}: the id {video_id!r} is already taken by {first.path}; ids must be unique in "
                "a run (rename the file or map it to another id with --labels)",
                video_id=video_id,
            ),
        )


class ListVideos(beam.PTransform):
    """Matches the input pattern → one `VideoFile` per id; files whose id is taken go to the dead letter.

    Args:
        file_pattern: glob, local or gs://.
        labels: `{path | file name | stem: (label ids, id or None)}` from the `--labels` CSV.
    """

    def __init__(
        self, file_pattern: str, *, labels: Mapping[str, tuple[tuple[int, ...], str | None]]
    ) -> None:
        super().__init__()
        self._pattern = file_pattern
        self._labels = dict(labels)

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.pvalue.DoOutputsTuple:
        labels = self._labels

        def count(metadata: Any) -> Any:
            Metrics.counter(METRICS_NAMESPACE, "files_matched").inc()
            return metadata

        return (
            pbegin
            | "MatchFiles" >> fileio.MatchFiles(self._pattern, fileio.EmptyMatchTreatment.DISALLOW)
            | "CountFiles" >> beam.Map(count)
            | "ToVideoFiles" >> beam.Map(_video_file, labels)
            | "KeyById" >> beam.Map(lambda f: (f.video_id, f))
            # Grouping by id both finds duplicates and spreads the files over the workers.
            | "GroupById" >> beam.GroupByKey()
            | "UniqueIds" >> beam.FlatMap(_unique_ids).with_outputs(DEAD_LETTER, main="videos")
        )


def sample_videos(videos: beam.PCollection, count: int) -> beam.PCollection:
    """A deterministic sample of `count` videos: those whose id hashes lowest."""
    return (
        videos
        | "SampleVideos" >> beam.combiners.Top.Of(count, key=_id_hash, reverse=True)
        | "FlattenSample" >> beam.FlatMap(lambda chosen: chosen)
    )


def _id_hash(video: VideoFile) -> str:
    return hashlib.sha1(video.video_id.encode()).hexdigest()


class _DecodeFn(beam.DoFn):
    def __init__(self, image_size: tuple[int, int], max_frames: int, with_audio: bool, threads: int) -> None:
        self._image_size = tuple(image_size)
        self._max_frames = max_frames
        self._with_audio = with_audio
        self._threads = threads

    def setup(self) -> None:
        self._frames = Metrics.counter(METRICS_NAMESPACE, "frames_decoded")
        self._milliseconds = Metrics.counter(METRICS_NAMESPACE, "video_milliseconds")
        self._no_audio = Metrics.counter(METRICS_NAMESPACE, "videos_without_audio")
        self._done, self._last_report = 0, time.monotonic()

    def _decode(self, video: VideoFile) -> Any:
        kwargs = dict(
            image_size=self._image_size,
            max_frames=self._max_frames,
            with_audio=self._with_audio,
            threads=self._threads,
            name=video.path,
        )
        if not is_remote(video.path):  # FFmpeg reads local files itself
            return decode_video(video.path, **kwargs)
        try:
            handle = FileSystems.open(video.path)
        except Exception as e:
            raise VideoDecodeError(f"{video.path}: cannot be read ({e})", reason="unreadable") from None
        with handle:
            return decode_video(handle, **kwargs)

    def process(self, video: VideoFile) -> Iterator[Any]:
        try:
            if video.size == 0:
                raise VideoDecodeError(f"{video.path}: the file is empty (0 bytes)", reason="empty_file")
            decoded = self._decode(video)
        except VideoDecodeError as e:
            reason, message = e.reason, e.message
        except OSError as e:  # e.g. a remote object deleted or cut off while it was being read
            reason, message = "unreadable", f"{video.path}: reading failed part-way ({e})"
        except Exception as e:
            # Not a problem of the file that the decoder knows about: fail loudly, naming the file.
            raise RuntimeError(f"Decoding {video.path} failed: {e!r}") from e
        else:
            yield self._video(video, decoded)
            return
        yield beam.pvalue.TaggedOutput(
            DEAD_LETTER, dead_letter(video.path, None, reason, message, video_id=video.video_id)
        )

    def _video(self, video: VideoFile, decoded: Any) -> dict[str, Any]:
        seconds = min(decoded.duration, float(decoded.num_frames))
        self._frames.inc(decoded.num_frames)
        self._milliseconds.inc(int(round(seconds * 1000)))
        log_mel = None
        if not decoded.has_audio:
            self._no_audio.inc()
        elif self._with_audio:
            log_mel = log_mel_patches(decoded.audio, decoded.num_frames)  # [T, 96, 64]
        self._done += 1
        if time.monotonic() - self._last_report > _PROGRESS_SECONDS:
            logger.info("decoded %d videos in this worker (latest: %s)", self._done, video.path)
            self._last_report = time.monotonic()
        return {
            "id": video.video_id,
            "labels": list(video.labels),
            "path": video.path,
            "frames": decoded.frames,  # uint8 [T, H, W, 3]
            "log_mel": log_mel,  # float32 [T, 96, 64] or None
            "num_frames": decoded.num_frames,
        }


class DecodeVideos(beam.PTransform):
    """`VideoFile`s → decoded videos (dicts with `frames` uint8 [T, H, W, 3] and `log_mel`); bad files go
    to the dead letter with their reason.

    Args:
        image_size: (height, width) the backbone takes.
        max_frames: seconds kept per video.
        with_audio: decode audio into VGGish log-mel patches (only when a VGGish checkpoint is given).
        threads: decoder threads per video (0: one per core).
    """

    def __init__(
        self, *, image_size: tuple[int, int], max_frames: int, with_audio: bool, threads: int = 0
    ) -> None:
        super().__init__()
        self._fn = _DecodeFn(image_size, max_frames, with_audio, threads)

    def expand(self, videos: beam.PCollection) -> beam.pvalue.DoOutputsTuple:
        return videos | "Decode" >> beam.ParDo(self._fn).with_outputs(DEAD_LETTER, main="videos")


class FrameModels:
    """The networks one worker runs: the image backbone and, when given, VGGish."""

    def __init__(self, spec: BackboneSpec, vggish_checkpoint: str | None, precision: str, chunk: int) -> None:
        enable_gpu_memory_growth()
        self.backbone = Backbone(spec, precision=precision, chunk_size=chunk)
        self.vggish = None
        if vggish_checkpoint:
            from nextvlad.extraction.vggish import load_vggish

            self.vggish = load_vggish(vggish_checkpoint)
        self.chunk = chunk

    # Only methods are called from the handler: with --share_model this object lives in another process
    # and the handler holds a proxy, which forwards method calls (not attribute reads).
    def image_features(self, frames: np.ndarray) -> np.ndarray:
        """uint8 [N, H, W, 3] → float32 [N, D]."""
        return self.backbone.features(frames)

    def has_audio_network(self) -> bool:
        return self.vggish is not None

    def audio_embeddings(self, log_mel: np.ndarray) -> np.ndarray:
        """float32 [N, 96, 64] → float32 [N, 128], in chunks."""
        out = [
            np.asarray(self.vggish.predict_on_batch(log_mel[i : i + self.chunk]), dtype=np.float32)
            for i in range(0, log_mel.shape[0], self.chunk)
        ]
        return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


def _num_frames(video: Mapping[str, Any]) -> int:
    return int(video["num_frames"])


class FrameFeaturesHandler(ModelHandler[dict, dict, FrameModels]):
    """Runs the image backbone (and VGGish) over the frames of several videos at once.

    Beam batches whole videos until a batch holds `frames_per_batch` frames; the handler stacks every
    frame of the batch and runs the networks in chunks of `chunk` frames, so that short videos share an
    accelerator call.

    Args:
        spec: the image backbone.
        vggish_checkpoint: VGGish weights, or None (no audio network).
        precision: "float32" or "mixed" (float16 on GPU, bfloat16 on CPU).
        chunk: frames per network call.
        frames_per_batch: frames Beam collects before calling the handler.
        share_model_across_processes: one copy of the networks per worker machine (GPU workers).
    """

    def __init__(
        self,
        spec: BackboneSpec,
        *,
        vggish_checkpoint: str | None = None,
        precision: str = "float32",
        chunk: int = 32,
        frames_per_batch: int = 256,
        share_model_across_processes: bool = False,
    ) -> None:
        # With element_size_fn, BatchElements counts a batch's size in frames, not videos.
        super().__init__(
            min_batch_size=frames_per_batch,
            max_batch_size=frames_per_batch,
            element_size_fn=_num_frames,
            large_model=share_model_across_processes,
        )
        self._spec = spec
        self._vggish = vggish_checkpoint
        self._precision = precision
        self._chunk = chunk

    def load_model(self) -> FrameModels:
        return FrameModels(self._spec, self._vggish, self._precision, self._chunk)

    def run_inference(
        self, batch: Sequence[dict], model: FrameModels, inference_args: dict[str, Any] | None = None
    ) -> Iterable[dict]:
        frames = np.concatenate([video["frames"] for video in batch])  # [ΣT, H, W, 3]
        features = model.image_features(frames)  # [ΣT, D]
        audio = None
        with_mel = [video for video in batch if video["log_mel"] is not None]
        if with_mel and model.has_audio_network():
            audio = model.audio_embeddings(np.concatenate([v["log_mel"] for v in with_mel]))  # [ΣT', 128]
        Metrics.counter(METRICS_NAMESPACE, "batches").inc()
        out, start, audio_start = [], 0, 0
        for video in batch:
            count = video["num_frames"]
            embeddings = None
            if audio is not None and video["log_mel"] is not None:
                embeddings = audio[audio_start : audio_start + count]
                audio_start += count
            out.append(
                {
                    "id": video["id"],
                    "labels": video["labels"],
                    "path": video["path"],
                    "rgb": features[start : start + count],  # float32 [T, D]
                    "audio": embeddings,  # float32 [T, 128] or None
                }
            )
            start += count
        return out

    def get_num_bytes(self, batch: Sequence[dict]) -> int:
        return sum(video["frames"].nbytes for video in batch)

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


class _ToRecordFn(beam.DoFn):
    def __init__(self, pca_dir: str, feature_dim: int, vggish_pca: str | None) -> None:
        self._pca_dir = pca_dir
        self._feature_dim = feature_dim
        self._vggish_pca = vggish_pca

    def setup(self) -> None:
        from nextvlad.extraction.pca import load_pca_dir

        self._pca = load_pca_dir(self._pca_dir, feature_dim=self._feature_dim)
        self._audio_pca = None
        if self._vggish_pca:
            from nextvlad.extraction.vggish import VGGishPCA

            self._audio_pca = VGGishPCA(self._vggish_pca)
        self._extracted = Metrics.counter(METRICS_NAMESPACE, "videos_extracted")
        self._frames = Metrics.counter(METRICS_NAMESPACE, "frames_written")

    def process(self, video: dict) -> Iterator[bytes]:
        rgb = self._pca.quantized(video["rgb"])  # uint8 [T, 1024]
        if video["audio"] is None or self._audio_pca is None:
            # The dataset's extractor writes all-zero bytes when it has no audio features.
            audio = np.zeros((rgb.shape[0], AUDIO_SIZE), dtype=np.uint8)
        else:
            audio = quantize(self._audio_pca(video["audio"]))  # uint8 [T, 128]
        self._extracted.inc()
        self._frames.inc(rgb.shape[0])
        yield frame_example_bytes(video["id"], video["labels"], rgb, audio)


class ToRecords(beam.PTransform):
    """Frame features → serialized frame-level records (PCA-whitened, quantized rgb; VGGish audio or zeros).

    Args:
        pca_dir: folder with the rgb PCA (`mean.npy`, `eigenvecs.npy`, `eigenvals.npy`).
        feature_dim: the backbone's feature size (checked against the PCA).
        vggish_pca: `vggish_pca_params.npz`, or None when there is no audio network.
    """

    def __init__(self, *, pca_dir: str, feature_dim: int, vggish_pca: str | None) -> None:
        super().__init__()
        self._fn = _ToRecordFn(pca_dir, feature_dim, vggish_pca)

    def expand(self, videos: beam.PCollection) -> beam.PCollection:
        return videos | "Serialize" >> beam.ParDo(self._fn)


def spaced_rows(features: np.ndarray, count: int) -> np.ndarray:
    """`count` rows of `features` [T, D], evenly spaced (all of them when T <= count)."""
    total = features.shape[0]
    if total <= count:
        return features
    return features[np.linspace(0, total - 1, count).round().astype(int)]


def frames_per_video(num_frames: int, num_videos: int) -> int:
    """Frames each sampled video contributes so that `num_videos` videos give about `num_frames`."""
    return max(1, math.ceil(num_frames / max(1, num_videos)))
