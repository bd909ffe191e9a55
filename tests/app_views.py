"""A blueprint as a user would write one, registered through ``[app] blueprints`` by the tests."""

from __future__ import annotations

from flask import Blueprint, Response, abort, jsonify, request

blueprint = Blueprint("shop", __name__, url_prefix="/shop")

#: Items 1 to this exist; any other is a 404.
ITEMS = 1000


@blueprint.get("/items/<int:item_id>")
async def item(item_id: int) -> Response:
    """One item of the shop.

    Items 1 to 1000 exist.
    """
    if not 1 <= item_id <= ITEMS:
        abort(404, description=f"There is no item {item_id}.")
    return jsonify(id=item_id, name=f"item {item_id}")


@blueprint.post("/notes/<any(draft,final):state>")
def note(state: str) -> Response:
    """Keep a note (a plain def view: it runs in the thread pool)."""
    return jsonify(state=state, size=len(request.get_data()))
