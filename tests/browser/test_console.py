"""The web console in a real browser: Debian's headless Chromium driven through chromedriver.

One `moe serve` on a free loopback port serves a hard-linked copy of the shipped experts with a fresh
state folder and an admin token. The tests compare what the page shows with what the JSON API
answers, operate a swap with and without the token, and fail on any message the browser logs at
SEVERE level (a Content-Security-Policy violation, a script error, a failed load).

Screenshots go to $MOE_CONSOLE_SHOTS (default build/console); `MOE_CONSOLE_SHOTS=docs/console
.venv/bin/python -m pytest tests/browser` refreshes the ones the README shows.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import Select, WebDriverWait

REPO = Path(__file__).resolve().parents[2]
TOKEN = "console-test-token"
CHROMIUM = os.environ.get("MOE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("MOE_CHROMEDRIVER", "/usr/bin/chromedriver")
SHOTS = Path(os.environ.get("MOE_CONSOLE_SHOTS", REPO / "build" / "console"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base, method, path, body=None, token=None):
    """One JSON API call; returns (status, parsed body, headers)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if body is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw.startswith((b"{", b"[")) else raw.decode()), r.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def start_server(edit_registry=None):
    """Serve a copy of the shipped experts (hard links: teaching writes a bundle into the model
    root) with its own state folder; `edit_registry` may change the copy's registry first.
    Yields the base URL."""
    binary = REPO / "target" / "release" / "moe"
    assert binary.exists(), "build the service first: cargo build --release"
    state = tempfile.mkdtemp(prefix="moe-console-")
    models = Path(state) / "models"
    shutil.copytree(REPO / "models", models, copy_function=os.link)
    if edit_registry:
        registry = json.loads((models / "registry.json").read_text())
        edit_registry(registry)
        (models / "registry.json").unlink()  # a new file, not the hard-linked original
        (models / "registry.json").write_text(json.dumps(registry))
    port = free_port()
    log = open(Path(state) / "serve.log", "w")
    proc = subprocess.Popen(
        [str(binary), "serve", "--port", str(port), "--models", str(models), "--state", str(Path(state) / "state")]
        + ["--admin-token", TOKEN],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if call(base, "GET", "/readyz")[0] == 200:
                break
        except OSError:
            pass
        assert proc.poll() is None, (Path(state) / "serve.log").read_text()
        time.sleep(0.2)
    else:
        pytest.fail("the service did not become ready")
    yield base
    proc.terminate()
    proc.wait(timeout=20)
    log.close()
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def server():
    yield from start_server()


@pytest.fixture(scope="module")
def declining_server():
    """The shipped set with an open-world cut-off no chit-chat reaches: such texts are declined."""

    def cut_off(registry):
        registry["gate"]["open_world"] = {"score": {"kind": "max_probability"}, "reject_below": 0.999}

    yield from start_server(cut_off)


@pytest.fixture(scope="module")
def browser():
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        pytest.fail(f"no browser: install Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1600"):
        opts.add_argument(a)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=opts)
    driver.implicitly_wait(0)
    yield driver
    driver.quit()


def severe_logs(driver):
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def wait(driver, cond, timeout=20):
    # The page re-renders tables when the experts change: an element found a moment ago may be gone.
    return WebDriverWait(driver, timeout, ignored_exceptions=[StaleElementReferenceException]).until(cond)


def open_console(driver, base):
    driver.get(base + "/")
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#experts-table tbody tr")) > 0)


def classify_in_page(driver, texts):
    """Type texts (one per line) into Try it, classify, and wait for one result per text."""
    area = driver.find_element(By.ID, "texts")
    area.clear()
    area.send_keys("\n".join(texts))
    driver.find_element(By.ID, "classify").click()
    wait(driver, lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.result")) == len(texts))


def shot(driver, name):
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(SHOTS / name))


def expert_row(driver, cls):
    return driver.find_element(By.CSS_SELECTOR, f'#experts-table tbody tr[data-class="{cls}"]')


def test_the_page_is_served_with_a_strict_csp_and_loads_without_errors(server, browser):
    status, body, headers = call(server, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert '<script src="/console.js"' in body and "http://" not in body and "https://" not in body
    open_console(browser, server)
    experts = call(server, "GET", "/experts")[1]["experts"]
    rows = browser.find_elements(By.CSS_SELECTOR, "#experts-table tbody tr")
    assert [r.get_attribute("data-class") for r in rows] == [e["class"] for e in experts]
    for e in experts:
        row = expert_row(browser, e["class"])
        assert row.find_element(By.CSS_SELECTOR, ".bundle").text == e["bundle"]
        assert row.find_element(By.CSS_SELECTOR, ".version").text == e["version"]
    assert "Ready: 19 experts" in browser.find_element(By.ID, "status").text
    assert severe_logs(browser) == []


def test_classify_shows_every_expert_as_the_api_answers(server, browser):
    open_console(browser, server)
    texts = ["How to cook pasta like a chef", "How to change a flat tire on a bike"]
    classify_in_page(browser, texts)
    api = call(server, "POST", "/classify?experts=all", {"texts": texts})[1]["results"]
    for article, want in zip(browser.find_elements(By.CSS_SELECTOR, "article.result"), api):
        decision = article.find_element(By.CSS_SELECTOR, ".decision")
        if want["abstained"]:
            assert "Abstained" in decision.text and want["best_guess"] in decision.text
        else:
            assert decision.get_attribute("data-label") == want["label"]
        rows = article.find_elements(By.CSS_SELECTOR, "tr.expert")
        assert len(rows) == len(want["experts"]) == 19
        by_class = {e["class"]: e for e in want["experts"]}
        shown = [float(r.find_element(By.CSS_SELECTOR, ".prob").text) for r in rows]
        assert shown == sorted(shown, reverse=True), "bars are sorted by probability"
        for r in rows:
            e = by_class[r.get_attribute("data-class")]
            assert float(r.find_element(By.CSS_SELECTOR, ".prob").text) == pytest.approx(e["probability"], abs=6e-4)
            assert ("passed" in r.get_attribute("class").split()) == e["passed"]
            bar = r.find_element(By.CSS_SELECTOR, ".bar")
            width = bar.size["width"]
            fill = r.find_element(By.CSS_SELECTOR, ".fill").size["width"]
            mark = r.find_element(By.CSS_SELECTOR, ".mark").location["x"] - bar.location["x"]
            assert fill == pytest.approx(e["probability"] * width, abs=2)
            assert mark == pytest.approx(e["threshold"] * width, abs=3)
    summary = browser.find_element(By.ID, "try-summary").text
    assert "ms in the service" in summary
    shot(browser, "try-it.png")
    assert severe_logs(browser) == []


def test_without_a_token_the_operate_controls_are_off_and_a_wrong_token_is_refused(server, browser):
    open_console(browser, server)
    before = call(server, "GET", "/experts/Travel")[1]
    for b in browser.find_elements(By.CSS_SELECTOR, "#ops button"):
        assert not b.is_enabled(), f"{b.text} is usable without a token"
    browser.find_element(By.ID, "token").send_keys("not-the-token")
    browser.find_element(By.ID, "use-token").click()
    Select(browser.find_element(By.ID, "op-class")).select_by_value("Travel")
    wait(browser, lambda d: len(Select(d.find_element(By.ID, "op-bundle")).options) > 1)
    other = next(o for o in Select(browser.find_element(By.ID, "op-bundle")).options if "(active)" not in o.text)
    Select(browser.find_element(By.ID, "op-bundle")).select_by_value(other.get_attribute("value"))
    browser.find_element(By.ID, "op-swap").click()
    wait(browser, ec.text_to_be_present_in_element((By.ID, "op-result"), "refused"))
    assert "401" in browser.find_element(By.ID, "op-result").text
    assert call(server, "GET", "/experts/Travel")[1]["version"] == before["version"]
    assert expert_row(browser, "Travel").find_element(By.CSS_SELECTOR, ".version").text == before["version"]
    browser.find_element(By.ID, "forget-token").click()
    assert not browser.find_element(By.ID, "op-swap").is_enabled()
    assert all("401" in e["message"] for e in severe_logs(browser)), "only the refused call is logged"


def test_with_the_token_a_swap_and_a_rollback_change_the_version_shown(server, browser):
    open_console(browser, server)
    before = call(server, "GET", "/experts/Travel")[1]
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "use-token").click()
    assert browser.find_element(By.ID, "op-swap").is_enabled()
    assert browser.find_element(By.ID, "token").get_attribute("value") == "", "the field does not keep the token"
    Select(browser.find_element(By.ID, "op-class")).select_by_value("Travel")
    wait(browser, lambda d: any("(active)" in o.text for o in Select(d.find_element(By.ID, "op-bundle")).options))
    bundles = call(server, "GET", "/bundles?class=Travel")[1]["bundles"]
    target = next(b for b in bundles if not b["active"])
    Select(browser.find_element(By.ID, "op-bundle")).select_by_value(target["bundle"])
    browser.find_element(By.ID, "op-swap").click()
    wait(
        browser,
        lambda d: expert_row(d, "Travel").find_element(By.CSS_SELECTOR, ".version").text == target["version"],
    )
    assert call(server, "GET", "/experts/Travel")[1]["version"] == target["version"]
    assert "Swap: done" in browser.find_element(By.ID, "op-result").text
    browser.execute_script("document.getElementById('operate').scrollIntoView({block: 'end'})")
    shot(browser, "operate.png")
    browser.find_element(By.ID, "op-rollback").click()
    wait(
        browser,
        lambda d: expert_row(d, "Travel").find_element(By.CSS_SELECTOR, ".version").text == before["version"],
    )
    assert call(server, "GET", "/experts/Travel")[1]["version"] == before["version"]
    assert [e for e in severe_logs(browser)] == []
    # The token is in no storage the page can reach, and not in the URL.
    stored = browser.execute_script("return JSON.stringify([localStorage, sessionStorage, document.cookie])")
    assert TOKEN not in stored and TOKEN not in browser.current_url


def test_a_shadow_is_attached_shown_and_dropped_and_a_selection_job_is_followed(server, browser):
    open_console(browser, server)
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "use-token").click()
    Select(browser.find_element(By.ID, "op-class")).select_by_value("Health")
    wait(browser, lambda d: any("(active)" in o.text for o in Select(d.find_element(By.ID, "op-bundle")).options))
    target = next(b for b in call(server, "GET", "/bundles?class=Health")[1]["bundles"] if not b["active"])
    Select(browser.find_element(By.ID, "op-bundle")).select_by_value(target["bundle"])
    browser.find_element(By.ID, "op-shadow").click()
    shadow_cell = lambda d: expert_row(d, "Health").find_element(By.CSS_SELECTOR, ".shadow").text  # noqa: E731
    wait(browser, lambda d: target["bundle"] in shadow_cell(d))
    assert call(server, "GET", "/experts/Health")[1]["shadow"]["bundle"] == target["bundle"]
    browser.find_element(By.ID, "op-drop").click()
    wait(browser, lambda d: shadow_cell(d) == "–")
    assert call(server, "GET", "/experts/Health")[1]["shadow"] is None
    browser.find_element(By.ID, "op-select").click()
    wait(browser, lambda d: "Selection job" in d.find_element(By.ID, "op-result").text, timeout=120)
    job = json.loads(browser.find_element(By.ID, "op-job").text)
    assert job["state"] == "succeeded", job
    assert call(server, "GET", f"/jobs/{job['id']}")[1]["result"]["winner"] == job["result"]["winner"]
    assert len(job["result"]["candidates"]) == len(call(server, "GET", "/bundles?class=Health")[1]["bundles"])
    assert severe_logs(browser) == []


def test_classify_works_from_the_keyboard_alone(server, browser):
    open_console(browser, server)
    for _ in range(12):  # from the top of a fresh page, Tab through the header links to the text area
        ActionChains(browser).send_keys(Keys.TAB).perform()
        if browser.switch_to.active_element.get_attribute("id") == "texts":
            break
    assert browser.switch_to.active_element.get_attribute("id") == "texts"
    ActionChains(browser).key_down(Keys.CONTROL).send_keys("a").key_up(Keys.CONTROL).perform()
    ActionChains(browser).send_keys("How to fix a leaking faucet", Keys.TAB, Keys.ENTER).perform()
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "article.result")) == 1)
    want = call(server, "POST", "/classify", {"text": "How to fix a leaking faucet"})[1]["results"][0]
    got = browser.find_element(By.CSS_SELECTOR, "article.result .decision").get_attribute("data-label")
    assert got == (want["label"] or "")


def test_live_numbers_follow_the_metrics(server, browser):
    for _ in range(5):
        call(server, "POST", "/classify", {"text": "How to plan a trip to Rome"})
    open_console(browser, server)
    wait(browser, lambda d: d.find_element(By.ID, "live-texts").text not in ("–", ""))
    metrics = call(server, "GET", "/metrics")[1]
    texts = next(float(line.split()[-1]) for line in metrics.splitlines() if line.startswith("moe_texts_classified"))
    assert float(browser.find_element(By.ID, "live-texts").text) >= texts
    assert browser.find_element(By.ID, "live-p50").text.startswith("≤")
    rates = [
        r.find_element(By.CSS_SELECTOR, ".passrate").text
        for r in browser.find_elements(By.CSS_SELECTOR, "#experts-table tbody tr")
    ]
    assert any(r not in ("–", "0.0%") for r in rates), rates


def test_readable_on_a_phone(server, browser):
    # A phone's viewport (a desktop window cannot be made this narrow): 390 x 844 CSS pixels.
    metrics = {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True}
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", metrics)
    try:
        open_console(browser, server)
        classify_in_page(browser, ["How to train a puppy to sit"])
        assert browser.execute_script("return window.innerWidth") == 390
        width = browser.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"the page scrolls sideways on a phone ({width} px)"
        shot(browser, "phone.png")
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_feedback_from_a_result_shows_in_the_live_column(server, browser):
    open_console(browser, server)
    classify_in_page(browser, ["How to pack a suitcase for a long flight"])
    Select(browser.find_element(By.CSS_SELECTOR, "article.result .feedback-label")).select_by_value("Travel")
    browser.find_element(By.CSS_SELECTOR, "article.result .feedback-send").click()
    wait(browser, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "article.result .feedback-result"), "Recorded"))
    live = call(server, "GET", "/experts/Travel")[1]["live"]
    assert live["texts"] >= 1
    wait(browser, lambda d: f"({live['texts']})" in expert_row(d, "Travel").find_element(By.CSS_SELECTOR, ".live").text)
    assert severe_logs(browser) == []


def test_a_class_is_taught_from_the_console_with_a_token(server, browser):
    open_console(browser, server)
    assert not browser.find_element(By.ID, "teach-train").is_enabled(), "teaching needs the token"
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "use-token").click()
    browser.find_element(By.ID, "teach-class").send_keys("Crypto")
    titles = [
        "How to buy bitcoin safely",
        "How to set up a crypto wallet",
        "How to mine cryptocurrency at home",
        "How to avoid crypto scams",
        "How to stake coins for rewards",
        "How to read a blockchain explorer",
        "How to trade ethereum on an exchange",
    ]
    browser.find_element(By.ID, "teach-positives").send_keys("\n".join(titles))
    browser.find_element(By.ID, "teach-train").click()
    wait(browser, lambda d: "Training job" in d.find_element(By.ID, "op-result").text, timeout=120)
    job = json.loads(browser.find_element(By.ID, "op-job").text)
    assert job["state"] == "succeeded", job
    assert job["result"]["examples"]["positives"] == len(titles)
    row = wait(browser, lambda d: expert_row(d, "Crypto"))
    assert "online" in row.find_element(By.CSS_SELECTOR, ".bundle").text
    assert call(server, "GET", "/experts/Crypto")[1]["algorithm"] == "online-logreg"
    browser.execute_script("document.getElementById('operate').scrollIntoView({block: 'end'})")
    shot(browser, "teach.png")
    assert severe_logs(browser) == []


def test_declined_texts_are_grouped_and_a_group_is_taught_from_the_console(declining_server, browser):
    jokes = [
        "tell me a joke",
        "tell me a funny joke",
        "do you know any jokes",
        "make me laugh with a joke",
        "I want to hear a joke",
        "can you tell me a joke please",
        "know any good jokes",
    ]
    status, body, _ = call(declining_server, "POST", "/classify", {"texts": jokes})
    assert status == 200 and all(r["abstain_reason"] == "out_of_scope" for r in body["results"]), body
    open_console(browser, declining_server)
    assert not browser.find_element(By.ID, "unknowns-list").is_enabled(), "the unknowns need the token"
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "use-token").click()
    similarity = browser.find_element(By.ID, "unknowns-similarity")
    similarity.clear()
    similarity.send_keys("0.5")
    # The writer keeps declined texts a moment after the answer: list until they are all there.
    for _ in range(50):
        browser.find_element(By.ID, "unknowns-list").click()
        wait(browser, lambda d: "declined texts kept" in d.find_element(By.ID, "unknowns-summary").text)
        if browser.find_element(By.ID, "unknowns-summary").text.startswith(f"{len(jokes)} declined"):
            break
        time.sleep(0.2)
    group = wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "article.group"))
    shown = [li.text for li in group.find_elements(By.CSS_SELECTOR, "li")]
    assert shown and all(t in jokes for t in shown), shown
    group.find_element(By.CSS_SELECTOR, ".group-class").send_keys("Jokes")
    browser.execute_script("document.getElementById('unknowns').scrollIntoView()")
    shot(browser, "unknowns.png")
    group.find_element(By.CSS_SELECTOR, ".group-teach").click()
    wait(browser, lambda d: "Training job" in d.find_element(By.ID, "op-result").text, timeout=120)
    job = json.loads(browser.find_element(By.ID, "op-job").text)
    assert job["state"] == "succeeded", job
    assert job["result"]["unknowns_taught"] >= 5, job
    wait(browser, lambda d: expert_row(d, "Jokes"))
    assert call(declining_server, "GET", "/experts/Jokes")[1]["algorithm"] == "online-logreg"
    assert severe_logs(browser) == []
