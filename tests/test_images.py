"""load_image: every supported format comes back as 8-bit RGB with the documented conversion; bad input
raises ImageError naming the file."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import vqa_rad_path
from vitos.images import ImageError, load_image

REAL_JPEG = vqa_rad_path() / "images" / "synpic54610.jpg"  # shipped subset or $VITOS_VQA_RAD_DIR


def _rgb(image: Image.Image) -> np.ndarray:
    assert image.mode == "RGB"
    return np.asarray(image)


# --------------------------------------------------------------------------------------- PIL formats


def test_png_rgb_roundtrips_exactly(tmp_path):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, size=(7, 9, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    out = load_image(path)
    assert out.size == (9, 7)
    np.testing.assert_array_equal(_rgb(out), arr)


def test_jpeg_loads_as_rgb_close_to_source(tmp_path):
    arr = np.full((16, 16, 3), (200, 30, 90), dtype=np.uint8)
    path = tmp_path / "a.jpg"
    Image.fromarray(arr).save(path, quality=95)
    out = _rgb(load_image(str(path)))
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - arr.astype(int)).max() <= 4  # lossy, but close


def test_grayscale_png_is_replicated_to_three_channels(tmp_path):
    arr = np.array([[0, 100], [200, 255]], dtype=np.uint8)
    path = tmp_path / "g.png"
    Image.fromarray(arr, mode="L").save(path)
    out = _rgb(load_image(path))
    for ch in range(3):
        np.testing.assert_array_equal(out[..., ch], arr)


def test_16bit_png_is_rescaled_with_its_own_min_and_max(tmp_path):
    # min 1000 -> 0, max 3000 -> 255, midpoint 2000 -> 127.5 -> 128 (round half to even gives 128)
    arr = np.array([[1000, 2000], [3000, 1500]], dtype=np.uint16)
    path = tmp_path / "d16.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")  # really a 16-bit file
    out = _rgb(load_image(path))
    expected = np.array([[0, 128], [255, 64]], dtype=np.uint8)  # 1500 -> 0.25 * 255 = 63.75 -> 64
    np.testing.assert_array_equal(out[..., 0], expected)
    np.testing.assert_array_equal(out[..., 2], expected)


def test_constant_16bit_image_becomes_black(tmp_path):
    path = tmp_path / "flat.png"
    Image.fromarray(np.full((3, 3), 4000, dtype=np.uint16)).save(path)
    assert _rgb(load_image(path)).max() == 0


def test_rgba_is_composited_on_black(tmp_path):
    arr = np.zeros((1, 3, 4), dtype=np.uint8)
    arr[0, 0] = (200, 100, 50, 255)  # opaque -> unchanged
    arr[0, 1] = (200, 100, 50, 0)  # transparent -> black
    arr[0, 2] = (200, 100, 50, 128)  # half -> about half intensity
    path = tmp_path / "rgba.png"
    Image.fromarray(arr, mode="RGBA").save(path)
    out = _rgb(load_image(path)).astype(int)
    np.testing.assert_array_equal(out[0, 0], [200, 100, 50])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])
    np.testing.assert_allclose(out[0, 2], [100, 50, 25], atol=1)


def test_la_grey_with_alpha_is_composited_on_black(tmp_path):
    im = Image.new("LA", (2, 1))
    im.putpixel((0, 0), (180, 255))
    im.putpixel((1, 0), (180, 0))
    path = tmp_path / "la.png"
    im.save(path)
    out = _rgb(load_image(path))
    np.testing.assert_array_equal(out[0, 0], [180, 180, 180])
    np.testing.assert_array_equal(out[0, 1], [0, 0, 0])


def test_palette_png_is_expanded_to_its_colours(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([10, 20, 30, 240, 130, 5] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    path = tmp_path / "p.png"
    im.save(path)
    out = _rgb(load_image(path))
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [240, 130, 5]])


def test_in_memory_images_are_converted_and_copied():
    grey = Image.fromarray(np.array([[7, 9]], dtype=np.uint8), mode="L")
    out = load_image(grey)
    np.testing.assert_array_equal(_rgb(out)[0], [[7, 7, 7], [9, 9, 9]])
    rgb = Image.new("RGB", (2, 2), (1, 2, 3))
    copy = load_image(rgb)
    assert copy is not rgb
    copy.putpixel((0, 0), (9, 9, 9))
    assert rgb.getpixel((0, 0)) == (1, 2, 3)


def test_real_vqa_rad_jpeg_loads():
    out = load_image(REAL_JPEG)
    with Image.open(REAL_JPEG) as raw:
        assert out.size == raw.size
    assert out.mode == "RGB"
    assert _rgb(out).std() > 1.0  # real content, not a blank frame


# --------------------------------------------------------------------------------------- errors


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.png"
    with pytest.raises(ImageError, match="nope.png.*not found"):
        load_image(path)


def test_directory_is_rejected(tmp_path):
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)


def test_random_bytes_are_not_an_image(tmp_path):
    path = tmp_path / "junk.png"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(ImageError, match="junk.png.*not a recognised image"):
        load_image(path)


def test_truncated_jpeg_is_reported_as_corrupt(tmp_path):
    arr = np.random.default_rng(2).integers(0, 256, size=(128, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    path = tmp_path / "cut.jpg"
    path.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match="cut.jpg.*(corrupt|truncated)"):
        load_image(path)


def test_too_many_pixels_is_refused_before_decoding(tmp_path):
    path = tmp_path / "big.png"
    Image.new("RGB", (40, 30)).save(path)
    assert load_image(path, max_pixels=1200).size == (40, 30)  # exactly at the limit is fine
    with pytest.raises(ImageError, match="40x30.*max_pixels"):
        load_image(path, max_pixels=1199)


def test_in_memory_image_over_pixel_limit_is_refused():
    with pytest.raises(ImageError, match="max_pixels"):
        load_image(Image.new("RGB", (10, 10)), max_pixels=99)


def test_file_over_byte_limit_is_refused(tmp_path):
    path = tmp_path / "b.png"
    Image.new("RGB", (8, 8)).save(path)
    size = path.stat().st_size
    with pytest.raises(ImageError, match="b.png.*max_bytes"):
        load_image(path, max_bytes=size - 1)


def test_non_path_argument_is_rejected():
    with pytest.raises(ImageError, match="file path or a PIL image"):
        load_image(12345)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- DICOM


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    center=None,
    width=None,
    slope=None,
    intercept=None,
    preamble: bool = True,
) -> Path:
    """Write an uncompressed 16-bit DICOM file; pixels (R, C) or (F, R, C) uint16."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    if pixels.ndim == 3:
        ds.NumberOfFrames = pixels.shape[0]
    ds.Rows, ds.Columns = pixels.shape[-2:]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    if center is not None:
        ds.WindowCenter = center
        ds.WindowWidth = width
    if slope is not None:
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
    ds.PixelData = pixels.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=preamble)
    return path


def test_dicom_without_window_uses_min_max(tmp_path):
    path = _write_dicom(tmp_path / "a.dcm", np.array([[100, 200], [300, 500]], dtype=np.uint16))
    out = _rgb(load_image(path))
    # (v - 100) / 400 * 255: 0, 63.75, 127.5, 255
    np.testing.assert_array_equal(out[..., 1], [[0, 64], [128, 255]])


def test_dicom_window_and_rescale_are_applied(tmp_path):
    # stored s -> HU = 2 * s - 1000; window centre 0, width 401 spans HU [-200.5, 199.5] (PS3.3 linear VOI)
    stored = np.array([[300, 400], [500, 700]], dtype=np.uint16)  # HU -400, -200, 0, 400
    path = _write_dicom(tmp_path / "w.dcm", stored, center=0, width=401, slope=2, intercept=-1000)
    out = _rgb(load_image(path))[..., 0].astype(int)
    # y = ((HU + 0.5) / 400 + 0.5) * 255, clipped: -400 -> 0, -200 -> 0.32 -> 0, 0 -> 127.8 -> 128, 400 -> 255
    np.testing.assert_array_equal(out, [[0, 0], [128, 255]])


def test_dicom_multi_valued_window_uses_first_value(tmp_path):
    stored = np.array([[0, 50, 100]], dtype=np.uint16)
    # first window centre 50 / width 101 spans [-0.5, 99.5]; the second (1000, 10) would make all black
    path = _write_dicom(tmp_path / "mv.dcm", stored, center=[50, 1000], width=[101, 10])
    out = _rgb(load_image(path))[0, :, 0].astype(int)
    # y = ((v - 49.5) / 100 + 0.5) * 255: 0 -> 1.3 -> 1, 50 -> 128.8 -> 129, 100 -> clipped 255
    np.testing.assert_array_equal(out, [1, 129, 255])


def test_dicom_monochrome1_is_inverted(tmp_path):
    stored = np.array([[100, 200], [300, 500]], dtype=np.uint16)
    mono2 = _rgb(load_image(_write_dicom(tmp_path / "m2.dcm", stored)))
    mono1 = _rgb(load_image(_write_dicom(tmp_path / "m1.dcm", stored, photometric="MONOCHROME1")))
    np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))
    assert mono1[0, 0, 0] == 255  # lowest value displays bright


def test_dicom_detected_by_magic_without_suffix(tmp_path):
    path = _write_dicom(tmp_path / "scan.bin", np.array([[0, 10]], dtype=np.uint16))
    assert path.read_bytes()[128:132] == b"DICM"
    np.testing.assert_array_equal(_rgb(load_image(path))[0, :, 0], [0, 255])


def test_dicom_multi_frame_uses_first_frame_and_notes_it(tmp_path):
    frames = np.array([[[0, 10]], [[10, 0]]], dtype=np.uint16)  # frame 1 is the mirror of frame 0
    out = load_image(_write_dicom(tmp_path / "mf.dcm", frames))
    np.testing.assert_array_equal(_rgb(out)[0, :, 0], [0, 255])
    assert any("frame 0 of 2" in note for note in out.info["vitos_notes"])


def test_dicom_without_pydicom_says_how_to_install(tmp_path, monkeypatch):
    path = _write_dicom(tmp_path / "x.dcm", np.array([[0, 1]], dtype=np.uint16))
    monkeypatch.setitem(sys.modules, "pydicom", None)  # makes `import pydicom` raise ImportError
    with pytest.raises(ImageError, match="x.dcm.*pip install pydicom"):
        load_image(path)


def test_dicom_over_pixel_limit_is_refused(tmp_path):
    path = _write_dicom(tmp_path / "big.dcm", np.zeros((4, 5), dtype=np.uint16))
    with pytest.raises(ImageError, match="big.dcm.*max_pixels"):
        load_image(path, max_pixels=19)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns while guessing at the garbage
def test_corrupt_dcm_file_is_an_image_error(tmp_path):
    path = tmp_path / "bad.dcm"
    path.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(ImageError, match="bad.dcm"):
        load_image(path)


# --------------------------------------------------------------------------------------- bytes (uploads)


def test_image_bytes_load_like_the_file(tmp_path):
    from vitos.images import load_image_bytes

    arr = np.random.default_rng(3).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    path = tmp_path / "a.png"
    Image.fromarray(arr).save(path)
    np.testing.assert_array_equal(_rgb(load_image_bytes(path.read_bytes())), _rgb(load_image(path)))
    dcm = _write_dicom(tmp_path / "b", np.array([[100, 200], [300, 500]], dtype=np.uint16))  # detected by magic
    np.testing.assert_array_equal(_rgb(load_image_bytes(dcm.read_bytes())), _rgb(load_image(dcm)))


def test_bad_image_bytes_name_the_upload_and_the_limit():
    from vitos.images import load_image_bytes

    with pytest.raises(ImageError, match="upload.png: not a recognised image format"):
        load_image_bytes(b"<html>not an image</html>", name="upload.png")
    with pytest.raises(ImageError, match="max_bytes=10"):
        load_image_bytes(b"x" * 11, max_bytes=10)
    with pytest.raises(ImageError, match="empty"):
        load_image_bytes(b"")
    buf = io.BytesIO()
    Image.new("RGB", (30, 30)).save(buf, format="PNG")
    with pytest.raises(ImageError, match="max_pixels"):
        load_image_bytes(buf.getvalue(), max_pixels=100)
