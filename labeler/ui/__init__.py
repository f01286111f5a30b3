"""Streamlit pages, one module each: they draw widgets and call into `labeler` and `db`."""

from .label import label_page

# (url path, title, icon, page function), in menu order
PAGES = [
    ("label", "Label", ":material/label:", label_page),
]
