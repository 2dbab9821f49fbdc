#!/bin/sh
# Entry point of the nginx image: fill in the shared site template
# (deploy/nginx-site.conf.template, mounted at /etc/handoff/) from HANDOFF_LISTEN,
# HANDOFF_DOCROOT and HANDOFF_FPM, leaving nginx's own $variables alone, into /run/nginx
# (writable; /etc/nginx/conf.d/handoff.conf links there), then start nginx.
set -eu
# shellcheck disable=SC2016 # the names envsubst may replace, literally
envsubst '${HANDOFF_LISTEN} ${HANDOFF_DOCROOT} ${HANDOFF_FPM}' \
    < /etc/handoff/nginx-site.conf.template > /run/nginx/handoff.conf
exec "$@"
