"""What to ask next and when to retrain: the labeling queue's rules, above the storage in `db/`.

- The queue is the newest finished run's order (`db.queries.queue_selects`); on audit turns
  (one page in AUDIT_EVERY while any audit image is unlabeled) it is the audit set instead.
- An image shown to one annotator is claimed for CLAIM_SECONDS, so several people labeling one
  project see different images.
- A run is queued automatically every `auto_retrain_every` new pool labels.

Every function takes the session and never commits: the caller owns the transaction, and
claims count once it commits (`with Session.begin() as session:`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from db import queries
from db import runs as run_queries
from db.models import AUDIT, POOL, QUEUED, Item, Prediction, Project, Run

AUDIT_EVERY = 5  # one page in five comes from the audit set until it is all labeled
# The Label box asks for 20 images at a time but shows one: its audit turns come every few
# answers, not every fifth batch of 20 (the first audit image came after 80 labels, and a small
# project was almost all labeled before its accuracy could be measured).
BOX_TURN = 4
SHARED_LOOK = 200  # images held by others looked at for the last ones to share (`_next_in`)
CLAIM_SECONDS = 300  # how long an image shown to one annotator is kept from the others
DEFAULT_RETRAIN_EVERY = 10


def audit_turn(session: Session, project_id: int, k: int = 1) -> bool:
    """Whether the next page (k images) comes from the audit set.

    The audit set is a random sample held out of training; its accuracy is the honest estimate
    for data without a test split, so it must be labeled too, in random order (never by
    uncertainty). It is woven in: one page in AUDIT_EVERY while any of it is unlabeled.
    """
    if not queries.count_unlabeled(session, project_id, (AUDIT,)):
        return False
    return (queries.label_count(session, project_id) // max(1, k)) % AUDIT_EVERY == AUDIT_EVERY - 1


def next_items(
    session: Session,
    project_id: int,
    k: int = 1,
    exclude: Iterable[int] = (),
    annotator: str | None = None,
    keep: Iterable[int] = (),
    turn: int | None = None,
    first: Iterable[int] = (),
) -> list[tuple[Item, Prediction | None]]:
    """The next k images to show: pool images in queue order, and on audit turns audit images
    in random order (`audit_turn` with `turn` answers per turn, default k: the grid's pages; the
    Label box's BOX_TURN); when that part runs short, both fill the page. Items in `exclude`
    (skipped) come last. `keep`: images still in this annotator's browser (the Label box keeps
    the image on screen whatever the new page holds), whose claims are not released even when
    a finished run re-ordered the queue past them (they were, and another session was given the
    image on screen: two answers for one image, the second refused).

    With `annotator`, images another annotator holds are passed over, and the ones returned are
    claimed for `annotator` (their other claims in the project are released) in `session`: the
    caller commits. While the annotator already holds the whole page for at least half the
    claim time, nothing is written (a page's reruns do not churn claims). Only when every image
    left, in either split, is held by someone else are some of those returned, unclaimed, rather
    than nothing: from the half the others reach last (the ends of their pages), in an order of
    each tab's own. Two people may then see the same image; the second answer is refused with a
    note. (They were shared as soon as the turn's split ran short, the other split's free images
    unused, and the others' next ones first: on a project of 24 pool images two people met on 2
    of 16 answers; then every sharer took the same ones: 28 of 42 answers of three people refused.)

    `first`: images the caller shows before the page (undone ones, back for a new answer); with
    `annotator`, the unanswered ones of the project are claimed too, unless another holds them.
    (They were not, unless the page happened to hold them: an image undone on a box's audit turn
    was on screen unclaimed, and the next person's grid was given it; review.)
    """
    if k <= 0:
        return []
    exclude = set(exclude)
    splits = (AUDIT,) if audit_turn(session, project_id, turn or k) else (POOL,)
    keep = set(keep)
    if annotator is not None and first:
        first = queries.unanswered(session, project_id, list(first))
        keep |= first  # not released by the page's claims below
    else:
        first = set()
    picked = _next_in(session, project_id, k, exclude, annotator, splits, keep, share=False)
    if len(picked) < k:  # the turn's images first (an audit turn's came in score order among the rest)
        taken = {item.id for item, _ in picked}
        more = _next_in(session, project_id, k, exclude, annotator, (POOL, AUDIT), keep | taken, share=True)
        picked += [pair for pair in more if pair[0].id not in taken][: k - len(picked)]
        if annotator is not None:  # claimed for the page and left out: held from the others for nothing
            queries.release_claims_but(session, project_id, annotator, {item.id for item, _ in picked} | keep)
    if first:
        now = queries.now(session)
        if not first <= queries.claimed_by(session, project_id, annotator, _renew_before(now)):
            held = keep | {item.id for item, _ in picked}
            wanted = sorted(first - queries.held_by_others_of(session, project_id, annotator, now, first))
            queries.claim_items(
                session, project_id, wanted, annotator, len(wanted), now, _claim_end(now), keep=held
            )
    return picked


def held_page(
    session: Session,
    project_id: int,
    item_ids: list[int],
    annotator: str | None,
    shared: Iterable[int] = (),
) -> list[tuple[Item, Prediction | None]] | None:
    """A page already shown (`item_ids`), again: its images in the same order with the newest
    run's predictions, whatever the queue's order is now (a run that finished meanwhile must
    not swap the page under the person's choices). Images answered meanwhile stay, so the page
    stays the same; [] once all are answered.

    With `annotator`, the page's unanswered images are claimed as `next_items` claims them
    (nothing is written while the claims last half the claim time). None when another annotator
    holds one of them now (this one was away longer than CLAIM_SECONDS and the other was given
    it): the page is no longer this annotator's, and the caller draws a new one rather than
    have two people work the same images. `shared`: images the page was given while another
    annotator held them (`next_items` shares them when nothing free is left); their holders'
    claims do not take the page away (it was dropped at the next key, with the tiles set on it,
    once one of them was answered: the batch drawn instead differed; review)."""
    open_ids = queries.unanswered(session, project_id, item_ids)
    if not open_ids:
        return []
    page = queries.page_items(session, project_id, item_ids)
    if annotator is not None:
        now = queries.now(session)
        ids = [item.id for item, _ in page]
        others = queries.held_by_others_of(session, project_id, annotator, now, open_ids)
        if others - set(shared):
            return None
        mine = open_ids - others
        lasting = queries.claimed_by(session, project_id, annotator, _renew_before(now))
        if not mine <= lasting:
            wanted = [i for i in ids if i in mine]
            won = queries.claim_items(
                session,
                project_id,
                wanted,
                annotator,
                len(wanted),
                now,
                _claim_end(now),
            )
            if (mine - set(shared)) - won:
                return None  # another annotator claimed one between the read and the claim
    return page


def restored_page(
    session: Session, project_id: int, item_ids: list[int], annotator: str, lost_sessions
) -> list[tuple[Item, Prediction | None]] | None:
    """`held_page` for a page a browser tab showed under a session the server lost (a restart,
    a reload of the tab, a login): the claims the lost sessions (`lost_sessions`, their tokens'
    tags: the one the page was set under and any that took it over since) hold on it pass to
    `annotator` first (they would otherwise look like another person's until they run out), and
    the page drawn in its place meanwhile goes back. None: another session holds one of its
    images (the caller rolls the take-over back)."""
    queries.take_over_claims(session, project_id, item_ids, annotator, lost_sessions)
    page = held_page(session, project_id, item_ids, annotator)
    if page:
        queries.release_claims_but(session, project_id, annotator, set(item_ids))
    return page


def keep_claims(session: Session, project_id: int, annotator: str) -> int:
    """Renew the annotator's claims in the project while a page of theirs is open (the Label page
    asks every minute), writing only once less than half the claim time is left."""
    now = queries.now(session)
    return queries.renew_claims(session, project_id, annotator, _renew_before(now), _claim_end(now))


def _claim_end(now):
    """When a claim taken (or renewed) `now` runs out."""
    return now + timedelta(seconds=CLAIM_SECONDS)


def _renew_before(now):
    """Claims that run out before this are renewed: a page's claims are written again once half
    their time is gone, and not at every rerun of the page (its keys, its clicks)."""
    return now + timedelta(seconds=CLAIM_SECONDS / 2)


def _next_in(
    session: Session,
    project_id: int,
    k: int,
    exclude: set[int],
    annotator: str | None,
    splits: tuple[str, ...],
    keep: set[int] = frozenset(),
    share: bool = True,
) -> list[tuple[Item, Prediction | None]]:
    if annotator is None:
        return queries.queue_page(session, project_id, splits, k, exclude)
    now = queries.now(session)
    # A few spare rows: another annotator may claim some between this read and our claim.
    limit = 2 * k + 8 + len(exclude)
    ordered = queries.queue_page(session, project_id, splits, limit, exclude, unclaimed_for=(annotator, now))
    page = {item.id for item, _ in ordered[:k]}
    if len(page) == k and queries.claimed_by(session, project_id, annotator, now) - (keep - page) == page:
        lasting = queries.claimed_by(session, project_id, annotator, _renew_before(now))
        if page <= lasting:
            return ordered[:k]  # already this annotator's page, and only it: nothing to write
    expires = _claim_end(now)
    claimed = queries.claim_items(
        session, project_id, [item.id for item, _ in ordered], annotator, k, now, expires, keep=keep
    )
    picked = [pair for pair in ordered if pair[0].id in claimed]
    if share and len(picked) < k:
        # Nothing unclaimed is left: share what others hold rather than show "all done", from the
        # half of it they reach last (their pages are the queue's head, in order), in an order of
        # this tab's own: every tab sharing took the same images, and two of three answers from
        # three people were refused.
        taken = {item.id for item, _ in picked}
        rest = queries.queue_page(session, project_id, splits, SHARED_LOOK + len(taken), exclude)
        others = [pair for pair in rest if pair[0].id not in taken][::-1]
        # Skipped ones (last in `rest`, so first here) only when nothing else is left.
        others = [pair for pair in others if pair[0].id not in exclude] or others
        # At least twice as many to choose from as are wanted, so that tabs take different ones
        # (with just as many, every grid sharing from 24 images or fewer took the same 12).
        wanted = k - len(picked)
        window = others[: max(2 * wanted, len(others) // 2)]
        picked += sorted(window, key=lambda pair: _spread(annotator, pair[0].id))[:wanted]
    return picked


def _spread(annotator: str, item_id: int) -> int:
    """A stable order of images of one's own, different for every tab (its claimant name)."""
    return int.from_bytes(hashlib.sha256(f"{annotator}:{item_id}".encode()).digest()[:8], "big")


def should_auto_retrain(session: Session, project_id: int) -> bool:
    """True when `auto_retrain_every` (project setting, default 10; 0 = off) new pool labels have
    arrived since the newest run that started (`runs.labels_since_last_run`: not one killed with
    its server), and no run is already queued."""
    project = session.get(Project, project_id)
    if project is None:
        return False
    every = int((project.settings or {}).get("auto_retrain_every", DEFAULT_RETRAIN_EVERY) or 0)
    if every <= 0:
        return False
    if session.scalar(select(Run.id).where(Run.project_id == project_id, Run.status == QUEUED).limit(1)):
        return False
    return run_queries.labels_since_last_run(session, project_id) >= every


def maybe_auto_retrain(session: Session, project_id: int) -> Run | None:
    """Queue a run with the project's own settings (model, budget, strategy) when
    `should_auto_retrain` says so; return it, or None."""
    if not should_auto_retrain(session, project_id):
        return None
    project = session.get(Project, project_id)
    return run_queries.request_run(
        session, project_id, (project.settings or {}).get("model", "m2"), {"auto": True}
    )
