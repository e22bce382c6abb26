"""``/v1/retrievals``: pull a cohort from a registered PACS by accession numbers or study UIDs.

The request is queued in SQL and answered at once (202); the DICOM gateway
(``covidscan dicom-listen``) retrieves each study, inside ``RETRIEVE_WINDOW``, and submits
its CT instances as a job of the caller's owner. Accession numbers are sealed with
PHI_KEY and never answered back: items are named by their index in the list sent.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.auth import current_principal, requires
from api.extensions import db_session, services
from api.fields import validated
from api.job_intake import actor
from api.openapi import Reply, operation
from api.problems import Problem
from api.schemas import RetrievalInfo, RetrievalList, RetrievalListQuery, RetrievalRequest
from core.retrievals import describe, request_retrieval
from db.models import Retrieval
from db.retrievals import find_retrieval, recent_retrievals

bp = Blueprint("retrievals", __name__, url_prefix="/v1/retrievals")


def retrieval_json(retrieval: Retrieval) -> dict[str, Any]:
    return {
        **describe(retrieval, services().settings.retrieve_window),
        "links": {"self": url_for("retrievals.get_retrieval", retrieval_id=retrieval.id)},
    }


@bp.post("")
@requires("submit")
@operation(
    "Retrieve studies from a PACS",
    body=RetrievalRequest,
    responses={
        202: Reply(
            "Accepted: the retrieval, queued", RetrievalInfo, headers={"Location": "its URL"}
        )
    },
    errors=(409,),
)
def create_retrieval() -> tuple[Response, int, dict[str, str]]:
    """Queue the retrieval of studies, by ``accession_numbers`` or ``study_uids``, from the
    registered destination ``source``; each study found becomes a job of the caller's owner.

    Accession numbers need PHI_KEY (409 without it): they are kept only sealed.
    """
    body = request.get_json(silent=True) if request.is_json else None
    if not isinstance(body, dict):
        raise Problem(400, "send a JSON object with source and accession_numbers or study_uids")
    try:
        asked = validated(RetrievalRequest, body)
    except Problem as exc:  # a refused value is answered back, but never an accession number
        exc.extra.pop("accession_numbers", None)
        raise
    session = db_session()
    retrieval = request_retrieval(
        session,
        actor("retrieval"),
        asked.source,
        services().settings.phi_key,
        accession_numbers=asked.accession_numbers or (),
        study_uids=asked.study_uids or (),
    )
    session.commit()
    answer = retrieval_json(retrieval)
    return jsonify(answer), 202, {"Location": answer["links"]["self"]}


@bp.get("")
@requires("read")
@operation(
    "The caller's recent retrievals", query=RetrievalListQuery, responses={200: RetrievalList}
)
def list_retrievals() -> Response:
    """The caller's retrievals, newest first (an administrator's: everyone's)."""
    query = validated(RetrievalListQuery, request.args)
    found = recent_retrievals(db_session(), query.limit, current_principal().job_owner)
    return jsonify(retrievals=[retrieval_json(retrieval) for retrieval in found])


@bp.get("/<retrieval_id>")
@requires("read")
@operation("A retrieval and each item's outcome", responses={200: RetrievalInfo}, errors=(404,))
def get_retrieval(retrieval_id: str) -> Response:
    """Its status (``waiting_window`` outside RETRIEVE_WINDOW) and, per item, its outcome:
    ``queued``, ``found``, ``retrieved`` (N of M instances, the job), ``not_found``,
    ``refused`` (the PACS's or the quota's reason) or ``failed``."""
    retrieval = find_retrieval(db_session(), retrieval_id, current_principal().job_owner)
    if retrieval is None:
        raise Problem(404, f"no retrieval with id {retrieval_id!r}")
    return jsonify(retrieval_json(retrieval))
