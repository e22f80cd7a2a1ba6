"""How the synthetic corpus of `nextvlad.synthetic` makes its videos: scenes, shots, labels and ratings.

How the data is built (so that *which* frames occur matters, not only their mean):

- Every frame shows one "scene": a fixed prototype vector plus per-frame noise, in the dequantized
  range [-2, 2]. Consecutive frames come in shots (runs of the same scene, ~2 frames on average).
- Most frames show background scenes shared by all classes; each video mixes them in its own random
  proportions (Dirichlet), so video means vary a lot for reasons unrelated to the labels.
- Each class owns one pair of distinctive scenes placed symmetrically around the background mean
  (`m + d_c` and `m - d_c + e_c`, with a small asymmetry `e_c`). A video with label `c` shows the
  pair in a minority of its frames (5-20%), half each, so in the mean-pooled features the pair
  nearly cancels: mean pooling sees only the weak `e_c` term and the random imbalance between the
  two halves, while a cluster/histogram pooling that counts frames near each scene detects the
  label easily.
- Audio follows the same recipe with its own scenes, but is weaker (its class scenes are present in
  60% of positive videos, in 5-15% of frames, with more noise) and complementary (the rgb scenes are
  missing from 10% of positive videos, independently of the audio).
- Labels: 1-4 per video (configurable), drawn without replacement with Zipf-like class frequencies
  (`p_c ~ 1 / (c + 1)`), like a real catalogue where a few classes dominate.

Settings (`--setting`): `standard` is the recipe above. `hard` makes the class evidence rarer and
shorter: a present label's rgb scenes fill 2-8% of the frames (audio 2-6%), they are missing from 20%
of positive videos (audio from 50%), and shots last one frame on average instead of two, so a short
video often shows a class in a single frame or none. Used with many classes (`--num_classes 200`),
where Zipf frequencies leave the tail classes with few examples, models stay far from the ceiling (GAP@20
~0.28 with the `demo` preset). A 3-branch mixture does not gain over one branch there (BENCHMARKS.md):
its branches miss the same absent or one-frame evidence. `noisy` keeps the `standard` videos but writes
incomplete and partly wrong labels, as machine-generated annotations are: each true label is left out of
the record with probability 0.3 (a video keeps at least one) and a class the video does not show is
added to 30% of the videos. The frames are those of `standard` with the same seed; only `labels` differ.
This is where a 3-branch mixture gains over one branch by more than seed noise (BENCHMARKS.md): the
branches fit different parts of the label noise, and their average keeps less of it.

Segment ratings (`--segments`), as in the 2019 release: the generator knows which scene every frame
shows, so it rates 5-frame windows (start times 0, 5, 10, ...; whole windows only) truthfully. For each
label of a video, windows where at least one frame shows one of the label's two rgb scenes are rated
present (1) and windows of the same video where none does absent (0), up to `--segment_ratings` of each,
drawn at random. The class is then in the video (its label) but not in every window, so a model has to
say *when*, not only *whether*; audio evidence does not count, as raters judge what is shown. The
ratings come from a random stream of their own: a video's frames are the same with or without them.

Speed: frames are gathered from precomputed quantized noisy copies of each scene (mixed per
128-byte chunk, so frames rarely repeat) and serialized with the hand-encoded writer of
`nextvlad.record_writer`; no per-frame float math or Python loop.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from nextvlad import record_writer, records

BLOCK_SIZE = 256  # videos generated together (vectorised); each block has its own random stream
_NUM_BACKGROUND_RGB = 32  # background scenes shared by all classes
_NUM_BACKGROUND_AUDIO = 16
_BACKGROUND_CONCENTRATION = 0.5  # Dirichlet concentration of a video's background mixture (low: few dominate)
_ZIPF_EXPONENT = 1.0  # class frequency ~ 1 / (rank + 1) ** exponent
_BANK_BUDGET_BYTES = 48 << 20  # memory for the precomputed noisy scene copies (both modalities)
_MAX_VARIANTS = 64  # noisy copies per scene (per chunk)
_MIN_VARIANTS = 4
_CHUNK = 128  # bytes per independently chosen noise chunk; frames are built from chunks of copies


@dataclass(frozen=True)
class _Modality:
    """How one feature stream (rgb or audio) is generated."""

    name: str
    size: int  # bytes per frame
    num_background: int  # background scenes shared by all classes
    center_std: float  # std of the background mean m
    background_std: float  # std of each background scene around m
    class_std: float  # std of a class's half-difference d_c
    asymmetry: float  # ||e_c|| relative to ||d_c||: how much of the pair leaks into the mean
    noise_std: float  # per-frame noise
    presence: float  # probability that a positive video shows this modality's class scenes
    fraction: tuple[float, float]  # share of frames showing a present label's scenes (uniform range)


_RGB = _Modality(
    name="rgb",
    size=records.RGB_SIZE,
    num_background=_NUM_BACKGROUND_RGB,
    center_std=0.25,
    background_std=0.5,
    class_std=0.5,
    asymmetry=0.1,
    noise_std=0.3,
    presence=0.9,
    fraction=(0.05, 0.20),
)
_AUDIO = _Modality(
    name="audio",
    size=records.AUDIO_SIZE,
    num_background=_NUM_BACKGROUND_AUDIO,
    center_std=0.25,
    background_std=0.5,
    class_std=0.35,
    asymmetry=0.1,
    noise_std=0.5,
    presence=0.6,
    fraction=(0.05, 0.15),
)


@dataclass(frozen=True)
class _Setting:
    """A corpus recipe: how each modality is generated and how long shots last."""

    rgb: _Modality
    audio: _Modality
    mean_shot_length: float  # frames per run of one scene, on average
    # Label noise of the records (the frames always follow the true labels): each true label is left out
    # of `labels` with probability `label_dropout` (a video keeps at least one), and one class the video
    # does not show is added with probability `spurious_label`, Zipf-weighted like the true ones.
    label_dropout: float = 0.0
    spurious_label: float = 0.0


SETTINGS = {
    "standard": _Setting(rgb=_RGB, audio=_AUDIO, mean_shot_length=2.0),
    # Rarer and shorter class evidence (see the module docstring).
    "hard": _Setting(
        rgb=dataclasses.replace(_RGB, presence=0.8, fraction=(0.02, 0.08)),
        audio=dataclasses.replace(_AUDIO, presence=0.5, fraction=(0.02, 0.06)),
        mean_shot_length=1.0,
    ),
    # Standard videos under incomplete and partly wrong labels, like machine-generated annotations.
    "noisy": _Setting(rgb=_RGB, audio=_AUDIO, mean_shot_length=2.0, label_dropout=0.3, spurious_label=0.3),
}


@dataclass(frozen=True)
class SceneBank:
    """The scene prototypes of a corpus (dequantized units), for analysis and tests.

    Scene ids: `0 .. num_background-1` are background scenes; class `c` owns scenes
    `num_background + 2c` (`m + d_c`) and `num_background + 2c + 1` (`m - d_c + e_c`).

    Attributes:
        rgb: float32 [num_background_rgb + 2C, 1024] rgb scene prototypes.
        audio: float32 [num_background_audio + 2C, 128] audio scene prototypes.
        num_background_rgb: number of background rgb scenes.
        num_background_audio: number of background audio scenes.
    """

    rgb: np.ndarray
    audio: np.ndarray
    num_background_rgb: int
    num_background_audio: int

    def class_scenes(self, label: int, modality: str = "rgb") -> tuple[int, int]:
        """The two scene ids owned by class `label` in `modality` ("rgb" or "audio")."""
        base = self.num_background_rgb if modality == "rgb" else self.num_background_audio
        return base + 2 * label, base + 2 * label + 1


def _seed_sequence(seed: int, *key: int) -> np.random.SeedSequence:
    return np.random.SeedSequence(seed, spawn_key=key)


def _prototypes(modality: _Modality, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Float prototypes [B + 2C, D]: backgrounds around m, then each class's pair around m."""
    d = modality.size
    center = rng.normal(0.0, modality.center_std, d)  # [D]
    background = rng.normal(0.0, modality.background_std, (modality.num_background, d))  # [B, D]
    # Centre the backgrounds exactly on m, so that a pair summing to 2m is, in the mean, the same as
    # showing more of the (video-dependent) background mixture.
    background += center - background.mean(axis=0)
    half = rng.normal(0.0, modality.class_std, (num_classes, d))  # [C, D]
    leak = rng.normal(0.0, modality.class_std * modality.asymmetry, (num_classes, d))  # [C, D]
    pairs = np.stack([center + half, center - half + leak], axis=1).reshape(2 * num_classes, d)  # [2C, D]
    return np.concatenate([background, pairs]).astype(np.float32)


def _noisy_copies(
    prototypes: np.ndarray, noise_std: float, num_variants: int, rng: np.random.Generator
) -> np.ndarray:
    """Quantized noisy copies, laid out for one flat gather: [S * V * chunks, CHUNK] uint8."""
    num_scenes, d = prototypes.shape
    chunks = d // _CHUNK
    out = np.empty((num_scenes, num_variants, d), dtype=np.uint8)
    step = max(1, (1 << 22) // (num_variants * d))  # scenes per batch: ~16 MB of float32 temporaries
    for s in range(0, num_scenes, step):
        batch = prototypes[s : s + step, None, :]  # [b, 1, D]
        noise = rng.standard_normal((batch.shape[0], num_variants, d), dtype=np.float32)  # [b, V, D]
        out[s : s + step] = records.quantize(batch + np.float32(noise_std) * noise)
    return out.reshape(num_scenes * num_variants * chunks, _CHUNK)


def scene_bank(num_classes: int, *, seed: int = 0) -> SceneBank:
    """The scene prototypes `nextvlad.synthetic.generate_corpus` uses for `num_classes` and `seed`.

    Args:
        num_classes: number of classes.
        seed: corpus seed.

    Returns:
        The `SceneBank` (float prototypes before noise and quantization).
    """
    rng = np.random.default_rng(_seed_sequence(seed, 0))
    return SceneBank(
        rgb=_prototypes(_RGB, num_classes, rng),
        audio=_prototypes(_AUDIO, num_classes, rng),
        num_background_rgb=_RGB.num_background,
        num_background_audio=_AUDIO.num_background,
    )


class GeneratedVideo(NamedTuple):
    """One generated video: its record and what the summary counts."""

    record: bytes
    labels: list[int]
    frames: int
    ratings: int  # rated (segment, class) pairs
    positive_ratings: int


class VideoGenerator:
    """Generates blocks of videos; holds the precomputed quantized scene copies."""

    def __init__(
        self,
        *,
        num_classes: int,
        seed: int,
        min_frames: int,
        max_frames: int,
        min_labels: int,
        max_labels: int,
        id_prefix: str,
        setting: _Setting,
        segment_ratings: int = 0,
    ) -> None:
        self.num_classes = num_classes
        self.segment_ratings = segment_ratings
        self.setting = setting
        self.seed = seed
        self.min_frames, self.max_frames = min_frames, max_frames
        self.min_labels, self.max_labels = min_labels, max_labels
        self.id_prefix = id_prefix
        bank = scene_bank(num_classes, seed=seed)
        num_scenes = {"rgb": bank.rgb.shape[0], "audio": bank.audio.shape[0]}
        bytes_per_variant = num_scenes["rgb"] * _RGB.size + num_scenes["audio"] * _AUDIO.size
        self.num_variants = int(
            np.clip(_BANK_BUDGET_BYTES // bytes_per_variant, _MIN_VARIANTS, _MAX_VARIANTS)
        )
        rng = np.random.default_rng(_seed_sequence(seed, 1))
        self.copies = {
            "rgb": _noisy_copies(bank.rgb, _RGB.noise_std, self.num_variants, rng),
            "audio": _noisy_copies(bank.audio, _AUDIO.noise_std, self.num_variants, rng),
        }
        weights = 1.0 / np.arange(1, num_classes + 1) ** _ZIPF_EXPONENT
        self.log_class_prior = np.log(weights / weights.sum())  # [C]

    def block(self, index: int, count: int) -> Iterator[GeneratedVideo]:
        """The videos `index * BLOCK .. index * BLOCK + count - 1`."""
        rng = np.random.default_rng(_seed_sequence(self.seed, 2, index))
        num_frames = rng.integers(self.min_frames, self.max_frames + 1, BLOCK_SIZE)  # [n]
        labels = self._labels(rng)  # [n, Lmax], -1 = no label
        starts = np.concatenate([[0], np.cumsum(num_frames)[:-1]])  # [n]
        total = int(num_frames.sum())
        video_of_frame = np.repeat(np.arange(BLOCK_SIZE), num_frames)  # [F]
        # Shots: a new one at every video start, and with probability 1/mean_length at any frame.
        new_shot = rng.random(total) < 1.0 / self.setting.mean_shot_length  # [F]
        new_shot[starts] = True
        shot_of_frame = np.cumsum(new_shot) - 1  # [F]
        video_of_shot = video_of_frame[new_shot]  # [S]
        frames, scenes = {}, {}
        for modality in (self.setting.rgb, self.setting.audio):
            frames[modality.name], scenes[modality.name] = self._frames(
                modality, rng, labels, video_of_shot, shot_of_frame
            )
        # Ratings and label noise draw from streams of their own, so that the frames are the same with or
        # without them.
        rating_rng = np.random.default_rng(_seed_sequence(self.seed, 3, index))
        recorded = self._recorded_labels(np.random.default_rng(_seed_sequence(self.seed, 4, index)), labels)
        first = index * BLOCK_SIZE
        for v in range(count):
            start, stop = starts[v], starts[v] + num_frames[v]
            true_labels = np.sort(labels[v][labels[v] >= 0]).tolist()
            video_labels = np.sort(recorded[v][recorded[v] >= 0]).tolist()
            segments = None
            if self.segment_ratings:  # raters judge what is shown: the true labels
                segments = self._ratings(rating_rng, true_labels, scenes["rgb"][start:stop])
            record = record_writer.frame_example_bytes(
                f"{self.id_prefix}{first + v:07d}",
                video_labels,
                frames["rgb"][start:stop],
                frames["audio"][start:stop],
                segments=segments,
            )
            scores = segments["segment_scores"] if segments else []
            yield GeneratedVideo(record, video_labels, int(num_frames[v]), len(scores), int(sum(scores)))

    def _ratings(self, rng: np.random.Generator, labels: list[int], scene: np.ndarray) -> dict[str, list]:
        """Truthful ratings of a video's 5-frame windows for each of its labels, in the 2019 fields.

        A window is present for a label when one of its frames shows one of the label's rgb scenes; up to
        `segment_ratings` such windows are rated 1, and up to as many windows of the same video without
        them 0.
        """
        length = records.SEGMENT_FRAMES
        windows = scene.size // length  # whole windows only: a rated segment has 5 frames
        by_window = scene[: windows * length].reshape(windows, length)  # [W, 5] rgb scene ids
        out: dict[str, list] = {"segment_start_times": [], "segment_labels": [], "segment_scores": []}
        for label in labels:
            pair = self.setting.rgb.num_background + 2 * label + np.arange(2)
            present = np.isin(by_window, pair).any(axis=1)  # [W]
            for rating, candidates in ((1.0, np.flatnonzero(present)), (0.0, np.flatnonzero(~present))):
                size = min(self.segment_ratings, candidates.size)
                for window in np.sort(rng.choice(candidates, size=size, replace=False)):
                    out["segment_start_times"].append(int(window) * length)
                    out["segment_labels"].append(label)
                    out["segment_scores"].append(rating)
        return out

    def _labels(self, rng: np.random.Generator) -> np.ndarray:
        """[n, max_labels] class ids without repeats, Zipf-weighted; unused slots are -1."""
        n, lmax = BLOCK_SIZE, self.max_labels
        counts = rng.integers(self.min_labels, lmax + 1, n)  # [n]
        if lmax == 0:
            return np.full((n, 0), -1, dtype=np.int64)
        # Gumbel top-k: the k largest of log p + Gumbel noise are a weighted draw without replacement.
        keys = self.log_class_prior + rng.gumbel(size=(n, self.num_classes))  # [n, C]
        top = np.argpartition(-keys, lmax - 1, axis=1)[:, :lmax]  # [n, Lmax]; keys are tie-free floats
        order = np.argsort(-np.take_along_axis(keys, top, axis=1), axis=1)
        ranked = np.take_along_axis(top, order, axis=1)  # [n, Lmax], most likely draw first
        return np.where(np.arange(lmax) < counts[:, None], ranked, -1).astype(np.int64)

    def _recorded_labels(self, rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
        """The labels written to the records [n, Lmax (+ 1 with spurious labels)] (-1 = none): `labels`
        under the setting's noise."""
        if not self.setting.label_dropout and not self.setting.spurious_label:
            return labels  # skips a [n, C] draw: ~20 of ~60 ms per block with 3,862 classes
        n = labels.shape[0]
        dropped = (labels >= 0) & (rng.random(labels.shape) < self.setting.label_dropout)  # [n, Lmax]
        emptied = ~((labels >= 0) & ~dropped).any(axis=1) & (labels[:, :1] >= 0).any(axis=1)  # [n]
        dropped[emptied, 0] = False  # the most likely draw is kept when all would go
        kept = np.where(dropped, -1, labels)
        # A spurious class: a Zipf-weighted draw among the classes the video does not show.
        keys = self.log_class_prior + rng.gumbel(size=(n, self.num_classes))  # [n, C]
        shown = np.zeros((n, self.num_classes), dtype=bool)
        rows, slots = np.nonzero(labels >= 0)
        shown[rows, labels[rows, slots]] = True
        spurious = np.argmax(np.where(shown, -np.inf, keys), axis=1)  # [n]
        add = (rng.random(n) < self.setting.spurious_label) & ~shown.all(axis=1)
        return np.concatenate([kept, np.where(add, spurious, -1)[:, None]], axis=1)

    def _frames(
        self,
        modality: _Modality,
        rng: np.random.Generator,
        labels: np.ndarray,
        video_of_shot: np.ndarray,
        shot_of_frame: np.ndarray,
    ) -> np.ndarray:
        """Quantized frames [F, D] for one modality, and the scene id of each frame [F]."""
        n, lmax = labels.shape
        nb = modality.num_background
        # Share of frames for each label slot: 0 for empty slots and when the modality lacks evidence.
        present = (labels >= 0) & (rng.random((n, lmax)) < modality.presence)  # [n, Lmax]
        share = np.where(present, rng.uniform(*modality.fraction, (n, lmax)), 0.0)  # [n, Lmax]
        mixture = rng.dirichlet(np.full(nb, _BACKGROUND_CONCENTRATION), n)  # [n, B]
        # Slots per video: B backgrounds, then each label's two scenes (half of its share each).
        probs = np.concatenate(
            [mixture * (1.0 - share.sum(axis=1, keepdims=True)), np.repeat(share / 2, 2, axis=1)], axis=1
        )  # [n, B + 2 Lmax]
        pair_scenes = nb + 2 * np.maximum(labels, 0)[:, :, None] + np.arange(2)  # [n, Lmax, 2]
        slot_scene = np.concatenate(
            [np.broadcast_to(np.arange(nb), (n, nb)), pair_scenes.reshape(n, 2 * lmax)], axis=1
        )  # [n, B + 2 Lmax]
        cdf = np.cumsum(probs, axis=1)  # [n, slots]
        u = rng.random(video_of_shot.size) * cdf[video_of_shot, -1]  # [S]
        slot = (u[:, None] >= cdf[video_of_shot]).sum(axis=1)  # [S], inverse-CDF draw
        slot = np.minimum(slot, cdf.shape[1] - 1)
        scene = slot_scene[video_of_shot, slot][shot_of_frame]  # [F]
        # Each chunk of each frame picks its own noisy copy of the scene.
        chunks = modality.size // _CHUNK
        variant = rng.integers(0, self.num_variants, (scene.size, chunks))  # [F, chunks]
        flat = (scene[:, None] * self.num_variants + variant) * chunks + np.arange(chunks)  # [F, chunks]
        frames = np.take(self.copies[modality.name], flat.ravel(), axis=0).reshape(scene.size, modality.size)
        return frames, scene
