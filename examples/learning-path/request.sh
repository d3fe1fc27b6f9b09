#!/bin/sh
# Prints the command that drives the example on port $1: the form of the
# app's page posted to the stream, as the signed-in demo user.
port=${1:?usage: request.sh PORT}
echo "curl -sN -H 'Authorization: Bearer demo-token'" \
     "--data-urlencode 'topic=Python for Data Science'" \
     "-d expertise_level=beginner -d learning_style=visual" \
     "-d time_commitment=8 -d duration_weeks=8" \
     "--data-urlencode 'goals=Get a junior data analyst job'" \
     "http://127.0.0.1:$port/generate-stream"
