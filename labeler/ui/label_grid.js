// Keys for the grid page: arrows move between tiles, a class key sets the tile in focus (and
// moves on), Backspace or Delete sets it to "skip". A accepts the page and U undoes it (the
// page's own buttons). The tiles are Streamlit selectboxes; a key sends {tile, class} as a
// trigger and Python sets that tile's value, so what is accepted is what the tiles show.

const grids = new WeakMap();
const TYPING = new Set(["INPUT", "TEXTAREA", "SELECT"]);

// A tile is its image and, below it, its selectbox (two elements of one column).
function tileParts(tile) {
  const widget = document.querySelector(`.st-key-${CSS.escape(tile.key)}`);
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

function onKey(g, event) {
  if (event.defaultPrevented || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.composedPath ? event.composedPath()[0] : event.target;
  if (target && (TYPING.has(target.tagName) || target.isContentEditable || target.getAttribute("role") === "combobox")) return;
  const tiles = g.data.tiles;
  if (!tiles.length) return;
  const columns = g.data.columns || 4;
  const key = event.key.length === 1 ? event.key.toLowerCase() : event.key;
  const move = { ArrowRight: 1, ArrowLeft: -1, ArrowDown: columns, ArrowUp: -columns }[key];
  const cls = g.data.classes.find((c) => c.key === key);
  if (move !== undefined) {
    g.focus = Math.min(tiles.length - 1, Math.max(0, g.focus + move));
  } else if (cls || key === "Backspace" || key === "Delete") {
    g.set({ tile: tiles[g.focus].key, class: cls ? cls.index : -1 });
    g.focus = Math.min(tiles.length - 1, g.focus + 1);
  } else return;
  event.preventDefault();
  event.stopPropagation();
  draw(g);
}

export default function (component) {
  const { data, parentElement, setTriggerValue } = component;
  let g = grids.get(parentElement);
  if (!g) {
    g = { focus: 0, data };
    g.onKey = (event) => onKey(g, event);
    document.addEventListener("keydown", g.onKey, true);
    grids.set(parentElement, g);
  }
  if (g.page !== data.page) g.focus = 0; // a new page of images
  g.page = data.page;
  g.data = data;
  g.set = (value) => setTriggerValue("set", value);
  draw(g);
  setTimeout(() => draw(g), 300); // the tiles may be drawn after this component
  const state = g;
  return () => {
    document.removeEventListener("keydown", state.onKey, true);
    state.data.tiles.forEach((tile) => tileParts(tile).forEach((part) => (part.style.outline = "")));
    grids.delete(parentElement);
  };
}
