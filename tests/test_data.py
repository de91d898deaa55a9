import zipfile

import numpy as np
import pytest

from conftest import jpeg, make_csv, make_zip, pattern_image, real_data_path
from feredge.edge.preprocess import LABELS
from feredge.train.data import DataError, load_fer2013


def test_zip_splits_by_name(mini_zip):
    d = load_fer2013(mini_zip, use_cache=False)
    assert {k: len(v) for k, v in d.items()} == {"train": 7 * 24, "val": 70, "test": 70}
    for split in d.values():
        assert split.x.dtype == np.uint8 and split.x.shape[1:] == (48, 48)
        assert np.bincount(split.y, minlength=7).min() > 0
    # Labels follow the folder: the band's row encodes the class.
    rows = d["train"].x[:, :, 10:40].mean(axis=2)
    assert np.array_equal((np.argmax(rows, axis=1) - 3) // 6, d["train"].y)


def test_zip_with_top_folder_and_extracted_folder_agree(tmp_path):
    z = make_zip(tmp_path / "nested.zip", per_class=(3, 2, 2), prefix="fer2013/")
    a = load_fer2013(z, use_cache=False)
    folder = tmp_path / "extracted"
    with zipfile.ZipFile(z) as zf:
        zf.extractall(folder)
    b = load_fer2013(folder, use_cache=False)
    for s in ("train", "val", "test"):
        assert np.array_equal(a[s].y, b[s].y) and np.array_equal(a[s].x, b[s].x)


def test_csv_with_usage(tmp_path):
    d = load_fer2013(make_csv(tmp_path / "fer2013.csv", per_class=(5, 2, 3)), use_cache=False)
    assert {k: len(v) for k, v in d.items()} == {"train": 35, "val": 14, "test": 21}
    assert np.array_equal(d["train"].x[0], pattern_image(0, np.random.default_rng(0)))


def test_no_split_names_gives_stratified_seeded_validation(tmp_path):
    z = make_zip(tmp_path / "plain.zip", per_class=(20, 3, 3), named=False)
    a = load_fer2013(z, val_fraction=0.1, seed=3, use_cache=False)
    b = load_fer2013(z, val_fraction=0.1, seed=3, use_cache=False)
    assert np.bincount(a["val"].y).tolist() == [2] * 7  # 10% of 20 per class
    assert len(a["train"]) == 7 * 18 and len(a["test"]) == 7 * 6
    assert np.array_equal(a["val"].x, b["val"].x)
    c = load_fer2013(z, val_fraction=0.1, seed=4, use_cache=False)
    assert not np.array_equal(a["val"].x, c["val"].x)


def test_csv_without_usage_is_split_stratified(tmp_path):
    d = load_fer2013(make_csv(tmp_path / "f.csv", per_class=(20, 0, 0), usage=False), use_cache=False)
    assert sum(len(v) for v in d.values()) == 140
    assert all(np.bincount(v.y, minlength=7).min() > 0 for v in d.values())


def test_cache_is_used_and_keyed_by_mtime(tmp_path, monkeypatch):
    monkeypatch.setenv("FEREDGE_CACHE", str(tmp_path / "cache"))
    z = make_zip(tmp_path / "c.zip", per_class=(3, 1, 1))
    first = load_fer2013(z)
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 1
    import feredge.train.data as data_mod

    monkeypatch.setattr(data_mod, "_read_zip", lambda p: pytest.fail("decoded again despite the cache"))
    second = load_fer2013(z)
    assert np.array_equal(first["train"].x, second["train"].x)
    make_zip(z, per_class=(4, 1, 1))  # a changed source must not be served from the old cache
    monkeypatch.undo()
    monkeypatch.setenv("FEREDGE_CACHE", str(tmp_path / "cache"))
    assert len(load_fer2013(z)["train"]) == 28


@pytest.mark.parametrize("case, message", [
    ("missing", "not found"),
    ("not_zip", "not a readable zip"),
    ("truncated", "not a readable zip"),
    ("layout", "unknown layout"),
    ("unknown_class", "unknown class folder 'contempt'"),
    ("empty_class", "class disgust has no images"),
    ("mostly_bad", "are unreadable"),
    ("wrong_suffix", "unknown FER-2013 format"),
    ("bad_csv", "unknown csv layout"),
])
def test_bad_input_is_one_clear_line(tmp_path, case, message):
    p = tmp_path / "data.zip"
    if case == "not_zip":
        p.write_bytes(b"this is not a zip")
    elif case == "truncated":
        make_zip(p, per_class=(3, 1, 1))
        p.write_bytes(p.read_bytes()[:-200])
    elif case == "layout":
        with zipfile.ZipFile(p, "w") as zf:
            zf.writestr("images/a.jpg", jpeg(pattern_image(0, np.random.default_rng(0))))
    elif case == "unknown_class":
        make_zip(p, per_class=(2, 1, 1), extra={"train/contempt/Training_9.jpg": b"x"})
    elif case == "empty_class":
        rng = np.random.default_rng(0)
        with zipfile.ZipFile(p, "w") as zf:
            for c, lab in enumerate(LABELS):
                if lab != "disgust":
                    zf.writestr(f"train/{lab}/Training_{c}.jpg", jpeg(pattern_image(c, rng)))
                zf.writestr(f"test/{lab}/PublicTest_{c}.jpg", jpeg(pattern_image(c, rng)))
                zf.writestr(f"test/{lab}/PrivateTest_{c}.jpg", jpeg(pattern_image(c, rng)))
    elif case == "mostly_bad":
        make_zip(p, per_class=(1, 1, 1), extra={f"train/happy/Training_bad{i}.jpg": b"not a jpeg" for i in range(10)})
    elif case == "wrong_suffix":
        p = tmp_path / "data.parquet"
        p.write_bytes(b"x")
    elif case == "bad_csv":
        p = tmp_path / "f.csv"
        p.write_text("label,image\n1,2\n")
    with pytest.raises(DataError) as err:
        load_fer2013(p if case != "missing" else tmp_path / "nope.zip", use_cache=False)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_a_few_bad_images_are_skipped_with_a_warning(tmp_path, caplog):
    p = make_zip(tmp_path / "d.zip", per_class=(10, 2, 2), extra={"train/happy/Training_bad.jpg": b"\xff\xd8 broken"})
    d = load_fer2013(p, use_cache=False)
    assert len(d["train"]) == 70
    assert "skipped 1 unreadable image" in caplog.text and "Training_bad.jpg" in caplog.text


def test_csv_bad_rows(tmp_path, caplog):
    d = load_fer2013(make_csv(tmp_path / "f.csv", per_class=(10, 2, 2), bad_rows=2), use_cache=False)
    assert len(d["train"]) == 70 and "skipped 2 unreadable row" in caplog.text
    with pytest.raises(DataError, match="rows .* are unreadable"):
        load_fer2013(make_csv(tmp_path / "g.csv", per_class=(1, 1, 1), bad_rows=20), use_cache=False)


@pytest.mark.realdata
def test_real_fer2013_splits_match_the_published_counts():
    path = real_data_path()
    if not path.exists():
        pytest.skip(f"FER-2013 not found at {path} (set FER2013_ZIP)")
    d = load_fer2013(path)
    assert (len(d["train"]), len(d["val"]), len(d["test"])) == (28709, 3589, 3589)
    assert np.bincount(d["train"].y).tolist() == [3995, 436, 4097, 7215, 4965, 4830, 3171]
    assert (np.bincount(d["val"].y) + np.bincount(d["test"].y)).tolist() == [958, 111, 1024, 1774, 1233, 1247, 831]


def test_the_gpu_training_pack_gives_back_the_same_files_without_privatetest(tmp_path):
    import subprocess
    import sys

    from conftest import REPO

    src = make_zip(tmp_path / "fer.zip", per_class=(5, 2, 2))
    script = REPO / "train" / "gpu" / "pack.py"
    subprocess.run([sys.executable, str(script), "make", str(src), str(tmp_path / "pack.npz")], check=True)
    subprocess.run([sys.executable, str(script), "unpack", str(tmp_path / "pack.npz"), str(tmp_path / "out")], check=True)
    with zipfile.ZipFile(src) as zf:
        originals = {n: zf.read(n) for n in zf.namelist() if "PrivateTest_" not in n}
    unpacked = {str(p.relative_to(tmp_path / "out")): p.read_bytes() for p in (tmp_path / "out").rglob("*.jpg")}
    assert unpacked == originals  # byte for byte, PrivateTest left behind
    assert (tmp_path / "pack.npz").stat().st_size < 0.9 * sum(map(len, originals.values()))
    splits = load_fer2013(tmp_path / "out", use_cache=False)
    assert (len(splits["train"]), len(splits["val"]), len(splits["test"])) == (35, 14, 0)  # val is PublicTest


def test_default_data_is_the_shared_copy_beside_the_working_folder(tmp_path, monkeypatch):
    # After a plain `pip install .` the package lives in site-packages, so "beside the checkout" must
    # be found from where the README's commands run.
    from feredge.train.data import default_data_path

    shared_zip = tmp_path / "shared" / "data" / "fer2013" / "fer2013.zip"
    shared_zip.parent.mkdir(parents=True)
    shared_zip.write_bytes(b"")
    (tmp_path / "checkout").mkdir()
    monkeypatch.delenv("FER2013_ZIP", raising=False)
    monkeypatch.chdir(tmp_path / "checkout")
    assert default_data_path() == shared_zip
    monkeypatch.setenv("FER2013_ZIP", "/elsewhere/fer.zip")
    assert str(default_data_path()) == "/elsewhere/fer.zip"
