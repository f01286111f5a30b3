// Answers the Label box has not sent yet wait in the tab's sessionStorage, under the person and
// project they were given for ("labeler-unsent:" + owner, see label_box.js), until a box for that
// owner shows again: a key pressed just before leaving the Label page (for another page, a mode,
// a project or a logout) waits there. Closing the tab meanwhile would lose it, so on every page
// of the app the browser asks first (its own "leave site?"). An answer that reached the server
// but whose acknowledgement did not reach the box before it went stays in storage too: the
// question then asks about an answer already stored (it is sent again, harmlessly, when the box
// shows), and so do answers kept for a person who logged out, until they log in again here.

const STORE = "labeler-unsent:";

function unsentInStorage() {
  try {
    for (let n = 0; n < sessionStorage.length; n += 1) {
      const key = sessionStorage.key(n);
      if (!key || !key.startsWith(STORE)) continue;
      const list = JSON.parse(sessionStorage.getItem(key) || "[]");
      if (Array.isArray(list) && list.length) return true;
    }
  } catch (error) {
    // Storage blocked or unreadable: nothing was kept there.
  }
  return false;
}

export default function () {
  if (window.__labelerUnsentGuard) return;
  window.__labelerUnsentGuard = true;
  window.addEventListener("beforeunload", (event) => {
    if (!unsentInStorage()) return;
    event.preventDefault();
    event.returnValue = "";
  });
}
