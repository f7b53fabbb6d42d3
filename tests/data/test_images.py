"""Safe image loading: modes, EXIF orientation, limits, paths."""

import pytest
from PIL import Image

from vlmtune.data.images import ImageError, load_image, load_images, resolve_inside
from vlmtune.data.sample import Sample, user


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


def test_a_samples_images_load_in_order_from_its_root(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("CMYK", (3, 5), (0, 255, 255, 0)).save(tmp_path / "img" / "red.jpg")
    Image.new("RGB", (7, 2), (0, 0, 255)).save(tmp_path / "img" / "blue.png")
    sample = Sample(id="s", messages=[user("Which colours?", n_images=2)], images=["img/blue.png", "img/red.jpg"])
    blue, red = load_images(tmp_path, sample)
    assert (blue.mode, blue.size, blue.getpixel((0, 0))) == ("RGB", (7, 2), (0, 0, 255))
    assert red.mode == "RGB" and red.size == (3, 5) and red.getpixel((1, 1))[0] > 200
    escaping = Sample(id="e", messages=[user("?")], images=["../outside.png"])
    with pytest.raises(ImageError, match="escapes the dataset directory"):
        load_images(tmp_path / "img", escaping)
