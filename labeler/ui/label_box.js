// The one-image labeling box: it owns the image, the keys and a local queue of answers.
//
// Python sends a page of the next images (data.items) with every rerun. A key labels the image
// on screen *when the key goes down*: the answer is queued as {id, type, item, ...}, the next
// prefetched image is shown at once (no round trip), and the whole list of answers not yet
// acknowledged is sent as the state value "actions". Python applies each action once, by id,
// and lists the ids it has applied in data.acked; only then are they dropped here. However fast
// the keys come, each answer names the image it was given for.
//
// Answers not yet acknowledged are also kept in the tab's sessionStorage, under the person and
// project they were given for (data.owner), and sent again when a box for the same owner mounts:
// after a reload, a switch of mode, page or project, or a login that had ended; on a page
// without a box, the guard on every page sends them for the person logged in (unsent_guard.js).
// Sending one twice is harmless: Python stores the id of every label it wrote, applies an answer
// only while its image has none, refuses one for an image answered meanwhile (by somebody else, or
// by this person otherwise), and an undo names the label action it takes back (answers.py).

const boxes = new WeakMap(); // parentElement -> state of that mounted box

// Inputs that take no typed letters: a key pressed while the mouse left the focus on one (the
// mode switch, "Show file names") is the page's, as anywhere else (it was dropped, silently).
const NOT_TYPED_IN = new Set(["checkbox", "radio", "button", "submit", "reset", "range", "color", "file", "image"]);

function typedIn(target) {
  if (!target) return false;
  if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  return target.tagName === "INPUT" && !NOT_TYPED_IN.has(String(target.type || "text").toLowerCase());
}

function newState(root) {
  return {
    root,
    mount: Math.random().toString(36).slice(2, 8) + Date.now().toString(36),
    data: null,
    session: null,
    owner: null,
    seq: 0,
    pending: [], // actions sent but not yet acknowledged, in order
    answered: new Set(), // items answered here (and not undone): never shown again
    skipped: [], // items skipped here, shown after the others
    history: [], // items answered here, newest last, for undo
    actionOf: new Map(), // item id -> the id of its newest label action here, named by its undo
    restored: [], // undone items, shown first
    again: [], // items whose answer the server refused, shown right after the one on screen
    undoneLast: new Set(), // undo_last actions whose image this box has shown again
    undoLast: null, // the newest undo_last: {action, seq} (see restoreUndone)
    current: null,
    gone: null, // the image on screen, if it was answered elsewhere (or removed) since it showed
    timer: null,
    lastSend: 0,
    sentUpTo: null, // the id of the newest action sent
    inFlight: null, // {last}: the newest action of a send not answered yet (see schedule)
    flightTimer: null, // IN_FLIGHT_MS after that send: it counts as answered
    early: 0, // keys pressed while no image was on screen (none stored), since the last image
    zoom: false,
    notice: "",
    saved: 0,
    send: null,
    onKey: null,
    onNav: null,
    navHold: null, // after a click on a page link, see onNavClick
    navAt: 0, // when that click came (Date.now())
    usedSinceNav: false, // drawn by the server, or a late key, since that click
    counted: false, // in window.__labelerBoxes (see unsent_guard.js)
  };
}

function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "text") node.textContent = v;
    else if (k === "on") Object.entries(v).forEach(([e, f]) => node.addEventListener(e, f));
    else node.setAttribute(k, v);
  }
  (children || []).forEach((c) => c && node.appendChild(c));
  return node;
}

// The images left to show, in order: undone ones first, the one on screen, refused ones, then
// the page from Python without the ones answered here, skipped ones last.
function queue(s) {
  const seen = new Set();
  const out = [];
  const add = (item) => {
    if (!item || seen.has(item.id) || s.answered.has(item.id)) return;
    seen.add(item.id);
    out.push(item);
  };
  s.restored.forEach(add);
  // The image on screen stays on screen, with the guess it was shown with, until it is answered
  // or skipped here, whatever the new page from the server holds: a key about to go down is meant
  // for it and for that guess. A new page may leave it out (a finished run re-ordered the queue,
  // an audit turn began, another person holds it now) or bring it with another run's guess. Should
  // somebody else answer it meanwhile, the server keeps their answer and says so.
  if (s.current && !s.skipped.some((i) => i.id === s.current.id)) add(s.current);
  s.again.forEach(add);
  const skipped = new Set(s.skipped.map((i) => i.id));
  (s.data.items || []).filter((i) => !skipped.has(i.id)).forEach(add);
  s.skipped.forEach(add);
  return out;
}

// Answers go to the server at most every SEND_EVERY_MS, and one send at a time: each send reruns
// the page, and a rerun started while another runs cancels it, so sends faster than the page runs
// (a send per key; or every 300 ms while a model trains beside the server) kept the page from ever
// finishing and so from bringing the next images: the box ran dry ("Loading the next images…")
// and keys were pressed on nothing. Keys pressed while a send is unanswered wait (in storage too)
// and go together once the server has acknowledged it (see the render below), or after
// IN_FLIGHT_MS without an answer. The first key after a pause goes at once.
const SEND_EVERY_MS = 300;
const IN_FLIGHT_MS = 10000;

function flush(s) {
  if (s.timer) clearTimeout(s.timer);
  s.timer = null;
  s.lastSend = Date.now();
  if (s.pending.length) {
    const last = s.pending[s.pending.length - 1].id;
    s.sentUpTo = last;
    clearTimeout(s.flightTimer);
    s.inFlight = { last };
    s.flightTimer = setTimeout(() => landed(s), IN_FLIGHT_MS);
  }
  s.send(s.pending.slice());
}

// Actions given since the last send.
function unsent(s) {
  return s.pending.length > 0 && s.pending[s.pending.length - 1].id !== s.sentUpTo;
}

// The send in flight was answered (or not, within IN_FLIGHT_MS): what came meanwhile goes now.
function landed(s) {
  clearTimeout(s.flightTimer);
  s.flightTimer = null;
  s.inFlight = null;
  schedule(s);
}

function schedule(s) {
  // After a click on a page link the guard on the next page sends them (onNavClick).
  if (s.timer || s.navHold || s.inFlight || !unsent(s)) return;
  s.timer = setTimeout(() => flush(s), Math.max(0, s.lastSend + SEND_EVERY_MS - Date.now()));
}

const STORE = "labeler-unsent:";

function keep(s) {
  try {
    if (s.pending.length) sessionStorage.setItem(STORE + s.owner, JSON.stringify(s.pending));
    else sessionStorage.removeItem(STORE + s.owner);
  } catch (error) {
    // Storage full or blocked: the answers still go from memory, as before.
  }
}

function kept(owner) {
  try {
    const list = JSON.parse(sessionStorage.getItem(STORE + owner) || "[]");
    return Array.isArray(list) ? list.filter((a) => a && typeof a.id === "string") : [];
  } catch (error) {
    return [];
  }
}

function act(s, type, item, extra) {
  s.seq += 1;
  const action = { id: `${s.mount}-${s.seq}`, type, ...(item ? { item: item.id } : {}), ...(extra || {}) };
  s.pending.push(action);
  s.early = 0; // what comes next counts anew
  if (s.navHold && Date.now() - s.navAt >= NAV_WAIT_MS) s.usedSinceNav = true; // see onNavClick
  keep(s);
  schedule(s);
  return action;
}

function answer(s, classIndex) {
  const item = s.current;
  if (!item) return;
  if (item.id === s.gone) {
    passOver(s);
    return;
  }
  // The name as shown: Python refuses the answer if the class was renamed since.
  const shownAs = (s.data.classes.find((c) => c.index === classIndex) || {}).name;
  // The guess shown with it (run, class), which the Progress page's agreement compares with.
  const guess = item.guess !== null && item.guess !== undefined && Number.isInteger(item.run) ? [item.run, item.guess] : null;
  const action = act(s, "label", item, { class: classIndex, guess, ...(shownAs === undefined ? {} : { name: shownAs }) });
  s.actionOf.set(item.id, action.id);
  s.answered.add(item.id);
  s.history.push(item);
  s.restored = s.restored.filter((i) => i.id !== item.id);
  s.again = s.again.filter((i) => i.id !== item.id);
  s.skipped = s.skipped.filter((i) => i.id !== item.id);
  s.notice = "";
  draw(s);
}

function undo(s) {
  const item = s.history.pop();
  if (!item) {
    // Drawn anew (after another mode or page, and back), this box has no undo history of its own;
    // the server knows this session's answers, takes back the newest and sends its image first
    // (data.undone), or says there is nothing to undo.
    const action = act(s, "undo_last", null);
    s.undoLast = { action: action.id, seq: s.seq };
    s.notice = "Undoing your last answer…";
    draw(s);
    return;
  }
  act(s, "undo", item, { of: s.actionOf.get(item.id) });
  s.answered.delete(item.id);
  s.restored.unshift(item);
  s.notice = "Undone: that image is back.";
  draw(s);
}

// Answers (action ids) the server refused so that they can be given again (a class renamed after
// the page showed it, whose index may now mean another class, or no longer there): their images
// come back right after the one on screen (which stays, see queue), and the undo history forgets
// them (nothing was stored). Only while that answer is the image's newest here: an image undone
// and answered again since keeps the newer answer.
function restoreRefused(s, actionIds) {
  const refused = new Set(actionIds);
  [...s.actionOf].forEach(([id, action]) => {
    if (!refused.has(action) || !s.answered.has(id)) return;
    s.actionOf.delete(id);
    s.answered.delete(id);
    const at = s.history.map((i) => i.id).lastIndexOf(id);
    const item = at >= 0 ? s.history.splice(at, 1)[0] : (s.data.items || []).find((i) => i.id === id);
    if (item) s.again = [...s.again.filter((i) => i.id !== id), item];
  });
}

// Images opened again by an undo_last (see undo), each once; the server lists them on every run
// while the image is on the page it sent. Shown at once, as for an undo here, only while nothing
// was pressed since the U: a key pressed meanwhile was meant for the image on screen, which then
// stays, and the undone image comes right after it.
function restoreUndone(s, undone) {
  undone.forEach(([action, id]) => {
    // Only this box's own U (a box drawn anew gets the image first from the server's page anyway).
    if (s.undoneLast.has(action) || !String(action).startsWith(`${s.mount}-`)) return;
    const item = (s.data.items || []).find((i) => i.id === id);
    if (!item) return;
    s.undoneLast.add(action);
    s.answered.delete(id);
    const waited = s.undoLast && s.undoLast.action === action && s.undoLast.seq === s.seq;
    s.restored = s.restored.filter((i) => i.id !== id);
    s.again = s.again.filter((i) => i.id !== id);
    if (waited) {
      s.restored.unshift(item);
      s.notice = "Undone: that image is back.";
    } else {
      s.again.unshift(item);
      s.notice = `Undone: image #${id} comes back after this one.`;
    }
  });
}

// Images answered elsewhere (somebody else, another tab) or removed since they were sent. The one
// on screen stays, with a note: a key may be on its way down for it, and swapping in the next
// image would give that key to an image nobody has looked at. A key for it stores nothing (the
// server would refuse it) and only goes on to the next image. The others are dropped.
function dropClosed(s, ids) {
  // An image answered here and undone since, the undo not sent yet, is listed as answered: it is
  // this person's own answer, about to be taken back.
  const undoing = new Set(s.pending.filter((a) => a.type === "undo").map((a) => a.item));
  const closed = new Set(ids.filter((id) => !undoing.has(id)));
  const current = s.current ? s.current.id : null;
  if (closed.has(current) && !s.answered.has(current)) s.gone = current;
  s.restored = s.restored.filter((i) => i.id === current || !closed.has(i.id));
  s.again = s.again.filter((i) => !closed.has(i.id));
  s.skipped = s.skipped.filter((i) => !closed.has(i.id));
}

// A key (class, guess, ignore or skip) on the image on screen that was answered elsewhere: nothing
// is sent; the next image shows.
function passOver(s) {
  const id = s.current.id;
  s.gone = null;
  s.current = null;
  s.restored = s.restored.filter((i) => i.id !== id);
  s.notice = `Nothing was stored for image #${id}: it had been answered elsewhere. Here is the next one.`;
  draw(s);
}

function skip(s) {
  const item = s.current;
  if (!item) return;
  if (item.id === s.gone) {
    passOver(s);
    return;
  }
  act(s, "skip", item);
  s.restored = s.restored.filter((i) => i.id !== item.id);
  s.again = s.again.filter((i) => i.id !== item.id);
  s.skipped = s.skipped.filter((i) => i.id !== item.id).concat([item]);
  s.notice = "Skipped: it comes back after the others.";
  draw(s);
}

// The mode the Label page's switch shows ("One image", "Grid", "History"), null where there is
// none (this module's own test page).
function modeShown() {
  const checked = document.querySelector('.st-key-label_mode input[type="radio"]:checked');
  const label = checked && checked.closest("label");
  return label ? label.textContent.trim() : null;
}

function onKey(s, event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.composedPath ? event.composedPath()[0] : event.target;
  if (typedIn(target)) return;
  if (!s.root.isConnected && !(s.root.host && s.root.host.isConnected)) return;
  // Right after a click on Grid or History the box stays on screen until that mode is drawn: it
  // took the keys meant for it, and A accepted the guess for an image shown 40 ms (exploratory,
  // 6 of 6 at once after the click). The keys are that mode's.
  const mode = modeShown();
  if (mode !== null && mode !== "One image") return;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const cls = (s.data.classes || []).find((c) => c.key === key);
  let action = null;
  if (cls) action = () => answer(s, cls.index);
  else if ((key === "Enter" || key === "a") && s.current && s.current.guess !== null) action = () => answer(s, s.current.guess);
  else if (key === "i") action = () => answer(s, -1);
  else if (key === "u") action = () => undo(s);
  else if (key === "s") action = () => skip(s);
  else if (key === "z")
    action = () => {
      s.zoom = !s.zoom;
      draw(s);
    };
  // Enter or A with no image: taken (and said to store nothing) only while images are to come;
  // with every image labeled, Enter stays the page's (a focused button or link).
  else if (!s.current && (key === "Enter" || key === "a") && !(s.data.done && !s.pending.length)) action = () => {};
  if (!action) return;
  event.preventDefault();
  event.stopPropagation();
  // A key held down repeats about 30 times a second: each repeat would answer the next image,
  // unseen. Only a press counts.
  if (event.repeat) return;
  // No image on screen ("Loading the next images…"): an answer key has nothing to label. Said
  // so, with a count, rather than dropped without a word.
  if (!s.current && key !== "u" && key !== "z" && !(s.data.done && !s.pending.length)) {
    s.early += 1;
    const keys = s.early === 1 ? "That key stored" : `${s.early} keys stored`;
    s.notice = `${keys} nothing: no image was on screen yet (the next ones were loading).`;
    draw(s);
    return;
  }
  action();
}

function draw(s) {
  const d = s.data;
  const items = queue(s);
  // The image on screen keeps the guess it came with, but takes the caption the page has now
  // (file names turned on or off), wherever it was kept (restored, skipped, on screen).
  const fresh = items[0] && (d.items || []).find((i) => i.id === items[0].id);
  if (fresh && fresh.caption !== items[0].caption) items[0] = { ...items[0], caption: fresh.caption };
  s.current = items[0] || null;
  // Decode the next images ahead of time so showing one costs no network or decode wait.
  items.slice(1, 4).forEach((i) => {
    const img = new Image();
    img.src = i.src;
  });
  const box = s.root.querySelector(".lb");
  box.replaceChildren();
  const waiting = s.pending.length;
  const status = waiting ? `saving ${waiting}…` : "all answers saved";
  box.appendChild(el("div", { class: "lb-status", "data-testid": "lb-status", text: status }));
  const gone =
    s.current && s.current.id === s.gone
      ? `Image #${s.current.id} was answered elsewhere (or removed) meanwhile: a key for it stores nothing and goes on to the next image.`
      : "";
  if (s.notice || gone || (d.notices || []).length) {
    const text = [gone, s.notice, ...(d.notices || [])].filter(Boolean).join(" ");
    box.appendChild(el("div", { class: "lb-notice", "data-testid": "lb-notice", text }));
  }
  if (!s.current) {
    const text = d.done && !waiting ? "Every image is labeled. Train a model or export the data set." : "Loading the next images…";
    box.appendChild(el("div", { class: "lb-empty", "data-testid": "lb-empty", text }));
    return;
  }
  const item = s.current;
  const img = el("img", {
    class: s.zoom ? "lb-img zoomed" : "lb-img",
    src: item.src,
    alt: item.caption,
    "data-item": String(item.id),
    on: { click: () => { s.zoom = !s.zoom; draw(s); } },
  });
  const frame = el("div", { class: s.zoom ? "lb-frame zoomed" : "lb-frame" }, [img]);
  const caption = el("div", { class: "lb-caption", "data-testid": "lb-caption", text: item.caption });
  let guess;
  if (item.audit) guess = el("div", { class: "lb-guess muted", text: d.audit_note || "" });
  else if (item.guess !== null && item.guess !== undefined) {
    const name = (d.classes.find((c) => c.index === item.guess) || {}).name || "?";
    guess = el("div", { class: "lb-guess" }, [
      el("span", { text: "Model's guess: " }),
      el("strong", { text: name }),
      el("span", { text: ` (${Math.round(100 * item.confidence)} % sure) · Enter or A accepts` }),
    ]);
  } else guess = el("div", { class: "lb-guess muted", text: d.no_model_note || "" });
  const buttons = el(
    "div",
    { class: "lb-buttons" },
    d.classes.map((c) =>
      el("button", { class: "lb-class", type: "button", "data-index": String(c.index), on: { click: () => answer(s, c.index) } }, [
        c.key ? el("kbd", { text: c.key.toUpperCase() }) : null,
        el("span", { text: c.name }),
      ]),
    ),
  );
  const tools = el("div", { class: "lb-tools" }, [
    el("button", { type: "button", "data-action": "ignore", on: { click: () => answer(s, -1) } }, [el("kbd", { text: "I" }), el("span", { text: "Ignore (no class)" })]),
    el("button", { type: "button", "data-action": "skip", on: { click: () => skip(s) } }, [el("kbd", { text: "S" }), el("span", { text: "Skip" })]),
    el("button", { type: "button", "data-action": "undo", on: { click: () => undo(s) } }, [el("kbd", { text: "U" }), el("span", { text: "Undo" })]),
    el("button", { type: "button", "data-action": "zoom", on: { click: () => { s.zoom = !s.zoom; draw(s); } } }, [el("kbd", { text: "Z" }), el("span", { text: s.zoom ? "Fit" : "Zoom" })]),
  ]);
  box.append(el("div", { class: "lb-main" }, [el("div", { class: "lb-left" }, [frame, caption]), el("div", { class: "lb-right" }, [guess, buttons, tools])]));
}

// A click on a link to another page in the sidebar while answers wait for the send timer: the
// send would ask for a rerun of this page a moment after the click asked for the other page, and
// often won (the click was lost; the person clicked again). The box sends nothing more: the
// answers wait in storage, and the guard on the next page sends them (unsent_guard.js); keys
// pressed before the page goes wait there too. The box sends them itself only once the click
// looks as if it went nowhere: at least NAV_WAIT_MS after it, the app idle through two checks in
// a row, and since the click this page drawn again by the server or a key pressed NAV_WAIT_MS or
// more after it. A plain timer sent them while a slow server had not yet read the click (a stall
// of over 10 s on a loaded machine, once in CI), and that send overtook the click. A stalled
// server shows the app idle too, so a key pressed late in such a stall, or a stall of over a
// second just between the Label run the server was in and the next page's, still loses the
// click: the person clicks again, and no answer is lost either way.
const NAV_WAIT_MS = 10000;
const NAV_CHECK_MS = 500;

// Streamlit marks its root with the script's state ("running", "notRunning", ...).
function appIdle() {
  const app = document.querySelector('[data-testid="stApp"]');
  return !app || app.getAttribute("data-test-script-state") === "notRunning";
}

function onNavClick(s, event) {
  const link = event.target && event.target.closest && event.target.closest('[data-testid="stSidebarNav"] a');
  if (!link || !s.pending.length) return;
  const from = window.location.pathname;
  if (new URL(link.href, window.location.href).pathname === from) return;
  clearTimeout(s.timer);
  s.timer = null;
  clearInterval(s.navHold);
  s.navAt = Date.now();
  let idleChecks = 0;
  s.usedSinceNav = false;
  s.navHold = setInterval(() => {
    if (window.location.pathname !== from) return; // the other page is coming: detach ends this
    idleChecks = appIdle() ? idleChecks + 1 : 0;
    if (Date.now() - s.navAt < NAV_WAIT_MS || !s.usedSinceNav || idleChecks < 2) return;
    clearInterval(s.navHold);
    s.navHold = null;
    if (s.pending.length) flush(s);
  }, NAV_CHECK_MS);
}

// A box's state leaves the page: its key, click and leave listeners go, and it is counted out of
// window.__labelerBoxes (see unsent_guard.js).
function detach(s) {
  document.removeEventListener("keydown", s.onKey, true);
  document.removeEventListener("click", s.onNav, true);
  clearInterval(s.navHold);
  clearTimeout(s.flightTimer);
  window.removeEventListener("beforeunload", s.onLeave);
  if (s.counted) window.__labelerBoxes = Math.max(0, (window.__labelerBoxes || 1) - 1);
  s.counted = false;
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let s = boxes.get(parentElement);
  let resend = false;
  if (!s || s.session !== data.session) {
    if (s) {
      // Another person or session in this box: the old queue stays in storage under its owner.
      if (s.timer) clearTimeout(s.timer);
      detach(s);
    }
    s = newState(parentElement);
    s.session = data.session;
    s.owner = data.owner;
    s.pending = kept(s.owner).map((a) => ({ ...a, again: true })); // a new server session: see answers.py
    s.pending.forEach((a) => {
      if (a.type === "label") {
        s.answered.add(a.item);
        s.actionOf.set(a.item, a.id);
      } else if (a.type === "undo") s.answered.delete(a.item);
    });
    resend = s.pending.length > 0;
    boxes.set(parentElement, s);
    if (!parentElement.querySelector(".lb")) parentElement.appendChild(el("div", { class: "lb" }));
    const state = s;
    s.onKey = (event) => onKey(state, event);
    // Capture phase on the document: keys work wherever the focus is, except in text fields.
    document.addEventListener("keydown", s.onKey, true);
    s.onNav = (event) => onNavClick(state, event);
    document.addEventListener("click", s.onNav, true);
    // Closing the tab while answers wait: Streamlit sends widget values from a timer, and no
    // timer runs once the page is gone, so the browser is asked to confirm (its own "changes
    // may not be saved" dialog); staying lets them go. A reload resends them from storage.
    s.onLeave = (event) => {
      if (!state.pending.length) return;
      flush(state);
      event.preventDefault();
      event.returnValue = "";
    };
    window.addEventListener("beforeunload", s.onLeave);
  }
  s.send = (actions) => setStateValue("actions", actions);
  const acked = new Set(data.acked || []);
  const undoLastDone = s.pending.filter((a) => a.type === "undo_last" && acked.has(a.id));
  s.pending = s.pending.filter((a) => !acked.has(a.id));
  keep(s);
  if (s.inFlight && !s.pending.some((a) => a.id === s.inFlight.last)) landed(s);
  s.data = data;
  restoreRefused(s, data.refused || []);
  restoreUndone(s, data.undone || []);
  // Applied and nothing came back (the server's notice says why): the "Undoing" line goes.
  if (s.notice === "Undoing your last answer…" && undoLastDone.some((a) => !s.undoneLast.has(a.id))) s.notice = "";
  // Open again (its answer undone): a key for it counts once more.
  if ((data.items || []).some((i) => i.id === s.gone)) s.gone = null;
  dropClosed(s, data.closed || []);
  draw(s);
  if (s.navHold) s.usedSinceNav = true; // see onNavClick
  if (!s.counted) {
    // Counted once drawn (a box that failed to draw returns no cleanup to count it out again):
    // while a box is on the page, it sends its own answers and the guard does not (unsent_guard.js).
    s.counted = true;
    window.__labelerBoxes = (window.__labelerBoxes || 0) + 1;
  }
  const state = s;
  state.renders = (state.renders || 0) + 1;
  const render = state.renders;
  if (resend) state.timer = setTimeout(() => flush(state), 0);
  return () => {
    // A render superseded before it finished loading may be cleaned up after the newer one ran:
    // the box lives on, so nothing here is for it.
    if (state.renders !== render) return;
    // Streamlit drops a value sent by a box it is taking away (flushed anyway, it may not arrive):
    // answers typed just before leaving the page wait in storage, and the guard on every page
    // sends them (unsent_guard.js).
    if (state.timer || (unsent(state) && !state.navHold)) flush(state);
    detach(state);
    boxes.delete(parentElement);
    window.dispatchEvent(new Event("labeler-box-gone"));
  };
}
