"""The web console (``signalhub serve console``): an internal tool for people, a process of its own that
reaches the back office only through the generated stubs (``signalhub.v1.backoffice_pb2_grpc``), each call
with the signed-in person's own API token, so tenancy, roles and audit stay the back office's. It holds no
database connection and imports no server module beyond the shared address defaults
(``backoffice.platform.config``): no SQLAlchemy, no ``backoffice.models``, no domain module.

Modules:
    config      its settings (SIGNALHUB_CONSOLE_*), see docs/console.md
    sessions    server-side sessions in memory (the token kept as a Secret; idle and absolute expiry)
    security    the response headers (CSP and the rest) and the CSRF check
    backoffice  the one call helper: a stub method, the session's token, a refusal as ``Refused``
    formats     how values read on a page (enum names, UTC times, durations)
    views       templates, the ``Page`` a handler gets, the ``signed_in`` guard, secrets shown once
    charts      the stage timeline as server-drawn SVG
    signin      sign-in with an API token, sign-out
    trader      the trader's pages (approvals live, signals, positions, subscriptions)
    devices     the trader's device pages (credentials shown once, rotate, revoke, each device's risk policy)
    affiliate   the affiliate's pages (referral link, stats, referrals, commissions, payouts)
    admin       the admins' pages (alerts live, payouts, the audit trail, producers, users)
    app         ``create_app(config)``: every page module's routes, static files, headers, error pages
    server      uvicorn, started and stopped on SIGTERM/SIGINT

How to add a page (as ``affiliate.py`` and ``admin.py`` add theirs):

1. In the new module, write each handler as ``@signed_in async def handler(page: Page) -> Response``
   (``@signed_in(admin=True)`` for admins only): read ``page.query(...)`` / ``page.field(...)``, call
   ``await page.call(page.bo.<service>.<Method>, request)``, return ``page.render("<template>.html",
   title=..., **context)`` or, after a change, ``page.redirect(path, notice)``. A ``Refused`` the handler
   does not catch becomes an error page with its one-line reason; catch it to show the form again with
   ``refused=..., errors=refused.violations, values=page.values`` (the templates' ``_forms.html`` macros
   put each violation beside its field).
2. Expose ``routes: list[BaseRoute]`` (Starlette ``Route``\\ s) and ``section: Section | None`` (its
   heading and links in the navigation; ``Section(..., admin_only=True)`` shows it to admins only).
3. Add the module to ``PAGE_MODULES`` in ``app.py``, and its templates under ``templates/`` (extending
   ``layout.html``; no inline script or style: the CSP refuses them).

Every POST is checked against the session's CSRF token by ``signed_in``: forms include
``{{ csrf_field() }}``; htmx requests send the header the layout sets on ``<body>``."""
