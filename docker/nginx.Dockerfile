# syntax=docker/dockerfile:1
# covidscan's front: nginx with TLS, request limits and timeouts, in front of the API.
FROM nginx:1.27.3-alpine

# openssl makes the self-signed default certificate; envsubst (gettext) comes with the image.
RUN apk add --no-cache openssl \
    && mkdir -p /etc/covidscan /etc/nginx/tls

COPY docker/nginx/nginx.conf.template /etc/covidscan/nginx.conf.template
COPY docker/nginx/entrypoint.sh /usr/local/bin/covidscan-front

# nginx's own unprivileged user; it listens on 8443, above the privileged ports.
USER nginx
EXPOSE 8443
ENTRYPOINT ["/usr/local/bin/covidscan-front"]
