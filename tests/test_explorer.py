"""The latent explorers: the exported decoder against PyTorch, the file's checks, the live widgets,
and the in-browser explorer in headless Chromium against PyTorch's decodes."""

import json
import re
import shutil

import numpy as np
import pytest
import torch

from conftest import assert_drawn_as_pytorch_decodes, click_explorer
from latentbook import data, explorer, models, train


def _vae(seed=0, latent_dim=2, **kw):
    torch.manual_seed(seed)
    return models.build({"arch": "vae", "latent_dim": latent_dim, **kw}).eval()


@pytest.fixture(scope="module")
def trained():
    """A 2-D VAE trained briefly on real digits (so that different codes decode to different images)."""
    x, y = data.load("mnist", "train")
    model = _vae()
    train.fit(model, x[:10000], epochs=4, batch_size=128, device="cpu", progress=False, binarize="dynamic")
    with torch.no_grad():
        codes = model.encode(x[:1000])[0]
    return model, codes, y[:1000]


def test_decoder_layers_of_the_mlp_vae():
    layers = explorer.decoder_layers(_vae())
    assert [(lin.in_features, lin.out_features, act) for lin, act in layers] == [
        (2, 128, "relu"), (128, 256, "relu"), (256, 512, "relu"), (512, 784, "sigmoid")]


def test_decoder_layers_follow_an_autoencoders_output():
    torch.manual_seed(0)
    for output, last in (("sigmoid", "sigmoid"), ("linear", "none")):
        ae = models.build({"arch": "mlp_ae", "latent_dim": 2, "hidden": [16], "output": output})
        layers = explorer.decoder_layers(ae)
        assert [act for _, act in layers] == ["relu", last]
        z = torch.randn(5, 2)
        with torch.no_grad():
            ours = explorer.run_layers([(lin.weight, lin.bias, act) for lin, act in layers], z)
            assert torch.allclose(ours, ae.decode(z).reshape(5, -1), atol=1e-6)


@pytest.mark.parametrize("model, match", [
    (lambda: _vae(encoder="conv"), "supports Linear"),
    (lambda: _vae(latent_dim=3), "two-dimensional"),
    (lambda: torch.nn.Linear(2, 2), "no nn.Sequential decoder"),
])
def test_unsupported_models_are_refused(model, match):
    with pytest.raises(ValueError, match=match):
        explorer.decoder_layers(model())


def test_exported_decoder_matches_pytorch(trained, tmp_path):
    model, codes, labels = trained
    meta = explorer.export_decoder(model, codes, labels, tmp_path / "d.bin")
    assert (tmp_path / "d.bin").stat().st_size == meta["bytes"]
    assert [p.name for p in tmp_path.iterdir()] == ["d.bin"]  # no temporary file left behind
    layers, c, y = explorer.read_decoder(tmp_path / "d.bin", meta)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(1)) * 2
    with torch.no_grad():
        reference = model.decode(z).reshape(64, -1)
        # the same network with its weights rounded to float16, as the file stores them
        half = _vae()
        half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
        reference_half = half.decode(z).reshape(64, -1)
    ours = explorer.run_layers(layers, z)
    assert torch.allclose(ours, reference_half, atol=1e-5)
    assert (ours - reference).abs().max() < 0.02  # float16 storage costs less than 2% of the grey range
    # the codes and labels drawn under the plane are a subset of the given ones (float16)
    assert len(c) == len(y) == meta["n_codes"] == 1000
    nearest = torch.cdist(c, codes).min(1).values
    assert nearest.max() < 1e-2
    assert set(y.tolist()) <= set(labels.tolist())


def test_a_damaged_or_stale_file_is_refused(trained, tmp_path):
    model, codes, labels = trained
    meta = explorer.export_decoder(model, codes, labels, tmp_path / "d.bin")
    raw = bytearray((tmp_path / "d.bin").read_bytes())
    raw[1000] ^= 0xFF
    (tmp_path / "d.bin").write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="SHA-256"):
        explorer.read_decoder(tmp_path / "d.bin", meta)
    (tmp_path / "d.bin").write_bytes(bytes(raw[:-10]))
    with pytest.raises(ValueError, match="size"):
        explorer.read_decoder(tmp_path / "d.bin", meta)


def test_bad_arguments(trained, tmp_path):
    model, codes, labels = trained
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        explorer.export_decoder(model, codes[:, :1], labels, tmp_path / "d.bin")
    with pytest.raises(ValueError, match="labels"):
        explorer.export_decoder(model, codes, labels[:5], tmp_path / "d.bin")
    with pytest.raises(ValueError, match="name"):
        explorer.static_explorer(model, codes, labels, name="../x", folder=tmp_path)
    with pytest.raises(ValueError, match="lim"):
        explorer.static_explorer(model, codes, labels, folder=tmp_path, lim=0)


def test_live_explorer_shows_the_decoded_point(trained, monkeypatch):
    import IPython.display
    from matplotlib.figure import Figure

    model, codes, labels = trained
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    w = explorer.live_explorer(model, codes, labels, lim=4.0, start=(0.5, -1.0))
    assert len(shown) == 1 and isinstance(shown[0], Figure)  # the first frame, shown at once (and on the site)
    sliders = {c.description: c for c in w.children[:2]}
    assert set(sliders) == {"z₁", "z₂"} and sliders["z₁"].value == 0.5
    fig = explorer.explorer_figure(model, codes.numpy(), labels.numpy().astype(np.uint8),
                                   (0.5, -1.0), ((-4, 4), (-4, 4)))
    scatter_ax, image_ax = fig.axes
    marker = scatter_ax.lines[0].get_xydata()
    assert np.allclose(marker, [[0.5, -1.0]])
    shown = np.asarray(image_ax.images[0].get_array())
    with torch.no_grad():
        expected = model.decode(torch.tensor([[0.5, -1.0]]))[0, 0].numpy()
    assert np.allclose(shown, expected, atol=1e-6)


def test_interpolation_explorer_ends_at_the_two_images(trained, monkeypatch):
    import IPython.display

    model, _, _ = trained
    x, y = data.load("mnist", "test")
    shown = []
    monkeypatch.setattr(IPython.display, "display", lambda *objs, **kw: shown.extend(objs))
    w = explorer.interpolation_explorer(model, x[:50], y[:50], steps=5)
    assert [c.description for c in w.children[:2]] == ["from", "to"]
    mosaic = np.asarray(shown[0].axes[0].images[0].get_array())  # 2 rows x 5 images, 2-pixel gaps
    assert mosaic.shape == (2 * 28 + 2, 5 * 28 + 4 * 2)
    assert np.allclose(mosaic[:28, :28], x[0, 0].numpy(), atol=1e-6)  # pixels, t = 0: image "from"
    assert np.allclose(mosaic[:28, -28:], x[1, 0].numpy(), atol=1e-6)  # pixels, t = 1: image "to"
    with pytest.raises(ValueError, match="steps"):
        explorer.interpolation_explorer(model, x[:50], steps=1)


@pytest.mark.slow
def test_in_browser_explorer_matches_pytorch(trained, tmp_path, browser, serve):
    """Click two points of the plane in headless Chromium; the drawn digits differ from each other
    and equal PyTorch's decodes of the clicked codes (to the float16 storage and 8-bit display)."""
    model, codes, labels = trained
    shown = explorer.static_explorer(model, codes, labels, [str(k) for k in range(10)], name="vae-test",
                                     folder=tmp_path / "explorer", url="explorer/vae-test.bin")
    (tmp_path / "index.html").write_text(f"<!doctype html><html><body>{shown.data}</body></html>")
    page = browser.new_page(viewport={"width": 900, "height": 600})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{serve(tmp_path)}/index.html")
    codes, images = click_explorer(page, "#lb-explorer-vae-test", [(0.3, 0.4), (0.75, 0.7)])
    assert errors == []
    # the click position maps to the code: x to the right, y upward, over [-4, 4]
    assert codes[0].tolist() == pytest.approx([-4 + 0.3 * 8, 4 - 0.4 * 8], abs=0.05)
    assert_drawn_as_pytorch_decodes(model, codes, images, min_difference=0.2)
    page.close()


def explorer_z(page, selector):
    """The code the explorer ``selector`` decoded last, from its data-z."""
    return [float(v) for v in page.locator(selector).get_attribute("data-z").split(",")]


@pytest.mark.slow
def test_in_browser_explorer_works_from_the_keyboard(trained, tmp_path, browser, serve):
    """Tab focuses the plane; the arrow keys move the point by 1/80 of the plane (Shift: 1/16), up is
    +z₂, Home returns to the start; each move redraws the digit as PyTorch decodes the new code and
    rewrites the polite live region that a screen reader announces."""
    model, codes, labels = trained
    shown = explorer.static_explorer(model, codes, labels, [str(k) for k in range(10)], name="keys",
                                     folder=tmp_path / "explorer", url="explorer/keys.bin", start=(0.5, -1.0))
    (tmp_path / "index.html").write_text(f"<!doctype html><html><body>{shown.data}</body></html>")
    page = browser.new_page(viewport={"width": 900, "height": 600})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{serve(tmp_path)}/index.html")
    sel = "#lb-explorer-keys"
    page.wait_for_function(f"() => document.querySelector({sel!r}).dataset.ready === 'yes'", timeout=20000)
    plane, live = page.locator(f"{sel} canvas.lb-plane"), page.locator(f"{sel} .lb-z")
    assert plane.get_attribute("tabindex") == "0" and plane.get_attribute("role") == "application"
    assert "arrow keys" in plane.get_attribute("aria-label")
    assert live.get_attribute("aria-live") == "polite" and plane.get_attribute("aria-describedby") == live.get_attribute("id")
    assert page.locator(f"{sel} canvas.lb-digit").get_attribute("role") == "img"
    page.keyboard.press("Tab")  # the plane is the page's first focusable element
    assert page.evaluate(f"() => document.activeElement === document.querySelector('{sel} canvas.lb-plane')")
    assert explorer_z(page, sel) == pytest.approx([0.5, -1.0])
    said = [live.inner_text()]
    assert said[0].startswith("z = (0.50, -1.00); nearest code: ")

    moves = [("ArrowRight", [0.6, -1.0]), ("ArrowUp", [0.6, -0.9]), ("Shift+ArrowLeft", [0.1, -0.9]),
             ("Shift+ArrowDown", [0.1, -1.4]), ("Home", [0.5, -1.0])]
    images = []
    for key, expected in moves:
        page.keyboard.press(key)
        assert explorer_z(page, sel) == pytest.approx(expected, abs=1e-6), key
        said.append(live.inner_text())
        assert said[-1].startswith(f"z = ({expected[0]:.2f}, {expected[1]:.2f})"), (key, said[-1])
        pixels = page.evaluate(f"""() => Array.from(document.querySelector({sel!r}).querySelector('canvas.lb-digit')
                                   .getContext('2d').getImageData(0, 0, 28, 28).data)""")
        images.append(torch.tensor(pixels, dtype=torch.float32).reshape(784, 4)[:, 0] / 255)
    assert len(set(said)) == len(moves)  # the last move (Home) is back at the start: said again
    # the digit drawn after each key is PyTorch's decode of the new code
    with torch.no_grad():
        reference = model.decode(torch.tensor([e for _, e in moves])).reshape(len(moves), 784)
    assert (torch.stack(images) - reference).abs().max() < 0.02 + 1 / 255
    # the point stays on the plane however long a key is held
    for _ in range(12):
        page.keyboard.press("Shift+ArrowRight")
    assert explorer_z(page, sel)[0] == pytest.approx(4.0)
    # the page did not scroll away under the arrow keys, and nothing failed
    assert page.evaluate("() => window.scrollY") == 0 and errors == []
    page.close()


@pytest.mark.slow
def test_in_browser_explorer_refuses_a_damaged_file(trained, tmp_path, browser, serve):
    model, codes, labels = trained
    shown = explorer.static_explorer(model, codes, labels, name="bad", folder=tmp_path / "explorer",
                                     url="explorer/bad.bin")
    raw = bytearray((tmp_path / "explorer" / "bad.bin").read_bytes())
    raw[0] ^= 0xFF
    (tmp_path / "explorer" / "bad.bin").write_bytes(bytes(raw))
    (tmp_path / "index.html").write_text(f"<!doctype html><html><body>{shown.data}</body></html>")
    page = browser.new_page()
    page.goto(f"{serve(tmp_path)}/index.html")
    page.wait_for_function("() => document.querySelector('#lb-explorer-bad').dataset.ready === 'failed'",
                           timeout=15000)
    assert "checksum" in page.locator("#lb-explorer-bad").inner_text()
    page.close()
