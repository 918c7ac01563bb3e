"""viz.player: a frame-by-frame player that works on a static page with no network."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from ddpm_course.viz import image_grid, player, player_html

FRAME = re.compile(r'frames\[(\d+)\] = "data:image/png;base64,([^"]+)"')


def frames_of(html: str) -> list[np.ndarray]:
    """The embedded PNG frames, decoded, in order."""
    found = sorted((int(k), data) for k, data in FRAME.findall(html))
    assert [k for k, _ in found] == list(range(len(found)))
    return [
        np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("L"))
        for _, data in found
    ]


def test_player_embeds_one_png_per_frame_in_order():
    # frame k is a constant grey level k / 4: the decoded frames must be ordered by brightness
    frames = [torch.full((2, 1, 8, 8), -1.0 + 2.0 * k / 4) for k in range(5)]
    pngs = frames_of(player_html(frames, pixels_per_pixel=2))
    assert len(pngs) == 5
    # the centre of the first image of each frame (padding is white, 255)
    centres = [int(png[png.shape[0] // 2, 2 * 2 + 8]) for png in pngs]
    assert centres == sorted(centres) and centres[0] < 10 and centres[-1] > 245


def test_player_frame_has_the_grid_size_times_the_scale():
    frames = torch.zeros(3, 4, 1, 6, 6)  # (F, N, C, H, W)
    height, width = image_grid(frames[0], nrow=4).shape
    png = frames_of(player_html(frames, nrow=4, pixels_per_pixel=3))[0]
    # matplotlib rounds the figure size to whole pixels
    assert abs(png.shape[1] - 3 * width) <= 1 and abs(png.shape[0] - 3 * height) <= 1


def test_player_needs_no_network_and_labels_every_button():
    html = player_html([torch.zeros(1, 1, 4, 4)] * 2, titles=["a", "b"])
    assert "http" not in html  # no stylesheet or script from a CDN
    assert 'class="fa' not in html  # no icon font left to fetch
    buttons = re.findall(r"<button[^>]*>([^<]*)</button>", html)
    assert len(buttons) == 9 and all(text.strip() for text in buttons)
    for action in ("play_animation", "pause_animation", "next_frame"):
        assert f".{action}()" in html
    assert 'type="range"' in html  # the slider


def test_player_shows_in_a_notebook():
    shown = player([torch.zeros(1, 1, 4, 4)] * 2)
    assert "<script" in shown._repr_html_()


@pytest.mark.parametrize(
    ("frames", "kwargs", "message"),
    [
        ([], {}, "frames is empty"),
        ([torch.zeros(1, 1, 4, 4), torch.zeros(2, 1, 4, 4)], {}, "same shape"),
        ([torch.zeros(1, 1, 4, 4)] * 2, {"titles": ["one"]}, "one string per frame"),
        ([torch.zeros(1, 1, 4, 4)], {"pixels_per_pixel": 0}, "pixels_per_pixel"),
    ],
)
def test_player_rejects_bad_input_naming_it(frames, kwargs, message):
    with pytest.raises(ValueError, match=message):
        player_html(frames, **kwargs)
