"""Images and audio clips from clients, checked before any model sees them (Pillow for images).

Every item gets bounded work whatever its bytes say:

- bytes: at most :attr:`MediaLimits.image_bytes` / :attr:`MediaLimits.audio_bytes` per item and
  :attr:`MediaLimits.request_bytes` per request, checked before anything is parsed;
- pixels: the width and height are read from the file's header (Pillow opens lazily) and checked against
  :attr:`MediaLimits.image_pixels` per image and :attr:`MediaLimits.request_pixels` per request *before*
  the pixels are decoded, so a decompression bomb (a small PNG declaring 50 000 × 50 000) costs a header
  read; Pillow's own ``MAX_IMAGE_PIXELS`` guard stays on as a second line;
- format: the file's magic bytes decide (PNG, JPEG, WebP, GIF, BMP); a declared MIME type that names
  another format is refused (a lying ``data:image/png`` holding a JPEG); anything else is refused;
- animated images (GIF, APNG, WebP with more than one frame) are refused: a chat model reads one picture,
  and silently taking the first frame would answer about a picture the user may not have meant;
- truncated or corrupt files fail the decode and are refused (Pillow's ``LOAD_TRUNCATED_IMAGES`` is never
  set); EXIF orientation is applied; every mode is converted to 8-bit RGB.

Errors are :class:`~ffruntime.runtime.MediaRejected` (400) or :class:`~ffruntime.runtime.MediaTooLarge`
(413), each naming the item (``image 2``).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from ffruntime.errors import BackendUnavailable
from ffruntime.runtime import Media, MediaRejected, MediaTooLarge
from ffruntime.settings import MediaLimits

IMAGE_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif",
                 "BMP": "image/bmp"}
AUDIO_FORMATS = {"wav": ("audio/wav", "audio/x-wav", "audio/wave"), "mp3": ("audio/mpeg", "audio/mp3")}


@dataclass(frozen=True)
class Picture:
    """A checked image: 8-bit RGB rows, ``width × height × 3`` bytes."""

    width: int
    height: int
    rgb: bytes


def check_request(media: Sequence[Media], limits: MediaLimits) -> None:
    """The per-request bounds that need no decoding: item count and total bytes."""
    if len(media) > limits.request_items:
        raise MediaTooLarge(f"{len(media)} images or clips in one request; at most {limits.request_items}")
    total = sum(len(m.data) for m in media)
    if total > limits.request_bytes:
        most = limits.request_bytes
        raise MediaTooLarge(f"the request's images and clips hold {total} bytes; at most {most}")


def audio_format(item: Media, label: str, limits: MediaLimits) -> str:
    """``wav`` or ``mp3`` from the clip's magic bytes, checked against its declared type and size."""
    if len(item.data) > limits.audio_bytes:
        raise MediaTooLarge(f"{label} is {len(item.data)} bytes; at most {limits.audio_bytes}")
    head = item.data[:12]
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        found = "wav"
    elif head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        found = "mp3"
    else:
        raise MediaRejected(f"{label} is neither WAV nor MP3 audio")
    if item.mime and item.mime.lower() not in (found, *AUDIO_FORMATS[found]):
        raise MediaRejected(f"{label} is declared {item.mime} but holds {found.upper()} audio")
    return found


def decode_image(item: Media, label: str, limits: MediaLimits, pixels_left: int) -> Picture:
    """The image as RGB pixels, or a 4xx error saying why not (see the module's rules)."""
    if len(item.data) > limits.image_bytes:
        raise MediaTooLarge(f"{label} is {len(item.data)} bytes; at most {limits.image_bytes}")
    try:
        from PIL import Image, ImageOps
    except ImportError as e:
        raise BackendUnavailable.missing("pillow", "media", "Reading images") from e
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(item.data), formats=list(IMAGE_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaTooLarge(f"{label}: {e}") from None
    except (OSError, ValueError, SyntaxError) as e:
        taken = ", ".join(IMAGE_FORMATS)
        raise MediaRejected(f"{label} is not an image in a format taken here ({taken}): {e}") from None
    with im:
        fmt = str(im.format)
        mime = IMAGE_FORMATS[fmt]
        if item.mime and item.mime.lower() not in (mime, "image/jpg" if fmt == "JPEG" else mime):
            raise MediaRejected(f"{label} is declared {item.mime} but holds a {fmt} image")
        width, height = im.size
        if width < 1 or height < 1:
            raise MediaRejected(f"{label} has no pixels ({width}×{height})")
        if width * height > min(limits.image_pixels, pixels_left):
            most = min(limits.image_pixels, pixels_left)
            which = "per image" if most == limits.image_pixels else "left in this request"
            raise MediaTooLarge(f"{label} is {width}×{height} pixels; at most {most} {which}")
        frames = int(getattr(im, "n_frames", 1))
        if frames > 1:
            raise MediaRejected(f"{label} is animated ({frames} frames); send one frame as a still image")
        try:
            im.load()
            rgb = ImageOps.exif_transpose(im).convert("RGB")
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise MediaRejected(f"{label} is truncated or corrupt: {e}") from None
    return Picture(rgb.width, rgb.height, rgb.tobytes())
