// Answers the Label box has not sent yet wait in the tab's sessionStorage, under the person and
// project they were given for ("labeler-unsent:" + owner, owner = name + "@" + project id; see
// label_box.js): a key pressed just before leaving the Label page (for another page, the grid, a
// project or a logout) is one, since a box that goes away cannot send any more. This component is
// on every page of the app, the login form too, and does two things with them:
//
// - While no box is on the page, it sends the waiting answers of the person logged in (data.name)
//   to the server, which applies them as the box's own (label.py `_apply_unsent`), and drops them
//   once the server lists them as applied (data.acked). Another person's stay for them.
// - Closing or reloading the tab while answers wait asks first (the browser's own "leave site?"):
//   no timer runs once a tab is gone. It can ask about an answer already stored whose
//   acknowledgement had not come back yet, and about answers kept for a person who logged out,
//   until they log in again. It asks too while History changes wait to be saved (data.unsaved,
//   kept by the server session, which a reload or a closed tab ends).

const STORE = "labeler-unsent:";

// One guard per tab, whatever Streamlit mounts: the last render's name, sender, the ids the server
// has stored, and what was sent. (A new name: a tab open across the upgrade has the old flag.)
if (typeof window.__labelerUnsent !== "object" || !window.__labelerUnsent) {
  window.__labelerUnsent = { name: null, send: null, acked: new Set(), sent: "", unsaved: 0 };
}
const guard = window.__labelerUnsent;

// [[owner, actions]] for every owner with answers waiting in this tab.
function waiting() {
  const out = [];
  try {
    for (let n = 0; n < sessionStorage.length; n += 1) {
      const key = sessionStorage.key(n);
      if (!key || !key.startsWith(STORE)) continue;
      const list = JSON.parse(sessionStorage.getItem(key) || "[]");
      if (Array.isArray(list) && list.length) out.push([key.slice(STORE.length), list]);
    }
  } catch (error) {
    // Storage blocked or unreadable: nothing was kept there.
  }
  return out;
}

const nameOf = (owner) => (owner.includes("@") ? owner.slice(0, owner.lastIndexOf("@")) : null);

// A box on the page sends its own owner's answers (label_box.js counts the boxes mounted).
const boxShown = () => (window.__labelerBoxes || 0) > 0;

// Drop what the server has stored. Safe with a box on the page too: an id is stored once for
// good, and a box that still holds it writes its own queue back (it drops it on its own ack).
function forget() {
  if (!guard.acked.size) return;
  for (const [owner, list] of waiting()) {
    const left = list.filter((a) => !(a && guard.acked.has(a.id)));
    if (left.length === list.length) continue;
    try {
      if (left.length) sessionStorage.setItem(STORE + owner, JSON.stringify(left));
      else sessionStorage.removeItem(STORE + owner);
    } catch (error) {
      // Storage blocked: the box sends them again when it shows (harmless, see answers.py).
    }
  }
}

function sendWaiting() {
  if (!guard.send || guard.name === null || boxShown()) return;
  const actions = [];
  for (const [owner, list] of waiting()) {
    if (nameOf(owner) !== guard.name) continue;
    // `again`: as when a box loads them from storage (a server session may never have seen them).
    list.filter((a) => a && typeof a.id === "string").forEach((a) => actions.push({ ...a, again: true, owner }));
  }
  if (!actions.length) return;
  const value = JSON.stringify(actions);
  if (value === guard.sent) return; // sent already and not taken (the login ended): the box sends them later
  guard.sent = value;
  guard.send(actions);
}

export default function (component) {
  const { data, setStateValue } = component;
  const name = data && typeof data.name === "string" ? data.name : null;
  if (name !== guard.name) guard.sent = "";
  guard.name = name;
  guard.unsaved = data && Number.isInteger(data.unsaved) ? data.unsaved : 0;
  const send = data ? (actions) => setStateValue("actions", actions) : null;
  guard.send = send;
  ((data && data.acked) || []).forEach((id) => guard.acked.add(id));
  forget();
  sendWaiting();
  if (!guard.installed) {
    guard.installed = true;
    // A box unmounted after this render (the page it was on went away): its last keys are in storage.
    window.addEventListener("labeler-box-gone", () => setTimeout(() => (forget(), sendWaiting()), 0));
    window.addEventListener("beforeunload", (event) => {
      if (!waiting().length && !(guard.unsaved > 0)) return;
      event.preventDefault();
      event.returnValue = "";
    });
  }
  return () => {
    // This guard's page went (a logout, the login form): it sends nothing for anybody any more.
    if (guard.send === send) guard.send = null;
  };
}
