#!/bin/sh
# The command that drives the example (util/example.sh runs it with the
# port): the stream the front-end opens, for the seed's own topic.
echo "curl -sN -H 'Origin: https://demo.aqumen.ai' 'http://127.0.0.1:$1/api/generate-stream?topic=GRPO+in+RL'"
