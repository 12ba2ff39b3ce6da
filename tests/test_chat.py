"""The chat page: its pure helpers, and end to end in headless Chromium (Debian's, through Playwright)."""

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from mcgrpo.chat import check_length, parse_options, split_reasoning, verdict
from mcgrpo.errors import UserError
from mcgrpo.params import TrainParams

CHROMIUM = "/usr/bin/chromium"
# As root, with no network: no sandbox, no GPU, and none of Chromium's background calls home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def test_reasoning_and_answer_are_split_even_mid_stream():
    assert split_reasoning("<reasoning>Anna lives in Lima.</reasoning><answer>C</answer>") == ("Anna lives in Lima.", "C")
    assert split_reasoning("<reasoning>Anna lives") == ("Anna lives", "")  # still streaming
    assert split_reasoning("Hello there") == ("", "Hello there")


def test_options_and_length_checks():
    assert parse_options("A) Oslo\nB. Rome\n\n(C) Lima\nCairo") == ["Oslo", "Rome", "Lima", "Cairo"]
    with pytest.raises(UserError, match="2 to 10 options"):
        parse_options("only one")
    check_length(10, a="12345", b="12345")
    with pytest.raises(UserError, match="11 characters; the limit is 10"):
        check_length(10, a="123456", b="12345")


def test_verdict_scores_with_the_training_reward():
    options = ["Oslo", "Rome", "Lima", "Cairo"]
    reply = "<reasoning>It says Lima.</reasoning><answer>C</answer>"
    weights = TrainParams().rule_reward_weights
    assert verdict(reply, options, "", "cot", weights) == "C) Lima"
    assert verdict(reply, options, "C", "cot", weights) == "C) Lima | correct (gold C), reward 1.20"
    assert verdict("no idea", options, "A", "cot", weights) == "no answer found | wrong (gold A), reward 0.00"
    assert verdict(reply, options, "C", "cot", {"correct": 1.0, "format": 1.0}).endswith("reward 2.00")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a socket listening on port (from /proc/net/tcp and tcp6: no extra tools)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if Path(table).exists():
            for line in Path(table).read_text().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                address, hex_port = local.split(":")
                if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                    found.add(address)
    return found


@pytest.fixture(scope="module")
def chat_server(tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("chat") / "server.log", "w+")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mcgrpo.cli", "chat", "--base", str(tiny_model_dir), "--adapter", str(tiny_adapter_dir),
         "--params", "missing.yaml", "--port", str(port), "--max-input-chars", "500", "--max-new-tokens", "24"],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path_factory.mktemp("cwd"))
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 180
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                log.seek(0)
                proc.kill()
                pytest.fail(f"chat server did not start:\n{log.read()}")
            time.sleep(0.5)
    yield url, port
    proc.terminate()
    proc.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def page(chat_server):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium; .ci/run installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1300, "height": 1000})
        page.goto(chat_server[0], timeout=60_000)
        yield page
        browser.close()


@pytest.mark.slow
def test_the_server_listens_on_localhost_only(chat_server):
    assert listening_addresses(chat_server[1]) == {"0100007F"}  # 127.0.0.1, nothing else


def read_box(page, elem_id: str) -> str:
    return page.locator(f"#{elem_id} textarea").input_value()


def wait_for_box(page, elem_id: str, timeout=60_000):
    page.wait_for_function(
        f"() => {{ const t = document.querySelector('#{elem_id} textarea'); return t && t.value && t.value !== '…'; }}",
        timeout=timeout)


@pytest.mark.slow
def test_multiple_choice_is_answered_by_both_models_and_scored(page, tmp_path):
    page.get_by_role("tab", name="Multiple choice").click()
    page.locator("#passage textarea").fill("Anna lives in Lima. Ben lives in Oslo.")
    page.locator("#question textarea").fill("Where does Anna live?")
    page.locator("#options textarea").fill("Oslo\nRome\nLima\nCairo")
    page.locator("#gold textarea, #gold input").first.fill("C")
    page.locator("#ask").click()
    for label in ("fine-tuned", "base"):
        wait_for_box(page, f"mc-answer-{label}")
        answer = read_box(page, f"mc-answer-{label}")
        # "<letter>) <option> | correct/wrong (gold C), reward x" or "no answer found | ..."
        assert "(gold C), reward" in answer, answer
        assert answer.startswith(("A) Oslo", "B) Rome", "C) Lima", "D) Cairo", "no answer found"))
        assert read_box(page, f"mc-reasoning-{label}")  # the reasoning (or the raw reply) is shown apart
    page.screenshot(path=str(tmp_path / "multiple_choice.png"), full_page=True)


@pytest.mark.slow
def test_chat_streams_a_reply_per_model(page):
    page.get_by_role("tab", name="Chat").click()
    page.locator("#message textarea").fill("Hello, who are you?")
    page.locator("#message textarea").press("Enter")
    # Sequential streaming: the base model (second) replying means the fine-tuned one has finished.
    page.wait_for_function("""() => { const b = document.querySelectorAll('#chat-base [data-testid=bot]');
                                      return b.length && b[b.length - 1].innerText.trim(); }""", timeout=60_000)
    page.wait_for_timeout(1000)  # let the stream finish (24 tokens)
    for label in ("fine-tuned", "base"):
        assert page.locator(f"#chat-{label} [data-testid=user]").inner_text().strip() == "Hello, who are you?"
        reply = page.locator(f"#chat-{label} [data-testid=bot]").last.inner_text().strip()
        assert reply  # streamed into the page
        reasoning, answer = split_reasoning(reply)
        # the reasoning and final answer boxes hold the reply's parts (no tags: all of it is the answer)
        assert read_box(page, f"chat-answer-{label}").split() == answer.split()


@pytest.mark.slow
def test_over_long_input_is_refused_on_the_page(page):
    page.get_by_role("tab", name="Multiple choice").click()
    page.locator("#passage textarea").fill("x" * 600)
    page.locator("#ask").click()
    page.get_by_text("the limit is 500").first.wait_for(timeout=30_000)
