"""One entry point for the three training data types (WeSpeaker's names): ``feat``, ``raw``, ``shard``.

:func:`load_training_source` reads and checks a training dir; :meth:`TrainingSource.plan_and_dataset`
builds the epoch plan (which samples each rank trains on, resumable at any step) and the dataset the
DataLoader reads. For ``feat`` and ``raw`` the plan is a :class:`~memsv_cli.data.sampler.ChunkBatchSampler`
over a map-style dataset; for ``shard`` it is the :class:`~memsv_cli.data.shard_stream.ShardStream`
itself. Every plan has ``epoch``, ``start_step``, ``steps_per_epoch``, ``slots``, ``seed``, ``rank``,
``accum_steps`` and ``set_epoch(epoch, start_step)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader

from memsv_cli.data.dataset import ChunkDataset, SpecAugment, TrainingData, load_training_data
from memsv_cli.data.fbank import FbankConfig
from memsv_cli.data.raw import AudioData, RawChunks, collate_chunks, load_audio_data
from memsv_cli.data.sampler import ChunkBatchSampler
from memsv_cli.data.shard_stream import ShardData, ShardStream, load_shard_data
from memsv_cli.data.waveform import SPEEDS, WaveformChain
from memsv_cli.errors import MemsvError


@dataclass(frozen=True)
class LoaderOptions:
    """What the plan and the chain need besides the data (from the training settings)."""

    chunk_frames: int
    batch_size: int
    seed: int
    rank: int = 0
    world_size: int = 1
    accum_steps: int = 1
    spec_aug: SpecAugment | None = None
    aug_prob: float = 0.0
    speed_perturb: bool = False
    dither: float = 1.0
    aug_sources: dict[str, str | None] | None = None  # rirs, noise, music, babble data dirs
    aug_root: str | None = None  # run.sh's layout: rirs, musan_noise, musan_music, musan_speech
    aug_weights: dict[str, float] | None = None
    shuffle_buffer: int = 2500


@dataclass
class TrainingSource:
    """A loaded training dir of one data type."""

    kind: str  # feat | raw | shard
    data: TrainingData | AudioData | ShardData
    fbank: FbankConfig

    @property
    def path(self) -> Path:
        return self.data.path

    @property
    def speakers(self) -> list[str]:
        """Speaker ids, index = label (before speed perturbation's extra classes)."""
        return self.data.speakers

    @property
    def num_items(self) -> int:
        """Samples per epoch: one per original utterance."""
        return self.data.num_items

    @property
    def feat_dim(self) -> int:
        return self.data.feat_dim if isinstance(self.data, TrainingData) else self.fbank.num_mel_bins

    def feature_record(self) -> dict[str, Any] | None:
        """The fbank options the model sees (config ``features``, used to embed audio later): the online
        chain's for audio, the training dir's ``fbank.conf`` (extract-fbank) for features, None when a
        feature dir has none. Without dither: training's dither is ``data.dither``, inference uses 0."""
        if self.kind == "feat":
            conf = self.path / "fbank.conf"
            if not conf.is_file():
                return None
            cfg, source = FbankConfig.from_kaldi_conf(conf), "fbank.conf of the training features"
        else:
            cfg, source = self.fbank, "computed online in training"
        record = {k: v for k, v in asdict(cfg).items() if k != "dither"}
        return {**record, "source": source}

    def num_classes(self, speed_perturb: bool) -> int:
        """Classifier classes: every speaker, once per speed when speed perturbation is on."""
        return len(self.speakers) * (len(SPEEDS) if speed_perturb and self.kind != "feat" else 1)

    def chain(self, opts: LoaderOptions) -> WaveformChain:
        """The online processing of the raw and shard types."""
        from memsv_cli.data import online

        dirs = aug_source_dirs(opts.aug_sources, opts.aug_root)
        sources = None
        if opts.aug_prob > 0 and dirs:
            sources = online.AugmentSources(**dirs, category_weights=opts.aug_weights)
        return WaveformChain(
            opts.chunk_frames, len(self.speakers), self.fbank, opts.dither, opts.speed_perturb,
            opts.aug_prob, sources, opts.spec_aug,
        )  # fmt: skip

    def plan_and_dataset(self, opts: LoaderOptions) -> tuple[Any, Any]:
        """(epoch plan, dataset) for this rank."""
        if isinstance(self.data, ShardData):
            stream = ShardStream(
                self.data, self.chain(opts), opts.batch_size, opts.seed, opts.rank, opts.world_size,
                opts.accum_steps, opts.shuffle_buffer,
            )  # fmt: skip
            return stream, stream
        plan = ChunkBatchSampler(
            self.num_items, opts.batch_size, opts.seed, opts.rank, opts.world_size, opts.accum_steps
        )
        if isinstance(self.data, AudioData):
            return plan, RawChunks(self.data, self.chain(opts))
        return plan, ChunkDataset(self.data, opts.chunk_frames, opts.spec_aug, opts.aug_prob)


#: data.aug_root's layout (run.sh stage 1): kind -> subdir
AUG_ROOT_LAYOUT = {"rirs": "rirs", "noise": "musan_noise", "music": "musan_music", "babble": "musan_speech"}


def aug_source_dirs(sources: dict[str, str | None] | None, root: str | None) -> dict[str, str]:
    """The augmentation data dirs by kind: ``root``'s layout where present, ``sources`` where set."""
    dirs = {}
    if root:
        for kind, sub in AUG_ROOT_LAYOUT.items():
            if (Path(root) / sub / "wav.scp").is_file():
                dirs[kind] = str(Path(root) / sub)
    return {**dirs, **{k: v for k, v in (sources or {}).items() if v}}


#: what marks a training dir of each type, in the order ``auto`` looks for them
TYPE_MARKERS = {"shard": "shard.list", "feat": "feats.scp", "raw": "wav.scp"}


def detect_type(data_dir: str | Path) -> str:
    """``data.type: auto``: shard for a make-shards dir, feat for an extract-fbank dir, raw for a data dir."""
    for kind, marker in TYPE_MARKERS.items():
        if (Path(data_dir) / marker).is_file():
            return kind
    markers = ", ".join(TYPE_MARKERS.values())
    raise MemsvError(
        f"{data_dir}: no {markers}: not a training dir (make-shards, extract-fbank or prepare-data)"
    )


def load_training_source(kind: str, data_dir: str | Path, fbank: FbankConfig | None = None) -> TrainingSource:
    """Read and check a training dir of data type ``kind`` (feat, raw, shard, or auto)."""
    loaders = {"feat": load_training_data, "raw": load_audio_data, "shard": load_shard_data}
    if kind == "auto":
        if not Path(data_dir).is_dir():
            raise MemsvError(f"{data_dir}: no such data directory")
        kind = detect_type(data_dir)
    if kind not in loaders:
        raise MemsvError(f"unknown data.type {kind!r}; choose one of {', '.join(loaders)}")
    return TrainingSource(kind, loaders[kind](data_dir), fbank or FbankConfig())


def make_loader(
    plan: Any, dataset: Any, num_workers: int, pin: bool, worker_seed: int, init: Any
) -> DataLoader:
    """The DataLoader of one epoch of ``plan`` (a batch sampler over ``dataset``, or the stream)."""
    import torch

    gen = torch.Generator().manual_seed(worker_seed)
    common = {"num_workers": num_workers, "pin_memory": pin, "generator": gen, "worker_init_fn": init}
    if isinstance(plan, ChunkBatchSampler):
        return DataLoader(dataset, batch_sampler=plan, collate_fn=collate_chunks, **common)
    return DataLoader(dataset, batch_size=None, **common)
