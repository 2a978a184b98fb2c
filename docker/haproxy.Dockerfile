# HAProxy 2.6 from Debian's packages, in front of the SuperLink replicas of a high-availability
# deployment, with docker/ha/haproxy.cfg (Compose service names superlink-1..3). Mount your own
# file over /etc/haproxy/haproxy.cfg for other names. Runs as the `haproxy` user.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends haproxy \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY haproxy.cfg /etc/haproxy/haproxy.cfg
USER haproxy
EXPOSE 9091 9092 9093
ENTRYPOINT ["haproxy", "-W", "-db", "-f", "/etc/haproxy/haproxy.cfg"]
