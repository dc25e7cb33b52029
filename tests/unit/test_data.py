"""hybridsweep.data on the real CIFAR-10 JPEG archive (decoded once into the persistent test cache) and on tiny
image folders written to tmp_path for layouts, races and errors."""

import multiprocessing
import pickle
import tarfile
import time
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.io import write_png

from hybridsweep.data import (
    CIFAR_STATS,
    Dataset,
    calibration_batch,
    decoding,
    eval_batches,
    load_dataset,
    sources,
    steps_per_epoch,
    train_batches,
)
from hybridsweep.data.augment import augment, normalize
from hybridsweep.errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _load(root, cache_root, **overrides):
    settings = dict(stats="cifar10", train_subset=None, test_subset=None, cache_root=Path(cache_root))
    return load_dataset(overrides.pop("name", "imagefolder"), str(root), **{**settings, **overrides})


@pytest.fixture(scope="module")
def cifar10(shared_data, test_cache) -> Dataset:
    started = time.perf_counter()
    ds = _load(shared_data / "cifar10-jpg.tar.gz", test_cache)
    print(f"cifar10-jpg loaded in {time.perf_counter() - started:.1f} s (the first run decodes 60k JPEGs)")
    return ds


def _write_tree(root: Path, classes=("cat", "dog"), per_class=(3, 2), size=(8, 8), seed=0) -> list[torch.Tensor]:
    """PNG image folder (lossless, so decoded pixels are known); returns the images train first, in sorted order."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for split, n in zip(("train", "test"), per_class, strict=True):
        for name in classes:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                image = torch.randint(0, 256, (3, *size), generator=generator, dtype=torch.uint8)
                write_png(image, str(folder / f"{i:03d}.png"))
                images.append(image)
    return images


# ---- the real CIFAR-10 JPEG archive ---------------------------------------------------------------------------


def test_cifar10_archive_decodes_to_uint8_tensors(cifar10):
    assert cifar10.classes == CIFAR10_CLASSES
    assert cifar10.train_x.shape == (50_000, 3, 32, 32) and cifar10.test_x.shape == (10_000, 3, 32, 32)
    assert cifar10.train_x.dtype == cifar10.test_x.dtype == torch.uint8
    assert cifar10.train_y.dtype == torch.int64
    assert torch.bincount(cifar10.train_y).tolist() == [5000] * 10
    assert torch.bincount(cifar10.test_y).tolist() == [1000] * 10
    assert (cifar10.mean, cifar10.std) == CIFAR_STATS["cifar10"]
    assert len(cifar10.fingerprint) == 24


def test_second_load_reads_the_cache(cifar10, shared_data, test_cache, monkeypatch):
    def no_decoding(*args):
        raise AssertionError("decoded again instead of reading the cache")

    monkeypatch.setattr(decoding, "_decode_images", no_decoding)  # the proof: no image is decoded again
    again = _load(shared_data / "cifar10-jpg.tar.gz", test_cache)
    assert torch.equal(again.train_x, cifar10.train_x) and torch.equal(again.test_y, cifar10.test_y)
    assert again.fingerprint == cifar10.fingerprint


def test_subsets_are_deterministic_stratified_and_sized(cifar10, shared_data, test_cache):
    archive = shared_data / "cifar10-jpg.tar.gz"
    a = _load(archive, test_cache, train_subset=1000, test_subset=205)
    b = _load(archive, test_cache, train_subset=1000, test_subset=205)
    other_seed = _load(archive, test_cache, train_subset=1000, test_subset=205, seed=1)
    assert len(a.train_y) == 1000 and len(a.test_y) == 205
    assert torch.bincount(a.train_y).tolist() == [100] * 10
    assert sorted(torch.bincount(a.test_y).tolist()) == [20] * 5 + [21] * 5
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_x, b.test_x) and a.fingerprint == b.fingerprint
    assert not torch.equal(a.train_x, other_seed.train_x) and a.fingerprint != other_seed.fingerprint
    assert a.fingerprint != cifar10.fingerprint
    # every subset image is an image of the full split with the same label
    first = a.train_x[0].flatten()
    matches = (cifar10.train_x.flatten(1) == first).all(1).nonzero().flatten()
    assert cifar10.train_y[matches].eq(a.train_y[0]).any()


def test_stratified_indices_balance_uneven_classes():
    labels = torch.tensor([0] * 50 + [1] * 3 + [2] * 20)
    picked = sources._stratified_indices(labels, 30, seed=0)
    assert len(picked.unique()) == 30
    assert torch.bincount(labels[picked]).tolist() in ([14, 3, 13], [13, 3, 14])
    assert torch.equal(picked, sources._stratified_indices(labels, 30, seed=0))


def test_calibration_batch_is_balanced_and_fixed(cifar10):
    x, y = calibration_batch(cifar10, 64, seed=3)
    assert x.shape == (64, 3, 32, 32) and x.dtype == torch.uint8
    assert sorted(torch.bincount(y, minlength=10).tolist()) == [6] * 6 + [7] * 4
    assert torch.bincount(y[:10], minlength=10).tolist() == [1] * 10  # any prefix is balanced
    x2, y2 = calibration_batch(cifar10, 64, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(UserError, match="criterion.calibration_size"):
        calibration_batch(cifar10, 50_001, setting="criterion.calibration_size")


# ---- augmentation and normalisation ---------------------------------------------------------------------------


def test_augment_is_a_real_crop_and_flips_some(cifar10):
    x = cifar10.train_x[:256]
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = F.pad(x, (4, 4, 4, 4))
    flipped, rows = 0, set()
    for i in range(len(x)):
        found = [
            (dy, mirror)
            for dy in range(9)
            for dx in range(9)
            for mirror in (False, True)
            if torch.equal(out[i], _crop(padded[i], dy, dx, mirror))
        ]
        assert found, f"image {i} is not a crop of its padded original"
        flipped += all(mirror for _, mirror in found)
        rows.add(found[0][0])
    assert 0.3 < flipped / len(x) < 0.7
    assert rows == set(range(9))


def _crop(image, dy, dx, mirror):
    crop = image[:, dy : dy + 32, dx : dx + 32]
    return crop.flip(-1) if mirror else crop


def test_augment_follows_the_generator(cifar10):
    x = cifar10.train_x[:64]
    a = augment(x, torch.Generator().manual_seed(5))
    assert torch.equal(a, augment(x, torch.Generator().manual_seed(5)))
    assert not torch.equal(a, augment(x, torch.Generator().manual_seed(6)))
    assert torch.equal(augment(x, torch.Generator(), padding=0, flip=False), x)


def test_normalize_with_auto_stats_gives_zero_mean_unit_std(shared_data, test_cache):
    ds = _load(shared_data / "cifar10-jpg.tar.gz", test_cache, stats="auto")
    assert ds.mean == pytest.approx(CIFAR_STATS["cifar10"][0], abs=0.002)  # JPEG barely moves the mean
    sample = ds.train_x[torch.randperm(50_000, generator=torch.Generator().manual_seed(0))[:20_000]]
    out = normalize(sample, ds.mean, ds.std, channels_last=False)
    assert out.dtype == torch.float32
    assert out.mean(dim=(0, 2, 3)).abs().max() < 0.02
    assert (out.std(dim=(0, 2, 3)) - 1).abs().max() < 0.02


def test_normalize_formula_and_channels_last(cifar10):
    x = cifar10.test_x[:32]
    mean, std = CIFAR_STATS["cifar100"]
    expected = (x.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = normalize(x, mean, std, channels_last=True)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


# ---- epoch iterators ------------------------------------------------------------------------------------------


def _numbered(n: int) -> Dataset:
    """Image i is filled with i % 256 and labelled i, so a batch shows exactly which images it holds."""
    x = (torch.arange(n) % 256).to(torch.uint8).view(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    y = torch.arange(n)
    return Dataset("numbered", [str(i) for i in range(n)], x, y, x[:10], y[:10], (0.0,) * 3, (1.0,) * 3, "f")


def test_train_batches_visit_every_image_once_in_seeded_order():
    ds = _numbered(300)
    generator = torch.Generator().manual_seed(0)
    batches = list(train_batches(ds, 64, device="cpu", generator=generator, augment=False, drop_last=False))
    assert len(batches) == steps_per_epoch(ds, 64, drop_last=False) == 5
    ids = torch.cat([y for _, y in batches])
    assert sorted(ids.tolist()) == list(range(300)) and ids.tolist() != list(range(300))
    for x, y in batches:
        assert x.dtype == torch.float32 and x.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal((x * 255).round().to(torch.uint8), ds.train_x[y])
    again = list(train_batches(ds, 64, device="cpu", generator=torch.Generator().manual_seed(0), augment=False))
    assert len(again) == steps_per_epoch(ds, 64) == 4
    assert torch.equal(again[0][1], batches[0][1])


def test_train_batches_augment_real_data(cifar10, shared_data, test_cache):
    ds = _load(shared_data / "cifar10-jpg.tar.gz", test_cache, train_subset=1000)
    batches = list(train_batches(ds, 128, device="cpu", generator=torch.Generator().manual_seed(0)))
    assert len(batches) == 7
    x, y = batches[0]
    assert x.shape == (128, 3, 32, 32) and y.shape == (128,) and y.dtype == torch.int64


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batches_match_the_cpu_for_one_seed(shared_data, test_cache):
    ds = _load(shared_data / "cifar10-jpg.tar.gz", test_cache, train_subset=512)
    cpu = train_batches(ds, 128, device="cpu", generator=torch.Generator().manual_seed(0))
    gpu = train_batches(ds, 128, device="cuda", generator=torch.Generator().manual_seed(0))
    for (x_cpu, y_cpu), (x_gpu, y_gpu) in zip(cpu, gpu, strict=True):
        assert x_gpu.is_cuda and x_gpu.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(x_gpu.cpu(), x_cpu)
        assert torch.equal(y_gpu.cpu(), y_cpu)


def test_eval_batches_are_in_order_with_a_short_last_batch():
    ds = _numbered(300)
    batches = list(eval_batches(ds, 4, device="cpu"))
    assert [len(y) for _, y in batches] == [4, 4, 2]
    assert torch.cat([y for _, y in batches]).tolist() == list(range(10))
    train = list(eval_batches(ds, 128, device="cpu", split="train", channels_last=False))
    assert [len(y) for _, y in train] == [128, 128, 44] and train[0][0].is_contiguous()


def test_batch_larger_than_the_split_is_a_user_error():
    with pytest.raises(UserError, match="data.train_subset"):
        next(train_batches(_numbered(100), 128, device="cpu", generator=torch.Generator()))


# ---- image folders: layouts, cache keys, races ----------------------------------------------------------------


def test_image_folder_tree_and_archive_with_a_top_folder(tmp_path):
    images = _write_tree(tmp_path / "data" / "pets")
    (tmp_path / "data" / "pets" / "train" / "cat" / "._000.png").write_bytes(b"macOS resource fork")
    archive = tmp_path / "pets.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "data" / "pets", arcname="pets")
    tree = _load(tmp_path / "data" / "pets", tmp_path / "cache")
    packed = _load(archive, tmp_path / "cache")
    for ds in (tree, packed):
        assert ds.classes == ["cat", "dog"]
        assert torch.equal(ds.train_x, torch.stack(images[:6])) and torch.equal(ds.test_x, torch.stack(images[6:]))
        assert ds.train_y.tolist() == [0, 0, 0, 1, 1, 1] and ds.test_y.tolist() == [0, 0, 1, 1]
    assert not (tmp_path / "cache" / "unpacked").exists()  # archives are decoded from the stream


def test_sample_shape_and_class_count_come_from_the_images(tmp_path):
    _write_tree(tmp_path / "data", classes=("a", "b", "c"), size=(6, 10))
    ds = _load(tmp_path / "data", tmp_path / "cache")
    assert (ds.input_shape, ds.num_classes) == ((3, 6, 10), 3)


def test_changed_file_invalidates_the_tree_cache(tmp_path):
    root = tmp_path / "data"
    _write_tree(root)
    first = _load(root, tmp_path / "cache")
    replacement = torch.zeros(3, 8, 8, dtype=torch.uint8)
    write_png(replacement, str(root / "train" / "cat" / "000.png"))
    second = _load(root, tmp_path / "cache")
    assert torch.equal(second.train_x[0], replacement) and not torch.equal(first.train_x[0], replacement)
    assert second.fingerprint != first.fingerprint


def test_images_of_another_size_are_resized_with_a_warning(tmp_path):
    _write_tree(tmp_path / "data")
    write_png(torch.full((3, 12, 10), 200, dtype=torch.uint8), str(tmp_path / "data" / "test" / "dog" / "big.png"))
    with pytest.warns(UserWarning, match="resized"):
        ds = _load(tmp_path / "data", tmp_path / "cache")
    assert ds.test_x.shape == (5, 3, 8, 8) and ds.test_x[-1].eq(200).all()


def _load_in_child(root: str, cache_root: str, barrier, results) -> None:
    """Run in a child process: a slow decode makes the two processes overlap on the same cache entry."""
    decode = decoding._decode_images
    decoded = []
    decoding._decode_images = lambda *args: (time.sleep(1), decoded.append(1), decode(*args))[2]
    barrier.wait()
    ds = _load(root, cache_root, stats="auto")
    results.put((ds.fingerprint, ds.train_x.sum().item(), len(decoded)))


def test_two_processes_build_the_same_entry_once(tmp_path):
    _write_tree(tmp_path / "pets")
    archive = tmp_path / "pets.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "pets", arcname=".")
    context = multiprocessing.get_context("fork")  # the children start at once, torch already imported
    barrier, results = context.Barrier(2), context.Queue()
    args = (str(archive), str(tmp_path / "cache"), barrier, results)
    children = [context.Process(target=_load_in_child, args=args) for _ in range(2)]
    for child in children:
        child.start()
    outcomes = [results.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
        assert child.exitcode == 0
    assert outcomes[0][:2] == outcomes[1][:2]
    assert sorted(decoded for _, _, decoded in outcomes) == [0, 1]  # one built it, the other waited and read it
    assert len(list((tmp_path / "cache" / "decoded").glob("*.pt"))) == 1
    assert not list((tmp_path / "cache").rglob("*.tmp"))


# ---- CIFAR through torchvision --------------------------------------------------------------------------------


def _fake_cifar100(root: Path) -> dict[str, np.ndarray]:
    """A tiny folder in CIFAR-100's pickle format (torchvision's md5 check must be patched out to accept it)."""
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 20), ("test", 10)):
        arrays[split] = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [i % 100 for i in range(n)]
        (folder / split).write_bytes(pickle.dumps({"data": arrays[split], "fine_labels": labels}))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i:02d}" for i in range(100)]}))
    return arrays


def test_cifar100_copy_is_read_once_and_cached(tmp_path, monkeypatch):
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    arrays = _fake_cifar100(tmp_path / "copy")
    ds = _load(tmp_path / "copy", tmp_path / "cache", name="cifar100", stats="cifar100", download=False)
    assert ds.train_x.shape == (20, 3, 32, 32) and ds.train_x.is_contiguous() and ds.num_classes == 100
    assert torch.equal(ds.train_x, torch.from_numpy(arrays["train"]).view(20, 3, 32, 32))
    assert ds.test_y.tolist() == list(range(10)) and ds.classes[:2] == ["c00", "c01"]

    def no_unpickling(*args):
        raise AssertionError("unpickled again instead of reading the cache")

    monkeypatch.setattr(decoding, "_read_torchvision", no_unpickling)
    again = _load(tmp_path / "copy", tmp_path / "cache", name="cifar100", stats="cifar100", download=False)
    assert torch.equal(again.test_x, ds.test_x) and again.fingerprint == ds.fingerprint


def test_cifar100_offline_without_a_copy_is_a_user_error(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"data\.root: CIFAR-100 is not at .* could not be downloaded .*no network"):
        _load(tmp_path / "empty", tmp_path / "cache", name="cifar100", stats="cifar100")
    with pytest.raises(UserError, match=r"data\.root: CIFAR-10 is not at .*download=False"):
        _load(tmp_path / "empty", tmp_path / "cache", name="cifar10", download=False)


def test_corrupted_cifar_copy_is_a_user_error(tmp_path):
    _fake_cifar100(tmp_path / "copy")  # real md5 check: these files are not the published ones
    with pytest.raises(UserError, match=r"data\.root: .*corrupted"):
        _load(tmp_path / "copy", tmp_path / "cache", name="cifar100", download=False)


# ---- user errors name the setting -----------------------------------------------------------------------------


def _only_train(root: Path) -> Path:
    _write_tree(root)
    for image in (root / "test").rglob("*.png"):
        image.unlink()
    return root


def _empty_class_folders(root: Path) -> Path:
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
    return root


def _unknown_test_class(root: Path) -> Path:
    _write_tree(root)
    (root / "test" / "cow").mkdir()
    write_png(torch.zeros(3, 8, 8, dtype=torch.uint8), str(root / "test" / "cow" / "0.png"))
    return root


def _not_an_archive(root: Path) -> Path:
    root.mkdir()
    (root / "images.zip").write_bytes(b"PK")
    return root / "images.zip"


def _broken_image(root: Path) -> Path:
    _write_tree(root)
    (root / "train" / "cat" / "000.png").write_bytes(b"not a png")
    return root


@pytest.mark.parametrize(
    "make_root, message",
    [
        (lambda root: root / "missing", "does not exist"),
        (_only_train, "no images in train/<class>/ and test/<class>/"),
        (_empty_class_folders, "no images"),
        (_unknown_test_class, "test classes ['cow']"),
        (_not_an_archive, "not a .tar.gz"),
        (_broken_image, "cannot decode train/cat/000.png"),
    ],
)
def test_bad_image_folder_is_a_user_error(tmp_path, make_root, message):
    root = make_root(tmp_path / "data")
    with pytest.raises(UserError, match="data.root") as error:
        _load(root, tmp_path / "cache")
    assert message in str(error.value)


def test_image_folder_without_root_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="data.root"):
        load_dataset("imagefolder", None, stats="auto", train_subset=None, test_subset=None, cache_root=tmp_path)


@pytest.mark.parametrize(
    "overrides, setting",
    [
        ({"train_subset": 50_001}, "data.train_subset=50001 is larger than the train split"),
        ({"test_subset": 0}, "data.test_subset"),
        ({"stats": "imagenet"}, "data.stats"),
        ({"stats": {"mean": [0.5, 0.5], "std": [0.2, 0.2, 0.2]}}, "data.stats"),
        ({"name": "mnist"}, "data.name"),
    ],
)
def test_bad_settings_are_user_errors(cifar10, shared_data, test_cache, overrides, setting):
    with pytest.raises(UserError, match=setting.replace(".", r"\.", 1)):
        _load(shared_data / "cifar10-jpg.tar.gz", test_cache, **overrides)


def test_explicit_stats_are_used(cifar10, shared_data, test_cache):
    ds = _load(shared_data / "cifar10-jpg.tar.gz", test_cache, stats={"mean": [0.5] * 3, "std": [0.25] * 3})
    assert ds.mean == (0.5, 0.5, 0.5) and ds.std == (0.25, 0.25, 0.25)
    assert ds.fingerprint != cifar10.fingerprint
