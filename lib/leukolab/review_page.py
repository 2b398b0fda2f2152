"""The review page of ``notebooks/review.ipynb`` (JupyterLab, or a web page with Voila): one kept case at a time
with the model's answer and where it looked, the reviewer's class (or ``unusable``), name and note; each review is
saved to the store as it is made, so a crash loses at most the case on screen.

:class:`ReviewSession` holds the logic (the queue, progress, saving) and :func:`case_result` the answer to draw
(with the Grad-CAM heatmap of the model version that answered, when it can still be loaded); :func:`build_review`
only wires widgets to them. With a tracking server, the page syncs the store with its copy there when it opens and
pushes each review in the background as it is saved (:mod:`leukolab.review.remote`).
"""

from __future__ import annotations

import html
import logging
from collections.abc import Callable
from dataclasses import dataclass

import ipywidgets as widgets

from leukolab.images import decode_image
from leukolab.predictor.smear_model import SmearModel
from leukolab.predictor.uri import load_model
from leukolab.review.remote import BackgroundPush, SyncFailed, remote_reviews, sync_with_server
from leukolab.review.store import UNUSABLE, Case, ReviewStore
from leukolab.widgets import _png, render_result

log = logging.getLogger(__name__)


class ReviewSession:
    """The cases waiting for a review (oldest first) and the reviews saved in this session; ``push`` (to the store's
    copy on a tracking server) is woken after each save."""

    def __init__(self, store: ReviewStore, push: BackgroundPush | None = None):
        self.store, self.push = store, push
        self.queue = [case.hash for case in store.cases(pending_only=True)]
        self.total = len(self.queue)
        self.saved = 0

    def current(self) -> Case | None:
        """The case to review now, None when none is left."""
        return self.store.case(self.queue[0]) if self.queue else None

    def save(self, label: str | None, reviewer: str, note: str = "") -> int:
        """Save the review of the current case (at once, in the store) and move on; its id."""
        if not self.queue:
            raise ValueError("no case is waiting for a review")
        if not label:
            raise ValueError(f"choose a class, or {UNUSABLE!r} when no class can be given")
        review_id = self.store.record_review(self.queue[0], label, reviewer, note)
        self.queue.pop(0)
        self.saved += 1
        if self.push:
            self.push.wake()
        return review_id

    def skip(self) -> None:
        """Put the current case at the end of the queue."""
        if self.queue:
            self.queue.append(self.queue.pop(0))

    def progress(self) -> str:
        return f"{self.saved} of {self.total} reviewed in this session; {len(self.queue)} waiting"


ModelLoader = Callable[[str], SmearModel]


def case_result(case: Case, image: bytes, load: ModelLoader | None = load_model) -> tuple[dict, str | None]:
    """What :func:`~leukolab.widgets.render_result` draws for ``case`` (its answer, with the heatmap and mask of the
    version that answered when ``load(uri)`` gives it), and why there is no heatmap (None when there is one)."""
    answer = case.answer
    result = {"predicted_class": answer.predicted_class, "confidence": answer.confidence,
              "probabilities": answer.probabilities or None}
    if load is None or not answer.model_name or not answer.model_version:
        return result, "no heatmap: the case does not name a registered model version"
    uri = f"models:/{answer.model_name}/{answer.model_version}"
    try:
        model = load(uri)
        model = model[0] if isinstance(model, tuple) else model
        explained = model.predict_images([decode_image(image, model.image_rules)], explain=model.task != "segmentation")[0]
    except Exception as error:  # a deleted version, an unreachable registry: the case is still reviewable
        return result, f"no heatmap: {uri} could not be used ({type(error).__name__})"
    return {**result, "heatmap_png": explained.get("heatmap_png"), "mask": explained.get("mask_png")}, None


def answer_summary(case: Case) -> str:
    """The model's answer in words (HTML)."""
    answer = case.answer
    said = (f"<b>{html.escape(answer.predicted_class)}</b> at {answer.confidence:.1%}" if answer.predicted_class
            and answer.confidence is not None else "no class")
    model = f"{answer.model_name}/{answer.model_version}" if answer.model_name else (answer.model_version or "?")
    return (f"Model {html.escape(model)} said {said}, and referred it: <b>{html.escape(answer.reason)}</b>"
            f" &middot; kept {case.kept_at[:19]} from {html.escape(case.source)}, seen {case.times_seen}x")


@dataclass
class ReviewPage:
    """The page's widgets (``widget`` is the whole page) and its session."""

    widget: widgets.VBox
    session: ReviewSession
    label: widgets.ToggleButtons
    reviewer: widgets.Text
    note: widgets.Textarea
    save: widgets.Button
    skip: widgets.Button
    message: widgets.HTML
    progress: widgets.HTML


def build_review(store: ReviewStore | None = None, reviewer: str = "", load: ModelLoader | None = load_model) -> ReviewPage:
    """The review page on ``store`` (default: the workspace's), synced first with its copy on the tracking server if
    there is one; ``load`` gives a model version for the heatmaps."""
    store = store or ReviewStore()
    try:
        synced = sync_with_server(store) or ""
    except SyncFailed as error:
        synced = f"Not synced ({error}): reviews are saved here, and pushed when the server answers."
    remote = remote_reviews()
    session = ReviewSession(store, BackgroundPush(store, remote) if remote else None)
    loaded: dict[str, SmearModel] = {}

    def load_once(uri: str) -> SmearModel:  # one load per version, however many of its cases are shown
        if uri not in loaded:
            found = load(uri)
            loaded[uri] = found[0] if isinstance(found, tuple) else found
        return loaded[uri]
    picture = widgets.Image(format="png", layout=widgets.Layout(max_width="900px"))
    answer = widgets.HTML()
    label = widgets.ToggleButtons(options=[], value=None, description="Class")
    # continuous_update=False: the text reaches the kernel whole when the field loses focus (pressing Save does that)
    name = widgets.Text(value=reviewer, description="Reviewer", placeholder="your name", continuous_update=False)
    note = widgets.Textarea(description="Note", placeholder="optional", layout=widgets.Layout(width="600px"),
                            continuous_update=False)
    save = widgets.Button(description="Save and next", button_style="primary", icon="check")
    skip = widgets.Button(description="Skip", icon="forward")
    message, progress = widgets.HTML(html.escape(synced)), widgets.HTML()

    def show() -> None:
        progress.value = f"<i>{session.progress()}</i>"
        case = session.current()
        if case is None:
            picture.layout.display, label.options = "none", []
            answer.value = "<b>No case is waiting for a review.</b>"
            save.disabled = skip.disabled = True
            return
        image = case.image_path.read_bytes()
        result, why = case_result(case, image, load_once if load else None)
        picture.value, picture.layout.display = _png(render_result(image, result)), None
        answer.value = answer_summary(case) + (f"<br><i>{html.escape(why)}</i>" if why else "")
        label.options = [*case.answer.probabilities, UNUSABLE]
        label.value, note.value = None, ""

    def on_save(_clicked) -> None:
        try:
            session.save(label.value, name.value, note.value)
        except (ValueError, KeyError) as error:
            message.value = f"<b style='color:#b00'>Not saved:</b> {html.escape(str(error))}"
            return
        message.value = "Saved."
        show()

    def on_skip(_clicked) -> None:
        session.skip()
        message.value = ""
        show()

    save.on_click(on_save)
    skip.on_click(on_skip)
    show()
    page = widgets.VBox([widgets.HTML("<h3>Review referred cases</h3><i>Research use. The images are patients' "
                                      "images: do not copy them out of the review store.</i>"),
                         progress, picture, answer, label, name, note, widgets.HBox([save, skip]), message])
    return ReviewPage(page, session, label, name, note, save, skip, message, progress)
