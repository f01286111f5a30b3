"""Answers still in the browser when the Label box goes away: the box sends its queue at most
every 300 ms, so a key pressed just before switching mode, opening another page, reloading or
closing the tab must still reach the database, once, on the image it was pressed for.

Its own server and project, so what these tests label does not change test_app's counts.
"""

from __future__ import annotations

import os
import signal

import pytest

from labeler.config import data_dir_set
from tests.browser.conftest import SERVERS, choose_in, image_set, running_app, saved, settle, shown, wait_note
from tests.conftest import wait_for

pytest.importorskip("playwright.sync_api")

pytestmark = pytest.mark.browser


PASSWORD = "a long password"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serve(tmp_path_factory, accounts=False)


@pytest.fixture(scope="module")
def accounts_server(tmp_path_factory):
    yield from _serve(tmp_path_factory, accounts=True)


def _serve(tmp_path_factory, accounts: bool):
    import db
    from db import users
    from labeler import auth, projects

    data_dir = tmp_path_factory.mktemp("unsent-data")
    engine = db.make_engine(f"sqlite:///{data_dir / 'labeler.db'}")
    Session = db.session_factory(engine)
    with data_dir_set(data_dir):
        project = projects.create_project(Session, "tiny", "test", images=image_set())
    with Session.begin() as session:
        from db.models import Project

        stored = session.get(Project, project.id)
        stored.settings = {**stored.settings, "auto_retrain_every": 0}
        if accounts:
            for name in ("ann", "bob"):
                users.add_user(session, name, auth.hash_password(PASSWORD), "annotator")
    try:
        with running_app(data_dir) as url:
            yield {"url": url, "Session": Session, "project_id": project.id}
    finally:
        engine.dispose()


def answers_of(Session, items) -> dict[int, list[tuple[int, str]]]:
    from db import queries

    with Session() as session:
        return {
            i: [(e.class_index, e.annotator) for e in queries.history(session, i) if not e.undone]
            for i in items
        }


def two_quick_keys(page) -> dict[int, int]:
    """Two answers, the second pressed at once after the first: it waits in the browser's queue
    (sent at most every 300 ms) when this returns. {item: class}."""
    settle(page)
    saved(page)
    first = shown(page)
    page.keyboard.press("1")
    second = shown(page)
    assert second != first
    page.keyboard.press("2")
    return {first: 0, second: 1}


def open_page(page, title: str) -> None:
    """Click the page's link in the sidebar until it opens. The rerun the box asks for to send
    a queued answer can overtake the click (Streamlit reruns the page that rerun was asked for),
    and then the click is lost; a person clicks again."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for _ in range(5):
        page.locator('[data-testid="stSidebarNav"] a', has_text=title).click()
        try:
            page.locator("h1", has_text=title).wait_for(timeout=10_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError(f"the {title} page did not open")


def stored(server, pressed: dict[int, int], name: str) -> bool:
    answers = answers_of(server["Session"], pressed)
    return all(answers[i] == [(c, name)] for i, c in pressed.items())


def test_a_key_just_before_switching_mode_is_kept(server, page):
    page.goto(f"{server['url']}/?annotator=mode")
    pressed = two_quick_keys(page)
    page.get_by_text("Grid", exact=True).click()
    page.locator("[class*='st-key-accept_grid-']").wait_for()
    page.get_by_text("One image", exact=True).click()
    shown(page)
    wait_for(lambda: stored(server, pressed, "mode"), timeout=30)


def test_a_key_just_before_opening_another_page_is_kept(server, page):
    page.goto(f"{server['url']}/?annotator=nav")
    pressed = two_quick_keys(page)
    open_page(page, "Train")
    open_page(page, "Label")
    shown(page)
    wait_for(lambda: stored(server, pressed, "nav"), timeout=30)


def box_drawn_anew(page) -> None:
    """Grid, then One image again: the Label box is taken off the page (its undo history with it)
    and drawn anew."""
    page.get_by_text("Grid", exact=True).click()
    page.locator("[class*='st-key-accept_grid-']").wait_for()
    page.wait_for_function("() => window.__labelerBoxes === 0")
    page.get_by_text("One image", exact=True).click()
    page.wait_for_function("() => window.__labelerBoxes === 1")
    settle(page)


def test_u_after_switching_mode_and_back_takes_back_the_last_answers(server, page):
    """The box keeps its undo history in the tab, and a box drawn anew (after another mode or
    page, and back) had none: U said "Nothing to undo in this session." and the person had to
    find the answer in History. The server knows the session's answers: U takes back the newest,
    then the one before, each image shown again at once, and then says nothing is left."""
    page.goto(f"{server['url']}/?annotator=undoer")
    pressed = two_quick_keys(page)  # {first: class 0, second: class 1}
    first, second = pressed
    saved(page)
    wait_for(lambda: stored(server, pressed, "undoer"), timeout=30)
    box_drawn_anew(page)
    shown(page)
    for back in (second, first):
        page.keyboard.press("u")
        wait_for(lambda back=back: shown(page) == back, timeout=30)
        page.get_by_test_id("lb-notice").filter(has_text="Undone: that image is back.").wait_for()
        wait_for(lambda back=back: answers_of(server["Session"], [back])[back] == [], timeout=30)
    assert answers_of(server["Session"], [first, second]) == {first: [], second: []}
    page.keyboard.press("u")
    page.get_by_test_id("lb-notice").filter(has_text="Nothing to undo in this session.").wait_for()
    assert shown(page) == first


def test_a_key_pressed_while_an_undo_last_waits_labels_the_image_on_screen(server, page):
    """U in a box drawn anew waits for the server; a key pressed meanwhile is for the image on
    screen and labels it, and the image on screen when the server answers stays: the undone image
    comes right after it, not in its place."""
    page.goto(f"{server['url']}/?annotator=impatient")
    settle(page)
    saved(page)
    first = shown(page)
    page.keyboard.press("1")
    wait_for(lambda: stored(server, {first: 0}, "impatient"), timeout=30)
    box_drawn_anew(page)
    on_screen = shown(page)
    page.keyboard.press("u")
    page.keyboard.press("2")  # at once, before the server answers the U
    wait_for(lambda: stored(server, {on_screen: 1}, "impatient"), timeout=30)
    page.get_by_test_id("lb-notice").filter(
        has_text=f"Undone: image #{first} comes back after this one."
    ).wait_for()
    assert answers_of(server["Session"], [first])[first] == []
    now = shown(page)  # the image on screen when the server answered stays
    assert now not in (first, on_screen)
    page.keyboard.press("1")
    wait_for(lambda: shown(page) == first, timeout=30)
    wait_for(lambda: stored(server, {now: 0}, "impatient"), timeout=30)


def test_a_key_after_clicking_a_toggle_labels_the_image(server, page):
    """A click on "Show file names" (or the mode switch) leaves the focus in that input, and the
    box took every input for a text field: the next key was dropped without a word. Only text
    fields keep their keys now."""
    page.goto(f"{server['url']}/?annotator=toggler")
    settle(page)
    saved(page)
    page.get_by_text("Show file names").click()
    settle(page)
    item = shown(page)
    page.keyboard.press("2")
    wait_for(lambda: stored(server, {item: 1}, "toggler"), timeout=30)


def test_a_page_link_clicked_right_after_keys_opens_that_page(server, page):
    """The box's send of the last keys (at most every 300 ms) asked for a rerun of the Label page
    a moment after the click asked for another page, and often won: the click was lost. Now one
    click opens the page, and the answers are stored from there."""
    for n in range(3):
        page.goto(f"{server['url']}/?annotator=quick{n}")
        pressed = two_quick_keys(page)
        page.locator('[data-testid="stSidebarNav"] a', has_text="Train").click()
        page.locator("h1", has_text="Train").wait_for(timeout=60_000)
        wait_for(lambda pressed=pressed, n=n: stored(server, pressed, f"quick{n}"), timeout=30)


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="stalls the server with SIGSTOP")
def test_a_page_link_clicked_while_the_server_stalls_still_opens_that_page(server, page):
    """A server that reads the click late (over 10 s on a loaded machine, once in CI): the box's
    fallback send for a click that went nowhere fired meanwhile, asked for the Label page again
    right behind the click, and won. Now neither the wait nor a key pressed soon after the click
    (the page seems slow: the person labels on) lets the box send; the click opens Train and the
    guard there stores the answers."""
    page.goto(f"{server['url']}/?annotator=stalled")
    settle(page)
    saved(page)
    process = SERVERS[server["url"]]
    os.kill(process.pid, signal.SIGSTOP)  # before the keys: the first is sent, never answered
    try:
        first = shown(page)
        page.keyboard.press("1")
        second = shown(page)
        page.keyboard.press("2")
        page.locator('[data-testid="stSidebarNav"] a', has_text="Train").click()
        page.wait_for_timeout(1_000)
        third = shown(page)
        page.keyboard.press("1")
        page.wait_for_timeout(11_000)  # past the box's 10 s wait for the click to take
    finally:
        os.kill(process.pid, signal.SIGCONT)
    assert len({first, second, third}) == 3
    page.locator("h1", has_text="Train").wait_for(timeout=60_000)
    wait_for(lambda: stored(server, {first: 0, second: 1, third: 0}, "stalled"), timeout=30)


def test_answers_held_by_a_page_link_that_went_nowhere_are_sent_from_the_label_page(server, page):
    """The box holds its sends after a click on a page link (the next page's guard sends them);
    should the click go nowhere while the person labels on, a key pressed 10 s or more after it
    lets the box send them all itself, rather than keep them in the tab."""
    page.goto(f"{server['url']}/?annotator=nowhere")
    settle(page)
    saved(page)
    first = shown(page)
    # A key and, in the same task (its send has not gone yet), a click on a page link that
    # Streamlit never hears of.
    page.evaluate(
        """() => {
            const nav = document.createElement("div");
            nav.setAttribute("data-testid", "stSidebarNav");
            const link = document.createElement("a");
            link.href = "/nowhere";
            link.addEventListener("click", (event) => event.preventDefault());
            nav.appendChild(link);
            document.body.appendChild(nav);
            document.dispatchEvent(new KeyboardEvent("keydown", {key: "1", bubbles: true}));
            link.dispatchEvent(new MouseEvent("click", {bubbles: true, cancelable: true}));
        }"""
    )
    second = shown(page)
    assert second != first
    page.keyboard.press("2")  # soon after the click: held too, as the click may still be on its way
    page.wait_for_timeout(3_000)
    assert answers_of(server["Session"], [first, second]) == {first: [], second: []}
    page.wait_for_timeout(8_000)  # 11 s after the click
    third = shown(page)
    page.keyboard.press("1")
    wait_for(lambda: stored(server, {first: 0, second: 1, third: 0}, "nowhere"), timeout=60)


def test_file_names_turned_on_show_on_the_image_on_screen(server, page):
    """The image on screen kept the caption it came with, so turning file names on showed them
    only from the next image on."""
    page.goto(f"{server['url']}/?annotator=names")
    settle(page)
    saved(page)
    item = shown(page)
    caption = page.locator('[data-testid="lb-caption"]')
    assert caption.inner_text() == f"#{item}"
    page.get_by_text("Show file names").click()
    wait_for(lambda: caption.inner_text().startswith(f"#{item} · "), timeout=30)
    assert shown(page) == item


def waiting_in_tab(page) -> int:
    """How many answers wait in the tab's storage for a Label box (label_box.js keeps them)."""
    return page.evaluate(
        """() => Object.keys(sessionStorage).filter((k) => k.startsWith("labeler-unsent:"))
            .reduce((n, k) => n + JSON.parse(sessionStorage.getItem(k) || "[]").length, 0)"""
    )


def test_a_key_just_before_opening_another_page_is_stored_from_that_page(server, page):
    """The box that goes away cannot send its last keys (Streamlit drops a value from a component
    it is taking away): they used to wait in the tab until the Label page showed again, lost if
    the tab was closed meanwhile. The guard on every page sends them, and the tab forgets them."""
    page.goto(f"{server['url']}/?annotator=there")
    pressed = two_quick_keys(page)
    open_page(page, "Train")
    wait_for(lambda: stored(server, pressed, "there"), timeout=30)
    wait_for(lambda: waiting_in_tab(page) == 0, timeout=30)
    page.locator("h1").first.click()  # the browser asks only on a page the person has used
    with page.expect_event("close"):  # nothing waits: no question (one would be dismissed)
        page.close(run_before_unload=True)


def test_a_key_just_before_a_reload_is_kept(server, page):
    page.goto(f"{server['url']}/?annotator=reload")
    pressed = two_quick_keys(page)
    page.reload()
    shown(page)
    wait_for(lambda: stored(server, pressed, "reload"), timeout=30)


def test_an_undo_just_before_a_reload_is_kept(server, page):
    """A wrong key, U at once, a reload at once: the wrong answer does not stay."""
    page.goto(f"{server['url']}/?annotator=undo")
    settle(page)
    saved(page)
    wrong = shown(page)
    page.keyboard.press("1")
    assert shown(page) != wrong
    page.keyboard.press("u")
    page.reload()
    shown(page)
    wait_for(lambda: (saved(page), answers_of(server["Session"], [wrong]) == {wrong: []})[1], timeout=30)


def test_closing_the_tab_while_answers_wait_asks_first(server, page):
    """No timer runs once a tab is gone, so the browser asks before closing; staying saves them."""
    page.goto(f"{server['url']}/?annotator=close")
    pressed = two_quick_keys(page)
    with page.expect_event("dialog") as asked:
        page.close(run_before_unload=True)
    assert asked.value.type == "beforeunload"
    asked.value.dismiss()
    saved(page)
    assert stored(server, pressed, "close")
    with page.expect_event("close"):  # nothing waits now: no question (one would be dismissed)
        page.close(run_before_unload=True)


def test_closing_the_tab_on_another_page_while_answers_wait_asks_first(server, page):
    """With an answer waiting in the tab for the Label box, closing the tab from another page,
    even one loaded afresh, asks first; it used to close without a word, and the answer was lost.
    The answer waits for another name the tab was used under: the guard on that page sends only
    the present name's (it did, at its next drawing, and then there was nothing to ask about: the
    test asked or not as that drawing came before the close or after, a full run beside it), and
    it is never stored under the present name."""
    import json

    Session, pid = server["Session"], server["project_id"]
    page.goto(f"{server['url']}/?annotator=away")
    settle(page)
    saved(page)
    item = shown(page)
    open_page(page, "Train")
    page.reload()  # a page on which the Label box never loaded
    page.locator("h1", has_text="Train").wait_for()
    settle(page)
    waiting = [{"id": "before-1", "type": "label", "item": item, "class": 0, "name": "dark"}]
    page.evaluate(  # as label_box.js keeps an answer it has not sent
        "([key, value]) => sessionStorage.setItem(key, value)",
        [f"labeler-unsent:before@{pid}", json.dumps(waiting)],
    )
    page.locator("h1").first.click()  # the browser asks only on a page the person has used
    with page.expect_event("dialog") as asked:
        page.close(run_before_unload=True)
    assert asked.value.type == "beforeunload"
    asked.value.dismiss()
    open_page(page, "Label")
    shown(page)
    assert answers_of(Session, [item]) == {item: []}  # it waits for its own name


def log_in(page, name: str) -> None:
    page.get_by_role("textbox", name="Name").fill(name)
    page.get_by_role("textbox", name="Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_text(f"Logged in as {name}").wait_for()


def log_out(page) -> None:
    """Click "Log out" until the login form shows. As in `open_page`, the rerun the box asks for
    to send a queued answer can overtake the click, and then the click is lost (a CI run once
    waited 30 s for a form that never came); a person clicks again. A click that did go
    through leaves no "Log out" button to click twice."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    button = page.get_by_role("button", name="Log out")
    for _ in range(5):
        try:
            if button.count():
                button.click(timeout=5_000)
            page.get_by_role("button", name="Log in").wait_for(timeout=15_000)
            return
        except PlaywrightTimeout:
            continue
    raise AssertionError("the login form did not come back after Log out")


def test_answers_waiting_at_a_logout_go_with_the_same_person_only(accounts_server, page):
    """Ann's keys just before she logs out: never sent as bob, who logs in next in the same tab;
    sent as ann when she logs in again."""
    server = accounts_server
    page.goto(server["url"])
    log_in(page, "ann")
    pressed = two_quick_keys(page)
    log_out(page)
    log_in(page, "bob")
    shown(page)
    settle(page)
    saved(page)
    with server["Session"]() as session:
        from db import queries

        assert not [e for i in pressed for e in queries.history(session, i) if e.annotator == "bob"]
    log_out(page)
    log_in(page, "ann")
    shown(page)
    wait_for(lambda: stored(server, pressed, "ann"), timeout=30)


def test_an_answer_refused_for_a_renamed_class_can_be_given_again(server, page):
    """A key for a class renamed after the page showed it is refused (its index may now mean
    another class) with a note saying to give it again. The box had marked the image answered
    and never showed it again; now it comes back right after the image on screen."""
    from db import queries

    Session, pid = server["Session"], server["project_id"]
    page.goto(server["url"])
    settle(page)
    saved(page)
    first = shown(page)
    with Session.begin() as session:
        queries.rename_class(session, pid, 0, "darker")
    try:
        page.locator("h1").first.click()
        page.keyboard.press("1")  # meant for "dark", now named "darker"
        second = shown(page)
        assert second != first
        page.locator('[data-testid="lb-notice"]', has_text="was renamed to 'darker'").wait_for()
        saved(page)
        settle(page)
        assert shown(page) == second  # the image on screen stays
        page.locator("h1").first.click()
        page.keyboard.press("2")
        wait_for(lambda: shown(page) == first)  # then the refused one, again
        settle(page)
        page.locator('button.lb-class[data-index="0"]', has_text="darker").wait_for()
        page.locator("h1").first.click()
        page.keyboard.press("1")
        saved(page)
        answers = answers_of(Session, [first, second])
        assert [c for c, _ in answers[first]] == [0] and [c for c, _ in answers[second]] == [1]
    finally:
        with Session.begin() as session:
            queries.rename_class(session, pid, 0, "dark")


def bobs_answer_set_to_bright_in_history(server, page, address: str):
    """Bob answers an unlabeled image "dark"; the page opens `address`, shows History and sets
    that answer's tile to "bright" (not saved). Returns the image and its tile."""
    from db import queries

    Session, pid = server["Session"], server["project_id"]
    with Session.begin() as session:
        labeled = queries.current_labels(session, pid, ignored=True)
        item = next(i.id for i in queries.items(session, pid, "pool") if i.id not in labeled)
        event = queries.add_label(session, item, 0, annotator="bob")
    page.goto(address)
    page.get_by_text("History", exact=True).click()
    box = page.locator(f".st-key-hist-{item}-{event.id}")
    box.wait_for()
    settle(page)
    choose_in(page, box, "bright")
    settle(page)
    return item, box


def test_a_history_change_whose_class_is_renamed_before_saving_says_so(server, page):
    """A History tile set to a class that an admin renames before Save: Streamlit put the tile
    back on its saved answer, silently (a selectbox's value travels as the name it shows, and the
    old name matched no option), and Save left that correction out. Now a note says so."""
    from db import queries

    Session, pid = server["Session"], server["project_id"]
    item, box = bobs_answer_set_to_bright_in_history(server, page, server["url"])
    with Session.begin() as session:
        queries.rename_class(session, pid, 1, "brighter")
    try:
        # Any rerun that keeps Bob's answer in the list (the tile is kept for its change only until
        # that change is dropped, so a filter that hides it made this test depend on a second rerun).
        choose_in(page, page.locator(".st-key-hist_who"), "bob")
        wait_note(page, f"A class was renamed while you changed #{item}")
        settle(page)
        assert box.locator('input[role="combobox"]').input_value() == "dark"
    finally:
        with Session.begin() as session:
            queries.rename_class(session, pid, 1, "bright")


def test_an_unchanged_history_tile_whose_class_is_renamed_keeps_its_saved_answer(server, page):
    """After a rename, an unchanged History tile went on showing its class's old name, which
    matches no option, and the next Save but one failed with "ValueError: invalid literal for
    int()" (the browser sent that name). The page now puts every tile on the name its class has
    now, and Save changes nothing."""
    from db import queries

    Session, pid = server["Session"], server["project_id"]
    with Session.begin() as session:
        labeled = queries.current_labels(session, pid, ignored=True)
        item = next(i.id for i in queries.items(session, pid, "pool") if i.id not in labeled)
        event = queries.add_label(session, item, 0, annotator="bob")
    page.goto(f"{server['url']}/?annotator=erin")
    page.get_by_text("History", exact=True).click()
    box = page.locator(f".st-key-hist-{item}-{event.id}")
    box.wait_for()
    settle(page)
    with Session.begin() as session:
        queries.rename_class(session, pid, 0, "darker")
    try:
        choose_in(page, page.locator(".st-key-hist_who"), "bob")  # any rerun that keeps Bob's answer listed
        wait_for(lambda: box.locator('input[role="combobox"]').input_value() == "darker", timeout=30)
        settle(page)  # the run ended: the Save button drawn under the old names is gone
        page.locator("[class*='st-key-hist_save-'] button").click()
        page.get_by_text("Nothing changed.").wait_for()
        assert answers_of(Session, [item])[item] == [(0, "bob")]
    finally:
        with Session.begin() as session:
            queries.rename_class(session, pid, 0, "dark")


def test_a_class_renamed_twice_in_a_row(server, page):
    """An admin fixing a typo in a class name just given: the selector went on showing the old
    name, sent it with the next click, and the second rename failed with "TypeError: can only
    concatenate str". Both renames now land, and the selector shows the name the class has."""
    from db import queries

    Session, pid = server["Session"], server["project_id"]
    page.goto(f"{server['url']}/?annotator=admin")
    try:
        for old, new in (("dark", "drak"), ("drak", "darker")):
            settle(page)
            field = page.get_by_label("New name")
            if not field.is_visible():  # the expander starts closed, and a rename may close it
                page.get_by_text("Classes: keys, add or rename").click()
            field.wait_for(state="visible")
            field.fill(new)
            page.locator(".st-key-rename_class button").click()
            wait_note(page, f"Renamed class '{old}' to '{new}'.")
            with Session() as session:
                assert queries.class_names(session, pid)[0] == new
        wait_for(
            lambda: page.locator(".st-key-rename_which input").input_value() == "1: darker (key 1)",
            timeout=30,
        )
    finally:
        with Session.begin() as session:
            queries.rename_class(session, pid, 0, "dark")


def test_the_classes_panel_stays_open_after_a_rename(server, page):
    """The "Classes" panel closed after every Add class or Rename (the note above the page moved
    everything below it down one place, and the panel came back as a new, closed one), so an
    admin fixing several names opened it again each time."""
    from db import queries

    Session, pid = server["Session"], server["project_id"]
    page.goto(f"{server['url']}/?annotator=admin")
    settle(page)
    page.get_by_text("Classes: keys, add or rename").click()
    field = page.get_by_label("New name")
    try:
        for old, new in (("dark", "darkish"), ("darkish", "dark")):
            field.wait_for(state="visible")
            field.fill(new)
            page.locator(".st-key-rename_class button").click()
            page.get_by_text(f"Renamed class '{old}' to '{new}'.").wait_for()
            settle(page)
            assert field.is_visible()
    finally:
        with Session.begin() as session:
            queries.rename_class(session, pid, 0, "dark")


def test_the_history_class_filter_keeps_its_class_through_a_rename(server, page):
    """The History's class filter on a class renamed, here or by another admin: the browser went
    on showing the old name and sent it with the next click, which matched no option, so the
    server fell back to every class while the filter still read the old name. It shows the new
    name and keeps listing that class only."""
    from db import queries

    Session, pid = server["Session"], server["project_id"]
    with Session.begin() as session:
        labeled = queries.current_labels(session, pid, ignored=True)
        free = [i.id for i in queries.items(session, pid, "pool") if i.id not in labeled]
        dark = queries.add_label(session, free[0], 0, annotator="dora")
        bright = queries.add_label(session, free[1], 1, annotator="dora")
    tile_of = page.locator(f".st-key-hist-{free[0]}-{dark.id}")
    other = page.locator(f".st-key-hist-{free[1]}-{bright.id}")
    page.goto(f"{server['url']}/?annotator=erin")
    page.get_by_text("History", exact=True).click()
    settle(page)
    choose_in(page, page.locator(".st-key-hist_class"), "dark")
    other.wait_for(state="detached")
    tile_of.wait_for()
    settle(page)

    def still_filtered(name: str) -> None:
        wait_for(lambda: page.locator(".st-key-hist_class input").input_value() == name, timeout=30)
        for _ in range(2):  # two more runs: the browser sends the filter back with each
            page.locator(".st-key-hist_disagree label").click()
            settle(page)
        assert page.locator(".st-key-hist_class input").input_value() == name
        tile_of.wait_for()
        assert other.count() == 0

    try:
        page.get_by_text("Classes: keys, add or rename").click()
        page.get_by_label("New name").fill("darker")
        page.locator(".st-key-rename_class button").click()
        page.get_by_text("Renamed class 'dark' to 'darker'.").wait_for()
        settle(page)
        still_filtered("darker")
        with Session.begin() as session:  # another admin
            queries.rename_class(session, pid, 0, "darkest")
        choose_in(page, page.locator(".st-key-hist_who"), "dora")  # any rerun
        settle(page)
        still_filtered("darkest")
    finally:
        with Session.begin() as session:
            queries.rename_class(session, pid, 0, "dark")


def test_a_history_change_not_saved_waits_while_another_page_shows(server, page):
    """A History tile changed, then the person opens Train before saving: Streamlit forgot the
    selector that was no longer drawn, and the change was gone without a word. It waits: Train's
    sidebar and the Label page say so, and History shows it again on the class chosen, ready to
    save."""
    Session = server["Session"]
    item, box = bobs_answer_set_to_bright_in_history(server, page, f"{server['url']}/?annotator=carol")
    open_page(page, "Train")
    page.locator('[data-testid="stSidebar"]').get_by_text("History changes not saved yet: 1").wait_for()
    open_page(page, "Label")
    page.get_by_text("History changes not saved yet: 1").wait_for()
    page.get_by_text("History", exact=True).click()
    box.wait_for()
    settle(page)
    assert box.locator('input[role="combobox"]').input_value() == "bright"
    page.locator("[class*='st-key-hist_save-'] button").click()
    page.get_by_text("Corrected 1 label (").wait_for()
    assert answers_of(Session, [item])[item][-1] == (1, "carol")


def test_closing_the_tab_while_a_history_change_waits_asks_first(server, page):
    """A History change not saved yet lives in the server session, which a reload or a closed tab
    ends: the browser asks first, as for answers waiting in the tab; once saved, it does not."""
    item, _ = bobs_answer_set_to_bright_in_history(server, page, f"{server['url']}/?annotator=dora")
    # The guard hears of the change with the rerun's drawing, a moment after the script ends.
    page.wait_for_function("() => window.__labelerUnsent && window.__labelerUnsent.unsaved === 1")
    with page.expect_event("dialog") as asked:
        page.close(run_before_unload=True)
    assert asked.value.type == "beforeunload"
    asked.value.dismiss()
    page.locator("[class*='st-key-hist_save-'] button").click()
    page.get_by_text("Corrected 1 label (").wait_for()
    assert answers_of(server["Session"], [item])[item][-1] == (1, "dora")
    page.wait_for_function("() => window.__labelerUnsent.unsaved === 0")
    with page.expect_event("close"):  # nothing waits now: no question (one would be dismissed)
        page.close(run_before_unload=True)
