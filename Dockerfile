# The shipped image: the static server-only binary and nothing else (`serve`;
# the client commands are in `scripts/dist --full`, not in the image).
#   scripts/dist            # or: just dist
#   docker build -t codereview .
#   docker run -p 8080:8080 -e PORT=8080 -v codereview-data:/data codereview --insecure   # TLS terminated in front
#   docker run -p 50051:50051 -v codereview-data:/data -v $PWD/certs/dev:/certs:ro -v $PWD/certs/dev/secret:/secret:ro \
#       codereview --addr 0.0.0.0:50051 --tls-cert /certs/server.pem --tls-key /certs/server.key --auth-secret-file /secret
# Without --addr the server binds 0.0.0.0:$PORT (the container-platform convention),
# which needs TLS and a token secret, or --insecure.
#
# Sessions are durable in /data ($CODEREVIEW_DATA_DIR): mount a volume there
# (`-v NAME:/data`; a host directory must be writable by uid 65532) so they
# survive the container. Without a mount, Docker gives /data an anonymous
# volume that lives as long as the container; on platforms without volumes
# (scale-to-zero edge runtimes) sessions last as long as the instance. To keep
# them in memory only, pass --data-dir none.
FROM scratch
COPY target/x86_64-unknown-linux-gnu/dist/codereview-server /codereview
COPY --chown=65532:65532 docker/data /data
USER 65532:65532
ENV PORT=50051
ENV CODEREVIEW_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 50051
ENTRYPOINT ["/codereview", "serve"]
