# Prometheus 2.42 from Debian's packages, scraping the SuperLink replicas and SuperNodes of
# docker/compose/compose-ha.yml (its `monitoring` profile) with docker/monitoring/prometheus.yml.
# Mount your own file over /etc/prometheus/prometheus.yml for other targets. Runs as the
# `prometheus` user; the UI and API on port 9090.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/*
COPY prometheus.yml /etc/prometheus/prometheus.yml
USER prometheus
EXPOSE 9090
ENTRYPOINT ["prometheus", "--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2", "--web.listen-address=:9090"]
