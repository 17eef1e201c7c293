"""Browser tests: headless Chromium uses every tab like a person, in English and Chinese.

Each test fails on any error toast the app did not expect and on uncaught page errors.
Screenshots land in tests/browser/screenshots/ (or $DL_SCREENSHOT_DIR).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from diffusion.examples import list_examples

pytestmark = pytest.mark.browser

CHROMIUM = os.environ.get("DL_CHROMIUM", "/usr/bin/chromium")
SHOTS = Path(os.environ.get("DL_SCREENSHOT_DIR", Path(__file__).parent / "screenshots"))
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
TIMEOUT_MS = 60_000

TAB_NAMES = {
    "en": ["1 · Heat equation", "2 · Forward noising", "3 · 2-D lab", "4 · Sampling", "5 · Denoising",
           "6 · Text to image"],
    "zh-CN": ["1 · 热方程", "2 · 前向加噪", "3 · 二维实验室", "4 · 采样", "5 · 去噪", "6 · 文生图"],
}


@pytest.fixture(scope="module")
def browser():
    required = os.environ.get("DL_REQUIRE_BROWSER") == "1" or os.environ.get("CI") == "true"
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if required:
            pytest.fail("playwright is not installed but browser tests are required")
        pytest.skip("playwright is not installed (pip install -r requirements-dev.txt)")
    if not Path(CHROMIUM).exists():
        if required:
            pytest.fail(f"Chromium not found at {CHROMIUM} but browser tests are required")
        pytest.skip(f"Chromium not found at {CHROMIUM} (apt-get install -y chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Session:
    """One browser tab on the app, recording toasts and page errors as it goes."""

    def __init__(self, browser, url: str, locale: str) -> None:
        self.context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000})
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.locale = locale
        self.page_errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        self.page.goto(url)
        self.page.wait_for_selector("gradio-app")
        self.page.wait_for_selector("#heat-run")

    def error_toasts(self) -> list[str]:
        return [t.strip() for t in self.page.locator('[data-testid="toast-body"].error').all_inner_texts()]

    def dismiss_toasts(self) -> None:
        for button in self.page.locator('[data-testid="toast-close"]').all():
            button.click()

    def assert_clean(self) -> None:
        assert self.error_toasts() == [], f"error toast(s) shown: {self.error_toasts()}"
        assert self.page_errors == [], f"page errors: {self.page_errors}"

    def shot(self, name: str) -> None:
        SHOTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(SHOTS / f"{self.locale}-{name}.png"), full_page=True)

    def open_tab(self, label: str) -> None:
        self.page.get_by_role("tab", name=label, exact=True).click()

    def json_text(self, elem_id: str) -> str:
        return self.page.locator(f"#{elem_id}").inner_text()

    def wait_for_json(self, elem_id: str, pattern: str) -> None:
        """Wait until the JSON box, with all whitespace removed, matches ``pattern``."""
        self.page.wait_for_function(
            "([id, pat]) => { const el = document.querySelector('#' + id);"
            " return el && new RegExp(pat).test(el.innerText.replace(/\\s+/g, '')); }", arg=[elem_id, pattern], timeout=TIMEOUT_MS)

    def set_slider(self, elem_id: str, value: float) -> None:
        box = self.page.locator(f"#{elem_id} input[type=number]")
        box.fill(str(value))
        box.press("Enter")

    def slide_redraws_only(self, slider_id: str, value: float, plot_id: str, summary_id: str) -> None:
        """Move a slider; the plot's picture must change while the summary stays as it was."""
        before = self.page.locator(f"#{plot_id} img").get_attribute("src")
        summary = self.json_text(summary_id)
        self.set_slider(slider_id, value)
        self.page.wait_for_function(
            "([id, old]) => { const img = document.querySelector('#' + id + ' img'); return img && img.src !== old; }",
            arg=[plot_id, before])
        assert self.json_text(summary_id) == summary

    def choose(self, elem_id: str, option: str) -> None:
        self.page.locator(f"#{elem_id} input").click()
        self.page.get_by_role("option", name=option, exact=True).click()

    def close(self) -> None:
        self.context.close()


@pytest.fixture(params=["en", "zh-CN"])
def session(request, browser, app_server):
    s = Session(browser, app_server, request.param)
    yield s
    s.close()


def test_every_tab_opens_in_the_browser_language(session):
    names = TAB_NAMES[session.locale]
    session.wait_for_json("heat-summary", r'"r"')  # the heat lesson runs once on load
    assert session.page.locator("#dl-locale").inner_text().strip() == session.locale
    session.shot("1-heat")
    for index, name in enumerate(names[1:], start=2):
        session.open_tab(name)
        if index == 2:
            session.wait_for_json("noise-summary", r'"alpha_bar"')
        elif index == 3:
            session.page.locator("#lab2d-forward img").wait_for()  # the forward plot is drawn on open
        # No model tab opens empty: each shows a finished example run of its default settings.
        elif index == 4:
            session.page.locator("#sample-gallery img").nth(15).wait_for(timeout=120_000)
            session.wait_for_json("sample-summary", r'"steps":20,')
            assert session.page.locator("#sample-xt img").count() == 1
        elif index == 5:
            session.page.locator("#denoise-gallery img").nth(6).wait_for(timeout=120_000)
            session.wait_for_json("denoise-summary", r'"methods":')
            assert session.page.locator("#denoise-zoom img").count() == 1
        else:
            session.page.locator("#t2i-gallery img").first.wait_for(timeout=120_000)
            session.wait_for_json("t2i-summary", r'"steps_run":30')
        if index >= 4:
            status = {4: "#sample-status", 5: "#denoise-status", 6: "#t2i-status"}[index]
            example = "默认设置" if session.locale == "zh-CN" else "default settings"
            assert example in session.page.locator(status).inner_text()
        session.page.wait_for_timeout(300)
        session.shot(f"{index}-{name.split(' · ')[1].replace(' ', '_')}")
    session.assert_clean()


def test_heat_presets_stability_and_scrubbing(session):
    page = session.page
    session.wait_for_json("heat-summary", r'"r"')
    blew_up = "blew up" if session.locale == "en" else "发散"
    preset = "FTCS blows up: r = 0.6" if session.locale == "en" else "FTCS 发散：r = 0.6"
    session.choose("heat-preset", preset)
    page.locator("#heat-status").get_by_text(re.compile(blew_up)).first.wait_for()
    session.wait_for_json("heat-summary", r'"stable":false')
    session.shot("heat-unstable")
    # Crank–Nicolson with the same r stays bounded.
    cn = "Crank–Nicolson at the same r = 0.6" if session.locale == "en" else "同样 r = 0.6 的 Crank–Nicolson"
    session.choose("heat-preset", cn)
    session.wait_for_json("heat-summary", r'"blew_up":false')
    # The player holds the new run's frames: it starts at t = 60, its end time.
    page.wait_for_function("() => { const c = document.querySelector('#heat-player .dl-frames-caption');"
                           " return c && c.innerText.startsWith('t = 60'); }")
    # The bridge to lesson 2: its heat-kernel plot is drawn when the accordion opens,
    # and drawn again for a new D while it stays open.
    assert page.locator("#heat-kernel img").count() == 0
    page.locator("#heat-bridge").get_by_role("button").first.click()
    page.locator("#heat-kernel img").wait_for()
    before = page.locator("#heat-kernel img").get_attribute("src")
    box = page.locator("#heat-d input").first
    box.fill("0.3")
    page.locator("#heat-run").click()
    page.wait_for_function("old => { const img = document.querySelector('#heat-kernel img');"
                           " return img && img.src !== old; }", arg=before)
    session.shot("heat-kernel")
    session.assert_clean()


class PlayerWatch:
    """Console errors and requests to the app while a frame player is used (data: URLs are not requests)."""

    def __init__(self, session) -> None:
        # A fresh page with the listeners on before it loads, so that errors while loading count too.
        url, self.errors, self.requests = session.page.url, [], []
        self.base = url.split("?")[0]
        session.page.close()
        session.page_errors.clear()
        page = self.page = session.page = session.context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        page.on("pageerror", lambda exc: session.page_errors.append(str(exc)))
        page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        page.on("request", lambda r: self.requests.append(f"{r.url} {(r.post_data or '')[:200]}")
                if r.url.startswith(self.base) else None)
        page.goto(url)
        page.wait_for_selector("#heat-run")

    def caption(self, player: str) -> str:
        return self.page.locator(f"#{player} .dl-frames-caption").inner_text()

    def picture(self, player: str) -> str:
        return self.page.locator(f"#{player} img").first.get_attribute("src")

    def wait_caption(self, player: str, test: str, arg: str) -> None:
        """Wait until the caption passes ``test`` (a JS expression of ``c``, the caption, and ``a``)."""
        self.page.wait_for_function(
            "([id, a]) => { const el = document.querySelector('#' + id + ' .dl-frames-caption');"
            f" const c = el ? el.innerText : ''; return {test}; }}", arg=[player, arg])

    def play_and_scrub(self, player: str, zh: bool, first: str, last: str) -> None:
        """Play from the first frame to the last, drag the slider and press a key: no request to the app."""
        page = self.page
        play, pause = ("播放", "暂停") if zh else ("Play", "Pause")
        button = page.locator(f"#{player}").get_by_role("button", name=play, exact=True)
        self.requests.clear()
        button.click()  # at the last frame: Play starts again from the first
        page.locator(f"#{player}").get_by_role("button", name=pause, exact=True).wait_for()
        assert page.locator(f"#{player} button").get_attribute("aria-pressed") == "true"
        self.wait_caption(player, "c !== a && !c.startsWith(a)", first)  # moving on from the first frame
        self.wait_caption(player, "c.startsWith(a)", last)  # ... to the last, where it stops
        button.wait_for()
        end = self.picture(player)
        slider = page.locator(f"#{player} input[type=range]")
        box = slider.bounding_box()
        y = box["y"] + box["height"] / 2
        page.mouse.move(box["x"] + box["width"] - 2, y)
        page.mouse.down()
        for k in range(1, 9):
            page.mouse.move(box["x"] + box["width"] * (1 - 0.08 * k), y)
        page.mouse.up()
        assert self.picture(player) != end and not self.caption(player).startswith(last)
        value = int(slider.input_value())
        assert 0 < value < int(slider.get_attribute("max"))
        slider.focus()
        page.keyboard.press("ArrowRight")
        assert int(slider.input_value()) == value + 1
        page.wait_for_timeout(300)
        assert self.requests == [], f"the player asked the server: {self.requests}"

    def assert_clean(self) -> None:
        assert self.errors == [], f"console errors: {self.errors}"


def test_heat_player_plays_and_scrubs_in_the_browser(session):
    zh = session.locale == "zh-CN"
    watch = PlayerWatch(session)
    session.wait_for_json("heat-summary", r'"r"')
    _wait_for_the_model_examples(session, watch, then=0)  # no late example may look like a player request
    # The default run's 51 frames arrive once; the player starts at the end, t = 50.
    watch.wait_caption("heat-player", "c.startsWith(a)", "t = 50")
    caption = watch.caption("heat-player")
    assert ("（时间单位）· 总热量 ∫u dx = " if zh else " time units · total heat ∫u dx = ") in caption
    assert watch.picture("heat-player").startswith("data:image/png;base64,")
    assert session.page.locator("#heat-profile img").count() == 0  # the player took the server plot's place
    assert session.page.locator("#heat-player input[type=range]").get_attribute("aria-label") == (
        "时间 t（各帧已在你的浏览器中）" if zh else "Time t (frames already in your browser)")
    watch.play_and_scrub("heat-player", zh, "t = 0", "t = 50")
    session.shot("heat-player")
    watch.assert_clean()
    session.assert_clean()


def test_heat_custom_formula_and_helpful_error(session):
    page = session.page
    session.wait_for_json("heat-summary", r'"r"')
    custom = "Custom formula" if session.locale == "en" else "自定义公式"
    session.choose("heat-ic", custom)
    box = page.locator("#heat-expr textarea, #heat-expr input").first
    box.fill("exp(-(x-50)**2/20) + 0.5*sin(x/5)")
    page.locator("#heat-run").click()
    session.wait_for_json("heat-summary", r'"initial_condition":"custom"')
    session.assert_clean()
    box.fill("exp(-(x-50)**2/20) + y")
    page.locator("#heat-run").click()
    page.locator('[data-testid="toast-body"].error').first.wait_for()
    message = " ".join(session.error_toasts())
    assert "y" in message and ("Unknown name" in message or "未知" in message)
    session.dismiss_toasts()


def test_noising_slider_examples_and_gif(session):
    page = session.page
    session.open_tab(TAB_NAMES[session.locale][1])
    session.wait_for_json("noise-summary", r'"alpha_bar"')
    session.set_slider("noise-t", 900)
    session.wait_for_json("noise-summary", r'"t":900,')
    # Pick another bundled example by clicking its thumbnail.
    examples = list_examples()
    if len(examples) > 1:
        page.locator(".gallery-item, [data-testid='examples'] button").nth(1).click()
        page.wait_for_timeout(500)
    session.choose("noise-schedule", "Cosine (improved DDPM)" if session.locale == "en" else "余弦（改进的 DDPM）")
    session.wait_for_json("noise-summary", r'"schedule":"cosine"')
    page.locator("#noise-gif-btn").click()
    page.locator("#noise-gif a, #noise-gif .file-preview").first.wait_for()
    session.shot("noising-used")
    session.assert_clean()


def test_noising_player_plays_and_scrubs_in_the_browser(session):
    zh = session.locale == "zh-CN"
    watch = PlayerWatch(session)
    _wait_for_the_model_examples(session, watch, then=1)  # no late example may look like a player request
    session.wait_for_json("noise-summary", r'"alpha_bar"')
    # x_t from t = 0 to T arrives once; the player starts at the clean image.
    watch.wait_caption("noise-player", "c.startsWith(a)", "t = 0 / 1000" if zh else "t = 0 of 1000")
    assert "ᾱ_t = 1.0000 · x_t = 1.000·x₀ + 0.000·ε" in watch.caption("noise-player")
    title = session.page.locator("#noise-player figcaption").inner_text()
    assert title == ("一步到达的 x_t（式 4），从 t = 0 到 T = 1000" if zh else "x_t in one jump (eq. 4), from t = 0 to T = 1000")
    watch.play_and_scrub("noise-player", zh, "t = 0 ", "t = 1000 ")
    session.shot("noising-player")
    watch.assert_clean()
    session.assert_clean()


def test_lab2d_trains_samples_plays_and_draws(session):
    page = session.page
    zh = session.locale == "zh-CN"
    session.open_tab(TAB_NAMES[session.locale][2])
    page.locator("#lab2d-forward img").wait_for()
    session.choose("lab2d-dataset", "棋盘格" if zh else "Checkerboard")
    session.set_slider("lab2d-n-points", 400)
    session.set_slider("lab2d-steps", 600)
    page.locator("#lab2d-forward-info").get_by_text(re.compile("ᾱ_t")).wait_for()
    page.locator("#lab2d-train").click()
    session.wait_for_json("lab2d-summary", r'"dataset":"checkerboard","n_train":400,"train_steps":600')
    assert ("训练完成" if zh else "Trained") in page.locator("#lab2d-status").inner_text()
    page.locator("#lab2d-loss img").wait_for()  # the loss plot follows the summary (a loaded machine: later)
    assert page.locator("#lab2d-loss img").count() == 1
    session.set_slider("lab2d-sample-steps", 30)
    page.locator("#lab2d-sample").click()
    session.wait_for_json("lab2d-sample-summary", r'"ddim_exact"')
    captions = page.locator("#lab2d-player figcaption").all_inner_texts()
    assert captions == (["DDPM（学到的）", "DDIM（学到的）", "精确得分（DDIM）"] if zh
                        else ["DDPM (learned)", "DDIM (learned)", "Exact score (DDIM)"])
    label = page.locator("#lab2d-player .dl-player-label")
    assert label.inner_text() == "t = 0"
    page.locator("#lab2d-player button").click()  # Play: the browser steps through the frames by itself
    page.wait_for_function("() => document.querySelector('#lab2d-player .dl-player-label').innerText !== 't = 0'")
    page.wait_for_function("() => document.querySelector('#lab2d-player .dl-player-label').innerText === 't = 0'")
    session.shot("lab2d-sampled")
    page.locator("#lab2d-show-field").click()
    page.locator("#lab2d-field img").wait_for()
    page.locator("#lab2d-field-info").get_by_text(re.compile("s_θ")).wait_for()
    # Draw two strokes on the canvas and train on them.
    session.choose("lab2d-dataset", "自己画" if zh else "Draw your own")
    canvas = page.locator("#lab2d-canvas canvas")
    canvas.wait_for()
    box = canvas.bounding_box()
    for y in (0.3, 0.7):
        page.mouse.move(box["x"] + 0.2 * box["width"], box["y"] + y * box["height"])
        page.mouse.down()
        for k in range(1, 11):
            page.mouse.move(box["x"] + (0.2 + 0.06 * k) * box["width"], box["y"] + y * box["height"])
        page.mouse.up()
    page.wait_for_timeout(500)
    page.locator("#lab2d-train").click()
    session.wait_for_json("lab2d-summary", r'"dataset":"drawing"')
    session.shot("lab2d-drawn")
    session.assert_clean()


def _wait_for_the_model_examples(session, watch, then: int) -> None:
    """Visit each model tab until it shows its opening example and its player's frames; then open tab ``then``.

    The examples come in as the page opens; one arriving late would otherwise count as a
    request while a player is being checked for asking none.
    """
    from diffusion.models import registry as models

    zh, names = session.locale == "zh-CN", TAB_NAMES[session.locale]
    session.open_tab(names[3])
    watch.wait_caption("sample-player", "c.startsWith(a)", "第 20 / 20 步" if zh else "Step 20 / 20")
    session.open_tab(names[4])
    session.wait_for_json("denoise-summary", r'"methods":')
    if models.text2image_available():
        session.open_tab(names[5])
        watch.wait_caption("t2i-player", "c.startsWith(a)", "第 30 / 30 步" if zh else "Step 30 / 30")
    session.open_tab(names[then])


def test_sampling_streams_stops_and_scrubs(session):
    zh = session.locale == "zh-CN"
    watch = PlayerWatch(session)
    page = session.page
    _wait_for_the_model_examples(session, watch, then=3)
    # A quick DDIM run: live frames stream in, then the gallery, the slider and the summary.
    session.set_slider("sample-steps", 25)
    session.set_slider("sample-batch", 9)
    session.choose("sample-digit", "7")
    page.locator("#sample-run").click()
    page.locator("#sample-xt img").wait_for()
    session.wait_for_json("sample-summary", r'"sampler":"ddim","steps":25,')
    assert page.locator("#sample-gallery img").count() >= 9
    assert ("完成" if zh else "Done") in page.locator("#sample-status").inner_text()
    session.shot("sampling-done")
    # Scrub back to step 1: the status shows the replayed step at once.
    session.set_slider("sample-scrub", 1)
    page.locator("#sample-status").get_by_text(re.compile("第 1 / 25 步" if zh else "step 1 / 25")).wait_for()
    session.shot("sampling-scrubbed")
    # The player got all 25 steps once, after the run: Play and its slider ask the server nothing.
    step = "第 {} / 25 步" if zh else "Step {} / 25"
    watch.wait_caption("sample-player", "c.startsWith(a)", step.format(25))
    assert watch.picture("sample-player").startswith("data:image/png;base64,")
    assert page.locator("#sample-player figure").count() == 2
    assert ("全部 25 步" if zh else "all 25 steps") in page.locator("#sample-player .dl-frames-note").inner_text()
    watch.play_and_scrub("sample-player", zh, step.format(1) + " ", step.format(25))
    session.shot("sampling-player")
    # A long DDPM run, stopped by the Stop button after the first frames.
    session.choose("sample-sampler", "DDPM（祖先采样，Ho 等 2020）" if zh else "DDPM (ancestral, Ho et al. 2020)")
    session.set_slider("sample-steps", 1000)
    page.locator("#sample-run").click()
    page.locator("#sample-status").get_by_text(re.compile("/ 1000")).first.wait_for()
    page.wait_for_timeout(800)
    page.locator("#sample-stop").click()
    session.wait_for_json("sample-summary", r'"stopped":true')
    assert ("已在第" if zh else "Stopped after") in page.locator("#sample-status").inner_text()
    session.shot("sampling-stopped")
    # The GIF of the stopped run.
    page.locator("#sample-gif-btn").click()
    page.locator("#sample-gif a, #sample-gif .file-preview").first.wait_for()
    watch.assert_clean()
    session.assert_clean()


def test_denoising_upload_compare_zoom_and_bad_files(session, tmp_path):
    page = session.page
    zh = session.locale == "zh-CN"
    session.open_tab(TAB_NAMES[session.locale][4])
    photo = next(p for p in list_examples() if p.name == "coffee.png")
    page.locator("#denoise-image input[type=file]").set_input_files(str(photo))
    page.locator("#denoise-image img").first.wait_for()
    # Keep it quick: a small working size, few DDIM steps; BM3D is one click away, not ticked.
    page.locator("#denoise-options").get_by_text("更多选项" if zh else "More options").first.click()
    session.set_slider("denoise-max-side", 128)
    session.set_slider("denoise-steps", 4)
    assert not page.locator("#denoise-methods").get_by_label("BM3D（较慢）" if zh else "BM3D (slow)").is_checked()
    session.set_slider("denoise-sigma", 30)
    page.locator("#denoise-run").click()
    session.wait_for_json("denoise-summary", r'"sigma":30,.*"diffusion_one_step":\{\d*"psnr":\d')
    assert "bm3d" not in session.json_text("denoise-summary")
    assert page.locator("#denoise-gallery img").count() >= 7  # clean, noisy and five methods
    assert ("完成" if zh else "Done") in page.locator("#denoise-status").inner_text()
    page.locator("#denoise-zoom img").wait_for()
    page.locator("#denoise-path img").first.wait_for()
    session.shot("denoising-done")
    # Move the zoom: only the zoom figure is redrawn.
    session.slide_redraws_only("denoise-zoom-x", 20, "denoise-zoom", "denoise-summary")
    session.assert_clean()
    # An already-noisy photo: σ = 0 estimates the noise and shows the estimate.
    session.set_slider("denoise-sigma", 0)
    page.locator("#denoise-run").click()
    page.locator("#denoise-notice").get_by_text(re.compile("估计" if zh else "estimated σ")).first.wait_for()
    session.wait_for_json("denoise-summary", r'"diffusion_one_step":\{\d*"psnr":null')  # no clean original
    page.locator("#denoise-status").get_by_text(re.compile("完成" if zh else "Done")).wait_for()
    session.assert_clean()
    # A file that is not a picture: a clear message, and the tab keeps working.
    fake = tmp_path / "homework.png"
    fake.write_text("this is not a picture")
    page.locator("#denoise-image input[type=file]").set_input_files(str(fake))
    page.wait_for_timeout(500)
    page.locator("#denoise-run").click()
    page.locator('[data-testid="toast-body"].error').first.wait_for()
    message = " ".join(session.error_toasts())
    assert ("无法" in message) if zh else ("could not be read as an image" in message)
    session.dismiss_toasts()
    session.shot("denoising-bad-file")


def test_text_to_image_streams_scrubs_stops_and_starts_from_a_picture(session, tmp_path):
    from diffusion.models import registry as models

    if not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    zh = session.locale == "zh-CN"
    watch = PlayerWatch(session)
    page = session.page
    _wait_for_the_model_examples(session, watch, then=5)
    prompt = page.locator("#t2i-prompt textarea")
    prompt.fill("a small yellow star at the top right on a blue background, sparkly")
    session.set_slider("t2i-batch", 2)
    page.locator("#t2i-run").click()
    page.locator("#t2i-x0 img").wait_for()
    # (the tab opened with its example, one picture: wait for this run's summary)
    session.wait_for_json("t2i-summary", r'"model":"embedded","scheduler":"ddim","steps":30,.*"batch_size":2,')
    assert page.locator("#t2i-gallery img").count() >= 2
    assert ("完成" if zh else "Done") in page.locator("#t2i-status").inner_text()
    assert "sparkly" in page.locator("#t2i-notice").inner_text()  # an unknown word: a notice, not an error
    session.shot("text2image-done")
    session.set_slider("t2i-scrub", 3)
    page.locator("#t2i-status").get_by_text(re.compile("第 3 / 30 步" if zh else "step 3 / 30")).wait_for()
    session.shot("text2image-scrubbed")
    # The player got z_t and the decoded x̂₀ of all 30 steps once: playing needs no request.
    step = "第 {} / 30 步" if zh else "Step {} / 30"
    watch.wait_caption("t2i-player", "c.startsWith(a)", step.format(30))
    page.wait_for_function("() => { const im = document.querySelectorAll('#t2i-player img')[1];"
                           " return im && im.naturalWidth === 2 * im.naturalHeight; }")  # this run's 2 pictures
    assert watch.picture("t2i-player").startswith("data:image/png;base64,")
    assert page.locator("#t2i-player figure").count() == 2
    watch.play_and_scrub("t2i-player", zh, step.format(1) + " ", step.format(30))
    session.shot("text2image-player")
    # A long run, stopped after the first frames.
    session.set_slider("t2i-steps", 100)
    page.locator("#t2i-run").click()
    page.locator("#t2i-status").get_by_text(re.compile("/ 100")).first.wait_for()
    page.locator("#t2i-stop").click()
    session.wait_for_json("t2i-summary", r'"stopped":true')
    # Image to image from an upload, with the strength explained as a timestep.
    start = tmp_path / "start.png"
    from PIL import Image
    Image.new("RGB", (80, 60), (40, 170, 60)).save(start)
    page.locator("#t2i-img2img").get_by_text("图生图" if zh else "Image to image").first.click()
    page.locator("#t2i-init input[type=file]").set_input_files(str(start))
    page.locator("#t2i-init img").first.wait_for()
    session.set_slider("t2i-steps", 20)
    session.set_slider("t2i-strength", 0.5)
    page.locator("#t2i-strength-info").get_by_text(re.compile("ᾱ_t")).wait_for()
    page.locator("#t2i-run").click()
    session.wait_for_json("t2i-summary", r'"steps_run":10,.*"img2img":true,"strength":0.5')
    session.shot("text2image-img2img")
    watch.assert_clean()
    session.assert_clean()


def test_sampling_compare_in_the_browser(browser, app_server):
    s = Session(browser, app_server, "en-US")
    try:
        page = s.page
        s.open_tab(TAB_NAMES["en"][3])
        s.set_slider("sample-batch", 4)
        page.locator("#sample-compare-box").get_by_text("Compare DDPM and DDIM").first.click()
        s.set_slider("compare-ddpm-steps", 100)
        s.set_slider("compare-ddim-steps", 10)
        page.locator("#compare-run").click()
        s.wait_for_json("compare-summary", r'"speedup_ddim_over_ddpm"')
        page.locator("#compare-plot img").wait_for()
        s.shot("sampling-compare")
        s.assert_clean()
    finally:
        s.close()


def test_language_button_switches_labels_and_server_text(browser, app_server):
    s = Session(browser, app_server, "en-US")
    try:
        s.wait_for_json("heat-summary", r'"r"')
        s.page.locator("#dl-lang-btn").click()
        s.page.get_by_role("tab", name="1 · 热方程", exact=True).wait_for()
        assert s.page.locator("#dl-locale").inner_text().strip() == "zh-CN"
        s.page.locator("#heat-run").click()
        s.page.locator("#heat-status").get_by_text(re.compile("毫秒")).first.wait_for()
        s.page.locator("#dl-lang-btn").click()
        s.page.get_by_role("tab", name="1 · Heat equation", exact=True).wait_for()
        s.assert_clean()
    finally:
        s.close()


def _section_label(locale: str, name: str) -> str:
    import json

    table = json.loads((Path(__file__).resolve().parents[2] / "diffusion" / "ui" / "locales" / f"{locale}.json")
                       .read_text(encoding="utf-8"))
    return table[f"applications.{name}.tab"]


def test_applications_sections_open_with_examples_and_run(session):
    """Lesson 7: every section opens with its example, and each main button runs like a person uses it."""
    from diffusion.ui import applications

    zh, page = session.locale == "zh-CN", session.page
    session.open_tab("7 · 应用" if zh else "7 · Applications")
    names = [name for name, _ in applications.SECTIONS]
    for name in names:
        page.get_by_role("tab", name=_section_label(session.locale, name), exact=True).click()
        if name == "anomaly":
            session.wait_for_json("anomaly-summary", r'"method":"diffusion"')  # the example, scored on open
            page.locator("#anomaly-method label").nth(1).click()  # the autoencoder's score
            page.locator("#anomaly-run").click()
            session.wait_for_json("anomaly-summary", r'"method":"autoencoder"')
            page.locator("#anomaly-histogram img").wait_for()
            assert page.locator("#anomaly-verdict").inner_text().strip()
        elif name == "augment":
            session.wait_for_json("augment-summary", r'"accuracy_real_only":')  # the example experiment
            assert page.locator("#augment-plot img").count() == 1
            session.set_slider("augment-per-class", 2)
            page.locator("#augment-export").click()
            session.wait_for_json("augment-export-summary", r'"count":20,')
            page.locator("#augment-file a, #augment-file .file-preview").first.wait_for()
        else:
            session.wait_for_json(f"{name}-summary", r'"steps_run":')  # the example, on open
            seed = page.locator(f"#{name}-seed input")
            seed.fill("7")  # a run of our own, not the example's cached one
            seed.press("Enter")
            page.locator(f"#{name}-run").click()
            session.wait_for_json(f"{name}-summary", r'"seed":7,')
            page.locator(f"#{name}-gallery img").nth(3).wait_for()  # four fills by default
            session.set_slider(f"{name}-scrub", 1)
            page.locator(f"#{name}-status").get_by_text(re.compile("第 1 /" if zh else "1 /")).first.wait_for()
        page.wait_for_timeout(300)
        session.shot(f"7-{name}")
    session.assert_clean()


def _label(locale: str, key: str) -> str:
    import json

    table = json.loads((Path(__file__).resolve().parents[2] / "diffusion" / "ui" / "locales" / f"{locale}.json")
                       .read_text(encoding="utf-8"))
    return table[key]


def test_text_to_image_looks_inside_a_run(session):
    """Lesson 6's sections: per-model defaults, attention per word, the latent's path, two prompts, the sweep."""
    from diffusion.models import registry as models

    if not models.text2image_available():
        pytest.skip("the embedded text-to-image model is not installed")
    zh, page, locale = session.locale == "zh-CN", session.page, session.locale
    session.open_tab(TAB_NAMES[locale][5])
    session.wait_for_json("t2i-summary", r'"steps_run":30')  # the tab's example, with its attention
    # Choosing a model sets what suits it (nothing is loaded); choosing the embedded one sets its own back.
    session.choose("t2i-model", "stabilityai/sd-turbo")
    page.wait_for_function("() => document.querySelector('#t2i-steps input[type=number]').value === '1'")
    assert page.locator("#t2i-guidance input[type=number]").input_value() == "0"
    assert ("步数 1，" if zh else "steps 1,") in page.locator("#t2i-defaults-note").inner_text()
    session.choose("t2i-model", _label(locale, "text2image.model_embedded"))
    page.wait_for_function("() => document.querySelector('#t2i-steps input[type=number]').value === '30'")
    assert page.locator("#t2i-guidance input[type=number]").input_value() == "2"
    # Attention per word of the example run, summed over steps, then its player.
    page.get_by_role("tab", name=_label(locale, "text2image.section_attention"), exact=True).click()
    page.locator("#t2i-attention-run").click()
    session.wait_for_json("t2i-attention-summary", r'"tokens":\["a","large","red","circle",.*"step":0')
    assert page.locator("#t2i-attention-gallery img").count() >= 8
    page.locator("#t2i-attention-player img").first.wait_for()
    assert page.locator("#t2i-attention-player figure").count() == 4  # the four most focused words, step by step
    session.set_slider("t2i-attention-step", 5)
    session.wait_for_json("t2i-attention-summary", r'"step":5')
    session.shot("text2image-attention")
    # The latent's path with two more seeds.
    page.get_by_role("tab", name=_label(locale, "text2image.section_path"), exact=True).click()
    page.locator("#t2i-path-run").click()
    session.wait_for_json("t2i-path-summary", r'"seeds":\[0,1,2\]')
    page.locator("#t2i-path-plot img").wait_for()
    session.shot("text2image-path")
    # Two prompts from the same noise.
    page.get_by_role("tab", name=_label(locale, "text2image.section_compare"), exact=True).click()
    page.locator("#t2i-compare-run").click()
    session.wait_for_json("t2i-compare-summary", r'"prompt_b":"alargebluesquareinthecenteronawhitebackground"')
    page.locator("#t2i-compare-a img").wait_for()
    page.locator("#t2i-compare-b img").wait_for()
    session.set_slider("t2i-compare-scrub", 4)
    page.locator("#t2i-compare-status").get_by_text(re.compile("第 4 / 30 步" if zh else "step 4 / 30")).wait_for()
    session.shot("text2image-compare")
    # The guidance sweep: four pictures from the same noise, a sentence each.
    page.get_by_role("tab", name=_label(locale, "text2image.section_sweep"), exact=True).click()
    page.locator("#t2i-sweep-run").click()
    session.wait_for_json("t2i-sweep-summary", r'"scales":\[1(\.0)?,2(\.0)?,5(\.0)?,10(\.0)?\]')
    assert page.locator("#t2i-sweep-gallery img").count() == 4
    assert page.locator("#t2i-sweep-sentences li").count() == 4
    session.shot("text2image-sweep")
    session.assert_clean()
