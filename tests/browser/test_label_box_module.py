"""label_box.js on its own in Chromium: the module's default export is called as Streamlit calls
it (data, parentElement, setStateValue), with no server, so what the box sends, and when, is
seen exactly. Playwright's clock drives its timers."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.browser

BOX_JS = Path(__file__).resolve().parents[2] / "labeler" / "ui" / "label_box.js"
ORIGIN = "http://box.test"
PAGE = """<!doctype html><html><body><div id="host"></div><script type="module">
import render from "/label_box.js";
window.sent = [];
window.draw = (data) => render({data, parentElement: document.getElementById("host"),
                                setStateValue: (name, value) => window.sent.push(value)});
window.ready = true;
</script></body></html>"""


def _serve(route) -> None:
    if route.request.url.endswith("/label_box.js"):
        route.fulfill(body=BOX_JS.read_text(), content_type="text/javascript")
    else:
        route.fulfill(body=PAGE, content_type="text/html")


@pytest.fixture
def box(page):
    page.clock.install()
    page.route(f"{ORIGIN}/**", _serve)
    page.goto(f"{ORIGIN}/")
    page.wait_for_function("() => window.ready === true")
    return page


def data(items: list[int], acked: list[str] = ()) -> dict:
    return {
        "session": "ann@1",
        "owner": "ann@1",
        "items": [{"id": i, "src": "", "caption": f"#{i}", "guess": None, "run": None} for i in items],
        "classes": [{"index": 0, "name": "dark", "key": "1"}, {"index": 1, "name": "bright", "key": "2"}],
        "acked": list(acked),
        "notices": [],
        "closed": [],
        "refused": [],
        "undone": [],
        "done": not items,
    }


def sent(page) -> list[list[dict]]:
    return page.evaluate("() => window.sent")


def text(page, testid: str) -> str:
    return page.locator(f'[data-testid="{testid}"]').text_content()


def test_keys_while_a_send_is_unanswered_wait_for_its_answer_then_go_together(box):
    box.evaluate("(d) => window.draw(d)", data([1, 2, 3, 4, 5]))
    box.keyboard.press("1")
    box.clock.run_for(50)
    assert [[a["item"] for a in value] for value in sent(box)] == [[1]]
    # Each of these would have gone on its own, 300 ms apart; every send reruns the page, and a
    # rerun cancels the one going, so a slow server never finished a page.
    for key in "212":
        box.keyboard.press(key)
        box.clock.run_for(1000)
    assert len(sent(box)) == 1
    assert text(box, "lb-status") == "saving 4…"
    first = sent(box)[0][0]["id"]
    box.evaluate("(d) => window.draw(d)", data([5, 6, 7], acked=[first]))  # the server's answer
    box.clock.run_for(1000)
    assert [[a["item"] for a in value] for value in sent(box)] == [[1], [2, 3, 4]]
    assert [a["class"] for a in sent(box)[1]] == [1, 0, 1]


def test_an_unanswered_send_goes_again_with_the_keys_after_it_in_ten_seconds(box):
    box.evaluate("(d) => window.draw(d)", data([1, 2, 3]))
    box.keyboard.press("1")
    box.clock.run_for(50)
    box.keyboard.press("2")
    box.clock.run_for(9000)
    assert len(sent(box)) == 1
    box.clock.run_for(2000)
    assert [[a["item"] for a in value] for value in sent(box)] == [[1], [1, 2]]


def test_keys_pressed_with_no_image_on_screen_say_that_they_stored_nothing(box):
    box.evaluate("(d) => window.draw(d)", data([1, 2]))
    for key in "1212":
        box.keyboard.press(key)
    assert text(box, "lb-empty") == "Loading the next images…"
    assert text(box, "lb-notice") == (
        "2 keys stored nothing: no image was on screen yet (the next ones were loading)."
    )
    box.evaluate("(d) => window.draw(d)", data([1, 2, 3]))  # the next page: 3 is new
    assert box.locator("img.lb-img").get_attribute("data-item") == "3"
    assert "stored nothing" in text(box, "lb-notice")  # still said once the image shows
    box.keyboard.press("2")
    box.clock.run_for(20_000)
    labeled = [a["item"] for a in sent(box)[-1] if a["type"] == "label"]
    assert labeled == [1, 2, 3]
    assert box.locator('[data-testid="lb-notice"]').count() == 0


def test_keys_on_a_box_with_every_image_labeled_are_not_called_lost(box):
    box.evaluate("(d) => window.draw(d)", data([]))
    box.keyboard.press("1")
    assert text(box, "lb-empty").startswith("Every image is labeled")
    assert box.locator('[data-testid="lb-notice"]').count() == 0
    # Enter stays the page's (a focused button or link): the box took it while it showed nothing.
    box.evaluate("() => document.body.addEventListener('keydown', (e) => { window.reached = e.key; })")
    box.keyboard.press("Enter")
    assert box.evaluate("() => window.reached") == "Enter"


def test_an_image_shown_again_at_undo_and_answered_since_takes_no_key(box):
    """U shows the image again at once; when someone corrected that answer meanwhile, the server
    takes it back, the correction stands, and the next page lists the image as closed: the box
    says so, and a key for it stores nothing and goes on (it was sent, and refused)."""
    box.evaluate("(d) => window.draw(d)", data([1, 2, 3]))
    box.keyboard.press("1")
    box.clock.run_for(50)
    label = sent(box)[0][0]["id"]
    box.evaluate("(d) => window.draw(d)", data([2, 3], acked=[label]))
    box.keyboard.press("u")
    box.clock.run_for(1000)
    assert box.locator("img.lb-img").get_attribute("data-item") == "1"
    undo = sent(box)[-1][-1]
    assert undo["type"] == "undo" and undo["item"] == 1
    box.evaluate("(d) => window.draw(d)", {**data([2, 3], acked=[undo["id"]]), "closed": [1]})
    assert "answered elsewhere" in text(box, "lb-notice")
    before = len(sent(box))
    box.keyboard.press("2")
    box.clock.run_for(1000)
    assert len(sent(box)) == before  # nothing sent for image 1
    assert box.locator("img.lb-img").get_attribute("data-item") == "2"
