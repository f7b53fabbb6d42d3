"""Safe image loading: modes, EXIF orientation, limits, paths."""

import pytest
from PIL import Image

from vlmtune.data.images import ImageError, load_image, resolve_inside


def test_modes_become_rgb(tmp_path):
    cmyk = tmp_path / "c.jpg"
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(cmyk)  # red in CMYK
    r, g, b = load_image(cmyk).getpixel((1, 1))
    assert r > 200 and g < 60 and b < 60

    deep = tmp_path / "d.png"
    Image.new("I;16", (4, 4), 65535).save(deep)
    assert load_image(deep).getpixel((0, 0)) == (255, 255, 255)

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    pal.info["transparency"] = 1  # index 1 (red) transparent -> composited on white
    pal.save(tmp_path / "p.png", transparency=1)
    assert load_image(tmp_path / "p.png").getpixel((0, 0)) == (255, 255, 255)


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (20, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    img.save(tmp_path / "o.jpg", exif=exif)
    assert load_image(tmp_path / "o.jpg").size == (10, 20)


def test_pixel_and_byte_limits(tmp_path):
    Image.new("RGB", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(ImageError, match="pixels exceeds"):
        load_image(tmp_path / "big.png", max_pixels=5000)
    with pytest.raises(ImageError, match="bytes exceeds"):
        load_image(tmp_path / "big.png", max_bytes=10)
    assert load_image(tmp_path / "big.png").size == (100, 100)


def test_paths_stay_inside_root(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.png").touch()
    assert resolve_inside(tmp_path / "a", "x.png") == (tmp_path / "a" / "x.png").resolve()
    (tmp_path / "a" / "link.png").symlink_to(tmp_path / "outside.png")
    for bad in ["../b.png", "/etc/passwd", "link.png", ""]:
        with pytest.raises(ImageError):
            resolve_inside(tmp_path / "a", bad)
