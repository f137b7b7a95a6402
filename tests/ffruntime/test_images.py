"""ffruntime.images: bounded work for every image (Pillow), whatever its bytes claim."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from ffruntime.images import audio_format, check_request, decode_image
from ffruntime.runtime import Media, MediaRejected, MediaTooLarge
from ffruntime.settings import MediaLimits


def encoded(im: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def test_modes_become_rgb_and_exif_orientation_applies() -> None:
    rgba = Image.new("RGBA", (8, 4), (255, 0, 0, 128))
    pic = decode_image(Media(encoded(rgba, "PNG"), mime="image/png"), "image 1", MediaLimits(), 10**9)
    assert (pic.width, pic.height, len(pic.rgb)) == (8, 4, 8 * 4 * 3)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: width and height swap when applied
    jpeg = encoded(Image.new("RGB", (8, 4)), "JPEG", exif=exif)
    pic = decode_image(Media(jpeg, mime="image/jpeg"), "image 1", MediaLimits(), 10**9)
    assert (pic.width, pic.height) == (4, 8)


def test_pixels_are_bounded_per_image_and_per_request() -> None:
    data = encoded(Image.new("RGB", (100, 100)), "PNG")
    with pytest.raises(MediaTooLarge, match="100×100 pixels; at most 5000 per image"):
        decode_image(Media(data), "image 1", MediaLimits(image_pixels=5000), 10**9)
    with pytest.raises(MediaTooLarge, match="left in this request"):
        decode_image(Media(data), "image 2", MediaLimits(), 9999)


def test_bytes_and_items_are_bounded_per_request() -> None:
    with pytest.raises(MediaTooLarge, match="at most 10"):
        check_request([Media(b"x" * 6), Media(b"y" * 6)], MediaLimits(request_bytes=10))
    with pytest.raises(MediaTooLarge, match="3 images or clips"):
        check_request([Media(b"x")] * 3, MediaLimits(request_items=2))
    with pytest.raises(MediaTooLarge, match="image 1 is 11 bytes"):
        decode_image(Media(b"x" * 11), "image 1", MediaLimits(image_bytes=10), 10**9)


def test_formats_outside_the_list_are_refused() -> None:
    tiff = encoded(Image.new("RGB", (4, 4)), "TIFF")
    with pytest.raises(MediaRejected, match="not an image in a format taken here"):
        decode_image(Media(tiff), "image 1", MediaLimits(), 10**9)


def test_audio_by_magic_bytes() -> None:
    wav = b"RIFF\x24\x00\x00\x00WAVEfmt "
    assert audio_format(Media(wav, "audio", "wav"), "audio 1", MediaLimits()) == "wav"
    assert audio_format(Media(b"ID3\x04" + b"\0" * 8, "audio", "mp3"), "audio 1", MediaLimits()) == "mp3"
    with pytest.raises(MediaRejected, match="declared mp3 but holds WAV"):
        audio_format(Media(wav, "audio", "mp3"), "audio 1", MediaLimits())
    with pytest.raises(MediaRejected, match="neither WAV nor MP3"):
        audio_format(Media(b"OggS" + b"\0" * 8, "audio", "wav"), "audio 1", MediaLimits())
