# PostgreSQL 15 from Debian's packages, for the SuperLink replicas of a high-availability
# deployment (docker/compose/compose-ha.yml). On first start it makes a cluster in
# /var/lib/postgresql/data (mount a volume there) with one login role and database:
#
#   POSTGRES_USER            role and database name              (default flwr)
#   POSTGRES_PASSWORD_FILE   file holding the role's password    (required; never logged)
#
# Clients on the network authenticate with SCRAM-SHA-256. Runs as the `postgres` user.
ARG BASE=debian:bookworm-slim
FROM ${BASE}
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.d/no-main-cluster.conf \
 && apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /usr/share/doc/* /usr/share/man/* \
 && install -d -o postgres -g postgres -m 0700 /var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:$PATH PGDATA=/var/lib/postgresql/data
USER postgres
EXPOSE 5432
ENTRYPOINT ["/usr/local/bin/postgres-entrypoint.sh"]
