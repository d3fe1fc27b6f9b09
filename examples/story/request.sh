#!/bin/sh
# Prints the command that drives the example on port $1: what the app's
# EventSource asks, the token in the query.
port=${1:?usage: request.sh PORT}
echo "curl -sN 'http://127.0.0.1:$port/api/v1/stories/generate/stream?child_id=1&theme=adventure&chapter_number=1&title=The+Magic+Forest&token=demo-token'"
