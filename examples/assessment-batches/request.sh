#!/bin/sh
# Prints the command that drives the example on port $1: what
# useStep7Streaming sends for the 6-module demo workflow (the Step 7 form
# as JSON, the signed-in user's JWT), 13 batches.
port=${1:?usage: request.sh PORT}
echo "curl -sN -X POST -H 'Authorization: Bearer demo-token'" \
     "-H 'Content-Type: application/json'" \
     "-d '{\"formativesPerModule\": 2, \"questionsPerType\": 11}'" \
     "http://127.0.0.1:$port/api/v3/workflow/6756a0c0f1e2d3c4b5a69781/step7/stream"
