"""Training data: feats.scp/utt2spk loading and checks, chunk cropping, and the per-epoch batch sampler."""

from __future__ import annotations

from pathlib import Path

import kaldiio
import numpy as np
import pytest
import torch

from memsv_cli.data.dataset import ChunkDataset, SpecAugment, crop_chunk, load_training_data
from memsv_cli.data.sampler import ChunkBatchSampler
from memsv_cli.errors import MemsvError


def make_feats_dir(
    path: Path,
    num_speakers: int = 6,
    utts_per_speaker: int = 6,
    feat_dim: int = 16,
    frames: tuple[int, int] = (40, 90),
    seed: int = 0,
    separation: float = 1.5,
) -> Path:
    """Write a small learnable training dir: feats.ark + feats.scp + utt2spk (sorted), F-dim features.

    Each speaker has its own modulation frequency over time, spectral template and noise colour; all
    three survive per-chunk mean normalisation, so a small network can tell speakers apart.
    """
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    utt2spk = {}
    templates = rng.normal(size=(num_speakers, feat_dim)) * separation
    scales = 0.5 + rng.random((num_speakers, feat_dim)) * 1.5
    with kaldiio.WriteHelper(f"ark,scp:{path / 'feats.ark'},{path / 'feats.scp'}") as writer:
        for s in range(num_speakers):
            spk = f"spk{s:02d}"
            for u in range(utts_per_speaker):
                utt = f"{spk}-utt{u:02d}"
                t = int(rng.integers(frames[0], frames[1] + 1))
                # a speaker-specific slow modulation over time survives mean normalisation
                phase = rng.random() * 2 * np.pi
                mod = np.sin(np.arange(t)[:, None] * (0.2 + 0.1 * s) + phase) * templates[s][None, :]
                feats = mod + rng.normal(size=(t, feat_dim)) * scales[s][None, :]
                writer(utt, feats.astype(np.float32))
                utt2spk[utt] = spk
    (path / "utt2spk").write_text("".join(f"{u} {utt2spk[u]}\n" for u in sorted(utt2spk)))
    return path


def test_load_training_data_labels_speakers_in_sorted_order(tmp_path: Path) -> None:
    d = make_feats_dir(tmp_path / "d", num_speakers=3, utts_per_speaker=2)
    data = load_training_data(d)
    assert data.speakers == ["spk00", "spk01", "spk02"]
    assert data.labels == [0, 0, 1, 1, 2, 2]
    assert data.feat_dim == 16
    assert data.utts == sorted(data.utts)


def test_feats_key_missing_from_utt2spk_is_an_error_naming_it(tmp_path: Path) -> None:
    d = make_feats_dir(tmp_path / "d", num_speakers=3, utts_per_speaker=2)
    lines = (d / "utt2spk").read_text().splitlines()
    (d / "utt2spk").write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(MemsvError, match="spk00-utt00"):
        load_training_data(d)


def test_single_speaker_is_an_error(tmp_path: Path) -> None:
    d = make_feats_dir(tmp_path / "d", num_speakers=1, utts_per_speaker=3)
    with pytest.raises(MemsvError, match="at least 2"):
        load_training_data(d)


def test_empty_or_missing_data_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MemsvError, match="no such data directory"):
        load_training_data(tmp_path / "nope")
    (tmp_path / "e").mkdir()
    with pytest.raises(MemsvError, match="feats.scp"):
        load_training_data(tmp_path / "e")
    (tmp_path / "e" / "feats.scp").write_text("")
    (tmp_path / "e" / "utt2spk").write_text("")
    with pytest.raises(MemsvError, match="empty"):
        load_training_data(tmp_path / "e")


def test_short_utterances_are_tiled_to_the_chunk_length() -> None:
    feats = np.arange(30, dtype=np.float32).reshape(10, 3)
    chunk = crop_chunk(feats, 25, np.random.default_rng(0))
    assert chunk.shape == (25, 3)
    # wrapped: row k of the tiled utterance is row k % 10 of the original
    np.testing.assert_array_equal(chunk[:, 0], (np.arange(25) % 10) * 3)


def test_crop_is_a_contiguous_window_of_the_utterance() -> None:
    feats = np.arange(200, dtype=np.float32).reshape(100, 2)
    chunk = crop_chunk(feats, 20, np.random.default_rng(3))
    start = int(chunk[0, 0]) // 2
    np.testing.assert_array_equal(chunk, feats[start : start + 20])


def test_chunks_are_mean_normalised_and_reproducible_from_their_seed(tmp_path: Path) -> None:
    data = load_training_data(make_feats_dir(tmp_path / "d", num_speakers=2, utts_per_speaker=2))
    ds = ChunkDataset(data, chunk_frames=32)
    x, label = ds[(1, 1234)]
    assert x.shape == (32, 16) and x.dtype == torch.float32 and label == 0
    assert torch.allclose(x.mean(0), torch.zeros(16), atol=1e-5)
    assert torch.equal(ds[(1, 1234)][0], x)
    assert not torch.equal(ds[(1, 999)][0], x)
    ds.close()


def test_spec_augment_masks_time_and_frequency_bands() -> None:
    aug = SpecAugment(prob=1.0, num_t_mask=1, num_f_mask=1, max_t=5, max_f=3)
    out = aug(np.ones((50, 20), dtype=np.float32), np.random.default_rng(0))
    zero_rows = int((out == 0).all(axis=1).sum())
    zero_cols = int((out == 0).all(axis=0).sum())
    assert 1 <= zero_rows <= 5 and 1 <= zero_cols <= 3


def test_sampler_is_deterministic_per_epoch_and_differs_between_epochs() -> None:
    s = ChunkBatchSampler(20, batch_size=4, seed=7)
    s.set_epoch(0)
    a = list(s)
    assert a == list(s)
    s.set_epoch(1)
    b = list(s)
    assert a != b
    assert len(a) == 5 and all(len(batch) == 4 for batch in a)
    assert sorted(i for batch in a for i, _ in batch) == list(range(20))


def test_sampler_shards_are_disjoint_equal_sized_and_cover_the_data() -> None:
    shards = []
    for rank in range(2):
        s = ChunkBatchSampler(21, batch_size=5, seed=1, rank=rank, world_size=2)
        s.set_epoch(3)
        shards.append([i for batch in s for i, _ in batch])
    assert len(shards[0]) == len(shards[1]) == 10  # 11 per rank, 2 full batches of 5
    whole = ChunkBatchSampler(21, batch_size=11, seed=1, rank=0, world_size=1)
    whole.set_epoch(3)
    s0 = ChunkBatchSampler(21, batch_size=11, seed=1, rank=0, world_size=2)
    s1 = ChunkBatchSampler(21, batch_size=11, seed=1, rank=1, world_size=2)
    s0.set_epoch(3)
    s1.set_epoch(3)
    r0 = [i for b in s0 for i, _ in b]
    r1 = [i for b in s1 for i, _ in b]
    # 21 utterances padded to 22: every utterance appears on some rank, one twice
    assert set(r0) | set(r1) == set(range(21))
    assert len(r0) == len(r1) == 11


def test_sampler_that_cannot_fill_a_batch_is_an_error() -> None:
    with pytest.raises(MemsvError, match="batch_size"):
        ChunkBatchSampler(6, batch_size=4, seed=0, world_size=2)


def test_crop_reads_only_the_chunk_rows_and_equals_the_whole_read(tmp_path: Path) -> None:
    from memsv_cli.data.kaldi_dir import write_table

    d = make_feats_dir(tmp_path / "d", num_speakers=2, utts_per_speaker=3, frames=(60, 90))
    data = load_training_data(d)
    assert data.num_frames is None  # no utt2num_frames: whole reads
    whole = ChunkDataset(data, chunk_frames=32)
    frames = {u: kaldiio.load_mat(a).shape[0] for u, a in zip(data.utts, data.arks, strict=True)}
    write_table(d / "utt2num_frames", {u: str(n) for u, n in frames.items()})
    data_rows = load_training_data(d)
    rows = ChunkDataset(data_rows, chunk_frames=32)
    for i in range(len(data.utts)):
        assert torch.equal(whole[(i, 100 + i)][0], rows[(i, 100 + i)][0])  # the same draws, the same crop
    # bytes read: rows of the chunk (+ a header) vs whole matrices
    assert rows.bytes_read < 0.6 * whole.bytes_read
    assert rows.bytes_read == len(data.utts) * (32 * 16 * 4 + 15)
    whole.close()
    rows.close()


def test_offline_copies_are_one_item_per_original_drawn_with_aug_prob(tmp_path: Path) -> None:
    from memsv_cli.data.variants import group_variants, split_variant

    assert split_variant("sp0.9-id1/v/00001-reverb") == ("id1/v/00001", "sp0.9", "reverb")
    assert split_variant("id1/v/00001") == ("id1/v/00001", "", "")
    utts = ["a", "a-noise", "a-reverb", "b", "sp0.9-a", "sp0.9-a-music", "sp1.1-a"]
    groups = group_variants(utts)
    assert [g.original for g in groups] == ["a", "b"] and [g.size for g in groups] == [6, 1]
    rng = np.random.default_rng(0)
    picks = [utts[groups[0].pick(rng, aug_prob=0.6)] for _ in range(6000)]
    speeds = [split_variant(u)[1] for u in picks]
    for speed in ("", "sp0.9", "sp1.1"):  # speeds uniformly, 2000 +- 4 sigma (36.5)
        assert abs(speeds.count(speed) - 2000) < 150
    clean = [u for u in picks if split_variant(u)[1] == "" and split_variant(u)[2] == ""]
    assert abs(len(clean) / speeds.count("") - 0.4) < 0.05  # 1 - aug_prob, where copies exist
    assert "sp1.1-a" in picks and all(p != "b" for p in picks)
    # a group of one draws nothing: data without copies trains exactly as before
    state = rng.bit_generator.state
    assert groups[1].pick(rng, 0.6) == 3 and rng.bit_generator.state == state
