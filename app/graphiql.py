"""The GraphiQL page served to browsers on ``GET /graphql``, with every asset shipped locally.

Strawberry's own GraphiQL page loads React and GraphiQL from a CDN, and the machines that run
crunchql have no internet, so this page loads the copies vendored in ``app/static/graphiql``
(see ``VERSIONS.txt`` there). The app mounts that folder with
``Mount(assets_prefix, StaticFiles(directory=ASSETS_DIR))``.

Subscriptions go over ``graphql-transport-ws`` on the same path as HTTP. GraphiQL 3's bundle
already contains the ``graphql-ws`` client; its fetcher opens one client per subscription, and
the page hands it the Headers pane as ``connectionParams`` (the ``connection_init`` payload), so
``{"Authorization": "Bearer <accessToken>"}`` in Headers authenticates HTTP and WebSocket alike.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from html import escape
from pathlib import Path
from string import Template

ASSETS_DIR: Path = Path(__file__).resolve().parent / "static" / "graphiql"

# Loaded in this order: GraphiQL's UMD bundle expects window.React and window.ReactDOM.
SCRIPTS: tuple[str, ...] = (
    "react.production.min.js",
    "react-dom.production.min.js",
    "graphiql.min.js",
)
STYLESHEETS: tuple[str, ...] = ("graphiql.min.css",)

DEFAULT_QUERY = """\
# Welcome to crunchql! The ▶ button runs an operation.
#
# 1. Run "Register" (or "Login" if you have an account).
# 2. Copy "accessToken" from the response into the
#    Headers pane below, as
#      {"Authorization": "Bearer <accessToken>"}
#    It authenticates queries and mutations over HTTP
#    and subscriptions over WebSocket (sent there as
#    the connection_init payload).
# 3. Run "Me" to see who you are.
# 4. Run "Submit", paste the returned id into "Watch"
#    and run it to follow the calculation live.
# 5. Run "Schedule" for a calculation every hour;
#    nextRuns says when it will fire.
# The Docs button (top left) lists everything else.

mutation Register {
  register(
    email: "you@example.com"
    password: "a long passphrase"
  ) {
    accessToken
    refreshToken
    user { id email role }
  }
}

mutation Login {
  login(
    email: "you@example.com"
    password: "a long passphrase"
  ) {
    accessToken
    refreshToken
  }
}

query Me {
  me { id email role createdAt }
}

mutation Submit {
  submitCalculation(
    input: { monteCarloPi: { samples: 100000000, seed: 1 } }
  ) {
    id
    status
  }
}

mutation Schedule {
  createSchedule(input: {
    calculation: { monteCarloPi: { samples: 1000000 } }
    cron: "0 * * * *"
    timezone: "Europe/Berlin"
  }) {
    id
    status
    nextRuns(count: 3)
  }
}

subscription Watch {
  calculationUpdates(id: "PASTE-THE-ID-HERE") {
    id
    status
    progress
    error
    result {
      ... on MonteCarloPiResult {
        estimate
        standardError
      }
    }
  }
}
"""

# The bootstrap script holds no eval and builds no code from strings; under a
# Content-Security-Policy it needs only its own hash allowed (see content_security_policy).
_PAGE = Template("""\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <meta name="robots" content="noindex">
  <title>crunchql · GraphiQL</title>
  <link rel="icon" href="data:,">
$stylesheets
  <style>
    html, body { height: 100%; margin: 0; overflow: hidden; }
    #graphiql { height: 100vh; }
  </style>
</head>
<body>
  <div id="graphiql">Loading GraphiQL…</div>
  <noscript>GraphiQL needs JavaScript. POST GraphQL requests to $endpoint_html instead.</noscript>
$scripts
  <script>
    (function () {
      "use strict";
      var endpoint = $endpoint_js;
      // HTTP on the endpoint, same origin as this page.
      var httpUrl = new URL(endpoint, window.location.href);
      // graphql-transport-ws on the same host and path: wss:// under https, ws:// otherwise.
      var subscriptionUrl = new URL(httpUrl.href);
      subscriptionUrl.protocol = window.location.protocol === "https:" ? "wss:" : "ws:";

      // GraphiQL calls the fetcher with opts.headers = the Headers pane parsed as JSON.
      // HTTP requests carry them as headers; a subscription opens a graphql-ws client whose
      // connectionParams (the connection_init payload) are those same headers, read at the
      // moment it starts, so a token pasted later is used by the next subscription.
      function fetcher(graphQLParams, opts) {
        var headers = (opts && opts.headers) || {};
        return GraphiQL.createFetcher({
          url: httpUrl.href,
          subscriptionUrl: subscriptionUrl.href,
          wsConnectionParams: headers
        })(graphQLParams, opts);
      }

      var root = ReactDOM.createRoot(document.getElementById("graphiql"));
      root.render(
        React.createElement(GraphiQL, {
          fetcher: fetcher,
          defaultQuery: $default_query_js,
          isHeadersEditorEnabled: true,
          defaultEditorToolsVisibility: "headers"
        })
      );
    })();
  </script>
</body>
</html>
""")


def _js_literal(value: str) -> str:
    """A JSON string literal that is also safe inside an HTML ``<script>`` element."""
    return (
        json.dumps(value, ensure_ascii=False)
        .replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def graphiql_html(endpoint: str = "/graphql", assets_prefix: str = "/graphiql-assets") -> str:
    """The GraphiQL page for ``endpoint``, loading its assets from ``assets_prefix``.

    Both are paths on this site (``/graphql``, ``/graphiql-assets``); the WebSocket URL for
    subscriptions is derived in the browser from the page's own location.
    """
    prefix = assets_prefix.rstrip("/")
    stylesheets = "\n".join(
        f'  <link rel="stylesheet" href="{escape(f"{prefix}/{name}")}">' for name in STYLESHEETS
    )
    scripts = "\n".join(
        f'  <script src="{escape(f"{prefix}/{name}")}"></script>' for name in SCRIPTS
    )
    return _PAGE.substitute(
        stylesheets=stylesheets,
        scripts=scripts,
        endpoint_html=escape(endpoint),
        endpoint_js=_js_literal(endpoint),
        default_query_js=_js_literal(DEFAULT_QUERY),
    )


_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.DOTALL)


def content_security_policy(page: str) -> str:
    """A strict ``Content-Security-Policy`` header value for ``page`` from :func:`graphiql_html`.

    Everything comes from this origin (``connect-src 'self'`` covers the same-origin WebSocket);
    the inline bootstrap is allowed by its hash, and no eval is needed. Styles need
    ``'unsafe-inline'``: GraphiQL's components set inline styles at run time.
    """
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; "
        "style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )
