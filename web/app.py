"""The storefront's Flask app: static pages and their assets, nothing else.

It reads no database and calls no service: each page's script calls the services' APIs on the
same origin by prefix (``/catalog/v1/...``, ``/delivery/v1/...``), so the app holds no state and
scales like a file server. Embedded mode mounts it at ``/`` (services/embedded.py)."""
from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Flask, Response, jsonify, request, send_from_directory

HERE = Path(__file__).resolve().parent
PAGES = HERE / "pages"
STATIC = HERE / "static"

# Everything the pages load comes from this origin; the QR code is a data: image. Paying
# leaves by location.assign(pay_url), which CSP does not restrict, so form-action stays 'self'.
CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'", "script-src 'self'", "style-src 'self'", "img-src 'self' data:",
    "connect-src 'self'", "frame-ancestors 'none'", "base-uri 'none'", "form-action 'self'",
])
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",  # order links carry the buyer's access token
    "X-Frame-Options": "DENY",  # frame-ancestors for browsers that predate it
}
# Pages that show keys or access tokens: neither the browser nor a proxy may keep a copy.
PRIVATE_PREFIXES = ("/order/", "/lookup")

bp = Blueprint("storefront", __name__)


def _page(name: str) -> Response:
    return send_from_directory(PAGES, f"{name}.html", mimetype="text/html", max_age=0)


@bp.get("/")
def home():
    return _page("home")


@bp.get("/shop/<merchant_id>")
def shop(merchant_id):
    return _page("shop")


@bp.get("/product/<product_id>")
def product(product_id):
    return _page("product")


@bp.get("/order/<order_no>")
def order(order_no):
    return _page("order")


@bp.get("/lookup")
def lookup():
    return _page("lookup")


@bp.get("/healthz")
def healthz():
    return jsonify({"status": "ok", "service": "web"})


def _not_found(_error):
    """A person followed a bad link: a page, not JSON."""
    response = _page("not_found")
    response.status_code = 404
    return response


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    if request.path.startswith(PRIVATE_PREFIXES):
        response.headers["Cache-Control"] = "no-store"
    else:
        # File names carry no version (no build step), so the browser revalidates each time.
        response.headers["Cache-Control"] = "no-cache"
    return response


def create_app() -> Flask:
    app = Flask("linkshop.web", static_folder=str(STATIC), static_url_path="/static")
    app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 0
    app.register_blueprint(bp)
    app.register_error_handler(404, _not_found)
    app.after_request(_secure)
    return app
