"""labeler: label images in the browser while a semi-supervised model learns. Run:

    streamlit run app.py
"""

import streamlit as st

from labeler.ui import PAGES

st.set_page_config(page_title="labeler", page_icon="assets/logo.png", layout="wide")
st.logo("assets/logo.png")
st.navigation([st.Page(fn, title=title, icon=icon, url_path=path) for path, title, icon, fn in PAGES]).run()
