// Keys for the grid page: arrows move between tiles, a class key sets the tile in focus (and
// moves on), Backspace or Delete sets it to "skip". A accepts the page and U undoes it (the
// page's own buttons). Every key of the page is sent, in order, as one growing list of
// {item, class, name} (a state, not a trigger: when keys come faster than the page reruns, Streamlit
// keeps only the newest value, and the newest list still holds every key). Python draws a tile
// that got a key as a new selectbox showing that key's class, so what is accepted is what the
// tiles show. `token` names the list, `page` the images it was pressed on. A held key counts
// once (its repeats are dropped here, before the page's A and U buttons see them).

const grids = new WeakMap();
// Inputs that take no typed letters: a key pressed while the mouse left the focus on one (the
// mode switch, "Show file names") is the page's, as anywhere else (it was dropped, silently).
const NOT_TYPED_IN = new Set(["checkbox", "radio", "button", "submit", "reset", "range", "color", "file", "image"]);

// A and U are the page's own buttons (Streamlit shortcuts), which take no key while the focus is
// on an input, such as the mode switch a click on "Grid" leaves it on: A did nothing, silently,
// until a click elsewhere. Then this module clicks them.
const BUTTONS = { a: '[class*="st-key-accept_grid-"] button', u: ".st-key-undo button" };

function typedIn(target) {
  if (!target) return false;
  if (target.isContentEditable || target.tagName === "TEXTAREA" || target.tagName === "SELECT") return true;
  return target.tagName === "INPUT" && !NOT_TYPED_IN.has(String(target.type || "text").toLowerCase());
}

// A tile is its image and, below it, its selectbox (two elements of one column). A tile drawn
// anew (a key pressed on it, a new threshold) gets a new key, and this module may hear of it
// before or after the page shows it: the tile is then found by its image's id (Python's
// _tile_key). A key pressed in that moment, a few milliseconds that a busy server makes long,
// was dropped, and a held A's repeat reached the page's shortcut and accepted the next page.
function tileParts(tile) {
  const prefix = `st-key-grid-${tile.item}-`;
  const widget =
    document.querySelector(`.st-key-${CSS.escape(tile.key)}`) ||
    [...document.querySelectorAll(`[class*="${prefix}"]`)].find((el) =>
      [...el.classList].some((name) => name.startsWith(prefix)),
    );
  if (!widget) return [];
  return [widget.previousElementSibling, widget].filter(Boolean);
}

function draw(g) {
  g.data.tiles.forEach((tile, n) => {
    tileParts(tile).forEach((part) => {
      part.style.outline = n === g.focus ? "3px solid var(--st-primary-color, #ff4b4b)" : "";
      part.style.outlineOffset = n === g.focus ? "3px" : "";
    });
  });
}

function pageKey(event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return false;
  const target = event.composedPath ? event.composedPath()[0] : event.target;
  if (typedIn(target) || (target && target.getAttribute && target.getAttribute("role") === "combobox")) return false;
  // With a Label box on the page (label_box.js counts them), the keys are the box's.
  return (window.__labelerBoxes || 0) === 0;
}

// The mode the Label page's switch shows ("One image", "Grid", "History"), null where there is
// none. Right after a click on another mode the grid stays on screen, greyed, until that mode
// is drawn: a key then was the grid's, so A meant for the box saved the grid page left behind,
// U undid a grid page, and a class key set a tile nobody saw any more (review).
function modeShown() {
  const checked = document.querySelector('.st-key-label_mode input[type="radio"]:checked');
  const label = checked && checked.closest("label");
  return label ? label.textContent.trim() : null;
}

// Installed once per tab, never removed: a held key's repeats (about 30 a second) never reach
// the grid's Accept or Undo, nor set tiles, while those buttons are on the page, also in the
// moments when no grid listens (a mode switch, the component built anew). Arrows repeat.
if (!window.__labelerGridRepeats) {
  window.__labelerGridRepeats = true;
  document.addEventListener(
    "keydown",
    (event) => {
      if (!event.repeat || !pageKey(event)) return;
      if (event.key.length !== 1 && event.key !== "Backspace" && event.key !== "Delete") return;
      if (!document.querySelector(BUTTONS.a) && !document.querySelector(BUTTONS.u)) return;
      event.preventDefault();
      event.stopPropagation();
    },
    true,
  );
}

// After A, keys wait for the next page: at most 10 s, and no longer than the accept's run once
// it is over (a refused accept, a rename say, keeps the page; the run's state shows after it
// started, given 1.5 s).
function acceptGoing(g) {
  if (g.accepting !== g.page) return false;
  const since = Date.now() - g.acceptedAt;
  const app = document.querySelector('[data-testid="stApp"]');
  const over = since > 1500 && app && app.getAttribute("data-test-script-state") === "notRunning";
  return since < 10000 && !over;
}

function onKey(g, event) {
  if (!pageKey(event)) return;
  if (g.accepting === g.page && !acceptGoing(g)) {
    // The accept is over and the page stayed (refused: a rename, an outage): the keys dropped
    // meanwhile are not reported on some later page, where none was dropped just before.
    g.accepting = null;
    g.dropped = 0;
  }
  const target = event.composedPath ? event.composedPath()[0] : event.target;
  const tiles = g.data.tiles;
  if (!tiles.length) return;
  const mode = modeShown();
  const grid = mode === null || mode === "Grid";
  const columns = g.data.columns || 4;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const accept = document.querySelector(BUTTONS.a);
  if (key === "a" && !event.repeat && accept && !accept.disabled && grid) {
    // The page's Accept goes (Streamlit's shortcut, or the click below): until the next page
    // shows, class keys are dropped.
    g.accepting = g.page;
    g.acceptedAt = Date.now();
    g.dropped = 0; // the next page reports the keys dropped after this A, not after one refused
  }
  const move = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns }[key];
  const cls = g.data.classes.find((c) => c.key === key);
  const setsTile = cls || key === "Backspace" || key === "Delete"; // sets the tile in focus
  if (!grid) {
    // Leaving: the grid takes no key, and A and U do not reach its greyed buttons.
    if (!(setsTile || key === "a" || key === "u")) return;
  } else if (event.repeat && (setsTile || key === "a" || key === "u")) {
    // A held key repeats about 30 times a second: a class key would set tile after tile, and A
    // or U (the page's buttons, which take repeats) would accept or undo the pages after this
    // one, unseen. Only a press counts; the arrows repeat. Dropped before the check below, which
    // fails while the next page is being drawn.
  } else if (!tileParts(tiles[0]).length) {
    // A grid taken off the page (One image, History, another page) can keep its listener a
    // while: its keys then set tiles nobody sees.
    return;
  } else if ((setsTile || key === "u") && acceptGoing(g)) {
    // A key after A, before the next page shows, is meant for images not seen yet: dropped. It
    // set the last tile of the page being accepted, and its rerun stopped the accept on the
    // server (Streamlit stops a callback at its next look at the session state), before its
    // commit (nothing saved, the page stays with that tile changed) or after (exploratory).
    // U too: its rerun stopped the accept before its commit, and U then asked about the tiles
    // set (exploratory, at 0 ms); an undo kept for the next page could take back the page or
    // bulk label before, when this accept saved nothing (review). Counted, and said when the
    // next page shows (they went without a word).
    g.dropped = (g.dropped || 0) + 1;
  } else if (move !== undefined) {
    g.focus = Math.min(tiles.length - 1, Math.max(0, g.focus + move));
  } else if (setsTile) {
    say(g, ""); // the note on keys dropped before this page is old news once it is keyed
    // The class's name as shown goes with its index: Python refuses the page if it was renamed since.
    g.edits.push({ item: tiles[g.focus].item, class: cls ? cls.index : -1, name: cls ? cls.name : null });
    g.send();
    g.focus = Math.min(tiles.length - 1, g.focus + 1);
  } else if (BUTTONS[key] && target && target.tagName === "INPUT") {
    const button = document.querySelector(BUTTONS[key]);
    if (!button || button.disabled) return;
    target.blur(); // the next keys reach the page's shortcuts themselves
    button.click();
  } else return;
  event.preventDefault();
  event.stopPropagation();
  draw(g);
}

// A line of this module's own, above the tiles (empty: nothing shown).
function say(g, text) {
  if (!g.note) {
    if (!text) return;
    g.note = document.createElement("div");
    g.note.setAttribute("data-testid", "grid-keys-note");
    g.note.style.cssText = "font-size: 0.875rem; opacity: 0.75; padding: 0.25rem 0;";
    g.parent.appendChild(g.note);
  }
  g.note.textContent = text;
  g.note.style.display = text ? "" : "none";
}

// The page shown and its tiles set here: the keys pressed before the server's last drawing, the
// mouse choices it listed then (`chosen`), the keys pressed since; with the name and the
// session they were set under, and the guesses shown pre-filled on it (`prefilled`: a page
// given back shows its other tiles as they were, not on the newest guesses or threshold).
function setTiles(g) {
  const before = g.edits.slice(0, g.drawnKeys);
  const after = g.edits.slice(g.drawnKeys);
  const list = before.concat(g.data.chosen || [], after);
  return {
    token: g.token,
    page: g.page,
    owner: g.data.owner,
    who: g.data.who,
    session: g.data.session,
    list,
    prefilled: g.data.prefilled || [],
  };
}

const STORE = "labeler-grid:";

function keptPage(owner) {
  if (!owner) return null;
  try {
    const page = JSON.parse(sessionStorage.getItem(STORE + owner) || "null");
    const valid = page && typeof page.page === "string" && page.page.length <= 2000 && Array.isArray(page.list);
    return valid && page.list.length ? page : null;
  } catch (error) {
    return null;
  }
}

// A page of this person and project set under another session (one the server lost: a
// restart, a reload, a login) that the server has not tried to give back yet (`tried`): it waits
// to be sent, and stays kept. The page drawn now may be the same one (its claims ran out).
function waiting(page, data) {
  return Boolean(
    page && page.list.length && page.owner === data.owner && page.session !== data.session &&
      !(data.tried || []).includes(page.page),
  );
}

// The page shown is kept in the tab (sessionStorage, under the person and project: `owner`)
// while tiles are set on it; but a page waiting to be given back is kept until the server has
// tried it (a second reload, or a switch of mode before its run ended, lost it).
function keepPage(g) {
  if (!g.data.owner) return;
  try {
    if (waiting(keptPage(g.data.owner), g.data)) return;
    const page = setTiles(g);
    if (page.list.length) sessionStorage.setItem(STORE + g.data.owner, JSON.stringify(page));
    else sessionStorage.removeItem(STORE + g.data.owner);
  } catch (error) {
    // Storage full or blocked: a restart still finds the page in this module's memory.
  }
}

export default function (component) {
  const { data, parentElement, setStateValue } = component;
  let g = grids.get(parentElement);
  if (!g) {
    g = { focus: 0, data, parent: parentElement };
    g.onKey = (event) => onKey(g, event);
    document.addEventListener("keydown", g.onKey, true);
    grids.set(parentElement, g);
  }
  // A server that lost this tab's session (a restart, a reload of the tab, a login after one)
  // draws a page (a new one, or the same once its claims ran out); the tab sends back the page
  // it showed there (`lost`): from its memory when this module stayed mounted, else from
  // sessionStorage (keepPage). Its keys and the tiles chosen with the mouse (the server lists
  // those in `chosen` as of its last drawing, so they go between the keys pressed before it and
  // after it), with the name and session it was claimed under. Sent in a state of its own
  // ("lost": a key on the new page would overwrite "edits"), it brings the page back (label.py,
  // _lost_page), for the session it was sent to only (`asker`: the value stays in the tab, and a
  // later session must not take it for its own). The server lists the pages it has tried
  // (`tried`). Before, the tiles set on it were dropped without a word.
  const shown = g.page ? setTiles(g) : null;
  const stored = keptPage(data.owner);
  const found = waiting(shown, data) ? shown : waiting(stored, data) ? stored : null;
  const lost = found ? { ...found, asker: data.session } : null;
  const held = data.edits && data.edits.token ? data.edits : null;
  if (g.page !== data.page) {
    // A new page of images: the list the server holds for it (a page back after an undo), else
    // a new one. Carrying on the server's list keeps every tile keyed before as it is shown.
    g.accepting = null;
    const dropped = g.dropped || 0;
    g.dropped = 0;
    say(
      g,
      dropped
        ? `${dropped === 1 ? "1 key" : `${dropped} keys`} pressed after A, before this page showed, ` +
            `${dropped === 1 ? "was" : "were"} dropped; press again here (U undoes the page just accepted).`
        : "",
    );
    g.focus = 0;
    g.edits = held ? held.list.slice() : [];
    g.token = held
      ? held.token
      : (Date.now().toString(36) + Math.random().toString(36).slice(2)).replace(/[^0-9a-z]/g, "");
  } else if (held && (held.token !== g.token || held.list.length >= g.edits.length)) {
    // The page given back is the one shown (drawn anew after its claims ran out): the server's
    // list is the page's, with its mouse choices (keys pressed here before it came back, under
    // another token, are not). A list of the same token is otherwise the start of this one, and
    // at the same length the same.
    g.edits = held.list.slice();
    g.token = held.token;
  }
  g.page = data.page;
  g.data = data;
  g.send = () => {
    setStateValue("edits", { token: g.token, page: g.page, list: g.edits.slice() });
    keepPage(g);
  };
  // How many of the page's keys this drawing reflects (the server's list); later keys follow
  // its mouse choices (`chosen`).
  g.drawnKeys = data.edits && data.edits.list ? Math.min(data.edits.list.length, g.edits.length) : 0;
  if (lost) setStateValue("lost", lost);
  keepPage(g);
  draw(g);
  setTimeout(() => draw(g), 300); // the tiles may be drawn after this component
  const state = g;
  return () => {
    document.removeEventListener("keydown", state.onKey, true);
    state.data.tiles.forEach((tile) => tileParts(tile).forEach((part) => (part.style.outline = "")));
    if (state.note) state.note.remove();
    grids.delete(parentElement);
  };
}
