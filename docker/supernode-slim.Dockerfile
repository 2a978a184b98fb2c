# The supernode alone, for `--isolation process`: the binary, the C runtime it links, the system CA
# bundle and name-service configuration, nothing else. Runs as UID/GID 49999 in /app.
#
#   docker build -f docker/supernode-slim.Dockerfile --build-arg BASE=debian:bookworm-slim <context>
#
# BASE only provides those files; any Debian 12 image works.
ARG BASE=debian:bookworm-slim
FROM ${BASE} AS runtime
RUN test -f /etc/ssl/certs/ca-certificates.crt \
 || (apt-get update && apt-get install -y --no-install-recommends ca-certificates && rm -rf /var/lib/apt/lists/*)
RUN mkdir -p /rootfs/lib/x86_64-linux-gnu /rootfs/lib64 /rootfs/etc/ssl/certs /rootfs/app /rootfs/tmp \
 && for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do cp -L /lib/x86_64-linux-gnu/$lib /rootfs/lib/x86_64-linux-gnu/; done \
 && cp -L /lib64/ld-linux-x86-64.so.2 /rootfs/lib64/ \
 && cp -L /etc/ssl/certs/ca-certificates.crt /rootfs/etc/ssl/certs/ \
 && printf 'root:x:0:0:root:/root:/sbin/nologin\napp:x:49999:49999:app:/app:/sbin/nologin\n' > /rootfs/etc/passwd \
 && printf 'root:x:0:\napp:x:49999:\n' > /rootfs/etc/group \
 && printf 'hosts: files dns\n' > /rootfs/etc/nsswitch.conf \
 && chown 49999:49999 /rootfs/app && chmod 1777 /rootfs/tmp

FROM scratch
COPY --from=runtime /rootfs/ /
COPY supernode /usr/local/bin/supernode
ENV HOME=/app SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
WORKDIR /app
USER 49999:49999
ENTRYPOINT ["/usr/local/bin/supernode"]
