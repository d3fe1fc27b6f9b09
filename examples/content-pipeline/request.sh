#!/bin/sh
# Prints the command that drives the example on port $1: what
# generateContentStream posts (the generation parameters as JSON, the
# signed-in user's JWT).
port=${1:?usage: request.sh PORT}
echo "curl -sN -H 'Authorization: Bearer demo-token'" \
     "-H 'Content-Type: application/json'" \
     "-d '{\"topic\": \"Remote work for small teams\", \"content_type\": \"blog_post\"," \
     "\"audience\": \"small business owners\", \"tone\": \"practical\"," \
     "\"requirements\": \"300 words at most, three concrete tips, end with a call to action\"}'" \
     "http://127.0.0.1:$port/run/stream"
