#!/bin/sh
# Re-vendor the console's libraries from the npm registry (needs npm and network; the
# console itself never does). Bump a version below, run this script from anywhere, check
# the page (the browser test: pytest tests/app/test_console_browser.py) and commit the
# changed files with VERSIONS.txt.
set -eu
PREACT=10.29.8
HTM=3.1.1
GRAPHQL_WS=6.4.2
UPLOT=1.6.32

here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
for spec in "preact@$PREACT" "htm@$HTM" "graphql-ws@$GRAPHQL_WS" "uplot@$UPLOT"; do
    name=${spec%@*}
    mkdir "$name"
    npm pack --silent "$spec" >/dev/null
    tar xzf "$name"-*.tgz -C "$name"
done
cp preact/package/dist/preact.module.js "$here/preact.module.js"
# No import map (it would be an inline script under the CSP): hooks import preact by path.
sed 's#from"preact"#from"./preact.module.js"#' preact/package/hooks/dist/hooks.module.js \
    > "$here/hooks.module.js"
cp htm/package/dist/htm.module.js "$here/htm.module.js"
common=$(cd graphql-ws/package/dist && ls common-*.js)
sed "s#'./$common'#'./graphql-ws-common.js'#" graphql-ws/package/dist/client.js \
    > "$here/graphql-ws.js"
cp "graphql-ws/package/dist/$common" "$here/graphql-ws-common.js"
cp uplot/package/dist/uPlot.esm.js "$here/uPlot.esm.js"
cp uplot/package/dist/uPlot.min.css "$here/uPlot.min.css"
cp preact/package/LICENSE "$here/LICENSE-preact.txt"
cp htm/package/LICENSE "$here/LICENSE-htm.txt"
cp graphql-ws/package/LICENSE.md "$here/LICENSE-graphql-ws.txt"
cp uplot/package/LICENSE "$here/LICENSE-uplot.txt"
cat > "$here/VERSIONS.txt" <<VERSIONS
Vendored from the npm registry by update.sh (npm pack), unmodified except the import paths:
preact $PREACT (dist/preact.module.js, hooks/dist/hooks.module.js) - MIT
htm $HTM (dist/htm.module.js) - Apache-2.0
graphql-ws $GRAPHQL_WS (dist/client.js, dist/$common) - MIT
uplot $UPLOT (dist/uPlot.esm.js, dist/uPlot.min.css) - MIT
VERSIONS
