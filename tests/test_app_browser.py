"""The Gradio demo in a real browser: streamed greedy text equals the CLI's, bad input is survivable."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from src.generate import main as generate_main
from src.models import SmolLM2, SmolLM2Config
from tests.helpers import start_app, write_checkpoint

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PROMPT = "Once upon a time"
MAX_NEW_TOKENS = 24
TIMEOUT_MS = 20_000

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} not found: apt-get install -y chromium to run browser tests",
    ),
]


@pytest.fixture(scope="module")
def checkpoint(module_tmp_path) -> Path:
    torch.manual_seed(0)
    path = module_tmp_path / "tiny.ckpt"
    write_checkpoint(SmolLM2(SmolLM2Config.from_preset("tiny")).eval(), path)
    return path


@pytest.fixture(scope="module")
def app_url(checkpoint) -> Iterator[str]:
    process, port = start_app(checkpoint, checkpoint.with_name("app.log"))
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, app_url):
    page = browser.new_page(viewport={"width": 1280, "height": 1000})
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(app_url, wait_until="domcontentloaded")
    yield page
    page.close()


def generate_in_page(page, prompt: str) -> str:
    """Type the prompt, press Generate and wait for the speed line that ends a stream.

    Only for a page without an earlier result, whose old speed line would end the wait at once.
    """
    page.locator("#prompt textarea").fill(prompt)
    page.locator("#generate").click()
    page.locator("#status").get_by_text("tokens/s").wait_for()
    return page.locator("#output textarea").input_value()


def test_greedy_stream_equals_the_cli(page, checkpoint, capsys, tmp_path):
    page.locator("#greedy input").check()
    page.locator("#max-new-tokens input[type=number]").fill(str(MAX_NEW_TOKENS))
    page.locator("#max-new-tokens input[type=number]").press("Enter")
    streamed = generate_in_page(page, PROMPT)
    page.screenshot(path=tmp_path / "app.png", full_page=True)

    cli_args = [f"ckpt_path={checkpoint}", f"prompt={PROMPT}", f"max_new_tokens={MAX_NEW_TOKENS}"]
    generate_main([*cli_args, "temperature=0"])
    assert streamed.strip() and streamed + "\n" == capsys.readouterr().out


def test_bad_prompts_show_an_error_and_the_app_keeps_serving(page, tmp_path):
    for prompt, message in [("", "the prompt is empty"), ("hello " * 2100, "exceeds the model's context")]:
        page.locator("#prompt textarea").fill(prompt)
        page.locator("#generate").click()
        page.locator("#status").get_by_text(message).wait_for()
        page.locator(".toast-body").get_by_text(message).wait_for()
    page.screenshot(path=tmp_path / "bad-prompt.png", full_page=True)
    assert generate_in_page(page, PROMPT).strip()
