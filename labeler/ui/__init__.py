"""Streamlit pages, one module each: they draw widgets and call into `labeler` and `db`."""

from .export import export_page
from .label import label_page
from .latent import latent_page
from .progress import progress_page
from .project import project_page
from .train import train_page

# (url path, title, icon, page function), in menu order
PAGES = [
    ("label", "Label", ":material/label:", label_page),
    ("train", "Train", ":material/model_training:", train_page),
    ("progress", "Progress", ":material/trending_up:", progress_page),
    ("latent", "Latent space", ":material/scatter_plot:", latent_page),
    ("export", "Export", ":material/download:", export_page),
    ("project", "Project", ":material/folder_open:", project_page),
]
