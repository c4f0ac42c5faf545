"""The chat page in a real, headless Chromium (Debian's `chromium` package) driven by Playwright.

Playwright's Python wheel brings its own driver and is pointed at the system Chromium, so nothing
is downloaded. Without Chromium these tests are skipped on a user's machine (one line says how to
install it) and FAIL in CI (CI=true), where .ci/run installs it.

The models are the tiny untrained config, seeded: the page must show exactly what utils.generate
gives, whatever the weights. A slow tokenizer (a decode that sleeps) keeps answers streaming long
enough to stop, close or queue them; it changes nothing in what is generated.
"""

import os
import shutil
import threading
import time
from pathlib import Path

import pytest
import torch

import chat
from utils import GPT_CONFIGS, PAD_TOKEN_ID, GPTModel, format_prompt, generate

INSTALL_HINT = "Chromium is not installed: `apt-get install -y chromium` (Debian/Ubuntu), then rerun"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _chromium() -> str | None:
    return next(filter(None, map(shutil.which, ["chromium", "chromium-browser"])), None)


@pytest.fixture(scope="session")
def browser():
    path, missing = _chromium(), None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing = "The playwright package is not installed: `make setup-test` (or pip install -r requirements-test.txt)"
    if path is None:
        missing = INSTALL_HINT
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the browser tests. {missing}")
        pytest.skip(missing)
    # Playwright starts every browser with a fresh temporary profile (its own --user-data-dir).
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=path, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def tiny(seed: int) -> GPTModel:
    torch.manual_seed(seed)
    return GPTModel(GPT_CONFIGS["tiny"]).eval()


class SlowTokenizer:
    """GPT-2's tokenizer whose decode takes `delay` seconds: answers stream slowly, tokens unchanged."""

    def __init__(self, tokenizer, delay: float):
        self.tokenizer, self.delay = tokenizer, delay

    def encode(self, *args, **kwargs):
        return self.tokenizer.encode(*args, **kwargs)

    def decode(self, ids):
        time.sleep(self.delay)
        return self.tokenizer.decode(ids)


class ScriptTokenizer(SlowTokenizer):
    """Every answer comes out as HTML that would run code if the page ever parsed it."""

    def decode(self, ids):
        return f"<script>window.pwned = 1</script><img src=x onerror='window.pwned = 2'> {len(ids)}"


TUNED_LABEL = "test run: UNTRAINED tiny model, seed 1, standing in for a finetuned one"
BASE_LABEL = "test run: UNTRAINED tiny model, seed 123, standing in for GPT-2"


@pytest.fixture
def serve(tokenizer):
    """serve(tokenizer=..., compare=False) -> (url, app): a chat server on a free port, in a thread."""
    servers = []

    def start(tok=None, compare: bool = False, delay: float = 0.0):
        models = {"finetuned": chat.ChatModel("finetuned", TUNED_LABEL, tiny(1))}
        if compare:
            models["base"] = chat.ChatModel("base", BASE_LABEL, tiny(123))
        app = chat.ChatApp(models, tok or SlowTokenizer(tokenizer, delay))
        server = chat.make_server(app, port=0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append((app, server))
        return f"http://127.0.0.1:{server.server_port}/", app

    yield start
    for app, server in servers:
        app.shutting_down.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    yield context.new_page()
    context.close()


def expected_tokens(model, tokenizer, instruction: str, max_new_tokens: int, style: str = "alpaca") -> list[int]:
    ids = tokenizer.encode(format_prompt({"instruction": instruction}, style))
    out = generate(model, torch.tensor([ids]), max_new_tokens, context_size=256, eos_id=PAD_TOKEN_ID)
    return out[0, len(ids) :].tolist()


def ask(page, url: str, instruction: str, max_new_tokens: int, extra: str = "", **choices) -> None:
    if page.url != url:
        page.goto(url)
    page.wait_for_selector("#models li")
    page.fill("#instruction", instruction)
    page.fill("#input", extra)
    page.fill("#max_new_tokens", str(max_new_tokens))
    for field, value in choices.items():
        page.select_option(f"#{field}", value)
    page.click("#send")


def shown_tokens(page, panel: int = 0) -> list[int]:
    return [int(t) for t in page.text_content(f"#answer-{panel} .ids").split()]


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_page_loads_and_says_which_model_answers(page, serve):
    url, _ = serve()
    page.goto(url)
    assert page.title() == "Talk to your model"
    page.wait_for_selector("#models li")
    assert page.text_content("#models") == f"finetuned: {TUNED_LABEL}"
    assert page.is_hidden("#note") and page.is_disabled("#stop")


def test_streamed_greedy_answer_equals_generate_token_for_token(page, serve, tokenizer):
    url, app = serve(delay=0.03)
    page.goto(url)
    # Every state the answer passes through, as the browser renders it.
    page.evaluate("""() => { window.seen = [];
        new MutationObserver(() => window.seen.push(document.querySelector('#answer-0 .text').textContent))
            .observe(document.querySelector('#answer-0 .text'), {childList: true, characterData: true, subtree: true});
    }""")
    ask(page, url, "Give three tips for staying healthy.", 20)
    page.wait_for_selector("#answer-0[data-state=done]")
    expected = expected_tokens(app.models["finetuned"].model, tokenizer, "Give three tips for staying healthy.", 20)
    assert shown_tokens(page) == expected
    final = page.text_content("#answer-0 .text")
    assert final == tokenizer.decode(expected)
    seen = [text for text in page.evaluate("window.seen") if text]
    assert len(set(seen)) >= 10, "the answer did not arrive token by token"
    assert all(final.startswith(text) for text in seen)
    assert page.text_content("#prompt") == format_prompt({"instruction": "Give three tips for staying healthy."})
    assert page.text_content("#status") == "Done."


def test_phi3_style_shows_its_template_and_answers_as_generate(page, serve, tokenizer):
    url, app = serve()
    ask(page, url, "Name a colour.", 8, style="phi3")
    page.wait_for_selector("#answer-0[data-state=done]")
    assert page.text_content("#prompt") == "<|user|>\nName a colour.<|end|>\n<|assistant|>\n"
    assert shown_tokens(page) == expected_tokens(app.models["finetuned"].model, tokenizer, "Name a colour.", 8, "phi3")


def test_html_in_an_answer_or_a_prompt_is_shown_as_text(browser, serve, tokenizer):
    url, _ = serve(tok=ScriptTokenizer(tokenizer, 0.01))
    # Without the page's Content-Security-Policy, so that only textContent stands between the text and the DOM.
    context = browser.new_context(bypass_csp=True)
    page = context.new_page()
    page.goto(url)
    page.evaluate("""() => { window.elements = 0;
        const observer = new MutationObserver((records) => records.forEach((r) => r.addedNodes.forEach((n) => {
            if (n.nodeType === Node.ELEMENT_NODE) window.elements++; })));
        for (const id of ['answers', 'prompt-view', 'status'])
            observer.observe(document.getElementById(id), {childList: true, subtree: true});
    }""")
    ask(page, url, "<img src=y onerror='window.pwned = 3'><script>window.pwned = 4</script>", 5)
    page.wait_for_selector("#answer-0[data-state=done]")
    answer = page.text_content("#answer-0 .text")
    assert answer.startswith("<script>window.pwned = 1</script><img src=x")
    assert "<img src=y onerror=" in page.text_content("#prompt")
    assert page.evaluate("window.elements") == 0, "text was inserted as HTML at some point of the stream"
    assert page.evaluate("document.querySelectorAll('#answers script, #answers img, #prompt *').length") == 0
    assert page.evaluate("window.pwned") is None
    context.close()


def test_the_page_forbids_inline_scripts(page, serve):
    url, _ = serve()
    response = page.goto(url)
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy


def test_two_browsers_at_once_each_get_their_own_answer(browser, serve, tokenizer):
    url, app = serve(delay=0.02)
    pages = [browser.new_context().new_page() for _ in range(2)]
    prompts = ["Translate 'cat' into French.", "What is the capital of Italy?"]
    for pg in pages:
        pg.goto(url)
        pg.wait_for_selector("#models li")
    for pg, prompt in zip(pages, prompts):  # the second is sent while the first streams
        ask(pg, url, prompt, 15)
    for pg, prompt in zip(pages, prompts):
        pg.wait_for_selector("#answer-0[data-state=done]", timeout=30_000)
        assert shown_tokens(pg) == expected_tokens(app.models["finetuned"].model, tokenizer, prompt, 15)
        assert pg.text_content("#prompt") == format_prompt({"instruction": prompt})
    assert app.status() == {"generating": 0, "waiting": 0, "finished": 2, "stopped": 0, "disconnected": 0}
    for pg in pages:
        pg.context.close()


def test_compare_mode_answers_with_both_models_side_by_side(page, serve, tokenizer):
    url, app = serve(compare=True)
    ask(page, url, "List two fruits.", 10, model="compare")
    for panel, key in enumerate(["base", "finetuned"]):
        page.wait_for_selector(f"#answer-{panel}[data-state=done]")
        assert page.text_content(f"#answer-{panel} .label") == f"{key.capitalize()}: {app.models[key].label}"
        assert shown_tokens(page, panel) == expected_tokens(app.models[key].model, tokenizer, "List two fruits.", 10)
    assert shown_tokens(page, 0) != shown_tokens(page, 1)


def test_oversized_input_and_too_many_tokens_are_refused_with_a_message(page, serve):
    url, app = serve()
    ask(page, url, "x" * 2001, 10)
    page.wait_for_selector("#status.error")
    assert (
        page.text_content("#status") == "Too long: instruction and input have 2,001 characters together; "
        "the limit is 2,000."
    )
    ask(page, url, "Short.", 10_000)
    page.wait_for_function("() => document.querySelector('#status').textContent.startsWith('Max new tokens')")
    assert page.text_content("#status") == "Max new tokens must be between 1 and 500, got 10000."
    assert page.is_enabled("#send") and app.status()["finished"] == 0


def test_stop_ends_the_answer_and_the_next_one_works(page, serve):
    url, app = serve(delay=0.05)
    ask(page, url, "Write a long story.", 200)
    page.wait_for_function("() => document.querySelector('#answer-0 .ids').textContent.split(' ').length >= 3")
    page.click("#stop")
    page.wait_for_selector("#answer-0[data-state=stopped]")
    assert page.text_content("#status") == "Stopped."
    assert 3 <= len(shown_tokens(page)) < 200 and page.text_content("#answer-0 .text")
    wait_until(lambda: app.status()["generating"] == 0)
    assert app.status()["stopped"] == 1
    ask(page, url, "Short.", 3)
    page.wait_for_selector("#answer-0[data-state=done]")
    assert len(shown_tokens(page)) == 3


def test_closing_the_page_mid_answer_frees_the_server(browser, serve):
    url, app = serve(delay=0.05)
    leaving = browser.new_context().new_page()
    ask(leaving, url, "Write a long story.", 200)
    leaving.wait_for_selector("#answer-0[data-state=streaming]")
    leaving.context.close()  # 200 tokens would take 10 s more
    wait_until(lambda: app.status()["generating"] == 0, timeout=5)
    assert app.status()["disconnected"] == 1
    staying = browser.new_context().new_page()
    ask(staying, url, "Short.", 3)
    staying.wait_for_selector("#answer-0[data-state=done]", timeout=5_000)
    assert len(shown_tokens(staying)) == 3
    staying.context.close()


def test_screenshot(page, serve, tmp_path):
    """The README's picture: `CHAT_SCREENSHOT=figures/chat.png pytest tests/test_chat_browser.py -k screenshot`."""
    url, _ = serve(compare=True)
    ask(page, url, "Rewrite the sentence in passive voice.", 30, "The chef cooked the meal.", model="compare")
    page.wait_for_selector("#answer-0[data-state=done]")
    page.wait_for_selector("#answer-1[data-state=done]")
    page.click("#prompt-view summary")
    path = Path(os.environ.get("CHAT_SCREENSHOT") or tmp_path / "chat.png")
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
