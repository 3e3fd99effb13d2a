"""The sharded augmenting loader: equal shards, determinism, exact resume, consistency, bad records."""
import cv2
import numpy as np
import pytest

from conftest import corrupt_copy
from facealign.data.codec import HeatmapCodec
from facealign.data.loader import TrainLoader
from facealign.data.pipeline import SampleConfig
from facealign.data.sampler import ShardedSampler
from facealign.cli.pack import main as pack_main
from facealign.data.records import DataError, RecordFile
from facealign.data.schemes import IBUG68
from facealign.data.transforms import AugmentConfig, apply, photometric, random_convolution


@pytest.fixture(scope="module")
def synth_set(tmp_path_factory):
    prefix = tmp_path_factory.mktemp("synth") / "train"
    assert pack_main(["--synthetic", "40", "--seed", "5", "--workers", "2", "--quiet", str(prefix)]) == 0
    return str(prefix)


def test_sampler_gives_every_rank_the_same_number_of_batches():
    n, batch, world = 103, 4, 3
    shards = [ShardedSampler(n, batch, r, world, seed=7) for r in range(world)]
    assert {s.steps_per_epoch for s in shards} == {103 // 12}
    epoch = [s.epoch_indices(2) for s in shards]
    assert all(len(e) == 8 * 4 for e in epoch)
    combined = np.concatenate(epoch)
    assert len(set(combined.tolist())) == len(combined)  # disjoint
    perm = np.random.default_rng((7, 2)).permutation(n)[:8 * 12]
    assert set(combined.tolist()) == set(perm.tolist())  # the epoch's global permutation, cut to full steps
    assert not np.array_equal(shards[0].epoch_indices(2), shards[0].epoch_indices(3))  # reshuffled per epoch
    np.testing.assert_array_equal(shards[1].batch_indices(2, 5), epoch[1][20:24])


def test_sampler_refuses_too_little_data():
    with pytest.raises(ValueError, match="5 records cannot fill one step of 2 rank"):
        ShardedSampler(5, 4, 0, 2)


def _batches(path, **kw):
    kw.setdefault("cfg", SampleConfig(augment=AugmentConfig(color=0.2, blur=0.2, occlusion=0.2)))
    with TrainLoader(path, batch_size=4, codec=HeatmapCodec(), seed=11, **kw) as loader:
        return {b.step: b for b in loader.epoch(1)}, loader


def test_batches_do_not_depend_on_workers_and_resume_exactly(synth_set):
    inline, _ = _batches(synth_set)
    pooled, _ = _batches(synth_set, workers=2, prefetch=2)
    assert sorted(inline) == list(range(10))
    for step in inline:
        np.testing.assert_array_equal(inline[step].images, pooled[step].images)
        np.testing.assert_array_equal(inline[step].heatmaps, pooled[step].heatmaps)
    with TrainLoader(synth_set, batch_size=4, codec=HeatmapCodec(), seed=11,
                     cfg=SampleConfig(augment=AugmentConfig(color=0.2, blur=0.2, occlusion=0.2))) as loader:
        resumed = list(loader.epoch(1, start_step=7))
    assert [b.step for b in resumed] == [7, 8, 9]
    for b in resumed:
        np.testing.assert_array_equal(b.images, inline[b.step].images)
        np.testing.assert_array_equal(b.landmarks, inline[b.step].landmarks)


def test_two_ranks_split_the_epoch(synth_set):
    seen = []
    for rank in range(2):
        with TrainLoader(synth_set, batch_size=4, codec=HeatmapCodec(), rank=rank, world_size=2, seed=3) as ld:
            assert ld.steps_per_epoch == 5
            seen.append(np.concatenate([b.indices for b in ld.epoch(0)]))
    assert len(set(seen[0]) & set(seen[1])) == 0 and len(set(seen[0]) | set(seen[1])) == 40


def test_crops_landmarks_and_heatmaps_agree(synth_set):
    cfg = SampleConfig(augment=AugmentConfig())  # the reference's augmentation: rotation, scale, flip
    batches, loader = _batches(synth_set, cfg=cfg)
    records = RecordFile(synth_set)
    codec = HeatmapCodec()
    flips = 0
    for b in batches.values():
        assert b.images.shape == (4, 3, 128, 128) and b.images.dtype == np.uint8
        assert b.heatmaps.shape == (4, 68, 64, 64)
        np.testing.assert_array_equal(b.heatmaps, codec.encode_batch(b.landmarks))
        for i, index in enumerate(b.indices):
            stored = records.sample(int(index))
            # the batch's transform (including any flip) reproduces the crop from the stored image...
            expected = cv2.warpAffine(stored.image, b.transforms[i], (128, 128), flags=cv2.INTER_LINEAR)
            got = b.images[i].transpose(1, 2, 0)
            mirrored = np.linalg.det(b.transforms[i][:, :2]) < 0
            if not mirrored:
                assert np.abs(got.astype(int) - expected).max() <= 1
            # ...and maps the stored landmarks onto the batch's, relabelled by the flip permutation
            mapped = apply(b.transforms[i], stored.landmarks)[:, :2]
            if mirrored:
                flips += 1
                mapped = mapped[list(IBUG68.flip)]
            np.testing.assert_allclose(mapped, b.landmarks[i][:, :2], atol=1e-3)
    assert 0 < flips < 40  # p = 0.5
    assert loader.stats["samples"] == 40


def test_reference_augmentation_keeps_landmarks_inside_or_falls_back(synth_set):
    batches, loader = _batches(synth_set, cfg=SampleConfig())
    # a draw keeps every landmark in [0, 128) before the flip; mirrored about the pixel grid's centre, (-1, 128)
    inside = sum(((b.landmarks[..., :2] > -1) & (b.landmarks[..., :2] < 128)).all(axis=(1, 2)).sum()
                 for b in batches.values())
    assert inside == 40  # a fall-back crop (the centred one) keeps them inside too
    assert 0 <= loader.stats["fallbacks"] < 40


def test_data_wait_is_the_time_the_trainer_waits_for_a_batch(synth_set):
    """With workers, the first batch is waited for (the pool starts); a trainer slower than the workers then
    waits for none: the batches are ready when asked for. ``wait_s`` feeds the log's data-wait share."""
    import time

    with TrainLoader(synth_set, batch_size=4, codec=HeatmapCodec(), seed=11, workers=1, prefetch=2) as loader:
        waits = []
        for b in loader.epoch(0):
            waits.append(b.wait_s)
            time.sleep(0.5)  # a step far longer than rendering four crops
    assert waits[0] > 0.05, waits  # a spawned worker's start-up, at least
    assert max(waits[2:]) < 0.05, waits


def test_bad_record_raises_with_file_and_index_or_is_skipped_and_counted(synth_set, tmp_path):
    bad = corrupt_copy(synth_set, tmp_path / "bad", 6)
    codec = HeatmapCodec()
    with TrainLoader(bad, batch_size=4, codec=codec, shuffle=False) as loader:
        with pytest.raises(DataError, match=r"bad\.rec: record 6 \(key 6\): image bytes fail their CRC-32"):
            list(loader.epoch(0))
    cfg = SampleConfig(on_error="skip")
    with TrainLoader(bad, batch_size=4, codec=codec, shuffle=False, cfg=cfg, workers=1) as loader:
        batches = list(loader.epoch(0))
    assert all(len(b.indices) == 4 for b in batches)  # batch sizes stay equal across ranks
    assert loader.stats["skipped"] == 1 and list(loader.stats["skipped_by_file"].values()) == [1]
    assert 6 not in np.concatenate([b.indices for b in batches]).tolist()
    skips = [s for b in batches for s in b.skips]
    assert len(skips) == 1 and skips[0][0].endswith("bad.rec") and skips[0][1] == 6 and "CRC-32" in skips[0][2]


def test_wrong_landmark_count_is_an_error(synth_set):
    with TrainLoader(synth_set, batch_size=4, codec=HeatmapCodec(), cfg=SampleConfig(num_points=98)) as loader:
        with pytest.raises(DataError, match="has 68 landmarks, the job expects 98"):
            next(loader.epoch(0))


def _random_convolution_reference(crop, k, weights, alpha):
    """RandConv written out: a zero-mean 3 -> 3 channel convolution over the reflected crop, each channel brought to
    the crop's mean and spread, mixed with the crop."""
    f = crop.astype(np.float64)
    r = k // 2
    padded = np.pad(f, ((r, r), (r, r), (0, 0)), mode="symmetric")  # OpenCV's BORDER_REFLECT
    h, w = crop.shape[:2]
    out = np.zeros_like(f)
    for dy in range(k):
        for dx in range(k):
            out += np.einsum("hwi,oi->hwo", padded[dy:dy + h, dx:dx + w], weights[:, :, dy, dx])
    out = (out - out.mean((0, 1))) / (out.std((0, 1)) + 1e-3) * (f.std((0, 1)) + 1e-3) + f.mean((0, 1))
    return np.clip(alpha * f + (1 - alpha) * out, 0, 255)


def test_random_convolution_matches_its_numpy_reference():
    crop = (np.random.default_rng(1).random((24, 20, 3)) * 255).astype(np.uint8)
    for seed in range(6):
        rng = np.random.default_rng(seed)
        out = random_convolution(rng, crop)
        rng = np.random.default_rng(seed)  # the same draws, in the same order
        k = int(rng.choice((1, 3, 5, 7)))
        weights = rng.normal(0.0, 1.0 / np.sqrt(k * k * 3), (3, 3, k, k))
        expected = _random_convolution_reference(crop, k, weights, rng.uniform(0.0, 1.0))
        assert out.dtype == np.uint8 and out.shape == crop.shape
        assert np.abs(out.astype(np.float64) - expected).max() <= 1.0, seed  # float32 against float64, truncation


def test_greyscale_and_random_convolution_only_when_drawn():
    crop = (np.random.default_rng(2).random((16, 16, 3)) * 255).astype(np.uint8)
    grey = photometric(np.random.default_rng(0), crop.copy(), AugmentConfig(grey=1.0))
    assert (grey[:, :, 0] == grey[:, :, 1]).all() and (grey[:, :, 1] == grey[:, :, 2]).all()
    assert np.abs(grey[:, :, 0] - crop @ np.array([0.299, 0.587, 0.114])).max() <= 1  # luma
    changed = photometric(np.random.default_rng(0), crop.copy(), AugmentConfig(randconv=1.0))
    assert not np.array_equal(changed, crop)
    assert np.array_equal(photometric(np.random.default_rng(0), crop.copy(), AugmentConfig()), crop)
